package vfs_test

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boule-vfs/boule/internal/rawvfs"
	"github.com/boule-vfs/boule/internal/testfs"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/vfs"
)

// TestLargeTransactionsLendCopies: a transaction that writes many chunks
// has them copied in C as it writes them, and its capture takes those
// copies instead of reading the chunks back; every snapshot still equals
// the file, through savepoints rolled back after spills, truncation,
// VACUUM and partly written chunks, and every copy is freed once staged.
func TestLargeTransactionsLendCopies(t *testing.T) {
	e := newEnv(t)
	path, db := e.writer(t, "copies.db", "_sync=OFF")
	db.SetMaxOpenConns(1)
	mustExec(t, db, "CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB)")
	mustExec(t, db, "CREATE VIEW n1024 AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1024) SELECT x FROM c")
	d, err := vfs.Spool().DB(path)
	if err != nil {
		t.Fatal(err)
	}
	idle := func(t *testing.T) { copiesFreed(t, d) }
	// step commits stmts in one transaction, which must have lent from
	// least to most chunks (most < 0: any number).
	step := func(t *testing.T, least, most int64, stmts ...string) {
		t.Helper()
		lent := vfs.CopiesLent()
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range stmts {
			if _, err := tx.Exec(s); err != nil {
				tx.Rollback()
				t.Fatalf("%s: %v", s, err)
			}
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if got := vfs.CopiesLent() - lent; got < least || (most >= 0 && got > most) {
			t.Fatalf("chunks lent=%d, want %d to %d", got, least, most)
		}
		checkSnapshot(t, db, path)
		idle(t)
	}
	t.Run("bulk", func(t *testing.T) {
		// 4 MiB: 64 chunks, of which all but the first few are copied.
		step(t, 16, -1, "INSERT INTO t(v) SELECT randomblob(4000) FROM n1024")
	})
	t.Run("small", func(t *testing.T) {
		step(t, 0, 0, "UPDATE t SET v = randomblob(4000) WHERE k IN (3, 500, 1000)")
	})
	t.Run("spills and a savepoint rolled back", func(t *testing.T) {
		mustExec(t, db, "PRAGMA cache_size = 8")
		defer mustExec(t, db, "PRAGMA cache_size = -2000")
		step(t, 16, -1,
			"INSERT INTO t(v) SELECT randomblob(4000) FROM n1024",
			"SAVEPOINT s",
			"UPDATE t SET v = randomblob(4000) WHERE k % 3 = 0",
			"ROLLBACK TO s",
			"UPDATE t SET v = randomblob(4000) WHERE k % 7 = 0",
			"RELEASE s")
	})
	t.Run("partly written chunks", func(t *testing.T) {
		// Every 5th row of 4 KB: most chunks get a page or two.
		step(t, 0, -1, "UPDATE t SET v = randomblob(3990) WHERE k % 40 = 0")
		step(t, 0, -1, "UPDATE t SET v = randomblob(4000) WHERE k % 2 = 0")
		step(t, 16, -1, "UPDATE t SET v = randomblob(4000)")
	})
	t.Run("shrink", func(t *testing.T) {
		// Pages spilled mid-transaction are copied, then the rows are
		// deleted, and the commit truncates the file below them.
		mustExec(t, db, "PRAGMA auto_vacuum = FULL")
		mustExec(t, db, "VACUUM")
		idle(t)
		mustExec(t, db, "PRAGMA cache_size = 8")
		defer mustExec(t, db, "PRAGMA cache_size = -2000")
		step(t, 0, -1,
			"INSERT INTO t(v) SELECT randomblob(4000) FROM n1024",
			"DELETE FROM t WHERE k > 1000")
		step(t, 0, -1,
			"DELETE FROM t WHERE k > 500",
			"INSERT INTO t(v) SELECT randomblob(4000) FROM n1024 LIMIT 300")
	})
	t.Run("bounded", func(t *testing.T) {
		vfs.SetCopyLimit(t, 256<<10)
		lent := vfs.CopiesLent()
		mustExec(t, db, "INSERT INTO t(v) SELECT randomblob(4000) FROM n1024")
		if got := vfs.CopiesLent() - lent; got > 4 {
			t.Fatalf("chunks lent=%d with room for 4 copies", got)
		}
		checkSnapshot(t, db, path)
		idle(t)
	})
	e.noWarnings(t)
}

// TestCopiesDroppedByTruncateAndCrossingWrites drives the file methods
// directly (no SQL statement makes these steps in one transaction): a
// write across two chunks, then a truncate into a copied chunk, then a
// write past the new end, which leaves the chunks between as zeros. Each
// must drop the copies of the chunks it touches: a copy kept would hold
// bytes the file no longer has, and the snapshot would stage them.
func TestCopiesDroppedByTruncateAndCrossingWrites(t *testing.T) {
	e := newEnv(t)
	path := e.path("raw.db")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	r, err := beginRawTxn(path)
	must(err)
	defer r.f.Close()
	// Across chunks 11 and 12: both copies go.
	must(r.f.WriteAt(bytes.Repeat([]byte{'X'}, 8192), 12*rawChunk-4096))
	// Into chunk 20, then chunk 23 again: 20's second half, 21 and 22
	// are zeros now, and no copy of 20 to 25 may be lent.
	must(r.f.Truncate(20*rawChunk + rawChunk/2))
	must(r.f.WriteAt(bytes.Repeat([]byte{'Z'}, rawChunk), 23*rawChunk))
	lent, err := r.commit()
	must(err)
	// 10 and 13 to 19.
	if lent != 8 {
		t.Errorf("chunks lent=%d, want 8 (10 and 13 to 19)", lent)
	}
	file, err := os.ReadFile(path)
	must(err)
	if len(file) != 24*rawChunk || !bytes.Equal(file[21*rawChunk:22*rawChunk], make([]byte, rawChunk)) {
		t.Fatalf("the file is %d bytes, chunk 21 zero: %v; the steps did not do what this test needs", len(file), bytes.Equal(file[21*rawChunk:22*rawChunk], make([]byte, rawChunk)))
	}
	must(r.snapshotMatches())
	copiesFreed(t, r.d)
}

// rawChunk is the size of boule's chunks, for the tests that write them
// through rawvfs.
const rawChunk = 64 << 10

// A rawTxn is a write transaction driven through the file methods of a
// replicated database (internal/rawvfs), for steps SQL does not make.
type rawTxn struct {
	path string
	d    *spool.DB
	f    *rawvfs.File
	lent int64 // vfs.CopiesLent at the start
}

// beginRawTxn creates a database of 500 rows of 4 KB at path through
// boule, which the caller registered, opens it through rawvfs, runs the
// read transaction that checks the file after an open, then takes the
// write lock and writes chunks 2 to 25 whole, with 'a'+i: the ninth
// chunk dirtied on, 10 to 25, are copied as written.
func beginRawTxn(path string) (*rawTxn, error) {
	db, err := sql.Open("sqlite3", "file:"+path+"?vfs=boule")
	if err != nil {
		return nil, err
	}
	for _, q := range []string{
		"CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB)",
		"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 500) INSERT INTO t(v) SELECT randomblob(4000) FROM c",
	} {
		if _, err := db.Exec(q); err != nil {
			db.Close()
			return nil, err
		}
	}
	if err := db.Close(); err != nil {
		return nil, err
	}
	d, err := vfs.Spool().DB(path)
	if err != nil {
		return nil, err
	}
	f, err := rawvfs.Open("boule", path)
	if err != nil {
		return nil, err
	}
	r := &rawTxn{path: path, d: d, f: f}
	steps := []func() error{
		func() error { return f.Lock(rawvfs.LockShared) },
		func() error { return f.Unlock(rawvfs.LockNone) },
		func() error { return staged(d) },
		func() error { r.lent = vfs.CopiesLent(); return f.Lock(rawvfs.LockShared) },
		func() error { return f.Lock(rawvfs.LockReserved) },
		func() error { return f.Lock(rawvfs.LockExclusive) },
	}
	for i := 2; i <= 25; i++ {
		steps = append(steps, func() error {
			return f.WriteAt(bytes.Repeat([]byte{byte('a' + i)}, rawChunk), int64(i)*rawChunk)
		})
	}
	for _, step := range steps {
		if err := step(); err != nil {
			f.Close()
			return nil, err
		}
	}
	return r, nil
}

// commit syncs the file and ends the transaction (the capture), waits
// until it is staged, and returns how many copies it lent.
func (r *rawTxn) commit() (int64, error) {
	for _, step := range []func() error{r.f.Sync, func() error { return r.f.Unlock(rawvfs.LockShared) },
		func() error { return r.f.Unlock(rawvfs.LockNone) }, func() error { return staged(r.d) }} {
		if err := step(); err != nil {
			return 0, err
		}
	}
	return vfs.CopiesLent() - r.lent, nil
}

// snapshotMatches reports how the staged snapshot differs from the file.
func (r *rawTxn) snapshotMatches() error {
	want, err := os.ReadFile(r.path)
	if err != nil {
		return err
	}
	got, err := assemble(r.path)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		i := firstDiff(got, want)
		return fmt.Errorf("snapshot: %d bytes, file %d; first difference at %d (chunk %d)", len(got), len(want), i, i/rawChunk)
	}
	return nil
}

