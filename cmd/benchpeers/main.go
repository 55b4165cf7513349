package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	_ "github.com/mattn/go-sqlite3"

	"github.com/boule-vfs/boule/internal/lagtrack"
	"github.com/boule-vfs/boule/internal/miniotest"
)

// side is one system under test, for one workload: a database that it
// replicates (or, for the baselines, does not).
type side interface {
	// Open creates the database, preloaded with about preload bytes,
	// starts replicating it and returns once the preloaded state is
	// visible in the store, with the last marker sequence number used.
	Open(ctx context.Context, preload int64) (*sql.DB, int64, error)
	// Visible returns the newest marker sequence number visible in the
	// store (-1 if none) and when the store was read.
	Visible(ctx context.Context) (int64, time.Time, error)
	// Counts returns the proxy's counts (zero for baselines).
	Counts() counts
	// Overhead returns the local bytes used beyond the database file,
	// and the size of its WAL (Litestream only).
	Overhead() (extra, wal int64)
	// Restore restores the newest replica into dst.
	Restore(ctx context.Context, dst string) error
	// Close stops replicating and releases everything.
	Close() error
}

var errNoReplication = errors.New("not replicated")

type bench struct {
	work          string
	litestream    string
	litestreamVFS string // the loadable extension, or ""
	minio         *miniotest.Server
	seq           int // for unique bucket names
}

func main() {
	var (
		duration    = flag.Duration("duration", 60*time.Second, "length of each steady commit-rate run")
		idle        = flag.Duration("idle", 10*time.Minute, "length of the idle run")
		preload     = flag.Int64("preload", 32<<20, "database size before the commit-rate and idle runs, bytes")
		bulk        = flag.Int64("bulk", 256<<20, "row bytes loaded by the bulk-load run, in 4 MiB transactions")
		restoreSize = flag.Int64("restore-size", 1<<30, "database file size for the restore run, bytes")
		work        = flag.String("work", "", "scratch directory (default: a new one under $TMPDIR)")
		lsBin       = flag.String("litestream", ".tools/bin/litestream", "litestream v0.5.18 binary")
		out         = flag.String("out", "doc/bench", "directory for results.json and the plots")
		only        = flag.String("only", "rate10,rate100,bulk,restore,idle", "comma-separated runs")
		baselines   = flag.Bool("baselines", true, "also run the commit-rate runs on plain SQLite (rollback and WAL, no replication)")
	)
	lsVFS := flag.String("litestream-vfs", "", "Litestream's VFS as a loadable extension (.so), for the cold-replica query")
	toolsFlag := flag.String("tools", "boule,boule-wal,litestream", "replicating tools to run (boule-wal: Boule in WAL mode)")
	merge := flag.Bool("merge", false, "keep the results in <out>/results.json that this run does not replace")
	replot := flag.Bool("replot", false, "only redraw the plots and tables from <out>/results.json")
	flag.Parse()
	log.SetFlags(log.Ltime)
	if *replot {
		var rs []result
		b, err := os.ReadFile(filepath.Join(*out, "results.json"))
		if err == nil {
			err = json.Unmarshal(b, &rs)
		}
		if err == nil {
			err = drawPlots(*out, rs)
		}
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(table(rs))
		return
	}
	if *work == "" {
		d, err := os.MkdirTemp("", "benchpeers-")
		if err != nil {
			log.Fatal(err)
		}
		*work = d
		defer os.RemoveAll(d)
	}
	w, err := filepath.EvalSymlinks(*work)
	if err != nil {
		log.Fatal(err)
	}
	bin, err := filepath.Abs(*lsBin)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		log.Fatalf("litestream binary: %v (make bench-peers builds it)", err)
	}
	srv, err := miniotest.Launch()
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	// On ^C, stop minio and drop the scratch directory; the litestream
	// children die with this process (Pdeathsig).
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		srv.Close()
		os.RemoveAll(w)
		os.Exit(1)
	}()
	// Boule's S3 client reads credentials from the default chain only.
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
	}
	b := &bench{work: w, litestream: bin, litestreamVFS: *lsVFS, minio: srv}
	ctx := context.Background()
	runs := map[string]bool{}
	for r := range strings.SplitSeq(*only, ",") {
		runs[strings.TrimSpace(r)] = true
	}

	var results []result
	if *merge {
		if b, err := os.ReadFile(filepath.Join(*out, "results.json")); err == nil {
			if err := json.Unmarshal(b, &results); err != nil {
				log.Fatal(err)
			}
		}
	}
	record := func(r result) {
		log.Printf("%s", r)
		if i := slices.IndexFunc(results, func(o result) bool { return o.Tool == r.Tool && o.Workload == r.Workload }); i >= 0 {
			results[i] = r
		} else {
			results = append(results, r)
		}
		if err := save(*out, results); err != nil {
			log.Fatal(err)
		}
	}
	tools := strings.Split(*toolsFlag, ",")
	for _, rate := range []int{10, 100} {
		name := fmt.Sprintf("rate%d", rate)
		if !runs[name] {
			continue
		}
		ts := tools
		if *baselines {
			ts = append(slices.Clone(tools), "sqlite-rollback", "sqlite-wal")
		}
		for _, tool := range ts {
			r, err := runRate(ctx, b.side(tool), rate, *duration, *preload)
			if err != nil {
				log.Fatalf("%s %s: %v", tool, name, err)
			}
			r.Tool, r.Workload = tool, fmt.Sprintf("%d commits/s", rate)
			record(r)
		}
	}
	if runs["bulk"] || runs["restore"] {
		ts := tools
		if *baselines && runs["bulk"] {
			ts = append(slices.Clone(tools), "sqlite-rollback", "sqlite-wal")
		}
		for _, tool := range ts {
			bres, rres, err := runBulkRestore(ctx, b, tool, *bulk, *restoreSize, runs["restore"] && slices.Contains(tools, tool))
			if err != nil {
				log.Fatalf("%s bulk/restore: %v", tool, err)
			}
			if runs["bulk"] {
				record(bres)
			}
			if rres != nil {
				record(*rres)
			}
		}
	}
	if runs["idle"] {
		var wg sync.WaitGroup
		out := make([]result, len(tools))
		errs := make([]error, len(tools))
		for i, tool := range tools { // concurrently: one proxy each, so the counts do not mix
			wg.Go(func() {
				out[i], errs[i] = runIdle(ctx, b.side(tool), *idle, *preload)
				out[i].Tool, out[i].Workload = tool, "idle"
			})
		}
		wg.Wait()
		for i := range tools {
			if errs[i] != nil {
				log.Fatalf("%s idle: %v", tools[i], errs[i])
			}
			record(out[i])
		}
	}
	if err := drawPlots(*out, results); err != nil {
		log.Fatal(err)
	}
	fmt.Println(table(results))
}

