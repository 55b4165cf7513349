//go:build linux

package torture

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/faultproxy"
	"github.com/boule-vfs/boule/internal/miniotest"
	"github.com/boule-vfs/boule/internal/testfs"
	"github.com/boule-vfs/boule/internal/testlog"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/dir"
	"github.com/boule-vfs/boule/store/s3"
	"github.com/boule-vfs/boule/vfs"
)

var tortureMode = flag.String("boule.torture", "", `"long" runs the long variants of the torture tests (or set BOULE_TORTURE=long)`)

func long() bool {
	return *tortureMode == "long" || os.Getenv("BOULE_TORTURE") == "long"
}

// action is what the parent does in one round of a scenario.
type action int

const (
	killWriter   action = iota // let the writer commit a little, then SIGKILL it
	killUploader               // let the uploader process run a little, then SIGKILL it
	killMinio                  // SIGKILL MinIO, let the writer commit, restart MinIO
	injectFault                // switch the fault proxy to a random fault
)

// scenario describes one torture test.
type scenario struct {
	s3            bool     // an S3 store on MinIO, versioned; else a dir store
	proxy         bool     // uploads go through the fault proxy
	writerUploads bool     // the writer's configuration has the target, so it uploads in the background
	uploader      bool     // an uploader process runs too
	actions       []action // the first rounds take them in order, the others at random
	tmpfs         float64  // put the spool on a tmpfs this many times the initial database
	pad           int      // largest random blob in a log row
	churnMax      int      // largest random blob a churn row gets, beyond 100 bytes; zero means 3*pad
	churnBlob     int      // initial size of the churn rows
	short, long   time.Duration
}

// outcome is what a run did, for the scenario's own assertions.
type outcome struct {
	rounds, commits   int
	rows              int64 // rows in the database at the end
	dbSize            int64 // its size at the end
	spoolSize         int64 // the size of the spool's tmpfs during the run
	writerKills       int
	uploaderKills     int
	minioKills        int
	uploaderUploads   int64 // manifests put by uploader processes
	manifestsMidRun   int   // distinct manifests seen before the final flush
	manifestsVerified int
	versions          int
	writerStderr      string
	proxy             *faultproxy.Proxy
	faultKinds        map[faultproxy.Kind]int
}

// register applies cfg to the boule VFS of this process until the test
// ends.
func register(t testing.TB, cfg config.Config) {
	t.Helper()
	if err := vfs.Register(cfg); err != nil {
		t.Fatalf("Register()=%v", err)
	}
	t.Cleanup(func() { _ = vfs.Register(config.Config{}) })
}

func mustExec(t testing.TB, db *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("Exec(%q)=%v", q, err)
	}
}

