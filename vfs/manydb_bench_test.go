package vfs_test

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/dir"
	"github.com/boule-vfs/boule/vfs"
)

func init() { children["manydb"] = childManyDatabases }

// BenchmarkManyDatabases replicates many small databases from one
// process to a dir store with the default limiter (30 calls/s, burst
// 100): BOULE_MANY_DBS databases (default 1000) of 256 KiB are created
// and flushed (FlushAll), then BOULE_MANY_RATE commits per second
// (default 60), each to a random database, for BOULE_MANY_SECONDS
// (default 60), and the uploader catches up. Each run is a child process,
// so that its memory is its own; a second child runs the same workload on
// the plain unix VFS, and the difference of their resident memory,
// divided by the number of databases, is Boule's own memory per database.
//
//	make bench-many
//	go test -run '^$' -bench ManyDatabases -benchtime 1x ./vfs
//
// The lag of a commit is the time from its commit to the store's first
// manifest version that includes it (the dir store names each version by
// its write time).
//
// BOULE_MANY_JOURNAL=WAL runs the databases in WAL mode (default
// TRUNCATE). Its lag is not measured: a WAL commit leaves the header's
// change counter, which tells a manifest's version, as it was; FlushAll,
// the calls and the catch-up are.
func BenchmarkManyDatabases(b *testing.B) {
	for range b.N {
		var unix manyResult
		if os.Getenv("BOULE_MANY_SKIP_UNIX") == "" {
			unix = runManyChild(b, "unix")
		}
		boule := runManyChild(b, "boule")
		b.ReportMetric(boule.FlushAllSeconds, "flushall-s")
		b.ReportMetric(boule.LagP50, "p50-lag-s")
		b.ReportMetric(boule.LagP99, "p99-lag-s")
		b.ReportMetric(boule.LagMax, "max-lag-s")
		b.ReportMetric(1000*float64(boule.Calls)/float64(boule.Commits), "calls/1000commits")
		b.ReportMetric(float64(boule.Commits), "commits")
		b.ReportMetric(float64(boule.RSS)/(1<<20), "rss-MiB")
		b.ReportMetric(float64(boule.RSSAnon)/(1<<20), "rssanon-MiB")
		b.ReportMetric(float64(unix.RSS)/(1<<20), "unix-rss-MiB")
		b.ReportMetric(float64(boule.RSS-unix.RSS)/float64(boule.DBs)/1024, "boule-KiB/db")
		b.ReportMetric(float64(boule.RSSAnon-unix.RSSAnon)/float64(boule.DBs)/1024, "boule-anon-KiB/db")
		b.ReportMetric(float64(boule.PeakRSS)/(1<<20), "peak-rss-MiB")
		b.ReportMetric(float64(boule.PeakAnon)/(1<<20), "peak-anon-MiB")
		b.ReportMetric(float64(unix.PeakRSS)/(1<<20), "unix-peak-rss-MiB")
		b.ReportMetric(float64(unix.PeakAnon)/(1<<20), "unix-peak-anon-MiB")
		b.ReportMetric(float64(boule.PeakAnonCreate-unix.PeakAnonCreate)/float64(boule.DBs)/1024, "boule-create-peak-anon-KiB/db")
		b.ReportMetric(float64(boule.PeakAnonFlush-unix.PeakAnonCreate)/float64(boule.DBs)/1024, "boule-flush-peak-anon-KiB/db")
		b.ReportMetric(float64(boule.PeakAnonRun-unix.PeakAnonRun)/float64(boule.DBs)/1024, "boule-run-peak-anon-KiB/db")
		b.ReportMetric(float64(max(boule.PeakGoCreate, boule.PeakGoFlush, boule.PeakGoRun))/(1<<20), "peak-go-MiB")
		b.ReportMetric(float64(max(unix.PeakGoCreate, unix.PeakGoRun))/(1<<20), "unix-peak-go-MiB")
		b.ReportMetric(float64(boule.RSSFile-unix.RSSFile)/float64(boule.DBs)/1024, "boule-file-KiB/db")
		b.ReportMetric(float64(boule.HeapInuse+boule.StackInuse-unix.HeapInuse-unix.StackInuse)/float64(boule.DBs)/1024, "boule-go-KiB/db")
		b.ReportMetric(float64(boule.Goroutines-unix.Goroutines), "boule-goroutines")
		b.ReportMetric(float64(boule.FDs-unix.FDs)/float64(boule.DBs), "boule-fds/db")
		b.ReportMetric(float64(boule.Maps-unix.Maps)/float64(boule.DBs), "boule-maps/db")
		b.ReportMetric(boule.CatchUpSeconds, "catchup-s")
		b.ReportMetric(float64(boule.Calls)/float64(boule.Uploads), "calls/upload")
		b.ReportMetric(float64(boule.Chunks)/float64(boule.Uploads), "chunks/upload")
		b.ReportMetric(float64(boule.Commits)/float64(boule.Uploads), "commits/upload")
	}
}

