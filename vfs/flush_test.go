package vfs_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/boule-vfs/boule/internal/sqlshell"
	"github.com/boule-vfs/boule/internal/testfs"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/upload"
	"github.com/boule-vfs/boule/vfs"
)

// The flushes of these tests must tell the truth: they succeed only if the
// store then holds every transaction committed before them.

func init() {
	children["killedwriter"] = childKilledWriter
	children["nologger"] = childNoLogger
}

// statusOf returns the replication status of path.
func statusOf(t testing.TB, path string) upload.Status {
	t.Helper()
	st := vfs.ReplicationStatus()
	i := slices.IndexFunc(st, func(s upload.Status) bool { return s.Source == path })
	if i < 0 {
		t.Fatalf("ReplicationStatus()=%+v, want %s in it", st, path)
	}
	return st[i]
}

// flushes are the Go flushes of path, by name.
func flushes(path string) map[string]func() error {
	return map[string]func() error{
		"Flush":    func() error { return vfs.Flush(context.Background(), path) },
		"FlushAll": func() error { return vfs.FlushAll(context.Background()) },
	}
}

// TestFlushFullSpool: a snapshot that fails for want of room (a 20 MB
// transaction through a 12 MB spool) after an earlier one succeeded. Every
// flush fails, naming the database and the cause, even though the store
// holds a snapshot; the status says the database is not replicated, with a
// lag. Once there is room, a flush takes a new snapshot itself and the
// store holds all 5,001 rows.
func TestFlushFullSpool(t *testing.T) {
	tg, sto := dirTarget(t)
	e := tempEnv(t)
	testfs.MountTmpfs(t, e.spool, "12m")
	e.register(t, tg)
	path, db := e.writer(t, "full.db", "")
	mustExec(t, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
	mustExec(t, db, "INSERT INTO t(v) VALUES (randomblob(100))")
	e.mustFlushPragma(t, db, "with room")
	mustExec(t, db, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 5000) INSERT INTO t(v) SELECT randomblob(4000) FROM n")
	waitStaged(t, mustDB(t, path)) // the persister's attempt, which fails
	if got := e.log.count(slog.LevelError, "replication paused"); got != 1 {
		t.Fatalf("snapshot failures logged=%d, want 1; log:\n%s", got, e.log)
	}

	if r := flushPragma(t, db); r != "0" {
		t.Fatalf("flush pragma with the spool full=%q, want 0", r)
	}
	if got := e.log.count(slog.LevelError, "flush failed"); got != 1 {
		t.Fatalf("flush failures logged=%d, want 1; log:\n%s", got, e.log)
	}
	for name, flush := range flushes(path) {
		err := flush()
		if !errors.Is(err, upload.ErrSnapshotFailed) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "no space left on device") {
			t.Fatalf("%s()=%v, want ErrSnapshotFailed naming %s and the full disk", name, err, path)
		}
	}
	st := statusOf(t, path)
	if !st.NotReplicated || !strings.Contains(st.Problem, "no space left on device") || st.Lag <= 0 {
		t.Fatalf("status with the spool full=%+v, want not replicated, the cause, and a lag", st)
	}

	if out, err := exec.Command("mount", "-o", "remount,size=128m", e.spool).CombinedOutput(); err != nil {
		t.Fatalf("remount: %v: %s", err, out)
	}
	e.mustFlushPragma(t, db, "once there is room")
	checkReplica(t, sto, path)
	var n int
	if err := db.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil || n != 5001 {
		t.Fatalf("rows=%d, %v; want 5001", n, err)
	}
	if st := statusOf(t, path); st.NotReplicated || st.Lag != 0 {
		t.Fatalf("status after the flush=%+v, want replicated and no lag", st)
	}
	if got := e.log.count(slog.LevelWarn, "replication resumed"); got != 1 {
		t.Fatalf("recoveries logged=%d, want 1; log:\n%s", got, e.log)
	}
}

