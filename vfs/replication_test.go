package vfs_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/faultproxy"
	"github.com/boule-vfs/boule/internal/miniotest"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/restore"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/dir"
	"github.com/boule-vfs/boule/store/s3"
	"github.com/boule-vfs/boule/upload"
	"github.com/boule-vfs/boule/vfs"
)

func targetsOf(ts ...config.Target) []config.Target { return ts }

// dirEnv registers boule with a fresh spool and a target in a new
// directory store, and returns the env and that store.
func dirEnv(t testing.TB) (*env, store.Store) {
	t.Helper()
	tg, s := dirTarget(t)
	return replEnv(t, tg), s
}

func dirTarget(t testing.TB) (config.Target, store.Store) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "store")
	if err := os.Mkdir(p, 0o755); err != nil { // a dir store never creates its root
		t.Fatal(err)
	}
	s, err := dir.New(p)
	if err != nil {
		t.Fatal(err)
	}
	return config.Target{Dir: &config.DirTarget{Path: p}}, s
}

// minioTarget starts minio, with its credentials in the environment, and
// returns it with a target on it that creates its buckets, and that
// target's store.
func minioTarget(t testing.TB) (*miniotest.Server, config.Target, store.Store) {
	t.Helper()
	srv := startMinio(t)
	tg, s := s3Target(t, srv.Endpoint, true)
	return srv, tg, s
}

// startMinio starts minio, with its credentials in the environment.
func startMinio(t testing.TB) *miniotest.Server {
	t.Helper()
	srv := miniotest.Start(t)
	srv.SetEnv(t)
	return srv
}

// kindTarget returns a target of kind "dir" or "s3" (on a minio of its
// own) and its store.
func kindTarget(t testing.TB, kind string) (config.Target, store.Store) {
	t.Helper()
	if kind == "dir" {
		return dirTarget(t)
	}
	_, tg, s := minioTarget(t)
	return tg, s
}

