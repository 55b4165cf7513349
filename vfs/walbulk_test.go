package vfs_test

import (
	"log/slog"
	"testing"
)

// TestWALBulkLoad: 4 MiB transactions in WAL mode, each one restarting
// the log (carried over): every snapshot is incremental, and the last is
// the logical database.
func TestWALBulkLoad(t *testing.T) {
	e := newEnv(t)
	path := e.path("bulk.db")
	db := open(t, path, "boule", "_journal_mode=WAL&_sync=NORMAL")
	db.SetMaxOpenConns(1)
	mustExec(t, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, k INT, v BLOB); CREATE INDEX t_k ON t(k)")
	for i := range 20 {
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		for j := range 4096 {
			if _, err := tx.Exec("INSERT INTO t(k, v) VALUES (?, randomblob(1024))", i*4096+j); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	waitStaged(t, mustDB(t, path))
	checkLogical(t, db, path)
	if got := e.log.count(slog.LevelWarn, ""); got != 0 {
		t.Fatalf("warnings and errors logged=%d, want 0; log:\n%s", got, e.log)
	}
}
