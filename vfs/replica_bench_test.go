package vfs_test

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/fanout"
	"github.com/boule-vfs/boule/internal/miniotest"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/restore"
	"github.com/boule-vfs/boule/snapshot"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/dir"
	"github.com/boule-vfs/boule/store/s3"
	"github.com/boule-vfs/boule/vfs"
)

// The replica benchmarks compare a boule_snapshot replica with the same
// database read locally through unix, and a restore with cp, in one run.
// make bench-replica runs them on a 1 GiB database (BOULE_BENCH_MB=1024);
// doc/BENCHMARKS.md has the figures.

// BenchmarkReplicaQuery: indexed point lookups and short range scans on a
// warm replica (every chunk mapped) and on the source file.
func BenchmarkReplicaQuery(b *testing.B) {
	tg, _ := dirTargetB(b)
	tmpdir, err := filepath.EvalSymlinks(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	register(b, vfs.Config{ReplicationSpoolingDir: filepath.Join(tmpdir, "spool"), ReplicationTargets: []config.Target{tg}})
	path := filepath.Join(tmpdir, "q.db")
	src := open(b, path, "boule", "")
	const rows = 60000 // about 64 MiB
	fill(b, src, rows)
	mustFlush(b, path)
	rep := openReplica(b, path, "")
	rep.SetMaxOpenConns(1)
	var n int64
	if err := rep.QueryRow("SELECT sum(length(v)) FROM t").Scan(&n); err != nil { // map every chunk
		b.Fatal(err)
	}
	local := open(b, path, "unix", "mode=ro")
	local.SetMaxOpenConns(1)
	for _, q := range []struct{ name, sql string }{
		{"point", "SELECT length(v) FROM t WHERE k = ?"},
		{"range100", "SELECT sum(length(v)) FROM (SELECT v FROM t WHERE k >= ? ORDER BY k LIMIT 100)"},
	} {
		for _, target := range []struct {
			name string
			db   *sql.DB
		}{{"unix", local}, {"replica", rep}} {
			b.Run(fmt.Sprintf("q=%s/vfs=%s", q.name, target.name), func(b *testing.B) {
				stmt, err := target.db.Prepare(q.sql)
				if err != nil {
					b.Fatal(err)
				}
				defer stmt.Close()
				rng := rand.New(rand.NewPCG(3, 4))
				calls := vfs.GoCalls()
				b.ResetTimer()
				for range b.N {
					var x int64
					if err := stmt.QueryRow(rng.IntN(rows)).Scan(&x); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				reportGoCalls(b, calls)
			})
		}
	}
}

func dirTargetB(b *testing.B) (config.Target, store.Store) {
	b.Helper()
	p := filepath.Join(b.TempDir(), "store")
	if err := os.Mkdir(p, 0o755); err != nil {
		b.Fatal(err)
	}
	s, err := dir.New(p)
	if err != nil {
		b.Fatal(err)
	}
	return config.Target{Dir: &config.DirTarget{Path: p}}, s
}

// fill inserts rows of ~1 KiB of incompressible data, indexed by k, in
// one transaction.
func fill(b testing.TB, db *sql.DB, rows int) {
	b.Helper()
	fillBatched(b, db, rows, rows)
}

// coldFixture is one database of BOULE_BENCH_MB (default 64) MiB
// replicated to a minio server, shared by the cold benchmarks.
type coldFixture struct {
	srv      *miniotest.Server
	dir      string
	path     string
	rows     int
	size     int64
	target   config.Target
	store    store.Store
	manifest string
}

var (
	coldOnce sync.Once
	cold     *coldFixture
	coldErr  error
)

func coldSetup(b *testing.B) *coldFixture {
	b.Helper()
	coldOnce.Do(func() { cold, coldErr = newColdFixture() })
	if coldErr != nil {
		b.Fatal(coldErr)
	}
	return cold
}

func newColdFixture() (*coldFixture, error) {
	mb := 64
	if v := os.Getenv("BOULE_BENCH_MB"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("BOULE_BENCH_MB=%q", v)
		}
		mb = n
	}
	srv, err := miniotest.Launch()
	if err != nil {
		return nil, err
	}
	afterAll = append(afterAll, srv.Close)
	for _, kv := range srv.Env() {
		k, v, _ := cutEnv(kv)
		os.Setenv(k, v)
	}
	tmpdir, err := os.MkdirTemp("", "boule-cold-")
	if err != nil {
		return nil, err
	}
	afterAll = append(afterAll, func() { os.RemoveAll(tmpdir) })
	f := &coldFixture{srv: srv, dir: tmpdir, path: filepath.Join(tmpdir, "cold.db"), rows: mb << 20 / 1100}
	tg := config.S3Target{Region: miniotest.Region, Endpoint: srv.Endpoint, ChunkBucket: "chunks", ManifestBucket: "manifests", CreateBucketsOnDemand: true}
	f.target = config.Target{S3: &tg}
	if f.store, err = s3.New(context.Background(), tg, s3.Options{}); err != nil {
		return nil, err
	}
	if err := vfs.Register(vfs.Config{ReplicationSpoolingDir: filepath.Join(tmpdir, "spool"), ReplicationTargets: []config.Target{f.target}}); err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite3", "file:"+f.path+"?vfs=boule")
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	fill(&testing.B{}, db, f.rows)
	db.Close()
	start := time.Now()
	if err := vfs.Flush(context.Background(), f.path); err != nil {
		return nil, err
	}
	st, err := os.Stat(f.path)
	if err != nil {
		return nil, err
	}
	f.size = st.Size()
	fmt.Fprintf(os.Stderr, "cold fixture: %d MiB database, %d rows, flushed to minio in %v\n", f.size>>20, f.rows, time.Since(start).Round(time.Millisecond))
	return f, nil
}

func cutEnv(kv string) (string, string, bool) {
	for i := range len(kv) {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], true
		}
	}
	return kv, "", false
}

