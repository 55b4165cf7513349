package vfs_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/mattn/go-sqlite3"

	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/vfs"
)

// panicIn makes the //export function fn panic until the test ends.
func panicIn(t testing.TB, fn string) {
	t.Helper()
	vfs.SetExportHook(t, func(name string) {
		if name == fn {
			panic("boom in " + name)
		}
	})
}

// TestExportPanicThroughSQLite: a panic in Go, called back from the C of
// either VFS, reaches SQLite as the callback's failure value, the process
// goes on, and the panic is logged once.
func TestExportPanicThroughSQLite(t *testing.T) {
	e, _ := dirEnv(t)
	path, src := e.writer(t, "panic.db", "")
	mustExec(t, src, "CREATE TABLE t(x)")
	mustFlush(t, path)

	t.Run("snapshot", func(t *testing.T) {
		panicIn(t, "bouleGoSnapshot")
		// The transaction commits; its replication fails.
		mustExec(t, src, "INSERT INTO t VALUES (1)")
		if n := e.log.count(slog.LevelError, "panic in bouleGoSnapshot"); n != 1 {
			t.Errorf("%d error records name the panic, want 1:\n%s", n, e.log)
		}
	})

	t.Run("replica open", func(t *testing.T) {
		panicIn(t, "bouleGoSnapOpen")
		rdb := openReplica(t, path, "")
		var n int
		err := rdb.QueryRow("SELECT count(*) FROM t").Scan(&n)
		if code := sqliteCode(err); code != sqlite3.ErrCantOpen {
			t.Errorf("open a replica=%v (code %d), want SQLITE_CANTOPEN", err, code)
		}
		if n := e.log.count(slog.LevelError, "panic in bouleGoSnapOpen"); n != 1 {
			t.Errorf("%d error records name the panic, want 1:\n%s", n, e.log)
		}
	})

	t.Run("replica pragma", func(t *testing.T) {
		rdb := openReplica(t, path, "")
		rdb.SetMaxOpenConns(1)
		var n int
		if err := rdb.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil {
			t.Fatal(err)
		}
		panicIn(t, "bouleGoSnapPragma")
		var s string
		err := rdb.QueryRow("PRAGMA boule_snapshot_updated").Scan(&s)
		if code := sqliteCode(err); code != sqlite3.ErrError || !strings.Contains(err.Error(), "panic: boom in bouleGoSnapPragma") {
			t.Errorf("PRAGMA boule_snapshot_updated=%q, %v (code %d), want SQLITE_ERROR with the panic", s, err, code)
		}
		if n := e.log.count(slog.LevelError, "panic in bouleGoSnapPragma"); n != 1 {
			t.Errorf("%d error records name the panic, want 1:\n%s", n, e.log)
		}
	})

	// Replication resumes after the failed snapshot, with every
	// transaction.
	mustExec(t, src, "INSERT INTO t VALUES (2)")
	mustFlush(t, path)
	rdb := openReplica(t, path, "")
	if got, want := dump(t, rdb), dump(t, src); got != want {
		t.Errorf("replica after a failed snapshot:\n%s\nwant:\n%s", got, want)
	}
}

// TestReplicaPragmaCodes: through SQLite, a refresh inside a read
// transaction fails with SQLITE_LOCKED, and a refresh that finds a damaged
// manifest with SQLITE_ERROR (the connection keeps the snapshot it has,
// which is intact).
func TestReplicaPragmaCodes(t *testing.T) {
	e, sto := dirEnv(t)
	path, _ := e.flushedSource(t, "codes.db", "CREATE TABLE t(x)")
	rdb := openReplica(t, path, "")
	rdb.SetMaxOpenConns(1)
	tx, err := rdb.Begin()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := tx.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"boule_snapshot_refresh", "boule_snapshot_async_reload"} {
		_, err := tx.Exec("PRAGMA " + p)
		if code := sqliteCode(err); code != sqlite3.ErrLocked || !strings.Contains(err.Error(), "inside a transaction") {
			t.Errorf("PRAGMA %s in a transaction=%v (code %d), want SQLITE_LOCKED", p, err, code)
		}
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}

	key, _ := store.ManifestKey(vfs.Reader().Hostname(), path)
	b, err := sto.GetManifest(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(b)
	flipped[len(flipped)/2] ^= 0x10
	if err := sto.PutManifest(context.Background(), key, flipped); err != nil {
		t.Fatal(err)
	}
	_, err = rdb.Exec("PRAGMA boule_snapshot_refresh=2")
	if code := sqliteCode(err); code != sqlite3.ErrError || !strings.Contains(err.Error(), "boule_snapshot_refresh: ") {
		t.Errorf("PRAGMA boule_snapshot_refresh=2 over a damaged manifest=%v (code %d), want SQLITE_ERROR", err, code)
	}
	if err := rdb.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil {
		t.Errorf("query after a failed refresh=%v, want the snapshot it had", err)
	}
}
