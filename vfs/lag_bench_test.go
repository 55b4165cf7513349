package vfs_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/boule-vfs/boule/internal/faultproxy"
	"github.com/boule-vfs/boule/internal/lagtrack"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/vfs"
)

// BenchmarkReplicationLag measures the time from a commit to the moment a
// manifest that includes it is visible in minio, at a steady commit rate
// on a 100 MiB database, with the default limiter (30 calls/s, burst 100).
// Each commit changes the header's change counter, which manifests record,
// so a poller reading the manifest every 20 ms dates each commit's arrival.
//
// It runs BOULE_LAG_SECONDS (default 60) per rate:
//
//	go test -run '^$' -bench ReplicationLag -benchtime 1x ./vfs
func BenchmarkReplicationLag(b *testing.B) {
	seconds := 60
	if s := os.Getenv("BOULE_LAG_SECONDS"); s != "" {
		seconds, _ = strconv.Atoi(s)
	}
	for _, workload := range []string{"append", "random"} {
		for _, rate := range []int{10, 100} {
			b.Run(fmt.Sprintf("workload=%s/commits_per_s=%d", workload, rate), func(b *testing.B) {
				for range b.N {
					lagRun(b, workload, rate, time.Duration(seconds)*time.Second)
				}
			})
		}
	}
}

// lagRun commits at rate for d. The append workload inserts a 200-byte row
// per commit (new data lands at the end of the table: few distinct chunks
// per second); the random workload rewrites a random 4 KiB row of the 100
// MiB table (about one new distinct chunk per commit, which at 100
// commits/s is more chunks than 30 calls/s can upload).
func lagRun(b *testing.B, workload string, rate int, d time.Duration) {
	srv := startMinio(b)
	proxy := faultproxy.Start(b, srv.Endpoint)
	tg, _ := s3Target(b, proxy.URL, true)
	_, direct := s3Target(b, srv.Endpoint, true)
	tmpdir := b.TempDir()
	register(b, vfs.Config{ReplicationSpoolingDir: tmpdir + "/spool", ReplicationTargets: targetsOf(tg)})
	path := tmpdir + "/lag.db"
	db := open(b, path, "boule", "_journal_mode=TRUNCATE&_sync=NORMAL")
	db.SetMaxOpenConns(1)
	const rows = 25_000 // × 4 KiB ≈ 100 MiB
	mustExec(b, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
	mustExec(b, db, fmt.Sprintf("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < %d) INSERT INTO t(v) SELECT randomblob(4000) FROM n", rows))
	mustFlush(b, path)
	key, err := store.ManifestKey(vfs.Spool().Hostname(), path)
	if err != nil {
		b.Fatal(err)
	}
	counterNow := func() uint32 {
		m, _, err := store.FetchManifest(context.Background(), []store.Store{direct}, key)
		if err != nil {
			b.Fatal(err)
		}
		return m.ChangeCounter
	}
	base := counterNow()

	tr := lagtrack.New(int64(base)) // commits numbered by change counter
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tr.Poll(stop, 20*time.Millisecond, func() (int64, time.Time, error) {
			b, err := direct.GetManifest(context.Background(), key)
			if err != nil {
				return 0, time.Time{}, err
			}
			m, err := manifest.Decode(b)
			if err != nil {
				return 0, time.Time{}, err
			}
			return int64(m.ChangeCounter), time.Now(), nil
		})
	}()

	proxy.ResetCounts()
	upBefore := bytesUp()
	rng := rand.New(rand.NewPCG(uint64(rate), 1))
	tick := time.NewTicker(time.Second / time.Duration(rate))
	deadline := time.Now().Add(d)
	n := 0
	for time.Now().Before(deadline) {
		<-tick.C
		var err error
		if workload == "append" {
			_, err = db.Exec("INSERT INTO t(v) VALUES (randomblob(200))")
		} else {
			_, err = db.Exec("UPDATE t SET v = randomblob(4000) WHERE id = ?", 1+rng.IntN(rows))
		}
		if err != nil {
			b.Fatal(err)
		}
		n++
		tr.Committed(int64(base)+int64(n), time.Now())
	}
	tick.Stop()
	requests := proxy.Total()
	up := bytesUp() - upBefore
	// Let the last commits arrive, then stop polling.
	tr.Drain(3*time.Minute, 20*time.Millisecond) // a cost-capped backlog drains at 30 chunks/s
	close(stop)
	<-done
	lags, missing, _ := tr.Result()
	if missing > 0 {
		b.Fatalf("%d of %d commits never reached the store", missing, n)
	}
	slices.Sort(lags)
	p := func(q float64) time.Duration { return lags[min(int(q*float64(len(lags))), len(lags)-1)] }
	b.ReportMetric(float64(p(0.50).Milliseconds()), "p50-lag-ms")
	b.ReportMetric(float64(p(0.99).Milliseconds()), "p99-lag-ms")
	b.ReportMetric(float64(lags[len(lags)-1].Milliseconds()), "max-lag-ms")
	b.ReportMetric(float64(requests)*1000/float64(n), "requests/1000commits")
	b.ReportMetric(float64(up)/float64(n), "bytes-up/commit")
	b.Logf("%d commits at %d/s: lag p50 %v p99 %v max %v; %d requests (%v), %d bytes up",
		n, rate, p(0.5), p(0.99), lags[len(lags)-1], requests, proxy.Counts(), up)
}

func bytesUp() int64 {
	var n int64
	for _, s := range vfs.TargetStats() {
		n += s.BytesUp
	}
	return n
}