// copiesFreed waits until d's persister is idle, and checks that no copy
// is held then: each is freed once staged.
func copiesFreed(t *testing.T, d *spool.DB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	if n := vfs.CopiedBytes(); n != 0 {
		t.Fatalf("copies held once staged: %d bytes, want 0", n)
	}
}

func init() { children["failedwrite"] = childFailedWrite }

// TestCopiesDroppedByFailedWrite: a write that fails after changing part
// of a chunk drops that chunk's copy. The write is an overwrite cut short
// by the file size limit (RLIMIT_FSIZE, which cuts a write that crosses
// it and fails the rest): 16 KiB of the 64 KiB reach the file, SQLite
// gets SQLITE_FULL, and the copy, which holds the chunk's earlier write
// in full, no longer equals the file. The limit is the whole process's,
// so the steps run in a child.
func TestCopiesDroppedByFailedWrite(t *testing.T) {
	dir := testfs.TempDir(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "BOULE_TEST_CHILD=failedwrite",
		"BOULE_TEST_DB="+filepath.Join(dir, "failed.db"), "BOULE_TEST_SPOOL="+filepath.Join(dir, "spool"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	// 10 to 25 but 12.
	if !strings.Contains(string(out), "lent 15\n") {
		t.Fatalf("child's output %q; want 15 copies lent", out)
	}
}

// childFailedWrite runs TestCopiesDroppedByFailedWrite's transaction and
// reports the copies lent; it fails when the snapshot differs from the
// file.
func childFailedWrite() error {
	path := os.Getenv("BOULE_TEST_DB")
	if err := vfs.Register(vfs.Config{ReplicationSpoolingDir: os.Getenv("BOULE_TEST_SPOOL")}); err != nil {
		return err
	}
	r, err := beginRawTxn(path)
	if err != nil {
		return err
	}
	defer r.f.Close()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		return err
	}
	cut := lim
	cut.Cur = 12*rawChunk + 16<<10
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &cut); err != nil {
		return err
	}
	werr := r.f.WriteAt(bytes.Repeat([]byte{'Q'}, rawChunk), 12*rawChunk)
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		return err
	}
	if werr == nil {
		return fmt.Errorf("the write past the file size limit succeeded")
	}
	lent, err := r.commit()
	if err != nil {
		return err
	}
	file, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !bytes.Equal(file[12*rawChunk:12*rawChunk+16<<10], bytes.Repeat([]byte{'Q'}, 16<<10)) || file[12*rawChunk+16<<10] != 'a'+12 {
		return fmt.Errorf("chunk 12 of the file is not 16 KiB of the failed write, then the earlier one: the steps did not do what the test needs")
	}
	if err := r.snapshotMatches(); err != nil {
		return err
	}
	fmt.Printf("lent %d\n", lent)
	return nil
}
