package vfs_test

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/testchild"
	"github.com/boule-vfs/boule/internal/testfs"
	"github.com/boule-vfs/boule/internal/testlog"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/vfs"
)

// TestMain lets the test binary double as a child process for the tests
// that need several OS processes or that kill a writer.
func TestMain(m *testing.M) {
	testchild.Run("BOULE_TEST_CHILD", children)
	code := m.Run()
	for _, f := range afterAll {
		f()
	}
	os.Exit(code)
}

// afterAll runs after every test and benchmark, for fixtures they share.
var afterAll []func()

// children are entry points for child processes, by name.
var children = map[string]func() error{}

// env is one test's directory, spool and log.
type env struct {
	dir   string
	spool string
	log   *logCounter
}

// newEnv registers boule with a fresh spool under a temp directory and no
// replication target.
func newEnv(t testing.TB) *env {
	t.Helper()
	return replEnv(t)
}

// replEnv registers boule with a fresh spool under a temp directory and
// the given targets.
func replEnv(t testing.TB, targets ...config.Target) *env {
	t.Helper()
	e := tempEnv(t)
	e.register(t, targets...)
	return e
}

// tempEnv makes a test's directory and log, with the spool's place in it,
// and registers nothing.
func tempEnv(t testing.TB) *env {
	t.Helper()
	dir := testfs.TempDir(t)
	return &env{dir: dir, spool: filepath.Join(dir, "spool"), log: &logCounter{}}
}

// register registers boule with e's spool and log and the given targets,
// in place of the configuration before.
func (e *env) register(t testing.TB, targets ...config.Target) {
	t.Helper()
	register(t, vfs.Config{ReplicationSpoolingDir: e.spool, ReplicationTargets: targets, Logger: slog.New(e.log)})
}

func register(t testing.TB, cfg vfs.Config) {
	t.Helper()
	if err := vfs.Register(cfg); err != nil {
		t.Fatalf("Register()=%v, want nil", err)
	}
	t.Cleanup(func() { _ = vfs.Register(vfs.Config{}) })
}

func (e *env) path(name string) string { return filepath.Join(e.dir, name) }

// writer opens name, in the env's directory, through boule with a single
// connection, so that every statement and transaction runs on it. It
// returns the database's path and the connection.
func (e *env) writer(t testing.TB, name, params string) (string, *sql.DB) {
	t.Helper()
	path := e.path(name)
	db := open(t, path, "boule", params)
	db.SetMaxOpenConns(1)
	return path, db
}

// tableWriter is writer, with table t(v) created.
func (e *env) tableWriter(t testing.TB, name, params string) (string, *sql.DB) {
	t.Helper()
	path, db := e.writer(t, name, params)
	mustExec(t, db, "CREATE TABLE t(v)")
	return path, db
}

// open opens path through vfsName with mattn/go-sqlite3. Extra URI
// parameters go in params ("_journal_mode=TRUNCATE&_sync=OFF").
func open(t testing.TB, path, vfsName, params string) *sql.DB {
	t.Helper()
	dsn := "file:" + path + "?vfs=" + vfsName + "&_busy_timeout=10000"
	if params != "" {
		dsn += "&" + params
	}
	db, err := sql.Open("sqlite3", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func mustExec(t testing.TB, db *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("Exec(%q)=%v", q, err)
	}
}

// insertRows inserts into t(k, v), in one transaction, the rows k = from
// to to-1, each with a random blob of size bytes.
func insertRows(t testing.TB, db *sql.DB, from, to, size int) {
	t.Helper()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	stmt, err := tx.Prepare("INSERT INTO t(k, v) VALUES (?, randomblob(?))")
	if err != nil {
		t.Fatal(err)
	}
	defer stmt.Close()
	for k := from; k < to; k++ {
		if _, err := stmt.Exec(k, size); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// mustFlush flushes path's replication data to its targets.
func mustFlush(t testing.TB, path string) {
	t.Helper()
	if err := vfs.Flush(context.Background(), path); err != nil {
		t.Fatalf("Flush(%s)=%v", path, err)
	}
}

// checkSnapshot asserts that the staged snapshot of path, reassembled from
// its chunks, is byte-identical to the file, and that the database passes
// integrity_check. No transaction may be open on path in this process:
// reading the file opens and closes a descriptor, which drops the
// process's POSIX locks on it.
func checkSnapshot(t testing.TB, db *sql.DB, path string) {
	t.Helper()
	checkIntegrity(t, db)
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := assemble(path)
	if err != nil {
		t.Fatalf("assemble(%s)=%v", path, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("snapshot of %s: %d bytes, file %d bytes; first difference at %d", path, len(got), len(want), firstDiff(got, want))
	}
}

// checkIntegrity asserts that the database passes integrity_check.
func checkIntegrity(t testing.TB, db *sql.DB) {
	t.Helper()
	var ok string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&ok); err != nil || ok != "ok" {
		t.Fatalf("integrity_check=%q, %v", ok, err)
	}
}

func assemble(path string) ([]byte, error) {
	sp := vfs.Spool()
	if sp == nil {
		return nil, fmt.Errorf("replication is not enabled")
	}
	d, err := sp.DB(path)
	if err != nil {
		return nil, err
	}
	if err := staged(d); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if _, err := spool.Assemble(d.Dir(), &buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// waitStaged waits until the commits this process captured for d are
// staged.
func waitStaged(t testing.TB, d *spool.DB) {
	t.Helper()
	if err := staged(d); err != nil {
		t.Fatalf("WaitStaged()=%v", err)
	}
}

// staged waits, 30 s at most, until the commits captured for a database
// (a *spool.DB: by this process; a *spool.Dir: by any) are staged, which
// happens off the commit path.
func staged(d interface{ WaitStaged(context.Context) error }) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return d.WaitStaged(ctx)
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// spoolDir is the spool directory of a database.
func spoolDir(t testing.TB, path string) string {
	t.Helper()
	d, err := vfs.Spool().DB(path)
	if err != nil {
		t.Fatal(err)
	}
	return d.Dir()
}

// logCounter is an slog.Handler that keeps the records it receives.
type logCounter struct{ testlog.Records }

// count returns how many records at level contain substr.
func (l *logCounter) count(level slog.Level, substr string) int { return l.Count(level, substr) }

// noWarnings asserts that nothing was logged at WARN or above.
func (e *env) noWarnings(t testing.TB) {
	t.Helper()
	if got := e.log.count(slog.LevelWarn, ""); got != 0 {
		t.Fatalf("warnings and errors logged=%d, want 0; log:\n%s", got, e.log)
	}
}