// manyResult is what a child reports, as one JSON line.
type manyResult struct {
	DBs             int
	FlushAllSeconds float64
	Commits         int
	Calls           int64 // store calls from the first commit until caught up
	LagP50, LagP99  float64
	LagMax          float64
	CatchUpSeconds  float64 // from the last commit until every database is current
	Uploads, Packs  int64   // manifests and packs uploaded from the first commit until caught up
	Chunks          int64   // chunks uploaded, alone or in packs
	RSS, RSSAnon    int64   // bytes, after the run, with every database open, garbage returned
	RSSFile         int64   // bytes of file mappings resident (RssFile + RssShmem), then
	PeakRSS         int64   // VmHWM: the most resident memory of the run
	PeakAnon        int64   // the most RssAnon sampled (every 100 ms) during the run
	// The most RssAnon sampled while creating the databases, during
	// FlushAll, and while committing and catching up.
	PeakAnonCreate, PeakAnonFlush, PeakAnonRun int64
	// The most memory the Go runtime held from the system (all of it
	// but the heap it returned), sampled with RssAnon, in each phase.
	PeakGoCreate, PeakGoFlush, PeakGoRun int64
	// The Go runtime's share, then: heap in use (live objects and the
	// spans that hold them), goroutine stacks, and goroutines.
	HeapInuse, StackInuse int64
	Goroutines            int
	FDs, Maps             int // open file descriptors and memory mappings, then
}

func runManyChild(b *testing.B, vfsName string) manyResult {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "BOULE_TEST_CHILD=manydb", "BOULE_MANY_VFS="+vfsName, "BOULE_MANY_TMP="+b.TempDir())
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("%s child: %v", vfsName, err)
	}
	var r manyResult
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), "manydb-result "); ok {
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				b.Fatal(err)
			}
			return r
		}
	}
	b.Fatalf("%s child printed no result: %s", vfsName, out)
	return r
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// procStatus returns VmRSS and RssAnon of this process, in bytes.
func procStatus() (rss, anon int64) {
	st := procStatusFields()
	return st["VmRSS:"], st["RssAnon:"]
}

// procStatusFields returns the sizes of /proc/self/status, in bytes, by
// name ("VmHWM:").
func procStatusFields() map[string]int64 {
	m := map[string]int64{}
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[2] == "kB" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			m[f[0]] = n << 10
		}
	}
	return m
}

// changeCounter reads the file change counter of the database at path.
func changeCounter(path string) (uint32, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var h [28]byte
	if _, err := f.ReadAt(h[:], 0); err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(h[24:]), nil
}

