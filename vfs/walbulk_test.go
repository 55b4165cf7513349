package vfs_test

import "testing"

// TestWALBulkLoad: 4 MiB transactions in WAL mode, each one restarting
// the log (carried over): every snapshot is incremental, and the last is
// the logical database.
func TestWALBulkLoad(t *testing.T) {
	e := newEnv(t)
	path, db := e.writer(t, "bulk.db", "_journal_mode=WAL&_sync=NORMAL")
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
	e.noWarnings(t)
}