// childKilledWriter commits one transaction, then a large one, and dies
// by SIGKILL between that one's commit and its staging, in the persister
// just before the manifest is published: its commit is captured in memory
// only, the marker says a dead process has commits not staged, and the
// staged snapshot is the first transaction's.
func childKilledWriter() error {
	c := readChildEnv()
	var armed atomic.Bool
	killAt(func(op, path string) bool {
		if !armed.Load() || op != "rename" {
			return false
		}
		db, err := vfs.Spool().DB(c.db)
		return err == nil && path == db.StagingManifestPath()
	})
	db, err := c.open("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)", "INSERT INTO t(v) VALUES (randomblob(100))")
	if err != nil {
		return err
	}
	// The first transactions are staged before the hook is armed: it
	// kills the process once its last commit is captured, before the
	// persister has staged it.
	d, err := vfs.Spool().DB(c.db)
	if err != nil {
		return err
	}
	if err := staged(d); err != nil {
		return err
	}
	fmt.Println("first committed")
	armed.Store(true)
	_, err = db.Exec("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 2000) INSERT INTO t(v) SELECT randomblob(1000) FROM n")
	if err != nil {
		return err
	}
	// The persister stages the commit in the background, and is killed
	// doing it.
	err = staged(d)
	return fmt.Errorf("still alive after the second commit was staged (%v)", err)
}

// TestFlushAfterKilledWriter: a writer killed between its commit and the
// end of its snapshot leaves the marker set and the previous snapshot
// staged. A flush in another process takes a new snapshot of the file, and
// the store holds the killed writer's commit.
func TestFlushAfterKilledWriter(t *testing.T) {
	e, sto := dirEnv(t)
	path := e.path("killed.db")
	cmd, out := startChild(t, "killedwriter", "BOULE_TEST_DB="+path, "BOULE_TEST_SPOOL="+e.spool)
	if !out.Scan() || out.Text() != "first committed" {
		t.Fatalf("child printed %q, want %q", out.Text(), "first committed")
	}
	reapKilled(t, cmd, out, map[int64]bool{}, "child")
	mk, err := spool.ReadMarker(mustDB(t, path).Dir())
	if err != nil || mk.State != spool.MarkerSet {
		t.Fatalf("ReadMarker()=%+v, %v; want the marker left set", mk, err)
	}

	if err := vfs.Flush(context.Background(), path); err != nil {
		t.Fatalf("Flush() after the writer died=%v, want nil; log:\n%s", err, e.log)
	}
	checkReplica(t, sto, path)
	db := open(t, path, "boule", "mode=ro")
	var n int
	if err := db.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil || n != 2001 {
		t.Fatalf("rows=%d, %v; want 2001 (the killed writer's commit)", n, err)
	}
}