// run runs a scenario and checks what every scenario must hold:
//
//   - after each writer kill and at the end, the local database holds every
//     transaction the writer reported committed (rows 1..N, N at least the
//     last reported seq), and no writer ever reports a seq twice;
//   - every manifest seen in the store (polled during the run, plus every
//     kept version) restores to a database that passes integrity_check and
//     holds rows 1..N for some N no larger than the final one;
//   - the store never goes backwards: N never decreases from one polled
//     manifest to the next, nor from one kept version to the next;
//   - after a flush, the newest manifest restores to the database byte for
//     byte.
func run(t *testing.T, sc scenario) *outcome {
	dur := sc.short
	if long() {
		dur = sc.long
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("BOULE_TORTURE_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (BOULE_TORTURE_SEED), %v of torture", seed, dur)
	rng := rand.New(rand.NewPCG(seed, 1))
	ctx := context.Background()
	out := &outcome{faultKinds: map[faultproxy.Kind]int{}}

	tmpdir := mustEvalTempDir(t)
	spoolDir := filepath.Join(tmpdir, "spool")
	if sc.tmpfs != 0 {
		testfs.MountTmpfs(t, spoolDir, "64m")
	}
	path := filepath.Join(tmpdir, "torture.db")

	var target config.Target
	var sto store.Store // read directly, never through the proxy
	var srv *miniotest.Server
	if sc.s3 {
		srv = miniotest.Start(t)
		srv.SetEnv(t)
		endpoint := srv.Endpoint
		if sc.proxy {
			out.proxy = faultproxy.Start(t, srv.Endpoint)
			endpoint = out.proxy.URL
		}
		tg := config.S3Target{
			Region: miniotest.Region, Endpoint: endpoint,
			ChunkBucket: "chunks", ManifestBucket: "manifests",
			CreateBucketsOnDemand: true,
		}
		target = config.Target{S3: &tg}
		direct := tg
		direct.Endpoint = srv.Endpoint
		s, err := s3.New(ctx, direct, s3.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.EnsureBuckets(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s.EnableVersioning(ctx); err != nil {
			t.Fatal(err)
		}
		sto = s
	} else {
		root := filepath.Join(tmpdir, "store")
		if err := os.Mkdir(root, 0o755); err != nil {
			t.Fatal(err)
		}
		target = config.Target{Dir: &config.DirTarget{Path: root}}
		s, err := dir.New(root)
		if err != nil {
			t.Fatal(err)
		}
		sto = s
	}
	// A higher call rate than the default 30/s: more manifests, so more
	// states to check, in a short run.
	full := config.Config{ReplicationSpoolingDir: spoolDir, ReplicationTargets: []config.Target{target}, MaxRequestsPerSecond: 300}
	writerCfg := full
	if !sc.writerUploads {
		writerCfg.ReplicationTargets = nil
	}

	// This process spools but does not upload while the children run.
	register(t, config.Config{ReplicationSpoolingDir: spoolDir})
	db, err := sql.Open("sqlite3", "file:"+path+"?vfs=boule&_busy_timeout=30000")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	db.SetMaxOpenConns(1)
	db.SetConnMaxIdleTime(0)
	db.SetConnMaxLifetime(0)
	mustExec(t, db, setupSQL(sc.churnBlob))
	if sc.tmpfs != 0 {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		out.spoolSize = int64(sc.tmpfs*float64(st.Size())) &^ 4095
		testfs.RemountTmpfs(t, spoolDir, fmt.Sprint(out.spoolSize))
	}
	key, err := store.ManifestKey(vfs.Spool().Hostname(), path)
	if err != nil {
		t.Fatal(err)
	}
	rec := startRecorder(sto, key)
	t.Cleanup(func() {
		select {
		case <-rec.stop:
		default:
			close(rec.stop)
			<-rec.done
		}
	})

	c := newCommits()
	writerStderr, uploaderStderr := &testlog.Buffer{}, &testlog.Buffer{}
	var writer, upl *proc
	var uplUploads *atomic.Int64
	startWriter := func() {
		writer = startProc(t, "writer", writerStderr, c.line, configJSON(t, writerCfg),
			envDB+"="+path, fmt.Sprint(envSeed, "=", rng.Uint64()), fmt.Sprint(envPad, "=", sc.pad), fmt.Sprint(envChurn, "=", sc.churnMax))
	}
	startUploader := func() {
		n := new(atomic.Int64)
		uplUploads = n
		upl = startProc(t, "uploader", uploaderStderr, func(line string) {
			if v, ok := strings.CutPrefix(line, "uploads "); ok {
				if k, err := strconv.ParseInt(v, 10, 64); err == nil {
					n.Store(k)
				}
			}
		}, configJSON(t, full))
	}
	stopWriter := func() {
		if err := writer.kill(); err != nil {
			t.Fatal(err)
		}
		writer = nil
		out.writerKills++
		out.rows = checkLocal(t, db, c)
	}
	stopUploader := func() {
		if err := upl.kill(); err != nil {
			t.Fatal(err)
		}
		upl = nil
		out.uploaderKills++
		out.uploaderUploads += uplUploads.Load()
	}

	// Run for dur and every action once; on a slow machine, go on (up to
	// four times as long) until at least two manifests reached the store,
	// so that the checks below have something to check.
	end := time.Now().Add(dur)
	hardEnd := time.Now().Add(4 * dur)
	for ; time.Now().Before(end) || out.rounds < len(sc.actions) || (rec.count() < 2 && time.Now().Before(hardEnd)); out.rounds++ {
		if writer == nil {
			startWriter()
		}
		if sc.uploader && upl == nil {
			startUploader()
		}
		a := sc.actions[rng.IntN(len(sc.actions))]
		if out.rounds < len(sc.actions) {
			a = sc.actions[out.rounds]
		}
		switch a {
		case killWriter:
			c.waitCommits(t, writer, rng.IntN(40), upl) // mostly soon after a restart
			if rng.IntN(3) == 0 {
				// Sometimes long enough to upload: a time, not a number of
				// commits, since captured commits take a millisecond or less.
				runFor(t, time.Duration(1000+rng.IntN(2000))*time.Millisecond, writer, upl)
			}
			time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond) // where in the next transaction the kill lands: random
			stopWriter()
		case killUploader:
			runFor(t, time.Duration(100+rng.IntN(2500))*time.Millisecond, writer, upl) // how far into its work the kill lands: random
			stopUploader()
		case killMinio:
			c.waitCommits(t, writer, rng.IntN(30), upl)
			srv.Kill()
			out.minioKills++
			// Commits go on while the store is down.
			c.waitCommits(t, writer, 10+rng.IntN(60), upl)
			if err := srv.Restart(); err != nil {
				t.Fatalf("restart minio: %v", err)
			}
			if rng.IntN(2) == 0 {
				// Time for the writer's backoff to end and an upload to
				// land, before the next kill.
				runFor(t, time.Duration(1000+rng.IntN(2000))*time.Millisecond, writer, upl)
			}
		case injectFault:
			f := randomFault(rng)
			out.proxy.Set(f)
			out.faultKinds[f.Kind]++
			// How long the fault lasts (a count may end it sooner):
			// random.
			runFor(t, time.Duration(100+rng.IntN(1500))*time.Millisecond, writer, upl)
			if rng.IntN(2) == 0 {
				// A calm spell: retries and backoffs run out, uploads
				// go through.
				out.proxy.Pass()
				c.waitCommits(t, writer, 20+rng.IntN(60), upl)
			}
		}
	}
	if writer != nil {
		stopWriter()
	}
	if upl != nil {
		stopUploader()
	}
	_, out.commits, _ = c.state()
	out.writerStderr = writerStderr.String()
	spoolAtEnd := listTree(spoolDir) + spoolState(spoolDir)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("writer stderr:\n%s\nuploader stderr:\n%s", ends(out.writerStderr, 3000), tail(uploaderStderr.String(), 3000))
			t.Logf("the spool when the run ended:\n%s", spoolAtEnd)
		}
	})
	out.manifestsMidRun = rec.count()

	// Converge: no more faults, room in the spool, a commit by this
	// process to heal whatever the last kill left, and a flush.
	if out.proxy != nil {
		out.proxy.Pass()
	}
	if sc.tmpfs != 0 {
		testfs.RemountTmpfs(t, spoolDir, "256m")
	}
	register(t, full)
	mustExec(t, db, "UPDATE churn SET v = randomblob(100) WHERE k = 0")
	fctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if err := vfs.Flush(fctx, path); err != nil {
		t.Fatalf("Flush() after the run=%v", err)
	}
	versions := rec.finish(t)
	out.versions = len(versions)
	checkLatest(t, sto, key, path, tmpdir)
	if st, err := os.Stat(path); err == nil {
		out.dbSize = st.Size()
	}

	rows := map[[32]byte]int64{}
	for sum, b := range rec.blobs {
		n := verifyManifest(t, sto, b, tmpdir)
		if n > out.rows {
			t.Fatalf("a manifest holds rows 1..%d, but the database only %d", n, out.rows)
		}
		rows[sum] = n
	}
	out.manifestsVerified = len(rows)
	for i := 1; i < len(rec.polled); i++ {
		if a, b := rows[rec.polled[i-1]], rows[rec.polled[i]]; b < a {
			t.Fatalf("the store went backwards: its latest manifest held rows 1..%d, then 1..%d", a, b)
		}
	}
	for i := 1; i < len(versions); i++ { // newest first
		if newer, older := rows[versions[i-1]], rows[versions[i]]; newer < older {
			t.Fatalf("manifest version %d holds rows 1..%d, the older version %d rows 1..%d", i-1, newer, i, older)
		}
	}
	if out.manifestsMidRun < 2 {
		t.Fatalf("only %d manifests reached the store during the run; the test proved little", out.manifestsMidRun)
	}
	if out.writerKills == 0 || out.commits == 0 {
		t.Fatalf("%d writer kills, %d commits: nothing was tortured", out.writerKills, out.commits)
	}
	t.Logf("%d rounds: %d commits (%d rows), kills: %d writer, %d uploader, %d minio; %d manifests seen during the run, %d verified (%d kept versions); %d uploaded by uploader processes",
		out.rounds, out.commits, out.rows, out.writerKills, out.uploaderKills, out.minioKills,
		out.manifestsMidRun, out.manifestsVerified, out.versions, out.uploaderUploads)
	return out
}

