package vfs_test

import (
	"database/sql"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/vfs"
)

// workload runs random transactions against a table t(id, k, v): inserts,
// updates and deletes of blobs from a few bytes to several chunks, VACUUM,
// page size changes, incremental vacuum (truncation), and shrinking.
type workload struct {
	rng    *rand.Rand
	nextID int64
}

func newWorkload(seed uint64) *workload {
	return &workload{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

func (w *workload) setup(db *sql.DB) error {
	_, err := db.Exec("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, k INT, v BLOB); CREATE INDEX IF NOT EXISTS t_k ON t(k)")
	return err
}

// blobSize is mostly small, sometimes spanning several 64 KiB chunks.
func (w *workload) blobSize() int {
	switch r := w.rng.IntN(100); {
	case r < 70:
		return 1 + w.rng.IntN(400)
	case r < 95:
		return 1000 + w.rng.IntN(20000)
	default:
		return 65536 + w.rng.IntN(200000)
	}
}

// step runs one random transaction and reports what it did.
func (w *workload) step(db *sql.DB) (string, error) {
	r := w.rng.IntN(1000)
	switch {
	case r < 4:
		sizes := []int{512, 1024, 4096, 8192, 16384, 32768, 65536}
		ps := sizes[w.rng.IntN(len(sizes))]
		_, err := db.Exec(fmt.Sprintf("PRAGMA page_size=%d; VACUUM", ps))
		return fmt.Sprintf("page_size=%d+VACUUM", ps), err
	case r < 10:
		_, err := db.Exec("VACUUM")
		return "VACUUM", err
	case r < 20:
		// Shrink: delete most rows, then VACUUM.
		if _, err := db.Exec("DELETE FROM t WHERE id % 4 != 0"); err != nil {
			return "shrink", err
		}
		_, err := db.Exec("VACUUM")
		return "shrink", err
	case r < 30:
		_, err := db.Exec("PRAGMA incremental_vacuum")
		return "incremental_vacuum", err
	}
	tx, err := db.Begin()
	if err != nil {
		return "begin", err
	}
	defer tx.Rollback()
	if err := w.dml(tx); err != nil {
		return "dml", err
	}
	if w.rng.IntN(20) == 0 {
		return "rollback", tx.Rollback()
	}
	return "commit", tx.Commit()
}

// dml runs a few random inserts, updates and deletes in tx.
func (w *workload) dml(tx *sql.Tx) error {
	n := 1 + w.rng.IntN(8)
	for range n {
		var err error
		switch op := w.rng.IntN(10); {
		case op < 5:
			w.nextID++
			_, err = tx.Exec("INSERT INTO t(k, v) VALUES (?, randomblob(?))", w.rng.IntN(1000), w.blobSize())
		case op < 8:
			_, err = tx.Exec("UPDATE t SET v = randomblob(?), k = ? WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT ?)",
				w.blobSize(), w.rng.IntN(1000), 1+w.rng.IntN(3))
		default:
			_, err = tx.Exec("DELETE FROM t WHERE k BETWEEN ? AND ?", w.rng.IntN(1000), w.rng.IntN(1000))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// randomSteps sets up a workload seeded with seed on db and runs steps
// random transactions, calling after after each one with the workload and
// the count of each kind of transaction so far; it returns those counts.
func randomSteps(t testing.TB, db *sql.DB, seed uint64, steps int, after func(w *workload, kinds map[string]int)) map[string]int {
	t.Helper()
	w := newWorkload(seed)
	if err := w.setup(db); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for i := range steps {
		what, err := w.step(db)
		if err != nil {
			t.Fatalf("step %d (%s): %v", i, what, err)
		}
		kinds[what]++
		after(w, kinds)
	}
	return kinds
}

// checkIncremental fails the test unless the snapshots of the database at
// path had no failure and some were incremental, and logs them with the
// kinds of operations that made them.
func (e *env) checkIncremental(t testing.TB, path string, kinds map[string]int) {
	t.Helper()
	st := mustDB(t, path).Stats()
	if st.Failures != 0 || st.Incremental == 0 {
		t.Fatalf("stats %+v: want no failures and some incremental snapshots; log:\n%s", st, e.log)
	}
	t.Logf("ops %v; snapshots %d (%d incremental), %d chunks staged", kinds, st.Snapshots, st.Incremental, st.ChunksStaged)
}

func TestRandomWorkloadSnapshotAfterEveryCommit(t *testing.T) {
	for _, tc := range []struct {
		name   string
		params string
		steps  int
	}{
		{"delete", "_journal_mode=DELETE", 300},
		{"truncate", "_journal_mode=TRUNCATE", 150},
		{"persist", "_journal_mode=PERSIST", 150},
		{"memory", "_journal_mode=MEMORY", 150},
		{"off", "_journal_mode=OFF", 150},
		{"sync-off-autovacuum", "_journal_mode=DELETE&_sync=OFF&_auto_vacuum=incremental", 300},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			path, db := e.writer(t, "w.db", tc.params)
			kinds := randomSteps(t, db, uint64(len(tc.name))*7919, tc.steps, func(*workload, map[string]int) {
				checkSnapshot(t, db, path)
			})
			e.checkIncremental(t, path, kinds)
		})
	}
}

// TestManyConnections runs writers on several connections of one process
// at once; the snapshot must match the file at the end.
func TestManyConnections(t *testing.T) {
	e := newEnv(t)
	path := e.path("many.db")
	db := open(t, path, "boule", "_journal_mode=TRUNCATE")
	db.SetMaxOpenConns(6)
	if err := newWorkload(1).setup(db); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 6)
	for g := range 6 {
		go func() {
			w := newWorkload(uint64(100 + g))
			for range 60 {
				if what, err := w.step(db); err != nil {
					errs <- fmt.Errorf("goroutine %d %s: %w", g, what, err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 6 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	checkSnapshot(t, db, path)
}

func mustDB(t testing.TB, path string) *spool.DB {
	t.Helper()
	d, err := vfs.Spool().DB(path)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
