package vfs_test

import (
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/vfs"
)

// digest hashes every row of t, in order, and checks the database's
// integrity: what a replica must return as the source does.
func digest(db *sql.DB) (string, error) {
	var ok string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&ok); err != nil || ok != "ok" {
		return "", fmt.Errorf("integrity_check: %q, %v", ok, err)
	}
	rows, err := db.Query("SELECT id, k, v FROM t ORDER BY id")
	if err != nil {
		return "", err
	}
	defer rows.Close()
	h := sha256.New()
	for rows.Next() {
		var id, k int64
		var v []byte
		if err := rows.Scan(&id, &k, &v); err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%d %d %x\n", id, k, v)
	}
	if err := rows.Err(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func init() {
	children["digest"] = childDigest
}

// childDigest prints the digest of the replica named by BOULE_TEST_DB,
// opened with BOULE_CONFIG, computed BOULE_TEST_ROUNDS times.
func childDigest() error {
	db, err := childReplicaDB()
	if err != nil {
		return err
	}
	defer db.Close()
	for range 2 {
		d, err := digest(db)
		if err != nil {
			return err
		}
		fmt.Println(d)
	}
	return nil
}

// bigSource writes a database of about 3.3 MiB (52 chunks) through boule,
// replicated to a new directory store, and flushes it. It returns the
// env, the store's target, and the database's path and connection.
func bigSource(t testing.TB) (*env, config.Target, string, *sql.DB) {
	t.Helper()
	tg, _ := dirTarget(t)
	e := replEnv(t, tg)
	path, src := e.writer(t, "big.db", "")
	fill(t, src, 3000)
	mustFlush(t, path)
	return e, tg, path, src
}

// TestReplicaBoundedMemory: a replica about four times larger than the
// process's bounds (2 MiB of chunk copies, 16 chunks held), and than its
// chunk cache, reads whole and correctly from four connections at once
// (chunks evicted from memory and from the cache while others read
// them), and from another process sharing the chunk cache; the bounds
// and the cache's capacity hold throughout.
func TestReplicaBoundedMemory(t *testing.T) {
	e, tg, path, src := bigSource(t)
	want, err := digest(src)
	if err != nil {
		t.Fatal(err)
	}

	cacheDir := filepath.Join(e.dir, "cache")
	const capacity = 24
	cache := config.Target{Local: &config.LocalTarget{Directory: cacheDir, NumShards: 2, Capacity: capacity}}
	cfg := vfs.Config{
		ReplicationTargets:     []config.Target{cache, tg},
		ReplicaMemoryLimit:     config.MinReplicaMemoryLimit,
		ReplicaMaxMappedChunks: config.MinReplicaMappedChunks,
		Logger:                 slog.New(e.log),
	}
	register(t, cfg)

	raw, err := cfg.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	child := exec.Command(os.Args[0])
	child.Env = append(os.Environ(), "BOULE_TEST_CHILD=digest", "BOULE_CONFIG="+string(raw), "BOULE_TEST_DB=boule://"+path)
	var childOut, childErr strings.Builder
	child.Stdout, child.Stderr = &childOut, &childErr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}

	rep := openReplica(t, path, "")
	rep.SetMaxOpenConns(4)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 2 {
				got, err := digest(rep)
				if err != nil {
					errs <- err
					return
				}
				if got != want {
					errs <- fmt.Errorf("digest()=%s, want the source's %s", got, want)
					return
				}
				if held, copies, _ := vfs.Reader().Held(); held > 16+8 || copies > 16+8 {
					errs <- fmt.Errorf("Held()=%d chunks, %d copies, want at most 16 and 16 (+8 loads under way)", held, copies)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if _, _, evicted := vfs.Reader().Held(); evicted == 0 {
		t.Error("Held()=0 evicted: the replica fit in its bounds, the test proves nothing")
	}

	if err := child.Wait(); err != nil {
		t.Fatalf("child: %v %s", err, childErr.String())
	}
	if got := strings.Fields(childOut.String()); len(got) != 2 || got[0] != want || got[1] != want {
		t.Errorf("the other process's digests: %q, want %s twice", got, want)
	}

	n := 0
	for _, sh := range []string{"000", "001"} {
		ents, _ := os.ReadDir(filepath.Join(cacheDir, sh))
		n += len(ents)
	}
	if n == 0 || n > capacity {
		t.Errorf("the chunk cache holds %d files, want 1 to %d", n, capacity)
	}
}

// TestReplicaGoCalls: GoCalls counts the replica's calls into Go. A
// replica that fits in the process's bounds is read again with no call;
// one four times larger than them calls Go at most once for each chunk
// it let go, and not at all for those whose cache file was written by
// the time it is read again (TestReplicaLargerThanHeldReadsFiles).
func TestReplicaGoCalls(t *testing.T) {
	_, tg, path, _ := bigSource(t)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	chunks := int(st.Size() >> 16)
	const scan = "SELECT sum(length(v)) FROM t"
	for _, tc := range []struct {
		name      string
		memory    int64
		held      int
		leastCall int // fewest Go calls for the second scan
		mostCall  int
	}{
		{name: "fits", mostCall: 0},
		{name: "larger than its bounds", memory: config.MinReplicaMemoryLimit, held: config.MinReplicaMappedChunks,
			mostCall: chunks},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cache := config.Target{Local: &config.LocalTarget{Directory: t.TempDir(), NumShards: 2, Capacity: 1 << 10}}
			register(t, vfs.Config{ReplicationTargets: []config.Target{cache, tg}, ReplicaMemoryLimit: tc.memory, ReplicaMaxMappedChunks: tc.held})
			t.Cleanup(vfs.Reader().Close) // before the cache directory goes: its writer and prefetch stop
			rep := openReplica(t, path, "")
			rep.SetMaxOpenConns(1)
			var first, second int64
			if err := rep.QueryRow(scan).Scan(&first); err != nil {
				t.Fatal(err)
			}
			calls := vfs.GoCalls()
			if err := rep.QueryRow(scan).Scan(&second); err != nil || second != first {
				t.Fatalf("second scan=%d, %v, want %d", second, err, first)
			}
			if got := int(vfs.GoCalls() - calls); got < tc.leastCall || got > tc.mostCall {
				t.Errorf("GoCalls() for a scan of %d chunks=%d, want %d to %d", chunks, got, tc.leastCall, tc.mostCall)
			}
			rep.Close()
		})
	}
}