// randomFault picks what the proxy does next: an error status, resets,
// truncated answers, stalls or damaged uploads for the next few requests
// (PUTs only, sometimes), an outage until the next fault, or nothing.
func randomFault(rng *rand.Rand) faultproxy.Fault {
	n := 1 + rng.IntN(8)
	var f faultproxy.Fault
	switch rng.IntN(10) {
	case 0:
		f = faultproxy.Fail(http.StatusInternalServerError, n)
	case 1:
		f = faultproxy.Fail(http.StatusServiceUnavailable, n)
	case 2:
		f = faultproxy.Fail(http.StatusTooManyRequests, n)
	case 3:
		f = faultproxy.ResetNext(n)
	case 4:
		f = faultproxy.TruncateNext(n)
	case 5:
		f = faultproxy.StallNext(time.Duration(100+rng.IntN(1900))*time.Millisecond, n)
	case 6:
		return faultproxy.CorruptNext(n)
	case 7:
		return faultproxy.Fault{Kind: faultproxy.Reset} // down until the next fault
	default:
		return faultproxy.Fault{}
	}
	if rng.IntN(2) == 0 {
		f.Match = faultproxy.Methods(http.MethodPut)
	}
	return f
}

// TestKillWriter kills the writer, which uploads to a dir store in the
// background, at random points, and restarts it.
func TestKillWriter(t *testing.T) {
	run(t, scenario{
		writerUploads: true,
		actions:       []action{killWriter},
		pad:           2000, churnBlob: 3000,
		short: 10 * time.Second, long: 45 * time.Second,
	})
}