func childManyDatabases() error {
	n := envInt("BOULE_MANY_DBS", 1000)
	rate := envInt("BOULE_MANY_RATE", 60)
	seconds := envInt("BOULE_MANY_SECONDS", 60)
	vfsName := os.Getenv("BOULE_MANY_VFS")
	journal := os.Getenv("BOULE_MANY_JOURNAL")
	if journal == "" {
		journal = "TRUNCATE"
	}
	tmp := os.Getenv("BOULE_MANY_TMP")
	ctx := context.Background()
	var peakAnon, peakGo [3]atomic.Int64 // create, flush, run
	goSample := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	var phase atomic.Int32
	sampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			_, anon := procStatus()
			if p := &peakAnon[phase.Load()]; anon > p.Load() {
				p.Store(anon)
			}
			metrics.Read(goSample)
			if g, p := int64(goSample[0].Value.Uint64()-goSample[1].Value.Uint64()), &peakGo[phase.Load()]; g > p.Load() {
				p.Store(g)
			}
			select {
			case <-t.C:
			case <-sampling:
				return
			}
		}
	}()
	root := filepath.Join(tmp, "store")
	if err := os.Mkdir(root, 0o755); err != nil {
		return err
	}
	ds, err := dir.New(root)
	if err != nil {
		return err
	}
	if vfsName == "boule" {
		err := vfs.Register(vfs.Config{
			ReplicationSpoolingDir: filepath.Join(tmp, "spool"),
			ReplicationTargets:     []config.Target{{Dir: &config.DirTarget{Path: root}}},
			Logger:                 slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		})
		if err != nil {
			return err
		}
	}
	paths := make([]string, n)
	dbs := make([]*sql.DB, n)
	for i := range n {
		paths[i] = filepath.Join(tmp, fmt.Sprintf("db-%04d.db", i))
		db, err := sql.Open("sqlite3", "file:"+paths[i]+"?vfs="+vfsName+"&_journal_mode="+journal+"&_sync=NORMAL")
		if err != nil {
			return err
		}
		db.SetMaxOpenConns(1)
		dbs[i] = db
		// 56 rows of 4000 bytes: 256 KiB with the schema and the
		// b-tree's interior page.
		if _, err := db.Exec(`CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
			WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 56)
			INSERT INTO t(v) SELECT randomblob(4000) FROM n`); err != nil {
			return err
		}
	}
	r := manyResult{DBs: n}
	phase.Store(1)
	if vfsName == "boule" {
		start := time.Now()
		if err := vfs.FlushAll(ctx); err != nil {
			return err
		}
		r.FlushAllSeconds = time.Since(start).Seconds()
	}
	callsNow := func() int64 {
		var c int64
		for _, s := range vfs.TargetStats() {
			c += s.Calls
		}
		return c
	}
	calls0 := callsNow()
	counts := func() (uploads, packs, chunks int64) {
		for _, s := range vfs.ReplicationStatus() {
			uploads, packs, chunks = uploads+s.Uploads, packs+s.Packs, chunks+s.Chunks
		}
		return
	}
	up0, packs0, chunks0 := counts()
	phase.Store(2)

	type commit struct {
		db      int
		counter uint32
		at      time.Time
	}
	var commits []commit
	rng := rand.New(rand.NewPCG(1, 2))
	tick := time.NewTicker(time.Second / time.Duration(rate))
	deadline := time.Now().Add(time.Duration(seconds) * time.Second)
	for time.Now().Before(deadline) {
		<-tick.C
		i := rng.IntN(n)
		if _, err := dbs[i].Exec("UPDATE t SET v = randomblob(4000) WHERE id = ?", 1+rng.IntN(56)); err != nil {
			return err
		}
		at := time.Now()
		c, err := changeCounter(paths[i])
		if err != nil {
			return err
		}
		commits = append(commits, commit{i, c, at})
	}
	tick.Stop()
	last := time.Now()
	r.Commits = len(commits)
	if vfsName == "boule" {
		// Caught up: every database's status says its store is current.
		for {
			behind := 0
			for _, s := range vfs.ReplicationStatus() {
				if s.Lag > 0 || s.PendingBytes > 0 {
					behind++
				}
			}
			if behind == 0 || time.Since(last) > 5*time.Minute {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		r.CatchUpSeconds = time.Since(last).Seconds()
		r.Calls = callsNow() - calls0
		up, packs, chunks := counts()
		r.Uploads, r.Packs, r.Chunks = up-up0, packs-packs0, chunks-chunks0
		host := vfs.Spool().Hostname()
		versions := map[int][]struct {
			counter uint32
			at      time.Time
		}{}
		var lags []float64
		if journal == "WAL" {
			commits = nil // no version to tell (above)
		}
		for _, c := range commits {
			vs, ok := versions[c.db]
			if !ok {
				key, err := store.ManifestKey(host, paths[c.db])
				if err != nil {
					return err
				}
				list, err := ds.ManifestVersions(ctx, key)
				if err != nil {
					return err
				}
				for _, v := range list {
					b, err := ds.GetManifestVersion(ctx, key, v.ID)
					if err != nil {
						return err
					}
					m, err := manifest.Decode(b)
					if err != nil {
						return err
					}
					vs = append(vs, struct {
						counter uint32
						at      time.Time
					}{m.ChangeCounter, v.LastModified})
				}
				versions[c.db] = vs
			}
			first := time.Time{}
			for _, v := range vs {
				if v.counter >= c.counter && (first.IsZero() || v.at.Before(first)) {
					first = v.at
				}
			}
			if first.IsZero() {
				return fmt.Errorf("commit %d of %s never reached the store", c.counter, paths[c.db])
			}
			lags = append(lags, max(0, first.Sub(c.at).Seconds()))
		}
		slices.Sort(lags)
		if len(lags) > 0 {
			p := func(q float64) float64 { return lags[min(len(lags)-1, int(q*float64(len(lags))))] }
			r.LagP50, r.LagP99, r.LagMax = p(0.50), p(0.99), lags[len(lags)-1]
		}
	}
	close(sampling)
	<-sampled
	// What stays, not the garbage of the run that the Go runtime has
	// not returned to the system yet.
	debug.FreeOSMemory()
	st := procStatusFields()
	r.RSS, r.RSSAnon = st["VmRSS:"], st["RssAnon:"]
	r.RSSFile = st["RssFile:"] + st["RssShmem:"]
	r.PeakAnonCreate, r.PeakAnonFlush, r.PeakAnonRun = peakAnon[0].Load(), peakAnon[1].Load(), max(peakAnon[2].Load(), r.RSSAnon)
	r.PeakGoCreate, r.PeakGoFlush, r.PeakGoRun = peakGo[0].Load(), peakGo[1].Load(), peakGo[2].Load()
	r.PeakRSS, r.PeakAnon = st["VmHWM:"], max(r.PeakAnonCreate, r.PeakAnonFlush, r.PeakAnonRun)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	r.HeapInuse, r.StackInuse = int64(ms.HeapInuse), int64(ms.StackInuse)
	r.Goroutines = runtime.NumGoroutine()
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		r.FDs = len(fds)
	}
	if maps, err := os.ReadFile("/proc/self/maps"); err == nil {
		r.Maps = bytes.Count(maps, []byte("\n"))
	}
	if path := os.Getenv("BOULE_MANY_PROFILE"); path != "" {
		// BOULE_MANY_PROFILE=p writes p.boule.heap and p.boule.goroutine
		// (and .unix), of the end of the run.
		for _, name := range []string{"heap", "goroutine"} {
			f, err := os.Create(path + "." + vfsName + "." + name)
			if err != nil {
				return err
			}
			if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
		}
	}
	out, err := json.Marshal(r)
	if err != nil {
		return err
	}
	fmt.Printf("manydb-result %s\n", out)
	for _, db := range dbs {
		db.Close()
	}
	return nil
}