// side returns a fresh side for tool, in its own directory.
func (b *bench) side(tool string) side {
	b.seq++
	dir := filepath.Join(b.work, fmt.Sprintf("%02d-%s", b.seq, tool))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		log.Fatal(err)
	}
	bucket := fmt.Sprintf("run%02d", b.seq)
	switch tool {
	case "boule":
		return &bouleSide{b: b, dir: dir, bucket: bucket, journal: "DELETE"}
	case "boule-wal":
		return &bouleSide{b: b, dir: dir, bucket: bucket, journal: "WAL"}
	case "litestream":
		return &lsSide{b: b, dir: dir, bucket: bucket}
	case "sqlite-rollback":
		return &plainSide{dir: dir, params: "_journal_mode=DELETE&_sync=NORMAL"}
	case "sqlite-wal":
		return &plainSide{dir: dir, params: "_journal_mode=WAL&_sync=NORMAL"}
	}
	log.Fatalf("unknown tool %q", tool)
	return nil
}

// The schema: the marker table is created first, so its single row lives
// in page 2, inside Boule's chunk 0 (inlined in the manifest) and in every
// Litestream LTX file that carries a commit.
const schema = `CREATE TABLE marker(id INTEGER PRIMARY KEY, v TEXT);
INSERT INTO marker VALUES (1, 'BENCHSEQ:0000000000000000');
CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);`

const markerPrefix = "BENCHSEQ:"

func markerValue(seq int64) string { return fmt.Sprintf("%s%016d", markerPrefix, seq) }

// findMarker returns the largest marker sequence number in b, or -1.
func findMarker(b []byte) int64 {
	best := int64(-1)
	for {
		i := strings.Index(string(b), markerPrefix)
		if i < 0 || i+len(markerPrefix)+16 > len(b) {
			return best
		}
		var n int64
		ok := true
		for _, c := range b[i+len(markerPrefix) : i+len(markerPrefix)+16] {
			if c < '0' || c > '9' {
				ok = false
				break
			}
			n = n*10 + int64(c-'0')
		}
		if ok {
			best = max(best, n)
		}
		b = b[i+len(markerPrefix):]
	}
}

