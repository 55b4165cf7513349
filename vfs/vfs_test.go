package vfs_test

import (
	"bytes"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/sqlshell"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/vfs"
)

func init() {
	children["default"] = childMakeDefault
}

// rebuilds is how many snapshots of path were rebuilt from scratch.
func rebuilds(t testing.TB, path string) int64 {
	st := mustDB(t, path).Stats()
	return st.Snapshots - st.Incremental
}

// rebuildsIn returns how many snapshots of path the commit of q through
// db rebuilt from scratch.
func rebuildsIn(t testing.TB, db *sql.DB, path, q string) int64 {
	t.Helper()
	before := rebuilds(t, path)
	mustExec(t, db, q)
	return rebuilds(t, path) - before
}

// TestOutsideChange: a change to the file between two boule commits by
// something else is detected, and the snapshot rebuilt; the transaction
// after is incremental again. The changes: a write by the plain sqlite3
// shell, and a byte changed by something that is not SQLite at all (no
// header change), which the ctime check catches.
func TestOutsideChange(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rows   int
		blob   string // the SQL of each row's blob
		change func(t *testing.T, path string)
	}{
		{"sqlite3 shell", 20, "randomblob(30000)", func(t *testing.T, path string) {
			// The shell changes a row in a chunk that the next boule
			// transaction does not touch.
			out, err := exec.Command(sqlshell.Path(t), path, "UPDATE t SET v = randomblob(30000) WHERE id = 3").CombinedOutput()
			if err != nil {
				t.Fatalf("sqlite3: %v: %s", err, out)
			}
		}},
		{"raw write", 10, "zeroblob(30000)", func(t *testing.T, path string) {
			// Flip a byte inside a blob's payload, well past chunk 0.
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte{0x5a}, 200000); err != nil {
				t.Fatal(err)
			}
			f.Close()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			path, db := e.writer(t, "outside.db", "")
			mustExec(t, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
			for range tc.rows {
				mustExec(t, db, "INSERT INTO t(v) VALUES ("+tc.blob+")")
			}
			checkSnapshot(t, db, path)

			tc.change(t, path)
			if got := rebuildsIn(t, db, path, "INSERT INTO t(v) VALUES (x'01')"); got != 1 {
				t.Fatalf("rebuilds after the outside change=%d, want 1", got)
			}
			checkSnapshot(t, db, path)

			if got := rebuildsIn(t, db, path, "INSERT INTO t(v) VALUES (x'02')"); got != 0 {
				t.Fatalf("rebuilds after a normal commit=%d, want 0", got)
			}
			checkSnapshot(t, db, path)
		})
	}
}

// TestLeftoverMarkerForcesRebuild: a transaction marker left behind (by a
// writer that crashed or whose snapshot failed) makes the next writer
// rebuild even when header, size and ctime look unchanged.
func TestLeftoverMarkerForcesRebuild(t *testing.T) {
	e := newEnv(t)
	path, db := e.tableWriter(t, "marker.db", "")
	mustExec(t, db, "INSERT INTO t VALUES (1)")
	sd := mustDB(t, path)
	sp := spool.OpenDir(sd.Dir())
	waitStaged(t, sd)
	if m, err := sp.Marker(); err != nil || m.State != spool.MarkerClean {
		t.Fatalf("marker after a snapshot=%+v, %v; want clean", m, err)
	}
	// What a writer that died in its transaction leaves.
	if err := sp.WriteMarker(spool.Marker{State: spool.MarkerSet}); err != nil {
		t.Fatal(err)
	}
	if got := rebuildsIn(t, db, path, "INSERT INTO t VALUES (2)"); got != 1 {
		t.Fatalf("rebuilds with a leftover marker=%d, want 1", got)
	}
	if m, err := sp.Marker(); err != nil || m.State != spool.MarkerClean {
		t.Fatalf("marker after the rebuild=%+v, %v; want clean", m, err)
	}
	checkSnapshot(t, db, path)
}

