package vfs_test

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boule-vfs/boule/vfs"
)

// BenchmarkCommitLatency: the commit latency of a small transaction (the
// update of a random 1 KB row and the insert of a 100-byte row) in
// rollback-journal mode (synchronous FULL and OFF) and in WAL mode (NORMAL
// and FULL) through boule, replicating to a dir store with the uploader
// running, against the plain unix VFS on a copy of the same database, the
// two interleaved commit by commit in one process. Each iteration is one
// commit on each. It reports the median and p99 of both, and their ratios.
//
// BOULE_BENCH_SIZES lists the database sizes (default 10M; the recorded
// run uses 10M,1G,4G):
//
//	BOULE_BENCH_SIZES=10M,1G,4G go test -run '^$' -bench CommitLatency -benchtime 3000x -timeout 2h ./vfs
func BenchmarkCommitLatency(b *testing.B) {
	for _, size := range benchSizes(b) {
		base := buildBenchBase(b, size)
		for _, m := range []struct{ journal, sync string }{
			{"DELETE", "FULL"}, {"DELETE", "OFF"}, {"WAL", "NORMAL"}, {"WAL", "FULL"},
		} {
			b.Run(fmt.Sprintf("size=%s/journal=%s/sync=%s", sizeName(size), m.journal, m.sync), func(b *testing.B) {
				commitLatency(b, base, m.journal, m.sync)
			})
		}
	}
}