// TestKillUploader kills a separate uploader process at random points
// while a writer that only spools keeps committing (and is killed now
// and then too).
func TestKillUploader(t *testing.T) {
	out := run(t, scenario{
		uploader: true,
		actions:  []action{killUploader, killUploader, killWriter, killUploader},
		pad:      2000, churnBlob: 3000,
		short: 12 * time.Second, long: 45 * time.Second,
	})
	if out.uploaderKills < 3 || out.uploaderUploads == 0 {
		t.Fatalf("%d uploader kills, %d manifests uploaded by uploader processes: want both", out.uploaderKills, out.uploaderUploads)
	}
}

// TestKillMinio kills MinIO with SIGKILL and restarts it while the writer
// commits and uploads to a versioned bucket; the writer is killed too.
func TestKillMinio(t *testing.T) {
	out := run(t, scenario{
		s3: true, writerUploads: true,
		// A restarted writer forgets its uploader's backoff (up to a
		// minute after repeated failures), so kills of both keep
		// manifests coming.
		actions: []action{killMinio, killWriter, killMinio, killWriter},
		pad:     2000, churnBlob: 3000,
		short: 14 * time.Second, long: 45 * time.Second,
	})
	if out.minioKills < 2 {
		t.Fatalf("%d minio kills, want at least 2", out.minioKills)
	}
}

// TestFaultProxy puts the fault proxy between MinIO and both uploaders,
// the writer's and a separate process's, and switches faults at random:
// 500s, 503s, 429s, resets, truncated answers, stalls, damaged uploads and
// outages. Both processes are killed now and then.
func TestFaultProxy(t *testing.T) {
	out := run(t, scenario{
		s3: true, proxy: true, writerUploads: true, uploader: true,
		actions: []action{injectFault, injectFault, killWriter, injectFault, killUploader, injectFault},
		pad:     2000, churnBlob: 3000,
		short: 15 * time.Second, long: 45 * time.Second,
	})
	if out.proxy.Faulted() == 0 {
		t.Fatal("no request was faulted")
	}
	t.Logf("faults: %v; %d of %d requests faulted", out.faultKinds, out.proxy.Faulted(), out.proxy.Total())
}

// TestTinySpool puts the spool on a tmpfs 2.5 times the size of the
// database, while the writer, killed at random points, grows it: snapshots
// fail for want of room at whatever step the tmpfs fills up, then succeed
// again as uploads drain the spool, and fail for good once the database
// outgrows it. Commits never fail; once the tmpfs is grown, replication
// catches up.
func TestTinySpool(t *testing.T) {
	out := run(t, scenario{
		tmpfs: 2.5, writerUploads: true,
		actions: []action{killWriter},
		pad:     200, churnBlob: 2000, churnMax: 4000,
		short: 10 * time.Second, long: 45 * time.Second,
	})
	paused := strings.Count(out.writerStderr, "replication paused")
	resumed := strings.Count(out.writerStderr, "replication resumed")
	t.Logf("a %d-byte spool; %d \"replication paused\" and %d \"replication resumed\" logged; the database grew to %d bytes", out.spoolSize, paused, resumed, out.dbSize)
	if paused == 0 {
		t.Fatalf("no writer logged that replication paused: the spool never filled up; stderr:\n%s", tail(out.writerStderr, 2000))
	}
}