// TestNoSpoolDir: without replication_spooling_dir boule is plain unix.
func TestNoSpoolDir(t *testing.T) {
	dir := t.TempDir()
	register(t, vfs.Config{})
	path := filepath.Join(dir, "plain.db")
	db := open(t, path, "boule", "")
	calls := vfs.GoCalls()
	mustExec(t, db, "CREATE TABLE t(v)")
	mustExec(t, db, "INSERT INTO t VALUES (1)")
	if got := vfs.GoCalls(); got != calls {
		t.Fatalf("Go calls without replication=%d, want %d", got, calls)
	}
	if vfs.Spool() != nil {
		t.Fatal("Spool() != nil without a spooling dir")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 { // plain.db only: no journal left, no spool
		t.Fatalf("files in %s: %v, want only plain.db", dir, entries)
	}
}

// TestOneGoCallPerCommit: Go is entered once per write transaction in
// rollback mode, at most once in WAL mode, and never for reads, and the
// database is replicated, with no error or warning logged.
func TestOneGoCallPerCommit(t *testing.T) {
	for _, tc := range []struct{ name, params string }{
		{"rollback", ""},
		{"WAL", "_journal_mode=WAL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			path, db := e.tableWriter(t, "calls.db", tc.params)
			calls := vfs.GoCalls()
			for i := range 100 {
				mustExec(t, db, "INSERT INTO t VALUES (randomblob(5000 + ?))", i)
			}
			if got := vfs.GoCalls() - calls; got != 100 && (tc.name != "WAL" || got > 100) {
				t.Fatalf("Go calls for 100 commits=%d, want 100 (at most 100 in WAL mode)", got)
			}
			calls = vfs.GoCalls()
			for range 100 {
				var n, size int
				if err := db.QueryRow("SELECT count(*), sum(length(v)) FROM t").Scan(&n, &size); err != nil || n != 100 {
					t.Fatalf("count=%d, %v; want 100", n, err)
				}
			}
			if got := vfs.GoCalls() - calls; got != 0 {
				t.Fatalf("Go calls for 100 reads=%d, want 0", got)
			}
			checkLogical(t, db, path)
			e.noWarnings(t)
		})
	}
}

// TestWALCommitsSkipGoWhileReadQueued: in WAL mode, while the persister
// has a read of the log queued (within its squash window), a commit takes
// its generation in C and does not enter Go; the flush that ends the
// window stages every one of them.
func TestWALCommitsSkipGoWhileReadQueued(t *testing.T) {
	vfs.SetPersistGap(t, time.Hour)
	e := newEnv(t)
	path, db := e.tableWriter(t, "lazy.db", "_journal_mode=WAL")
	mustExec(t, db, "INSERT INTO t VALUES (1)")
	calls := vfs.GoCalls()
	for i := range 200 {
		mustExec(t, db, "INSERT INTO t VALUES (randomblob(3000 + ?))", i)
	}
	// The persister takes its queue once, at most, in the window: the
	// first commit after that enters Go to queue the next read, and
	// one more may find the queue taken under it.
	if got := vfs.GoCalls() - calls; got > 2 {
		t.Fatalf("Go calls for 200 commits with a read of the log queued=%d, want at most 2", got)
	}
	if m := markerOf(t, path); m.Committed <= m.Persisted {
		t.Fatalf("marker before the flush: %+v; want commits not staged yet", m)
	}
	checkLogical(t, db, path)
	e.noWarnings(t)
}

// TestWALSlowCommitsSkipGo: commits in WAL mode that come slower than the
// persister's squash window, each staged before the next, do not enter Go
// either: the persister lingers after its last read with the word armed,
// and reads the log for the commits that took their generations in C.
func TestWALSlowCommitsSkipGo(t *testing.T) {
	vfs.SetPersistGap(t, 2*time.Millisecond)
	e := newEnv(t)
	path, db := e.tableWriter(t, "slow.db", "_journal_mode=WAL")
	// commit commits, and waits until the persister staged it on its own
	// (a flush would end its linger) and, with lazy, armed the word again.
	commit := func(i int, lazy bool) {
		mustExec(t, db, "INSERT INTO t VALUES (randomblob(3000 + ?))", i)
		deadline := time.Now().Add(10 * time.Second)
		for m := markerOf(t, path); m.Committed != m.Persisted || (lazy && m.LazyReader == 0); m = markerOf(t, path) {
			if time.Now().After(deadline) {
				t.Fatalf("commit %d: not staged, or no lazy reader, after 10 s: %+v", i, m)
			}
			time.Sleep(time.Millisecond)
		}
	}
	// The persister lingers after a batch of reads that followed another
	// within a second: a database that commits rarely pays nothing.
	commit(-2, false)
	commit(-1, true)
	calls := vfs.GoCalls()
	for i := range 30 {
		commit(i, true)
	}
	// One commit may find the word disarmed at the end of a squash
	// window, as the persister looks for commits.
	if got := vfs.GoCalls() - calls; got > 2 {
		t.Fatalf("Go calls for 30 commits, each staged before the next=%d, want at most 2", got)
	}
	checkLogical(t, db, path)
	e.noWarnings(t)
}