func benchSizes(b *testing.B) []int64 {
	spec := os.Getenv("BOULE_BENCH_SIZES")
	if spec == "" {
		spec = "10M"
	}
	var sizes []int64
	for _, s := range strings.Split(spec, ",") {
		mult := int64(1)
		switch {
		case strings.HasSuffix(s, "G"):
			mult, s = 1<<30, strings.TrimSuffix(s, "G")
		case strings.HasSuffix(s, "M"):
			mult, s = 1<<20, strings.TrimSuffix(s, "M")
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 {
			b.Fatalf("BOULE_BENCH_SIZES=%q: %q is not a size like 10M or 4G", spec, s)
		}
		sizes = append(sizes, n*mult)
	}
	return sizes
}

func sizeName(n int64) string {
	if n >= 1<<30 && n%(1<<30) == 0 {
		return fmt.Sprintf("%dGiB", n>>30)
	}
	return fmt.Sprintf("%dMiB", n>>20)
}

// buildBenchBase writes, through unix, a database of about size bytes of
// ~1 KB rows, once per run.
func buildBenchBase(b *testing.B, size int64) string {
	b.Helper()
	dir, err := os.MkdirTemp("", "boule-commit-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "base.db")
	db := open(b, path, "unix", "_journal_mode=OFF&_sync=OFF")
	defer db.Close()
	db.SetMaxOpenConns(1)
	mustExec(b, db, "PRAGMA page_size=4096; CREATE TABLE t(id INTEGER PRIMARY KEY, k INT, v BLOB); CREATE INDEX t_k ON t(k)")
	rows := size / 1100
	for done := int64(0); done < rows; done += 100_000 {
		n := min(100_000, rows-done)
		mustExec(b, db, fmt.Sprintf("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < %d) INSERT INTO t(k, v) SELECT abs(random()) %% 1000, randomblob(1000) FROM n", n))
	}
	return path
}

func copyFile(b *testing.B, src, dst string) {
	b.Helper()
	in, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		b.Fatal(err)
	}
	if err := out.Close(); err != nil {
		b.Fatal(err)
	}
}

func commitLatency(b *testing.B, base, journal, sync string) {
	dir, err := filepath.EvalSymlinks(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	tg, _ := dirTargetB(b)
	register(b, vfs.Config{ReplicationSpoolingDir: filepath.Join(dir, "spool"), ReplicationTargets: targetsOf(tg)})
	params := "_journal_mode=" + journal + "&_sync=" + sync
	dbs := map[string]*sql.DB{}
	var rows int
	for _, name := range []string{"unix", "boule"} {
		p := filepath.Join(dir, name+".db")
		copyFile(b, base, p)
		db := open(b, p, name, params)
		db.SetMaxOpenConns(1)
		if err := db.QueryRow("SELECT max(id) FROM t").Scan(&rows); err != nil {
			b.Fatal(err)
		}
		dbs[name] = db
	}
	// The first snapshot of the copy is a full one, and so is its first
	// upload: out of the measurement.
	t0 := time.Now()
	if err := vfs.Flush(context.Background(), filepath.Join(dir, "boule.db")); err != nil {
		b.Fatal(err)
	}
	b.Logf("first snapshot and upload of %d rows: %v", rows, time.Since(t0).Round(time.Millisecond))
	// The copies, the first snapshot's spool files and the store's
	// objects leave gigabytes of dirty pages at 4 GiB, which the kernel
	// writes back over the next minute: out of the measurement too, or
	// both VFSes' fsyncs wait behind that write-back.
	t0 = time.Now()
	syscall.Sync()
	b.Logf("sync after the setup: %v", time.Since(t0).Round(time.Millisecond))

	lat := map[string][]time.Duration{}
	rng := rand.New(rand.NewPCG(1, 2))
	txn := func(db *sql.DB, id, k int) time.Duration {
		start := time.Now()
		tx, err := db.Begin()
		if err != nil {
			b.Fatal(err)
		}
		if _, err := tx.Exec("UPDATE t SET v = randomblob(1000) WHERE id = ?", id); err != nil {
			b.Fatal(err)
		}
		if _, err := tx.Exec("INSERT INTO t(k, v) VALUES (?, randomblob(100))", k); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	spooled := mustDB(b, filepath.Join(dir, "boule.db"))
	st0 := spooled.Stats()
	calls := vfs.GoCalls()
	b.ResetTimer()
	peak := peakRssAnon(func() {
		for i := range b.N {
			id, k := 1+rng.IntN(rows), rng.IntN(1000)
			order := []string{"unix", "boule"}
			if i%2 == 1 {
				order = []string{"boule", "unix"}
			}
			for _, name := range order {
				lat[name] = append(lat[name], txn(dbs[name], id, k))
			}
		}
	})
	b.StopTimer()
	// Calls from the C VFS into Go, per boule commit (unix makes none).
	b.ReportMetric(float64(vfs.GoCalls()-calls)/float64(b.N), "gocalls-per-commit")
	// The whole process: both connections, SQLite's caches, Go's heap.
	b.ReportMetric(float64(peak)/(1<<20), "peak-RssAnon-MiB")
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	for _, name := range []string{"unix", "boule"} {
		slices.Sort(lat[name])
	}
	pct := func(name string, p float64) time.Duration {
		l := lat[name]
		return l[min(len(l)-1, int(p*float64(len(l))))]
	}
	b.ReportMetric(us(pct("unix", 0.5)), "unix-p50-µs")
	b.ReportMetric(us(pct("boule", 0.5)), "boule-p50-µs")
	b.ReportMetric(us(pct("unix", 0.99)), "unix-p99-µs")
	b.ReportMetric(us(pct("boule", 0.99)), "boule-p99-µs")
	b.ReportMetric(us(pct("unix", 0.999)), "unix-p99.9-µs")
	b.ReportMetric(us(pct("boule", 0.999)), "boule-p99.9-µs")
	b.ReportMetric(us(pct("unix", 1)), "unix-max-µs")
	b.ReportMetric(us(pct("boule", 1)), "boule-max-µs")
	b.ReportMetric(float64(pct("boule", 0.5))/float64(pct("unix", 0.5)), "ratio-p50")
	b.ReportMetric(float64(pct("boule", 0.99))/float64(pct("unix", 0.99)), "ratio-p99")
	if s := vfs.Spool(); s != nil {
		b.ReportMetric(float64(s.CaptureBytes())/(1<<20), "captured-MiB-at-end")
	}
	// What the persister wrote to the spool per snapshot: the chunks it
	// changed, and the manifests (heads and their bases) that name them.
	st := spooled.Stats()
	if n := st.Snapshots - st0.Snapshots; n > 0 {
		b.ReportMetric(float64(st.Snapshots-st0.Snapshots)/float64(b.N), "snapshots-per-commit")
		b.ReportMetric(float64(st.ManifestBytes-st0.ManifestBytes)/float64(n)/1024, "spool-manifest-KiB-per-snapshot")
		b.ReportMetric(float64(st.BytesStaged-st0.BytesStaged)/float64(n)/1024, "spool-chunk-KiB-per-snapshot")
	}
	// Segments written, by snapshots and by compactions of staging.
	b.ReportMetric(float64(st.Segments-st0.Segments)/float64(b.N), "spool-segments-per-commit")
	b.ReportMetric(float64(st.Compactions-st0.Compactions), "spool-compactions")
	b.ReportMetric(float64(st.BytesStaged-st0.BytesStaged)/float64(b.N)/1024, "spool-chunk-KiB-per-commit")
	b.ReportMetric(float64(st.BytesCompacted-st0.BytesCompacted)/float64(b.N)/1024, "spool-compacted-KiB-per-commit")
}
