package vfs_test

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/boule-vfs/boule/internal/testfs"
	"github.com/boule-vfs/boule/vfs"
)

// faultEnv is an env whose spool fails every filesystem step while fail is
// set, with err.
func faultEnv(t *testing.T, err error) (*env, *atomic.Bool) {
	t.Helper()
	var fail atomic.Bool
	vfs.SetFaultHook(func(op, path string) error {
		if fail.Load() {
			return err
		}
		return nil
	})
	vfs.ResetSpools()
	t.Cleanup(func() {
		vfs.SetFaultHook(nil)
		vfs.ResetSpools()
	})
	return newEnv(t), &fail
}

// commitsSurvive runs n commits, each of which must succeed, then checks
// the rows are all there.
func commitsSurvive(t *testing.T, e *env, name string, n int, fail *atomic.Bool) {
	t.Helper()
	path, db := e.writer(t, name, "")
	mustExec(t, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
	mustExec(t, db, "INSERT INTO t(v) VALUES (randomblob(100000))")
	checkSnapshot(t, db, path)

	fail.Store(true)
	for range n {
		mustExec(t, db, "INSERT INTO t(v) VALUES (randomblob(20000))")
		// One snapshot per commit: the persister would squash commits
		// captured before the first failure was recorded.
		waitStaged(t, mustDB(t, path))
	}
	var rows int
	if err := db.QueryRow("SELECT count(*) FROM t").Scan(&rows); err != nil || rows != n+1 {
		t.Fatalf("rows=%d, %v; want %d", rows, err, n+1)
	}
	if got := e.log.count(slog.LevelError, "replication paused"); got != 1 {
		t.Fatalf("errors logged during %d failing commits=%d, want 1; log:\n%s", n, got, e.log)
	}
	if st := mustDB(t, path).Stats(); st.Failures != int64(n) || st.LastError == "" {
		t.Fatalf("stats=%+v, want %d failures and a last error; log:\n%s", st, n, e.log)
	}

	fail.Store(false)
	mustExec(t, db, "INSERT INTO t(v) VALUES (x'00')")
	if got := e.log.count(slog.LevelWarn, "replication resumed"); got != 1 {
		t.Fatalf("resumed messages=%d, want 1; log:\n%s", got, e.log)
	}
	checkSnapshot(t, db, path)
}

// TestInjectedENOSPC: a full disk under the spool never fails or corrupts a
// transaction; replication pauses with one logged error and resumes.
func TestInjectedENOSPC(t *testing.T) {
	e, fail := faultEnv(t, syscall.ENOSPC)
	commitsSurvive(t, e, "enospc.db", 25, fail)
}

// TestInjectedEIO: same for I/O errors.
func TestInjectedEIO(t *testing.T) {
	e, fail := faultEnv(t, syscall.EIO)
	commitsSurvive(t, e, "eio.db", 10, fail)
}

// TestFullTmpfs puts the spool on a real 512 KiB tmpfs and writes far more
// than that; then the tmpfs is grown and replication catches up.
func TestFullTmpfs(t *testing.T) {
	e := newEnv(t)
	testfs.MountTmpfs(t, e.spool, "512k")
	vfs.ResetSpools()
	e.register(t)

	path, db := e.writer(t, "full.db", "")
	mustExec(t, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
	for range 40 {
		mustExec(t, db, "INSERT INTO t(v) VALUES (randomblob(50000))")
	}
	var rows int
	if err := db.QueryRow("SELECT count(*) FROM t").Scan(&rows); err != nil || rows != 40 {
		t.Fatalf("rows=%d, %v; want 40", rows, err)
	}
	// The persister stages after the commits, and fails: wait for it.
	d := mustDB(t, path)
	_ = staged(d)
	st := d.Stats()
	if st.Failures == 0 {
		t.Fatalf("stats=%+v: 2 MB through a 512 KiB spool should have failed", st)
	}
	if got := e.log.count(slog.LevelError, "replication paused"); got != 1 {
		t.Fatalf("errors logged=%d, want 1; log:\n%s", got, e.log)
	}
	testfs.RemountTmpfs(t, e.spool, "64m")
	mustExec(t, db, "INSERT INTO t(v) VALUES (x'00')")
	checkSnapshot(t, db, path)
	if got := e.log.count(slog.LevelWarn, "replication resumed"); got != 1 {
		t.Fatalf("resumed messages=%d, want 1", got)
	}
}

// TestUnusableSpoolDir: the spool directory cannot be created (a file is in
// the way; root ignores permission bits, so a mode would prove nothing).
// Commits succeed; once the file is gone replication starts.
func TestUnusableSpoolDir(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "blocker")
	if err := os.WriteFile(blocker, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	log := &logCounter{}
	e := &env{dir: dir, spool: filepath.Join(blocker, "spool"), log: log}
	register(t, vfs.Config{ReplicationSpoolingDir: e.spool, Logger: slog.New(log)})
	path, db := e.writer(t, "u.db", "")
	for range 10 {
		mustExec(t, db, "CREATE TABLE IF NOT EXISTS t(v); INSERT INTO t VALUES (randomblob(1000))")
	}
	if got := log.count(slog.LevelError, "replication paused"); got != 1 {
		t.Fatalf("errors logged=%d, want 1; log:\n%s", got, log)
	}
	if last := mustDB(t, path).Stats().LastError; !strings.Contains(last, "not a directory") || !strings.Contains(last, e.spool) {
		t.Fatalf("last error %q, want it to name %s and say why", last, e.spool)
	}
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	mustExec(t, db, "INSERT INTO t VALUES (1)")
	checkSnapshot(t, db, path)
}