// TestFlushWAL: a database in WAL mode is replicated: every flush succeeds
// and the store then holds its logical database (the file with its log's
// committed frames), for a database switched to WAL and one created in WAL
// mode, and again once back in rollback mode. A flush right after commits
// that a program without boule made in WAL mode includes them.
func TestFlushWAL(t *testing.T) {
	e, sto := dirEnv(t)
	path, db := e.writer(t, "switched.db", "")
	mustExec(t, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
	mustExec(t, db, "INSERT INTO t(v) VALUES (randomblob(3000))")
	e.mustFlushPragma(t, db, "in rollback mode")
	mustExec(t, db, "PRAGMA journal_mode=WAL")
	for range 20 {
		mustExec(t, db, "INSERT INTO t(v) VALUES (randomblob(3000))")
	}
	e.mustFlushPragma(t, db, "in WAL mode")
	checkLogicalReplica(t, sto, path)
	for name, flush := range flushes(path) {
		mustExec(t, db, "INSERT INTO t(v) VALUES (randomblob(3000))")
		if err := flush(); err != nil {
			t.Fatalf("%s() in WAL mode=%v, want nil", name, err)
		}
		checkLogicalReplica(t, sto, path)
	}
	if st := statusOf(t, path); st.NotReplicated || st.Lag != 0 {
		t.Fatalf("status in WAL mode=%+v, want replicated and no lag", st)
	}

	// A commit by a program without boule: the flush re-stages, and
	// finds it in the log.
	plain := open(t, path, "unix", "")
	plain.SetMaxOpenConns(1)
	mustExec(t, plain, "INSERT INTO t(v) VALUES ('plain')")
	if err := vfs.Flush(context.Background(), path); err != nil {
		t.Fatalf("Flush() after a plain commit=%v", err)
	}
	checkLogicalReplica(t, sto, path)
	plain.Close() // leaving WAL mode takes the only connection

	created, wal := e.writer(t, "created.db", "_journal_mode=WAL")
	mustExec(t, wal, "CREATE TABLE t(v)")
	mustExec(t, wal, "INSERT INTO t VALUES (1)")
	e.mustFlushPragma(t, wal, "of a database created in WAL mode")
	checkLogicalReplica(t, sto, created)

	mustExec(t, db, "PRAGMA journal_mode=DELETE")
	mustExec(t, db, "INSERT INTO t(v) VALUES (randomblob(3000))")
	e.mustFlushPragma(t, db, "back in rollback mode")
	checkReplica(t, sto, path)
	if got := e.log.count(slog.LevelError, ""); got != 0 {
		t.Fatalf("errors logged=%d, want 0; log:\n%s", got, e.log)
	}
}

// childNoLogger is a program that configures no logger: it writes a
// database whose name is not UTF-8, which no manifest can carry.
func childNoLogger() error {
	if err := vfs.Register(vfs.Config{ReplicationSpoolingDir: os.Getenv("BOULE_TEST_SPOOL")}); err != nil {
		return err
	}
	db, err := sql.Open("sqlite3", "file:"+os.Getenv("BOULE_TEST_DB")+"?vfs=boule")
	if err != nil {
		return err
	}
	defer db.Close()
	for _, q := range []string{"CREATE TABLE t(v)", "INSERT INTO t VALUES (1)"} {
		if _, err := db.Exec(q); err != nil {
			return err
		}
	}
	return nil
}

// TestDefaultLogger: a Go program that sets no Logger is told on stderr,
// at ERROR, that a database is not replicated.
func TestDefaultLogger(t *testing.T) {
	tmpdir := t.TempDir()
	path := filepath.Join(tmpdir, "quiet\xff.db")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "BOULE_TEST_CHILD=nologger", "BOULE_TEST_DB="+path, "BOULE_TEST_SPOOL="+filepath.Join(tmpdir, "spool"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "ERROR") || !strings.Contains(string(out), "not replicated") || !strings.Contains(string(out), "quiet") {
		t.Fatalf("a program without a Logger got %q on stderr; want an ERROR line saying the database is not replicated", out)
	}
}

// TestFlushInsideWriteTransaction: a flush from a transaction that has
// already written the file (its cache spilled) fails at once, saying to
// commit first, instead of waiting for its own lock.
func TestFlushInsideWriteTransaction(t *testing.T) {
	e, sto := dirEnv(t)
	path, db := e.writer(t, "spill.db", "")
	mustExec(t, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
	mustExec(t, db, "PRAGMA cache_size=2")
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 500) INSERT INTO t(v) SELECT randomblob(3000) FROM n"); err != nil {
		t.Fatal(err)
	}
	var r string
	if err := tx.QueryRow("PRAGMA boule_flush_replication_data").Scan(&r); err != nil || r != "0" {
		t.Fatalf("flush pragma inside a transaction that wrote the file=%q, %v; want 0", r, err)
	}
	if got := e.log.count(slog.LevelError, "commit it first"); got != 1 {
		t.Fatalf("errors saying to commit first=%d, want 1; log:\n%s", got, e.log)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	e.mustFlushPragma(t, db, "after the commit")
	checkReplica(t, sto, path)
}

// TestFlushUnrecordedCommit: a commit that no writer recorded in the
// spool leaves the txn marker clean and the staged snapshot stale. Here
// the sqlite3 shell makes it, as a program that does not use boule does;
// a boule writer that cannot write the spool (a read-only mount, a spool
// directory it may not create) leaves the same state. The status says the
// database is not replicated, and a flush takes a new snapshot rather
// than upload the stale one and claim success: the store then holds the
// commit.
func TestFlushUnrecordedCommit(t *testing.T) {
	tg, sto := dirTarget(t)
	e := tempEnv(t)
	e.register(t, tg)
	path, db := e.writer(t, "unrecorded.db", "")
	mustExec(t, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
	mustExec(t, db, "INSERT INTO t(v) VALUES (randomblob(100))")
	mustFlush(t, path)
	if st := statusOf(t, path); st.NotReplicated {
		t.Fatalf("status after the flush=%+v, want replicated", st)
	}

	if out, err := exec.Command(sqlshell.Path(t), path, "INSERT INTO t(v) VALUES (randomblob(70000))").CombinedOutput(); err != nil {
		t.Fatalf("sqlite3: %v: %s", err, out)
	}
	if m, err := spool.OpenDir(spoolDir(t, path)).Marker(); err != nil || m.State != spool.MarkerClean {
		t.Fatalf("marker after the shell's commit=%+v, %v; want clean (the test's premise)", m, err)
	}
	flushUnrecorded(t, path, func() { checkReplica(t, sto, path) })
}

// flushUnrecorded checks that status reports path's unrecorded commits
// (not replicated, saying why, with a lag), then flushes, checks the store
// with check, and that status then reports path replicated.
func flushUnrecorded(t *testing.T, path string, check func()) {
	t.Helper()
	if st := statusOf(t, path); !st.NotReplicated || st.Problem != upload.ChangedUnrecorded || st.Lag <= 0 {
		t.Fatalf("status after an unrecorded commit=%+v, want not replicated, saying why, with a lag", st)
	}
	mustFlush(t, path)
	check()
	if st := statusOf(t, path); st.NotReplicated {
		t.Fatalf("status after the flush=%+v, want replicated", st)
	}
}

// TestFlushWALOutsideWriterAfterClose: a database in WAL mode whose boule
// connections have all closed (the last close staged the log and deleted
// it: the staged snapshot is the file alone) is written by the sqlite3
// shell, which does not use boule. A flush must not trust the clean
// marker: the store must then hold the shell's commits, whether the
// shell's close checkpointed them into the file, a killed shell left them
// in the log, or the shell switched a rollback database to WAL mode.
func TestFlushWALOutsideWriterAfterClose(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode string // the boule writer's journal mode
		sql  []string
	}{
		{"checkpointed", "WAL", []string{"INSERT INTO t(v) VALUES (randomblob(70000));"}},
		// .system kills the shell after its commit: the frames stay in the log.
		{"left in the log", "WAL", []string{"INSERT INTO t(v) VALUES (randomblob(70000));", ".system kill -9 $PPID"}},
		{"switched to WAL", "DELETE", []string{"PRAGMA journal_mode=WAL;", "INSERT INTO t(v) VALUES (randomblob(70000));"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, sto := dirEnv(t)
			path := e.path("outside.db")
			db := open(t, path, "boule", "_journal_mode="+tc.mode)
			db.SetMaxOpenConns(1)
			mustExec(t, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
			mustExec(t, db, "INSERT INTO t(v) VALUES (randomblob(100))")
			mustFlush(t, path)
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			if st := statusOf(t, path); st.NotReplicated {
				t.Fatalf("status after the flush and the close=%+v, want replicated", st)
			}

			cmd := exec.Command(sqlshell.Path(t), path)
			cmd.Stdin = strings.NewReader(strings.Join(tc.sql, "\n") + "\n")
			out, err := cmd.CombinedOutput()
			if err != nil && tc.name != "left in the log" {
				t.Fatalf("sqlite3: %v: %s", err, out)
			}
			if tc.name == "left in the log" {
				if fi, err := os.Stat(path + "-wal"); err != nil || fi.Size() == 0 {
					t.Fatalf("the killed shell's log: %v, want frames in it (the test's premise); shell: %s", err, out)
				}
			}
			// Status tells before a flush does.
			flushUnrecorded(t, path, func() { checkLogicalReplica(t, sto, path) })
		})
	}
}