func s3Target(t testing.TB, endpoint string, create bool) (config.Target, store.Store) {
	t.Helper()
	tg := config.S3Target{
		Region: miniotest.Region, Endpoint: endpoint,
		ChunkBucket: "chunks", ManifestBucket: "manifests",
		CreateBucketsOnDemand: create,
	}
	s, err := s3.New(context.Background(), tg, s3.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return config.Target{S3: &tg}, s
}

// replica reassembles the newest manifest of path from s.
func replica(t testing.TB, s store.Store, path string) []byte {
	t.Helper()
	b, err := fetchReplica(s, path)
	if err != nil {
		t.Fatalf("replica of %s: %v", path, err)
	}
	return b
}

func fetchReplica(s store.Store, path string) ([]byte, error) {
	key, err := store.ManifestKey(vfs.Spool().Hostname(), path)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	m, _, err := store.FetchManifest(ctx, []store.Store{s}, key)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := restore.Reassemble(ctx, []store.Store{s}, m, &buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// checkReplica asserts the store holds exactly the file's bytes.
func checkReplica(t testing.TB, s store.Store, path string) {
	t.Helper()
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got := replica(t, s, path)
	if !bytes.Equal(got, want) {
		t.Fatalf("replica of %s: %d bytes, file %d bytes, first difference at %d", path, len(got), len(want), firstDiff(got, want))
	}
}

func flushPragma(t testing.TB, db *sql.DB) string {
	t.Helper()
	var r string
	if err := db.QueryRow("PRAGMA boule_flush_replication_data").Scan(&r); err != nil {
		t.Fatalf("PRAGMA boule_flush_replication_data: %v", err)
	}
	return r
}

// mustFlushPragma asserts that PRAGMA boule_flush_replication_data on db
// returns 1: the store holds every commit. when says at which point, for
// the failure, which shows e's log.
func (e *env) mustFlushPragma(t testing.TB, db *sql.DB, when string) {
	t.Helper()
	if r := flushPragma(t, db); r != "1" {
		t.Fatalf("flush pragma %s=%q, want 1; log:\n%s", when, r, e.log)
	}
}

func runWorkload(t testing.TB, db *sql.DB, seed uint64, steps int) {
	t.Helper()
	w := newWorkload(seed)
	if err := w.setup(db); err != nil {
		t.Fatal(err)
	}
	for i := range steps {
		if what, err := w.step(db); err != nil {
			t.Fatalf("step %d (%s): %v", i, what, err)
		}
	}
}

func TestReplicateEndToEnd(t *testing.T) {
	for _, kind := range []string{"dir", "s3"} {
		t.Run(kind, func(t *testing.T) {
			tg, sto := kindTarget(t, kind)
			e := replEnv(t, tg)
			path, db := e.writer(t, "e2e.db", "")
			runWorkload(t, db, 7, 150)
			e.mustFlushPragma(t, db, "after the workload")
			checkReplica(t, sto, path)
			// More commits, flushed through the Go API this time.
			runWorkload(t, db, 8, 50)
			if err := vfs.Flush(context.Background(), path); err != nil {
				t.Fatalf("Flush()=%v", err)
			}
			checkReplica(t, sto, path)
			st := vfs.ReplicationStatus()
			i := slices.IndexFunc(st, func(s upload.Status) bool { return s.Source == path })
			if i < 0 || st[i].Uploads == 0 || st[i].Lag != 0 || st[i].LastError != "" {
				t.Fatalf("status=%+v, want uploads, no lag, no error", st)
			}
		})
	}
}

// TestBackgroundUpload: with no flush at all, the uploader brings the store
// to exactly the database's state once writes stop.
func TestBackgroundUpload(t *testing.T) {
	e, sto := dirEnv(t)
	path, db := e.writer(t, "bg.db", "")
	runWorkload(t, db, 9, 100)
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := fetchReplica(sto, path)
		if err == nil && bytes.Equal(got, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("store not current 30 s after the last commit: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // polling the store for an asynchronous upload
	}
}

// TestFlushOnClose: PRAGMA boule_flush_replication_data=1 makes closing the
// connection upload everything; the setter returns the previous value.
func TestFlushOnClose(t *testing.T) {
	e, sto := dirEnv(t)
	path, db := e.writer(t, "close.db", "")
	var prev string
	if err := db.QueryRow("PRAGMA boule_flush_replication_data=1").Scan(&prev); err != nil || prev != "0" {
		t.Fatalf("PRAGMA boule_flush_replication_data=1 returned %q, %v; want 0", prev, err)
	}
	if err := db.QueryRow("PRAGMA boule_flush_replication_data=on").Scan(&prev); err != nil || prev != "1" {
		t.Fatalf("second setter returned %q, %v; want 1", prev, err)
	}
	if err := db.QueryRow("PRAGMA boule_flush_replication_data=maybe").Scan(&prev); err == nil {
		t.Fatal("PRAGMA boule_flush_replication_data=maybe succeeded, want an error")
	}
	runWorkload(t, db, 10, 60)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	checkReplica(t, sto, path)
}

// spoolBytes is the disk used by a database's spool directory, each inode
// counted once.
func spoolBytes(t testing.TB, tmpdir string) int64 {
	t.Helper()
	seen := map[uint64]bool{}
	var n int64
	err := filepath.WalkDir(tmpdir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while walking
			}
			return err
		}
		info, err := d.Info()
		if err != nil || !info.Mode().IsRegular() {
			return nil
		}
		st := info.Sys().(*syscall.Stat_t)
		if !seen[st.Ino] {
			seen[st.Ino] = true
			n += info.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func timedCommits(t testing.TB, db *sql.DB, n int, path string, maxRatio *float64) []time.Duration {
	t.Helper()
	out := make([]time.Duration, 0, n)
	tmpdir := spoolDir(t, path)
	for i := range n {
		start := time.Now()
		if _, err := db.Exec("INSERT INTO t(k, v) VALUES (?, randomblob(2000))", i); err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
		out = append(out, time.Since(start))
		if maxRatio != nil && i%10 == 0 {
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			*maxRatio = max(*maxRatio, float64(spoolBytes(t, tmpdir))/float64(st.Size()))
		}
	}
	return out
}

// TestMinioOutage stops minio in the middle of a workload: commits never
// fail, the spool stays bounded, and after the restart replication catches
// up with nothing lost.
func TestMinioOutage(t *testing.T) {
	srv, tg, sto := minioTarget(t)
	e := replEnv(t, tg)
	path, db := e.writer(t, "outage.db", "_sync=NORMAL")
	runWorkload(t, db, 11, 30)
	e.mustFlushPragma(t, db, "before the outage")
	srv.Stop()
	mustExec(t, db, "CREATE TABLE outage(i INTEGER PRIMARY KEY, v BLOB)")
	var ratio float64
	tmpdir := spoolDir(t, path)
	for i := range 300 {
		mustExec(t, db, "INSERT INTO outage(i, v) VALUES (?, randomblob(3000))", i)
		if i%10 == 0 {
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			ratio = max(ratio, float64(spoolBytes(t, tmpdir))/float64(st.Size()))
		}
	}
	runWorkload(t, db, 17, 100)
	if r := flushPragma(t, db); r != "0" {
		t.Fatalf("flush with minio down=%q, want 0", r)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	t.Logf("spool at most %.2f× the database during the outage", ratio)
	if ratio > 4 {
		t.Errorf("spool reached %.2f× the database, want ≤ 4", ratio)
	}
	e.mustFlushPragma(t, db, "after the restart")
	checkReplica(t, sto, path)
	var n int
	if err := db.QueryRow("SELECT count(*) FROM outage").Scan(&n); err != nil || n != 300 {
		t.Fatalf("rows committed during the outage=%d, %v; want 300", n, err)
	}
}

// TestOutageDoesNotSlowCommits compares commit latency with the store up
// and down, in interleaved blocks so that both see the same machine noise:
// the fault proxy in front of minio alternately passes requests and resets
// every connection. The medians must be within 50%: a commit that waited
// for the network (a retry, a backoff, a timeout) would cost milliseconds
// to seconds, while the machine's noise under parallel tests (persisters
// and retries share its two cores) is tens of percent. doc/BENCHMARKS.md
// has the measured figures.
func TestOutageDoesNotSlowCommits(t *testing.T) {
	srv := startMinio(t)
	proxy := faultproxy.Start(t, srv.Endpoint)
	tg, sto := s3Target(t, proxy.URL, true)
	e := replEnv(t, tg)
	path, db := e.writer(t, "latency.db", "_sync=NORMAL")
	runWorkload(t, db, 18, 30)
	var up, down []time.Duration
	for range 15 {
		proxy.Pass()
		up = append(up, timedCommits(t, db, 40, path, nil)...)
		proxy.Set(faultproxy.Fault{Kind: faultproxy.Reset})
		down = append(down, timedCommits(t, db, 40, path, nil)...)
	}
	proxy.Pass()
	mu, md := median(up), median(down)
	t.Logf("median commit: %v with the store up, %v with it down (%d commits each)", mu, md, len(up))
	if float64(md) > 1.5*float64(mu) {
		t.Errorf("median commit with the store down %v > 1.5 × %v with it up", md, mu)
	}
	mustFlush(t, path)
	checkReplica(t, sto, path)
}

// TestFaultProxy: 500s, 429s, connection resets, truncated bodies and 2 s
// stalls are retried; flushes succeed and commits are unaffected.
func TestFaultProxy(t *testing.T) {
	srv := startMinio(t)
	proxy := faultproxy.Start(t, srv.Endpoint)
	tg, _ := s3Target(t, proxy.URL, true)
	_, sto := s3Target(t, srv.Endpoint, true) // reads bypass the proxy
	e := replEnv(t, tg)
	path, db := e.writer(t, "faults.db", "")
	runWorkload(t, db, 12, 20)
	for _, f := range []faultproxy.Fault{
		faultproxy.Fail(500, 3),
		faultproxy.Fail(503, 2),
		faultproxy.Fail(429, 3),
		faultproxy.ResetNext(3),
		faultproxy.TruncateNext(2),
		faultproxy.StallNext(2*time.Second, 2),
	} {
		t.Run(f.Kind.String(), func(t *testing.T) {
			faulted := proxy.Faulted()
			proxy.Set(f)
			runWorkload(t, db, 13, 10)
			if err := vfs.Flush(context.Background(), path); err != nil {
				t.Fatalf("Flush() with %v=%v", f.Kind, err)
			}
			if got := proxy.Faulted() - faulted; got != f.Count {
				t.Fatalf("faults injected=%d, want %d", got, f.Count)
			}
			checkReplica(t, sto, path)
		})
	}
}

// TestWrongCredentials: a clear error, the database unaffected, and
// replication stopped until the configuration changes.
func TestWrongCredentials(t *testing.T) {
	srv := startMinio(t)
	const badSecret = "not-the-secret-0123456789"
	t.Setenv("AWS_SECRET_ACCESS_KEY", badSecret)
	tg, _ := s3Target(t, srv.Endpoint, true)
	e := replEnv(t, tg)
	path, db := e.writer(t, "creds.db", "")
	runWorkload(t, db, 14, 20)
	if r := flushPragma(t, db); r != "0" {
		t.Fatalf("flush with wrong credentials=%q, want 0", r)
	}
	err := vfs.Flush(context.Background(), path)
	if !errors.Is(err, store.ErrPermanent) || strings.Contains(err.Error(), badSecret) {
		t.Fatalf("Flush()=%v, want a permanent error without the secret", err)
	}
	if msg := strings.ToLower(err.Error()); !strings.Contains(msg, "credential") && !strings.Contains(msg, "access") && !strings.Contains(msg, "signature") {
		t.Fatalf("Flush()=%v, want it to say credentials or access were refused", err)
	}
	runWorkload(t, db, 15, 10) // the database is unaffected
	checkSnapshot(t, db, path)
	if st := vfs.ReplicationStatus(); len(st) == 0 || !st[0].Blocked {
		t.Fatalf("status=%+v, want blocked", st)
	}
	// Fixed credentials and a new configuration: replication resumes.
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	e.flushToNewTarget(t, srv, path, "after fixing the credentials")
}

// TestMissingBucket: without create_buckets_on_demand a missing bucket is a
// clear error naming it; with it, the bucket is created.
func TestMissingBucket(t *testing.T) {
	srv := startMinio(t)
	tg, _ := s3Target(t, srv.Endpoint, false)
	e := replEnv(t, tg)
	path, db := e.writer(t, "bucket.db", "")
	runWorkload(t, db, 16, 10)
	err := vfs.Flush(context.Background(), path)
	if !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), `bucket "`) || !strings.Contains(err.Error(), "create_buckets_on_demand") {
		t.Fatalf("Flush()=%v, want a permanent error naming the bucket and the option", err)
	}
	checkSnapshot(t, db, path)

	e.flushToNewTarget(t, srv, path, "with create_buckets_on_demand")
}

// flushToNewTarget registers e with a new target on srv, which creates
// its buckets, and asserts that a flush of path then succeeds and leaves
// the database in the store; when says after what, for the failure.
func (e *env) flushToNewTarget(t testing.TB, srv *miniotest.Server, path, when string) {
	t.Helper()
	tg, sto := s3Target(t, srv.Endpoint, true)
	e.register(t, tg)
	if err := vfs.Flush(context.Background(), path); err != nil {
		t.Fatalf("Flush() %s=%v", when, err)
	}
	checkReplica(t, sto, path)
}

// TestAPIBudget: small commits at full speed for 8 s (well over 1,000),
// each dirtying chunks spread over a 16 MB database, so that uploads have
// far more to do than the limiter allows; the background uploader goes
// past its burst and stays within the limit (30 calls/s, burst 100), and
// snapshots squash. Packs would put each upload's chunks in one object,
// far under the limit: pack_chunks 1 turns them off, which also shows
// that it writes manifests without a pack table.
func TestAPIBudget(t *testing.T) {
	srv := startMinio(t)
	proxy := faultproxy.Start(t, srv.Endpoint)
	tg, sto := s3Target(t, proxy.URL, true)
	e := replEnv(t, tg)
	register(t, vfs.Config{ReplicationSpoolingDir: e.spool, ReplicationTargets: []config.Target{tg}, PackChunks: 1, Logger: slog.New(e.log)})
	path, db := e.writer(t, "budget.db", "_sync=OFF")
	mustExec(t, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, k INT, v BLOB)")
	mustExec(t, db, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 4000) INSERT INTO t(k, v) SELECT i, randomblob(4000) FROM n")
	mustFlush(t, path)
	proxy.ResetCounts()
	start := time.Now()
	commits := 0
	// At least 8 s and 1,000 commits, and on until the uploader went past
	// its burst (squashed snapshots may take it a while under -race).
	past := func() bool { return proxy.Total() > 150 || time.Since(start) > 40*time.Second }
	for i := 0; time.Since(start) < 8*time.Second || commits < 1000 || !past(); i++ {
		// Three rows far apart: about three chunks per commit, and
		// different chunks from one commit to the next, so that commits
		// squashed into one snapshot still change many chunks.
		mustExec(t, db, "UPDATE t SET v = randomblob(4000) WHERE id IN (?, ?, ?)", 1+(i*1009)%4000, 1+(i*2003+1333)%4000, 1+(i*3001+2666)%4000)
		commits++
	}
	elapsed := time.Since(start)
	calls := proxy.Total()
	limit := 100 + int(30*elapsed.Seconds()*1.05) + 2
	t.Logf("%d commits in %v: %d store requests in the background (limit %d), %v", commits, elapsed, calls, limit, proxy.Counts())
	if calls > limit {
		t.Fatalf("%d requests in %v, more than the limiter allows (%d)", calls, elapsed, limit)
	}
	if calls <= 150 {
		t.Fatalf("only %d requests: the uploader never went past its burst, so the limit was not tested", calls)
	}
	proxy.ResetCounts()
	mustFlush(t, path)
	checkReplica(t, sto, path)
	t.Logf("the final flush: %d requests %v", proxy.Total(), proxy.Counts())
	key, _ := store.ManifestKey(vfs.Reader().Hostname(), path)
	if m, _, err := store.FetchManifest(context.Background(), []store.Store{sto}, key); err != nil || len(m.Packs) != 0 {
		t.Fatalf("with pack_chunks 1, the manifest has packs (%v)", err)
	}
}

// TestDeltaManifestsMinio: a database of more than 2,048 chunks is
// uploaded as manifest v2 heads over a content-addressed base, in a real
// minio; restores and a replica read each state back exactly, and a small
// change uploads a head far smaller than the whole manifest.
func TestDeltaManifestsMinio(t *testing.T) {
	_, tg, sto := minioTarget(t)
	e := replEnv(t, tg)
	path, db := e.writer(t, "delta.db", "_sync=OFF")
	mustExec(t, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
	// 36,000 rows of 4,000 bytes: about 2,250 chunks of 64 KiB.
	mustExec(t, db, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 36000) INSERT INTO t(v) SELECT randomblob(4000) FROM n")
	key, err := store.ManifestKey(vfs.Spool().Hostname(), path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var whole int
	for i := range 4 {
		if i > 0 {
			mustExec(t, db, "UPDATE t SET v = randomblob(4000) WHERE id = ?", 1+i*9000)
		}
		if err := vfs.Flush(ctx, path); err != nil {
			t.Fatalf("flush %d: %v", i, err)
		}
		blob, err := sto.GetManifest(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := store.DecodeManifestBlob(blob)
		if err != nil {
			t.Fatal(err)
		}
		if v, err := manifest.FormatVersion(raw); err != nil || v != 2 {
			t.Fatalf("flush %d: manifest format %d, %v; want 2", i, v, err)
		}
		// The spool stages it as a head too, over a base of its own.
		staged, err := os.ReadFile(mustDB(t, path).StagingManifestPath())
		if err != nil {
			t.Fatal(err)
		}
		if v, err := manifest.FormatVersion(staged); err != nil || v != 2 || len(staged) > manifest.ChunkSize+8<<10 {
			t.Errorf("flush %d: the staged manifest has format %d (%v), %d bytes; want a head", i, v, err, len(staged))
		}
		m, _, err := store.FetchManifest(ctx, []store.Store{sto}, key)
		if err != nil {
			t.Fatalf("flush %d: FetchManifest()=%v", i, err)
		}
		if i == 0 {
			full, err := m.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			whole = len(full)
		} else if len(raw) > manifest.ChunkSize+8<<10 || len(raw) >= whole/2 {
			// Chunk 0 (inline, 64 KiB) changes at every commit; the rest
			// of the head is a few overrides.
			t.Errorf("flush %d: a head of %d bytes for a one-row change; the whole manifest is %d", i, len(raw), whole)
		}
		checkReplica(t, sto, path)
		var want, got int64
		if err := db.QueryRow("SELECT sum(length(v)) + count(*) FROM t").Scan(&want); err != nil {
			t.Fatal(err)
		}
		rdb := openReplica(t, path, "")
		if err := rdb.QueryRow("SELECT sum(length(v)) + count(*) FROM t").Scan(&got); err != nil || got != want {
			t.Fatalf("flush %d: the replica reads %d, %v; want %d", i, got, err, want)
		}
		rdb.Close()
	}
}