// markerOf reads the transaction marker of the database at path.
func markerOf(t testing.TB, path string) spool.Marker {
	t.Helper()
	d, err := vfs.Spool().DB(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := spool.ReadMarker(d.Dir())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestWALLazyCommitsAllStaged: commits that took their generation in C
// while a read was queued are all staged once the persister is done, with
// no flush: a persister that takes its queue stops commits from counting
// on it (a commit that does enters Go and queues a read of its own).
func TestWALLazyCommitsAllStaged(t *testing.T) {
	vfs.SetPersistGap(t, time.Millisecond)
	e := newEnv(t)
	path, db := e.tableWriter(t, "lazyall.db", "_journal_mode=WAL&_sync=OFF")
	d, err := vfs.Spool().DB(path)
	if err != nil {
		t.Fatal(err)
	}
	calls := vfs.GoCalls()
	for round := range 20 {
		for i := range 50 {
			mustExec(t, db, "INSERT INTO t VALUES (randomblob(100 + ?))", i)
		}
		if err := staged(d); err != nil {
			t.Fatal(err)
		}
		if m := markerOf(t, path); m.Committed != m.Persisted {
			t.Fatalf("round %d: marker once the persister is done: %+v; want every commit staged", round, m)
		}
	}
	t.Logf("Go calls for 1,000 commits: %d", vfs.GoCalls()-calls)
	checkLogical(t, db, path)
	e.noWarnings(t)
}

// TestFirstTransactionCheck: a database written without boule, then opened
// through boule and only read, gets a snapshot (the first transaction of a
// connection checks the spool).
func TestFirstTransactionCheck(t *testing.T) {
	e := newEnv(t)
	path := e.path("first.db")
	plain := open(t, path, "unix", "")
	mustExec(t, plain, "CREATE TABLE t(v); INSERT INTO t VALUES (randomblob(100000))")
	plain.Close()
	db := open(t, path, "boule", "")
	db.SetMaxOpenConns(1)
	var n int
	if err := db.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil || n != 1 {
		t.Fatalf("count=%d, %v", n, err)
	}
	checkSnapshot(t, db, path)
}

// TestPermissions: spool files take the database's permission bits.
func TestPermissions(t *testing.T) {
	for _, tc := range []struct {
		db, file, dir os.FileMode
	}{
		{0o640, 0o440, 0o750},
		{0o600, 0o400, 0o700},
		{0o644, 0o444, 0o755},
	} {
		t.Run(tc.db.String(), func(t *testing.T) {
			e := newEnv(t)
			path := e.path("perm.db")
			if err := os.WriteFile(path, nil, tc.db); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tc.db); err != nil {
				t.Fatal(err)
			}
			db := open(t, path, "boule", "")
			mustExec(t, db, "CREATE TABLE t(v); INSERT INTO t VALUES (randomblob(200000))")
			waitStaged(t, mustDB(t, path))
			dir := spoolDir(t, path)
			checkMode(t, dir, tc.dir)
			checkMode(t, mustDB(t, path).StagingManifestPath(), tc.file)
			err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
				if err != nil {
					return err
				}
				if info.Mode().IsRegular() && strings.Contains(p, "chunks") {
					checkMode(t, p, tc.file)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

func checkMode(t *testing.T, p string, want os.FileMode) {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode().Perm(); got != want {
		t.Fatalf("mode of %s=%v, want %v", p, got, want)
	}
}

// TestLongPath: a database path longer than a file name may be (but within
// the unix VFS's 512-byte limit) still gets a spool directory, and distinct
// long paths do not collide.
func TestLongPath(t *testing.T) {
	e := newEnv(t)
	long := e.dir
	for i := 0; len(long) < 400; i++ {
		long = filepath.Join(long, strings.Repeat(fmt.Sprint(i%10), 60))
	}
	if err := os.MkdirAll(long, 0o755); err != nil {
		t.Fatal(err)
	}
	a, b := filepath.Join(long, "a.db"), filepath.Join(long, "b.db")
	for _, p := range []string{a, b} {
		db := open(t, p, "boule", "")
		mustExec(t, db, "CREATE TABLE t(v); INSERT INTO t VALUES (?)", p)
		checkSnapshot(t, db, p)
	}
	if spoolDir(t, a) == spoolDir(t, b) {
		t.Fatal("two long paths share a spool directory")
	}
	if n := len(filepath.Base(spoolDir(t, a))); n > 255 {
		t.Fatalf("spool directory name is %d bytes, want ≤ 255", n)
	}
}

// TestRegisterConcurrently: Register is idempotent and safe from many
// goroutines.
func TestRegisterConcurrently(t *testing.T) {
	dir := t.TempDir()
	cfg := vfs.Config{ReplicationSpoolingDir: filepath.Join(dir, "spool")}
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for range 32 {
		wg.Go(func() { errs <- vfs.Register(cfg) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Register()=%v, want nil", err)
		}
	}
	t.Cleanup(func() { _ = vfs.Register(vfs.Config{}) })
	path := filepath.Join(dir, "x.db")
	db := open(t, path, "boule", "")
	mustExec(t, db, "CREATE TABLE t(v)")
	checkSnapshot(t, db, path)
}

// TestBadConfig: a bad configuration is an error naming what is wrong, and
// leaves the configuration in force unchanged.
func TestBadConfig(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name, json, want string
	}{
		{"unknown key", `{"replication_spooling_dri": "/tmp"}`, `replication_spooling_dri`},
		{"wrong type", `{"make_default": "yes"}`, `make_default`},
		{"relative spool", `{"replication_spooling_dir": "spool"}`, `replication_spooling_dir`},
		{"bad target", `{"replication_targets": [{"gcs": {}}]}`, `gcs`},
		{"not json", `{`, `config`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(config.EnvVar, tc.json)
			err := vfs.RegisterFromEnv()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("RegisterFromEnv()=%v, want an error naming %q", err, tc.want)
			}
			if got := vfs.Spool(); got == nil || got.Root() != e.spool {
				t.Fatalf("spool after a bad config: %v, want the previous one", got)
			}
		})
	}
	t.Run("from file", func(t *testing.T) {
		p := filepath.Join(e.dir, "cfg.json")
		if err := os.WriteFile(p, []byte(`{"replication_spooling_dir": "`+e.spool+`"}`), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv(config.EnvVar, "@"+p)
		if err := vfs.RegisterFromEnv(); err != nil {
			t.Fatalf("RegisterFromEnv(@file)=%v", err)
		}
	})
}

// childMakeDefault registers boule as the default VFS and writes a database
// without naming a VFS.
func childMakeDefault() error {
	c := readChildEnv()
	if err := vfs.Register(vfs.Config{MakeDefault: true, ReplicationSpoolingDir: c.spool}); err != nil {
		return err
	}
	db, err := sql.Open("sqlite3", "file:"+c.db)
	if err != nil {
		return err
	}
	defer db.Close()
	var name string
	if _, err := db.Exec("CREATE TABLE t(v); INSERT INTO t VALUES (1)"); err != nil {
		return err
	}
	if err := db.QueryRow("SELECT count(*) FROM t").Scan(&name); err != nil {
		return err
	}
	got, err := assemble(c.db)
	if err != nil {
		return err
	}
	want, err := os.ReadFile(c.db)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("snapshot differs from the file")
	}
	fmt.Println("replicated")
	return nil
}

// TestMakeDefault runs in a child process: the default VFS is global.
func TestMakeDefault(t *testing.T) {
	dir := t.TempDir()
	cmd, out := startChild(t, "default", "BOULE_TEST_DB="+filepath.Join(dir, "d.db"), "BOULE_TEST_SPOOL="+filepath.Join(dir, "spool"))
	var lines []string
	for out.Scan() {
		lines = append(lines, out.Text())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
	if strings.Join(lines, "\n") != "replicated" {
		t.Fatalf("child said %q, want %q", lines, "replicated")
	}
}
