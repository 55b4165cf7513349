package vfs_test

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/boule-vfs/boule/vfs"
)

// The benchmarks run each workload on the plain unix VFS and on boule, in
// the same process and the same run, so their ratio is meaningful on a
// noisy machine. make bench runs them; doc/BENCHMARKS.md has the figures.

// boule-shm is boule with its spool on tmpfs (/dev/shm): the spool needs
// no durability, and file creation there is several times cheaper than on
// a journaling filesystem.
var benchVFS = []string{"unix", "boule", "boule-shm"}

// benchDB opens a fresh database through vfsName, preloaded with rows of
// ~1 KiB up to about size bytes.
func benchDB(b *testing.B, vfsName, params string, size int) (*sql.DB, string) {
	b.Helper()
	dir, err := filepath.EvalSymlinks(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	switch vfsName {
	case "boule":
		if err := vfs.Register(vfs.Config{ReplicationSpoolingDir: filepath.Join(dir, "spool")}); err != nil {
			b.Fatal(err)
		}
	case "boule-shm":
		shm, err := os.MkdirTemp("/dev/shm", "boule-bench-")
		if err != nil {
			b.Skipf("no tmpfs at /dev/shm: %v", err)
		}
		b.Cleanup(func() { os.RemoveAll(shm) })
		if err := vfs.Register(vfs.Config{ReplicationSpoolingDir: shm}); err != nil {
			b.Fatal(err)
		}
		vfsName = "boule"
	}
	path := filepath.Join(dir, "bench.db")
	db := open(b, path, vfsName, params)
	db.SetMaxOpenConns(1)
	mustExec(b, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, k INT, v BLOB); CREATE INDEX t_k ON t(k)")
	tx, err := db.Begin()
	if err != nil {
		b.Fatal(err)
	}
	for i := range size / 1100 {
		if _, err := tx.Exec("INSERT INTO t(k, v) VALUES (?, randomblob(1000))", i); err != nil {
			b.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	return db, path
}

func reportGoCalls(b *testing.B, before int64) {
	b.ReportMetric(float64(vfs.GoCalls()-before)/float64(b.N), "gocalls/op")
}

// BenchmarkCommit: one small transaction (update one row, insert one) on a
// 10 MB database, at synchronous=FULL and OFF.
func BenchmarkCommit(b *testing.B) {
	for _, sync := range []string{"FULL", "OFF"} {
		for _, name := range benchVFS {
			b.Run(fmt.Sprintf("sync=%s/vfs=%s", sync, name), func(b *testing.B) {
				db, _ := benchDB(b, name, "_journal_mode=DELETE&_sync="+sync, 10<<20)
				rng := rand.New(rand.NewPCG(1, 2))
				calls := vfs.GoCalls()
				b.ResetTimer()
				for range b.N {
					tx, err := db.Begin()
					if err != nil {
						b.Fatal(err)
					}
					if _, err := tx.Exec("UPDATE t SET v = randomblob(1000) WHERE id = ?", 1+rng.IntN(9000)); err != nil {
						b.Fatal(err)
					}
					if _, err := tx.Exec("INSERT INTO t(k, v) VALUES (?, randomblob(100))", rng.IntN(1000)); err != nil {
						b.Fatal(err)
					}
					if err := tx.Commit(); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				reportGoCalls(b, calls)
			})
		}
	}
}

// BenchmarkBulkLoad: one transaction inserting 4 MiB (4096 rows of 1 KiB).
func BenchmarkBulkLoad(b *testing.B) {
	for _, journal := range []string{"DELETE", "WAL"} {
		for _, name := range benchVFS {
			b.Run("journal="+journal+"/vfs="+name, func(b *testing.B) {
				bulkLoad(b, name, journal)
			})
		}
	}
}

// bulkLoad commits b.N transactions of 4,096 rows of 1 KiB (4 MiB).
func bulkLoad(b *testing.B, name, journal string) {
	db, path := benchDB(b, name, "_journal_mode="+journal+"&_sync=NORMAL", 0)
	calls, lent := vfs.GoCalls(), vfs.CopiesLent()
	var commits []time.Duration
	b.SetBytes(4096 * 1024)
	b.ResetTimer()
	for i := range b.N {
		tx, err := db.Begin()
		if err != nil {
			b.Fatal(err)
		}
		stmt, err := tx.Prepare("INSERT INTO t(k, v) VALUES (?, randomblob(?))")
		if err != nil {
			b.Fatal(err)
		}
		for k := i * 4096; k < (i+1)*4096; k++ {
			if _, err := stmt.Exec(k, 1024); err != nil {
				b.Fatal(err)
			}
		}
		stmt.Close()
		start := time.Now()
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
		commits = append(commits, time.Since(start))
	}
	b.StopTimer()
	reportGoCalls(b, calls)
	// The commit alone: what a capture adds to it is boule's share of the
	// commit path; the rest of a transaction's time is SQLite's.
	slices.Sort(commits)
	b.ReportMetric(float64(commits[len(commits)/2].Microseconds()), "commit-p50-µs")
	b.ReportMetric(float64(vfs.CopiesLent()-lent)/float64(b.N), "lent-chunks/op")
	// What the persister wrote: the chunks staged, and those its
	// compactions of staging copied again.
	if sp := vfs.Spool(); sp != nil && name != "unix" {
		if d, err := sp.DB(path); err == nil {
			if err := d.WaitIdle(context.Background()); err != nil {
				b.Fatal(err)
			}
			st := d.Stats()
			b.ReportMetric(float64(st.BytesStaged)/float64(b.N)/(1<<20), "staged-MiB/op")
			b.ReportMetric(float64(st.BytesCompacted)/float64(b.N)/(1<<20), "compacted-MiB/op")
		}
	}
}

// BenchmarkReadMix: read-only queries on a 20 MB database: 50 point
// lookups, an index range count and a scan of 1,000 rows.
func BenchmarkReadMix(b *testing.B) {
	for _, name := range benchVFS {
		b.Run("vfs="+name, func(b *testing.B) {
			db, _ := benchDB(b, name, "_journal_mode=DELETE", 20<<20)
			rng := rand.New(rand.NewPCG(3, 4))
			point, err := db.Prepare("SELECT length(v) FROM t WHERE id = ?")
			if err != nil {
				b.Fatal(err)
			}
			defer point.Close()
			calls := vfs.GoCalls()
			b.ResetTimer()
			for range b.N {
				var n int
				for range 50 {
					if err := point.QueryRow(1 + rng.IntN(18000)).Scan(&n); err != nil {
						b.Fatal(err)
					}
				}
				if err := db.QueryRow("SELECT count(*) FROM t WHERE k BETWEEN ? AND ?", 100, 5000).Scan(&n); err != nil {
					b.Fatal(err)
				}
				lo := rng.IntN(17000)
				if err := db.QueryRow("SELECT sum(length(v)) FROM t WHERE id BETWEEN ? AND ?", lo, lo+1000).Scan(&n); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			reportGoCalls(b, calls)
		})
	}
}