// freshReader registers boule with an empty chunk cache: a new process on
// a host that never read the replica.
func (f *coldFixture) freshReader(b *testing.B) {
	b.Helper()
	cache := config.Target{Local: &config.LocalTarget{Directory: b.TempDir(), NumShards: 16, Capacity: 1 << 20}}
	if err := vfs.Register(vfs.Config{ReplicationTargets: []config.Target{cache, f.target}}); err != nil {
		b.Fatal(err)
	}
}

// openCold opens the replica of the cold fixture from a fresh reader, the
// timer stopped while the reader is made.
func (f *coldFixture) openCold(b *testing.B) *sql.DB {
	b.Helper()
	b.StopTimer()
	f.freshReader(b)
	b.StartTimer()
	db, err := sql.Open("sqlite3", "file:boule://"+f.path+"?vfs=boule_snapshot")
	if err != nil {
		b.Fatal(err)
	}
	return db
}

// closeCold stops the timer and closes a replica openCold opened, and its
// reader.
func closeCold(b *testing.B, db *sql.DB) {
	b.StopTimer()
	db.Close()
	vfs.Reader().Close()
}

// BenchmarkCold measures, on a replica of the cold fixture, the time to
// the first query result from a fresh process (open + one indexed
// lookup), a full scan against the same scan of the local file, and a
// restore against cp.
func BenchmarkCold(b *testing.B) {
	f := coldSetup(b)
	const scan = "SELECT sum(length(v)) FROM t"
	b.Run("op=first-query", func(b *testing.B) {
		for range b.N {
			db := f.openCold(b)
			var n int64
			if err := db.QueryRow("SELECT length(v) FROM t WHERE k = ?", f.rows/2).Scan(&n); err != nil || n != 1000 {
				b.Fatalf("first query: %d, %v", n, err)
			}
			closeCold(b, db)
		}
		b.ReportMetric(float64(f.size>>20), "MiB")
	})
	var want int64
	b.Run("op=scan/vfs=unix", func(b *testing.B) {
		db, err := sql.Open("sqlite3", "file:"+f.path+"?vfs=unix&mode=ro")
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		for range b.N {
			if err := db.QueryRow(scan).Scan(&want); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("op=scan/vfs=replica-cold", func(b *testing.B) {
		var cpu time.Duration
		for range b.N {
			db := f.openCold(b)
			var got int64
			var err error
			before := cpuTime()
			profile(b, "cold", func() { err = db.QueryRow(scan).Scan(&got) })
			cpu += cpuTime() - before
			if err != nil || got != want {
				b.Fatalf("cold scan: %d, %v; want %d", got, err, want)
			}
			closeCold(b, db)
		}
		// The process's processor time (user and system) per scan: what
		// the replica costs, less sensitive than the elapsed time to
		// what else the machine runs.
		b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
	})
	b.Run("op=copy/tool=cp", func(b *testing.B) {
		b.SetBytes(f.size)
		for range b.N {
			dst := filepath.Join(b.TempDir(), "copy.db")
			if out, err := exec.Command("cp", f.path, dst).CombinedOutput(); err != nil {
				b.Fatalf("cp: %v %s", err, out)
			}
			if out, err := exec.Command("sync", dst).CombinedOutput(); err != nil {
				b.Fatalf("sync: %v %s", err, out)
			}
		}
	})
	// The store's ceiling: every object (pack, or chunk alone) fetched
	// and every chunk verified, by 64 goroutines at once, nothing
	// written.
	b.Run("op=copy/tool=get-only", func(b *testing.B) {
		b.SetBytes(f.size)
		key, err := store.ManifestKey(vfs.Reader().Hostname(), f.path)
		if err != nil {
			b.Fatal(err)
		}
		m, _, err := store.FetchManifest(context.Background(), []store.Store{f.store}, key)
		if err != nil {
			b.Fatal(err)
		}
		refs := m.PackRefs()
		byPack := map[manifest.Fingerprint][]int{}
		var alone []int
		for i := range m.Chunks {
			if ref, ok := refs[uint32(i)]; ok {
				byPack[ref.ID] = append(byPack[ref.ID], i)
			} else {
				alone = append(alone, i)
			}
		}
		var groups [][]int
		for _, idx := range byPack {
			groups = append(groups, idx)
		}
		for _, i := range alone {
			groups = append(groups, []int{i})
		}
		for range b.N {
			fanout.Each(64, len(groups), func(k int) bool {
				g := groups[k]
				ref, packed := refs[uint32(g[0])]
				if !packed {
					if _, err := store.FetchChunk(context.Background(), []store.Store{f.store}, m, g[0]); err != nil {
						b.Error(err)
						return false
					}
					return true
				}
				pack, err := f.store.GetPack(context.Background(), ref.ID)
				if err != nil {
					b.Error(err)
					return false
				}
				for _, i := range g {
					if _, err := store.DecodePackMember(pack, refs[uint32(i)], m.Chunks[i]); err != nil {
						b.Error(err)
						return false
					}
				}
				return true
			})
		}
	})
	b.Run("op=copy/tool=restore-discard", func(b *testing.B) {
		b.SetBytes(f.size)
		stores := []store.Store{f.store}
		key, _ := store.ManifestKey(vfs.Reader().Hostname(), f.path)
		for range b.N {
			m, _, err := store.FetchManifest(context.Background(), stores, key)
			if err != nil {
				b.Fatal(err)
			}
			if err := restore.Write(context.Background(), stores, m, io.Discard, restore.Options{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("op=copy/tool=restore", func(b *testing.B) {
		b.SetBytes(f.size)
		stores := []store.Store{f.store}
		key, err := store.ManifestKey(vfs.Reader().Hostname(), f.path)
		if err != nil {
			b.Fatal(err)
		}
		for range b.N {
			dst := filepath.Join(b.TempDir(), "restored.db")
			m, _, err := store.FetchManifest(context.Background(), stores, key)
			if err != nil {
				b.Fatal(err)
			}
			if err := restore.File(context.Background(), stores, m, dst, restore.Options{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// cpuTime returns the processor time, user and system, that the process
// used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rssAnon returns the process's RssAnon, in bytes, from /proc.
func rssAnon() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "RssAnon:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// peakRssAnon samples RssAnon every 10 ms while f runs, and returns the
// peak.
func peakRssAnon(f func()) int64 {
	return peakMemory(f).rssAnon
}

// memPeaks are the peaks of a process's memory while something ran.
type memPeaks struct {
	rssAnon int64  // RssAnon
	goHeld  int64  // what the Go runtime holds from the OS (and has not released)
	copies  int64  // the replica reader's chunk copies, in bytes
	atPeak  string // where RssAnon went at its peak (BOULE_BENCH_MEMDETAIL)
}

// peakMemory samples the process's memory every 10 ms while f runs, and
// returns the peaks. With BOULE_BENCH_MEMDETAIL set, it also breaks down
// the process's memory at the RssAnon peak (the Go runtime's classes,
// the replica reader's own accounts), and with BOULE_BENCH_HEAPPROFILE
// set to a file prefix, writes the Go heap profile at that peak.
func peakMemory(f func()) memPeaks {
	stop := make(chan struct{})
	done := make(chan memPeaks)
	detail := os.Getenv("BOULE_BENCH_MEMDETAIL") != ""
	heapProf := os.Getenv("BOULE_BENCH_HEAPPROFILE")
	names := []string{
		"/memory/classes/total:bytes", "/memory/classes/heap/released:bytes",
		"/memory/classes/heap/objects:bytes", "/memory/classes/heap/unused:bytes",
		"/memory/classes/heap/free:bytes", "/memory/classes/heap/stacks:bytes",
		"/memory/classes/os-stacks:bytes", "/gc/heap/goal:bytes", "/gc/heap/live:bytes",
	}
	samples := make([]metrics.Sample, len(names))
	for i, n := range names {
		samples[i].Name = n
	}
	written := int64(0)
	sample := func(p *memPeaks) {
		rss := rssAnon()
		metrics.Read(samples)
		v := func(i int) int64 { return int64(samples[i].Value.Uint64()) }
		p.goHeld = max(p.goHeld, v(0)-v(1))
		var mem snapshot.MemoryUse
		if r := vfs.Reader(); r != nil {
			_, copies, _ := r.Held()
			p.copies = max(p.copies, int64(copies)*manifest.ChunkSize)
			mem = r.Memory()
		}
		if rss > p.rssAnon {
			p.rssAnon = rss
			if detail {
				mib := func(x int64) string { return fmt.Sprintf("%.1f", float64(x)/(1<<20)) }
				p.atPeak = fmt.Sprintf("RssAnon %s MiB: Go held %s (heap objects %s, unused %s, free not released %s, stacks %s+%s; goal %s, live at last GC %s); "+
					"reader: copies %s, slabs %s, %+v; not Go, not slabs: %s",
					mib(rss), mib(v(0)-v(1)), mib(v(2)), mib(v(3)), mib(v(4)), mib(v(5)), mib(v(6)), mib(v(7)), mib(v(8)),
					mib(mem.Copies), mib(mem.Slabs), mem, mib(rss-(v(0)-v(1))-mem.Slabs))
			}
			if heapProf != "" && rss > written+4<<20 && rss > 64<<20 {
				written = rss
				if out, err := os.Create(heapProf + "-peak.pprof"); err == nil {
					_ = pprof.Lookup("heap").WriteTo(out, 0)
					out.Close()
				}
			}
		}
	}
	go func() {
		var p memPeaks
		sample(&p)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				sample(&p)
				done <- p
				return
			case <-t.C:
				sample(&p)
			}
		}
	}()
	f()
	close(stop)
	return <-done
}

// BenchmarkLargeScan: a full scan of a BOULE_BENCH_MB (default 64) MiB
// database in a dir store, on the local file, on a cold replica (empty
// chunk cache) and on a warm one (the same reader, scanned again), and
// on the local file again (its second scan in a row, as the warm
// replica's), with the default memory bounds and the process's peak
// RssAnon during each; then a restore of the database from the store
// against cp and sync.
//
// BOULE_BENCH_MAXMAPPED sets replica_max_mapped_chunks.
// BOULE_BENCH_DIR keeps the database and its store in that directory
// between runs (filled once per size), for the large sizes; without it
// they are in a temp directory. Each cold run's chunk cache is removed
// after it, and each copy as soon as it is timed: a 10 GiB run needs
// about three times the database's size on disk.
func BenchmarkLargeScan(b *testing.B) {
	mb := 64
	if v := os.Getenv("BOULE_BENCH_MB"); v != "" {
		mb, _ = strconv.Atoi(v)
	}
	tmpdir, err := filepath.EvalSymlinks(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	if keep := os.Getenv("BOULE_BENCH_DIR"); keep != "" {
		tmpdir = filepath.Join(keep, fmt.Sprintf("large-%d", mb))
		if err := os.MkdirAll(tmpdir, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	// BOULE_BENCH_MAXMAPPED sets replica_max_mapped_chunks (0: the
	// default, half of vm.max_map_count), so that a smaller replica
	// exceeds the chunks the process may hold.
	maxMapped, _ := strconv.Atoi(os.Getenv("BOULE_BENCH_MAXMAPPED"))
	storeDir := filepath.Join(tmpdir, "store")
	tg := config.Target{Dir: &config.DirTarget{Path: storeDir}}
	path := filepath.Join(tmpdir, "large.db")
	register(b, vfs.Config{ReplicationSpoolingDir: filepath.Join(tmpdir, "spool"), ReplicationTargets: []config.Target{tg}})
	filled := filepath.Join(tmpdir, "filled")
	if _, err := os.Stat(filled); err != nil {
		for _, p := range []string{path, storeDir, filepath.Join(tmpdir, "spool")} {
			if err := os.RemoveAll(p); err != nil {
				b.Fatal(err)
			}
		}
		if err := os.Mkdir(storeDir, 0o755); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		src := open(b, path, "boule", "")
		src.SetMaxOpenConns(1)
		rows := mb << 20 / 1100
		if mb <= 4096 {
			fill(b, src, rows)
		} else {
			// In transactions of about 256 MiB, which the uploader
			// takes as they come: one transaction would hold the whole
			// database in the spool until it is uploaded.
			fillBatched(b, src, rows, 256<<20/1100)
		}
		filledIn := time.Since(start)
		if err := vfs.Flush(context.Background(), path); err != nil {
			b.Fatal(err)
		}
		src.Close()
		fmt.Fprintf(os.Stderr, "large scan: %d MiB database filled in %v, flushed in %v more\n", mb, filledIn.Round(time.Second), (time.Since(start) - filledIn).Round(time.Second))
		if err := os.WriteFile(filled, nil, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	const scan = "SELECT sum(length(v)) FROM t"
	var want int64
	run := func(b *testing.B, db *sql.DB) {
		var got int64
		debug.FreeOSMemory()
		peak := peakMemory(func() {
			if err := db.QueryRow(scan).Scan(&got); err != nil {
				b.Fatal(err)
			}
		})
		if want != 0 && got != want {
			b.Fatalf("scan: %d, want %d", got, want)
		}
		want = got
		b.ReportMetric(float64(peak.rssAnon>>20), "MiB-RssAnon")
		b.ReportMetric(float64(peak.goHeld>>20), "MiB-Go")
		b.ReportMetric(float64(peak.copies>>20), "MiB-copies")
		if peak.atPeak != "" {
			fmt.Fprintf(os.Stderr, "%s: at the peak: %s\n", b.Name(), peak.atPeak)
		}
	}
	b.Run("vfs=unix", func(b *testing.B) {
		db := open(b, path, "unix", "mode=ro")
		for range b.N {
			run(b, db)
		}
	})
	var rep *sql.DB
	var cacheDir string
	closeReplica := func() {
		if rep != nil {
			rep.Close()
			vfs.Reader().Close()
			rep = nil
		}
		if cacheDir != "" {
			if err := os.RemoveAll(cacheDir); err != nil {
				b.Error(err)
			}
			cacheDir = ""
		}
	}
	fresh := func(b *testing.B) {
		closeReplica()
		var err error
		if cacheDir, err = os.MkdirTemp(tmpdir, "cache-"); err != nil {
			b.Fatal(err)
		}
		cache := config.Target{Local: &config.LocalTarget{Directory: cacheDir, NumShards: 16, Capacity: 1 << 20}}
		if err := vfs.Register(vfs.Config{ReplicationTargets: []config.Target{cache, tg}, ReplicaMaxMappedChunks: maxMapped}); err != nil {
			b.Fatal(err)
		}
		if rep, err = sql.Open("sqlite3", "file:boule://"+path+"?vfs=boule_snapshot"); err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(closeReplica)
	b.Run("vfs=replica-cold", func(b *testing.B) {
		for range b.N {
			b.StopTimer()
			fresh(b)
			b.StartTimer()
			profile(b, "cold", func() { run(b, rep) })
		}
	})
	b.Run("vfs=replica-warm", func(b *testing.B) {
		run(b, rep) // the prefetch's work, if any, is done
		b.ResetTimer()
		calls := vfs.GoCalls()
		for range b.N {
			profile(b, "warm", func() { run(b, rep) })
		}
		b.StopTimer()
		reportGoCalls(b, calls)
	})
	// The local file scanned twice more, the second time timed, as the
	// warm replica was: the first vfs=unix scan may read the disk when
	// the machine's page cache is contended (4 to 30 s for 4 GiB).
	b.Run("vfs=unix-warm", func(b *testing.B) {
		db := open(b, path, "unix", "mode=ro")
		run(b, db)
		b.ResetTimer()
		for range b.N {
			run(b, db)
		}
	})
	closeReplica()

	out := filepath.Join(tmpdir, "copy.db")
	b.Run("op=copy/tool=cp", func(b *testing.B) {
		for range b.N {
			if o, err := exec.Command("cp", path, out).CombinedOutput(); err != nil {
				b.Fatalf("cp: %v %s", err, o)
			}
			if o, err := exec.Command("sync", out).CombinedOutput(); err != nil {
				b.Fatalf("sync: %v %s", err, o)
			}
			b.StopTimer()
			if err := os.Remove(out); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	b.Run("op=copy/tool=restore", func(b *testing.B) {
		ds, err := dir.New(storeDir)
		if err != nil {
			b.Fatal(err)
		}
		stores := []store.Store{ds}
		key, err := store.ManifestKey(vfs.Reader().Hostname(), path)
		if err != nil {
			b.Fatal(err)
		}
		for range b.N {
			m, _, err := store.FetchManifest(context.Background(), stores, key)
			if err != nil {
				b.Fatal(err)
			}
			var rerr error
			peak := peakRssAnon(func() { rerr = restore.File(context.Background(), stores, m, out, restore.Options{}) })
			if rerr != nil {
				b.Fatal(rerr)
			}
			b.StopTimer()
			if st, err := os.Stat(out); err != nil || st.Size() != m.Size {
				b.Fatalf("restored %v, %v; want %d bytes", st, err, m.Size)
			}
			if err := os.Remove(out); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(peak>>20), "MiB-RssAnon")
			b.StartTimer()
		}
	})
}

// fillBatched inserts rows of ~1 KiB of incompressible data, indexed by
// k, in transactions of at most batch rows.
func fillBatched(b testing.TB, db *sql.DB, rows, batch int) {
	b.Helper()
	mustExec(b, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, k INT, v BLOB); CREATE INDEX t_k ON t(k)")
	for done := 0; done < rows; done += batch {
		insertRows(b, db, done, min(done+batch, rows), 1000)
	}
}

// profile runs f under the CPU profiler when BOULE_BENCH_CPUPROFILE names
// a file prefix: each run writes PREFIX-NAME-N.pprof.
func profile(b *testing.B, name string, f func()) {
	prefix := os.Getenv("BOULE_BENCH_CPUPROFILE")
	if prefix == "" {
		f()
		return
	}
	profiles++
	out, err := os.Create(fmt.Sprintf("%s-%s-%d.pprof", prefix, name, profiles))
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	if err := pprof.StartCPUProfile(out); err != nil {
		b.Fatal(err)
	}
	defer pprof.StopCPUProfile()
	f()
}

var profiles int