// commit runs one transaction: op, then the marker update to seq.
func commit(db *sql.DB, seq int64, op func(tx *sql.Tx) error) error {
	tx, err := db.Begin()
	if err != nil {
		return err
	}
	if op != nil {
		if err := op(tx); err != nil {
			tx.Rollback()
			return err
		}
	}
	if _, err := tx.Exec("UPDATE marker SET v = ? WHERE id = 1", markerValue(seq)); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// insert4MiB adds 4096 rows of 1 KiB of random bytes.
func insert4MiB(tx *sql.Tx) error {
	st, err := tx.Prepare("INSERT INTO t(v) VALUES (randomblob(1024))")
	if err != nil {
		return err
	}
	defer st.Close()
	for range 4096 {
		if _, err := st.Exec(); err != nil {
			return err
		}
	}
	return nil
}

// fill grows the database by about n bytes in 4 MiB transactions, with
// marker sequence numbers from *seq on.
func fill(db *sql.DB, n int64, seq *int64) error {
	for done := int64(0); done < n; done += 4 << 20 {
		*seq++
		if err := commit(db, *seq, insert4MiB); err != nil {
			return err
		}
	}
	return nil
}

// diskSampler records the largest overhead seen, every 250 ms.
type diskSampler struct {
	mu           sync.Mutex
	extra, wal   int64
	stop, done   chan struct{}
	lastExtraEnd int64
}

func sampleDisk(s side) *diskSampler {
	d := &diskSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(d.done)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			e, w := s.Overhead()
			d.mu.Lock()
			d.extra, d.wal, d.lastExtraEnd = max(d.extra, e), max(d.wal, w), e
			d.mu.Unlock()
			select {
			case <-d.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return d
}

func (d *diskSampler) Stop() (maxExtra, maxWAL, lastExtra int64) {
	close(d.stop)
	<-d.done
	return d.extra, d.wal, d.lastExtraEnd
}

// drainTimeout bounds the wait for the last commits to reach the store.
const drainTimeout = 5 * time.Minute

// drive runs n commits of op (n < 0: until deadline), one per pace (0:
// back to back), and measures commit latency, lag, requests and disk.
func drive(ctx context.Context, s side, db *sql.DB, seq *int64, pace time.Duration, n int, deadline time.Time, op func(tx *sql.Tx) error) (result, error) {
	var r result
	tr := lagtrack.New(*seq)
	stop := make(chan struct{})
	polled := make(chan struct{})
	_, _, verr := s.Visible(ctx)
	replicated := !errors.Is(verr, errNoReplication)
	if replicated {
		go func() {
			defer close(polled)
			tr.Poll(stop, 25*time.Millisecond, func() (int64, time.Time, error) { return s.Visible(ctx) })
		}()
	} else {
		close(polled)
	}
	disk := sampleDisk(s)
	before := s.Counts()
	start := time.Now()
	var tick *time.Ticker
	if pace > 0 {
		tick = time.NewTicker(pace)
		defer tick.Stop()
	}
	var lat []time.Duration
	for i := 0; n < 0 && time.Now().Before(deadline) || i < n; i++ {
		if tick != nil {
			<-tick.C
		}
		*seq++
		t0 := time.Now()
		if err := commit(db, *seq, op); err != nil {
			close(stop)
			disk.Stop()
			return r, err
		}
		t1 := time.Now()
		lat = append(lat, t1.Sub(t0))
		if replicated {
			tr.Committed(*seq, t1)
		}
	}
	r.Elapsed = time.Since(start)
	r.Commits = len(lat)
	if replicated {
		tr.Drain(drainTimeout, 25*time.Millisecond)
	}
	close(stop)
	<-polled
	r.Window = time.Since(start)
	r.Counts = s.Counts().Sub(before)
	r.DiskMax, r.WALMax, r.DiskEnd = disk.Stop()
	r.Commit = percentiles(lat)
	r.Replicated = replicated
	if replicated {
		lags, missing, lastSeen := tr.Result()
		r.Lag = percentiles(lags)
		r.Missing = missing
		if !lastSeen.IsZero() {
			r.AllVisible = lastSeen.Sub(start)
		}
	}
	return r, nil
}

// runRate commits at rate per second for d: each commit inserts one
// 200-byte row (new data lands at the end of the table) and updates the
// marker.
func runRate(ctx context.Context, s side, rate int, d time.Duration, preload int64) (result, error) {
	defer s.Close()
	db, seq, err := s.Open(ctx, preload)
	if err != nil {
		return result{}, err
	}
	op := func(tx *sql.Tx) error {
		_, err := tx.Exec("INSERT INTO t(v) VALUES (randomblob(200))")
		return err
	}
	return drive(ctx, s, db, &seq, time.Second/time.Duration(rate), -1, time.Now().Add(d), op)
}

// runBulkRestore loads bulk bytes in 4 MiB transactions (measured), then,
// if restore is set, grows the database to restoreSize (not measured),
// waits until it is all in the store, restores it and runs a first query.
func runBulkRestore(ctx context.Context, b *bench, tool string, bulk, restoreSize int64, restore bool) (result, *result, error) {
	s := b.side(tool)
	defer s.Close()
	db, seq, err := s.Open(ctx, 0)
	if err != nil {
		return result{}, nil, err
	}
	log.Printf("%s: bulk load of %d MiB", tool, bulk>>20)
	br, err := drive(ctx, s, db, &seq, 0, int(bulk/(4<<20)), time.Time{}, insert4MiB)
	if err != nil {
		return br, nil, err
	}
	br.Tool, br.Workload = tool, fmt.Sprintf("bulk load %d MiB", bulk>>20)
	br.BulkBytes = bulk
	if !restore {
		return br, nil, nil
	}
	log.Printf("%s: growing to %d MiB for the restore", tool, restoreSize>>20)
	if u, ok := s.(interface{ Unthrottle() error }); ok {
		if err := u.Unthrottle(); err != nil {
			return br, nil, err
		}
	}
	for {
		var size int64
		if err := db.QueryRow("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()").Scan(&size); err != nil {
			return br, nil, err
		}
		if size >= restoreSize {
			break
		}
		if err := fill(db, min(restoreSize-size, 64<<20), &seq); err != nil {
			return br, nil, err
		}
	}
	var rows int64
	if err := db.QueryRow("SELECT count(*) FROM t").Scan(&rows); err != nil {
		return br, nil, err
	}
	if err := waitVisible(ctx, s, seq); err != nil {
		return br, nil, err
	}
	// The primary is gone: stop the writer and the replicator, so the
	// restore shares neither the CPU nor the proxy's counts with them.
	if err := s.(interface{ StopReplication() error }).StopReplication(); err != nil {
		return br, nil, err
	}
	rr, err := runRestore(ctx, s, filepath.Join(b.work, fmt.Sprintf("restored-%s.db", tool)), rows)
	rr.Tool, rr.Workload = tool, fmt.Sprintf("restore %d MiB", restoreSize>>20)
	if bs, ok := s.(*bouleSide); ok && err == nil {
		if d, c, cerr := bs.coldQueryBouleSnapshot(ctx, rows); cerr != nil {
			rr.ColdVFS = cerr.Error()
		} else {
			rr.ColdVFS = fmt.Sprintf("%s, %d requests %s, %.1f MiB down", dur(d), c.Requests, methods(c, 1), float64(c.BytesDown)/(1<<20))
		}
	}
	if ls, ok := s.(*lsSide); ok && err == nil {
		if b.litestreamVFS == "" {
			rr.ColdVFS = "not measured: the litestream VFS is a separate build (make vfs in Litestream's tree); pass -litestream-vfs"
		} else if d, c, cerr := ls.coldVFS(ctx, b.litestreamVFS, rows); cerr != nil {
			rr.ColdVFS = cerr.Error()
		} else {
			rr.ColdVFS = fmt.Sprintf("%s, %d requests %s, %.1f MiB down", dur(d), c.Requests, methods(c, 1), float64(c.BytesDown)/(1<<20))
		}
	}
	return br, &rr, err
}

// waitVisible waits until seq is in the store; for Boule it first
// flushes (the synchronous flush has its own, faster limiter).
func waitVisible(ctx context.Context, s side, seq int64) error {
	if f, ok := s.(interface{ Flush(context.Context) error }); ok {
		if err := f.Flush(ctx); err != nil {
			return err
		}
	}
	start := time.Now()
	for time.Since(start) < 20*time.Minute {
		v, _, err := s.Visible(ctx)
		if errors.Is(err, errNoReplication) {
			return nil
		}
		if err == nil && v >= seq {
			log.Printf("sequence %d visible after %v", seq, time.Since(start).Round(time.Millisecond))
			return nil
		}
		time.Sleep(100 * time.Millisecond) // waiting for the asynchronous upload
	}
	return fmt.Errorf("sequence %d not visible after 20 minutes", seq)
}

// runRestore times a restore of the newest replica into dst, then a first
// query on it (open, and look up the last row).
func runRestore(ctx context.Context, s side, dst string, rows int64) (result, error) {
	var r result
	before := s.Counts()
	t0 := time.Now()
	if err := s.Restore(ctx, dst); err != nil {
		return r, fmt.Errorf("restore: %w", err)
	}
	r.Restore = time.Since(t0)
	r.Counts = s.Counts().Sub(before)
	db, err := sql.Open("sqlite3", "file:"+dst+"?mode=ro")
	if err != nil {
		return r, err
	}
	defer db.Close()
	var n int64
	if err := db.QueryRow("SELECT count(*) FROM t WHERE id = ?", rows).Scan(&n); err != nil || n != 1 {
		return r, fmt.Errorf("first query on the restored database: %d rows, %v", n, err)
	}
	r.FirstQuery = time.Since(t0)
	// Not timed: the restore is complete.
	if err := db.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil || n != rows {
		return r, fmt.Errorf("restored %d rows, want %d (%v)", n, rows, err)
	}
	if fi, err := os.Stat(dst); err == nil {
		r.RestoredBytes = fi.Size()
	}
	r.Replicated = true
	os.Remove(dst)
	return r, nil
}

// runIdle opens a database, lets it reach the store, then does nothing
// for d and counts what each tool asks of the store meanwhile.
func runIdle(ctx context.Context, s side, d time.Duration, preload int64) (result, error) {
	defer s.Close()
	if _, _, err := s.Open(ctx, preload); err != nil {
		return result{}, err
	}
	time.Sleep(5 * time.Second) // let the initial upload settle before counting
	disk := sampleDisk(s)
	before := s.Counts()
	time.Sleep(d)
	var r result
	r.Counts = s.Counts().Sub(before)
	r.DiskMax, r.WALMax, r.DiskEnd = disk.Stop()
	r.Window = d
	r.Replicated = true
	return r, nil
}

// pct holds latency percentiles.
type pct struct {
	N   int           `json:"n"`
	P50 time.Duration `json:"p50"`
	P99 time.Duration `json:"p99"`
	Max time.Duration `json:"max"`
}

func percentiles(d []time.Duration) pct {
	if len(d) == 0 {
		return pct{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[min(int(q*float64(len(s))), len(s)-1)] }
	return pct{N: len(s), P50: at(0.5), P99: at(0.99), Max: s[len(s)-1]}
}

// result is one tool on one workload.
type result struct {
	Tool          string        `json:"tool"`
	Workload      string        `json:"workload"`
	Replicated    bool          `json:"replicated"`
	Commits       int           `json:"commits,omitempty"`
	Elapsed       time.Duration `json:"elapsed,omitempty"`
	Window        time.Duration `json:"window,omitempty"` // the span the counts cover
	Commit        pct           `json:"commit"`
	Lag           pct           `json:"lag"`
	Missing       int           `json:"missing,omitempty"`
	AllVisible    time.Duration `json:"all_visible,omitempty"`
	Counts        counts        `json:"counts"`
	DiskMax       int64         `json:"disk_max"`
	DiskEnd       int64         `json:"disk_end"`
	WALMax        int64         `json:"wal_max,omitempty"`
	BulkBytes     int64         `json:"bulk_bytes,omitempty"`
	Restore       time.Duration `json:"restore,omitempty"`
	FirstQuery    time.Duration `json:"first_query,omitempty"`
	RestoredBytes int64         `json:"restored_bytes,omitempty"`
	ColdVFS       string        `json:"cold_vfs,omitempty"` // first query through a read-replica VFS
}

func (r result) String() string {
	b, _ := json.Marshal(r)
	return string(b)
}

func save(dir string, rs []result) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(rs, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "results.json"), append(b, '\n'), 0o644)
}

// dirSize is the apparent size of the regular files under dir.
func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// openDB opens path with mattn/go-sqlite3 and creates the schema, with one
// connection, as the writers of both tools do.
func openDB(dsn string) (*sql.DB, error) {
	db, err := sql.Open("sqlite3", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(schema); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}
