package upload

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/boule-vfs/boule/internal/testfs"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/restore"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/cache"
	"github.com/boule-vfs/boule/store/storetest"
)

const testHost = "uploader-test-host"

// testSpool is one database's spool directory, driven through package
// spool: what the tests stage and hand over goes through the spool's own
// primitives (spool.DB's StageChunks, StageManifest and Publish, and
// spool.Dir.PutHandover for the states that crashes and races leave).
type testSpool struct {
	t    testing.TB
	db   *spool.DB
	sp   spool.Dir
	dir  string
	path string
	seq  uint32
}

// snap is one snapshot: its manifest, encoded, and the files of its
// non-inline chunks.
type snap struct {
	m     *manifest.Manifest
	mb    []byte
	data  []byte
	files map[manifest.Fingerprint][]byte
}

// fakeTarget returns a test clock, a fake store named "s3", and the
// uploadOpts of an uploader with that one target, changed by tweak when
// it is not nil.
func fakeTarget(tweak func(*Options)) (*storetest.Clock, *storetest.Fake, Options) {
	now := storetest.NewClock()
	fake := storetest.NewFake("s3")
	opts := uploadOpts(now, target(fake))
	if tweak != nil {
		tweak(&opts)
	}
	return now, fake, opts
}

// addedTo returns the chunk files of s that prev does not have: what a
// commit of s after prev adds to the spool.
func (s *snap) addedTo(prev *snap) []manifest.Fingerprint {
	var added []manifest.Fingerprint
	for fp := range s.files {
		if _, ok := prev.files[fp]; !ok {
			added = append(added, fp)
		}
	}
	return added
}

// flushAsync starts u.Flush of dir and returns where its result arrives.
func flushAsync(u *Uploader, dir string) <-chan error {
	errc := make(chan error, 1)
	go func() { errc <- u.Flush(context.Background(), dir) }()
	return errc
}

func newTestSpool(t testing.TB, root, path string) *testSpool {
	t.Helper()
	s, err := spool.Open(spool.Options{Dir: root, BootID: "upload-test", Hostname: testHost, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	db, err := s.DB(path)
	if err != nil {
		t.Fatal(err)
	}
	// The directory and its record of the source path, as a connection's
	// first snapshot makes them.
	if err := db.StageChunks(nil); err != nil {
		t.Fatal(err)
	}
	return &testSpool{t: t, db: db, sp: spool.OpenDir(db.Dir()), dir: db.Dir(), path: path}
}

// testData returns size pseudo-random bytes determined by seed.
func testData(seed uint64, size int) []byte { return storetest.RandomBytes(seed, size) }

// withChunk returns a copy of data whose chunk i is rewritten from seed.
func withChunk(data []byte, i int, seed uint64) []byte {
	out := bytes.Clone(data)
	end := min((i+1)*manifest.ChunkSize, len(out))
	copy(out[i*manifest.ChunkSize:end], testData(seed, end-i*manifest.ChunkSize))
	return out
}

// snapshot describes data as the spool would: chunk 0 inline, the others
// as files named by fingerprint.
func (d *testSpool) snapshot(data []byte, created time.Time) *snap {
	d.t.Helper()
	d.seq++
	m := &manifest.Manifest{
		Hostname:      testHost,
		SourcePath:    d.path,
		Generator:     "boule uploader test",
		Size:          int64(len(data)),
		PageSize:      4096,
		ChangeCounter: d.seq,
		Created:       created.UTC(),
		SourceCtime:   created.UTC(),
		Chunks:        make([]manifest.Fingerprint, manifest.NumChunks(int64(len(data)))),
	}
	m.VersionID[0] = byte(d.seq)
	s := &snap{m: m, data: data, files: map[manifest.Fingerprint][]byte{}}
	for i := range m.Chunks {
		c := data[i*manifest.ChunkSize : i*manifest.ChunkSize+manifest.ChunkLen(m.Size, i)]
		m.Chunks[i] = manifest.Sum(c)
		if i == 0 {
			m.Inline = map[uint32][]byte{0: c}
		} else {
			s.files[m.Chunks[i]] = c
		}
	}
	mb, err := m.MarshalBinary()
	if err != nil {
		d.t.Fatal(err)
	}
	s.mb = mb
	return s
}

// fps returns the fingerprints of the snapshot's chunk files.
func (s *snap) fps() []manifest.Fingerprint {
	var out []manifest.Fingerprint
	for fp := range s.files {
		out = append(out, fp)
	}
	slices.SortFunc(out, func(a, b manifest.Fingerprint) int { return bytes.Compare(a[:], b[:]) })
	return out
}

// subset returns s's chunk files named in only, all of them when only is
// nil.
func (s *snap) subset(only []manifest.Fingerprint) map[manifest.Fingerprint][]byte {
	if only == nil {
		return s.files
	}
	out := make(map[manifest.Fingerprint][]byte, len(only))
	for _, fp := range only {
		out[fp] = s.files[fp]
	}
	return out
}

// stageNew describes data as a snapshot (snapshot) and stages it with
// all its chunk files (stage).
func (d *testSpool) stageNew(data []byte, created time.Time) *snap {
	d.t.Helper()
	s := d.snapshot(data, created)
	d.stage(s)
	return s
}

// stage makes s the staged snapshot, with the given chunk files staged
// (all of them if none are given), as a snapshot does.
func (d *testSpool) stage(s *snap, only ...manifest.Fingerprint) {
	d.t.Helper()
	if err := d.db.StageChunks(s.subset(only)); err != nil {
		d.t.Fatal(err)
	}
	if err := d.db.StageManifest(s.m); err != nil {
		d.t.Fatal(err)
	}
}

// publish hands s over, with the given chunk files (all if none are
// given), into ready/ or consuming/, without touching the staged
// snapshot, and returns the handed-over snapshot.
func (d *testSpool) publish(state spool.HandoverState, s *snap, only ...manifest.Fingerprint) spool.Handover {
	d.t.Helper()
	h, err := d.sp.PutHandover(s.m, s.subset(only), state)
	if err != nil {
		d.t.Fatalf("publish: %v", err)
	}
	return h
}

// commit is what a write transaction does to the spool: its new chunks
// (those given, all if none are) are staged with its manifest, then
// staged chunks it does not reference are deleted and, when ready/ is
// free, the staged snapshot is handed over. It reports whether it was;
// when it was not, it stays staged.
func (d *testSpool) commit(s *snap, newChunks ...manifest.Fingerprint) (published bool) {
	d.t.Helper()
	d.stage(s, newChunks...)
	published, err := d.db.Publish()
	if err != nil {
		d.t.Fatal(err)
	}
	return published
}

func (d *testSpool) key() string {
	d.t.Helper()
	k, err := store.ManifestKey(testHost, d.path)
	if err != nil {
		d.t.Fatal(err)
	}
	return k
}

// hasStaged reports whether a snapshot is staged.
func (d *testSpool) hasStaged() bool {
	_, ok := d.sp.StagedID()
	return ok
}

// snapshots lists the snapshots left in ready/ and consuming/.
func (d *testSpool) snapshots() []string {
	d.t.Helper()
	names, err := handedOverNames(d.sp)
	if err != nil {
		d.t.Fatal(err)
	}
	return names
}

// stagedChunks lists the chunk files left staged.
func (d *testSpool) stagedChunks() []manifest.Fingerprint {
	d.t.Helper()
	fps, err := d.sp.StagedChunks().List()
	if err != nil {
		d.t.Fatal(err)
	}
	return fps
}

// uploadOpts are the options of the tests' uploaders: no pacing, no
// sleeping, no periodic scan, no touching.
func uploadOpts(now *storetest.Clock, targets ...Target) Options {
	return Options{
		Targets:     targets,
		Rate:        1e6,
		Burst:       1e6,
		FlushRate:   1e6,
		Workers:     1,
		ScanPeriod:  time.Hour,
		ManifestGap: -1,
		TouchPeriod: -1,
		PackChunks:  1, // most tests count chunk puts; TestUploaderPacks* pack
		Retry: store.RetryOptions{
			MaxAttempts:   2,
			NotFoundDelay: -1,
			Jitter:        func() float64 { return 0 },
		},
		Now:    now.Now,
		Logger: slog.New(slog.DiscardHandler),
	}
}

func newTestUploader(t testing.TB, opts Options) *Uploader {
	t.Helper()
	u, err := New(opts)
	if err != nil {
		t.Fatalf("NewUploader()=%v", err)
	}
	t.Cleanup(func() { _ = u.Close() })
	return u
}

// oneTarget sets up what most tests start with: a clock, a fake S3 store,
// an uploader to it with uploadOpts (changed by tweak, when not nil), and a
// spool for the database source.
func oneTarget(t testing.TB, source string, tweak func(*Options)) (*storetest.Clock, *storetest.Fake, *Uploader, *testSpool) {
	t.Helper()
	now, fake, opts := fakeTarget(tweak)
	return now, fake, newTestUploader(t, opts), newTestSpool(t, t.TempDir(), source)
}

func target(s *storetest.Fake) Target { return Target{Name: s.Name(), Store: s} }

// mustFlush flushes dir and fails t on error.
func mustFlush(t testing.TB, u *Uploader, dir string) {
	t.Helper()
	if err := u.Flush(context.Background(), dir); err != nil {
		t.Fatalf("Flush()=%v, want nil", err)
	}
}

// flushNoCalls flushes dir and fails t if the flush made any call to fake,
// naming the flush what.
func flushNoCalls(t testing.TB, u *Uploader, fake *storetest.Fake, dir, what string) {
	t.Helper()
	before := fake.NumCalls()
	mustFlush(t, u, dir)
	if got := fake.CallsSince(before); len(got) != 0 {
		t.Errorf("%s made calls %v, want none", what, got)
	}
}

// checkStored checks that the store's manifest for d is want, and that the
// database reassembled from the store is want's data.
func checkStored(t testing.TB, fake *storetest.Fake, d *testSpool, want *snap) {
	t.Helper()
	got := fake.ManifestAt(d.key())
	if !bytes.Equal(got, want.mb) {
		gm, _ := manifest.Decode(got)
		gotN := -1
		if gm != nil {
			gotN = int(gm.ChangeCounter)
		}
		t.Fatalf("%s: stored manifest is #%d (%d bytes), want #%d", fake.Name(), gotN, len(got), want.m.ChangeCounter)
	}
	checkReassembled(t, fake, d, want)
}

func manifestCounters(puts [][]byte) []uint32 {
	var out []uint32
	for _, b := range puts {
		if m, err := manifest.Decode(b); err == nil {
			out = append(out, m.ChangeCounter)
		}
	}
	return out
}

// 1. A published snapshot: chunks first, then the manifest, then the
// snapshot is gone from the spool.
func TestUploaderReadySnapshot(t *testing.T) {
	base := storetest.NewClock().Now()
	tests := []struct {
		name string
		data []byte
	}{
		{"empty database", nil},
		{"one partial chunk", testData(1, 1000)},
		{"one chunk", testData(2, manifest.ChunkSize)},
		{"four chunks", testData(3, 4*manifest.ChunkSize)},
		{"partial last chunk", testData(4, 2*manifest.ChunkSize+123)},
		{"repeated chunks", bytes.Repeat(testData(5, manifest.ChunkSize), 4)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, fake, u, d := oneTarget(t, "/data/app.db", nil)
			s := d.snapshot(tt.data, base)
			if !d.commit(s) {
				t.Fatal("test setup: the snapshot was not handed over")
			}
			if got := d.stagedChunks(); len(got) != 0 {
				t.Fatalf("test setup: staged chunks %v after publication, want none", got)
			}

			mustFlush(t, u, d.dir)

			calls := fake.CallLog()
			firstManifest := slices.IndexFunc(calls, func(c storetest.Call) bool { return c.Op == storetest.OpPutManifest })
			if firstManifest < 0 {
				t.Fatalf("no manifest put; calls: %v", calls)
			}
			put := map[string]int{}
			for i, c := range calls {
				if c.Op == storetest.OpPutChunk {
					put[c.Key]++
					if i > firstManifest {
						t.Errorf("chunk %s put after the manifest; calls: %v", c.Key[:8], calls)
					}
				}
			}
			for _, fp := range s.fps() {
				if put[fp.String()] != 1 {
					t.Errorf("chunk %s put %d times, want 1", fp.String()[:8], put[fp.String()])
				}
			}
			if len(put) != len(s.files) {
				t.Errorf("%d distinct chunks put, want %d (chunk 0 is inline)", len(put), len(s.files))
			}
			if n := storetest.CountOps(calls, storetest.OpPutManifest); n != 1 {
				t.Errorf("%d manifest puts, want 1", n)
			}
			if got := d.snapshots(); len(got) != 0 {
				t.Errorf("snapshots left after Flush: %v", got)
			}
			checkStored(t, fake, d, s)
			fake.CheckIntegrity(t)
			if m, err := d.sp.Uploaded(); err != nil || m == nil || spool.ManifestID(s.mb) != mustPlainID(t, m) {
				t.Errorf("uploaded record: %v, %v; want the manifest", m, err)
			}
			sts := u.Status()
			if len(sts) != 1 {
				t.Fatalf("Status()=%d entries, want 1", len(sts))
			}
			got := sts[0]
			if got.Source != d.path || got.Uploads != 1 || got.Chunks != int64(len(s.files)) || got.Lag != 0 || got.Blocked || got.LastError != "" {
				t.Errorf("Status()=%+v, want source %s, 1 upload, %d chunks, no lag", got, d.path, len(s.files))
			}
		})
	}
}

// 2. What a crashed uploader left in consuming/ goes before ready/: each
// manifest put follows its chunks, manifests are put oldest first (the
// uploader may also squash the older ones and put only the newest), the
// newest ends in the store, and both directories are emptied.
func TestUploaderConsumingFirst(t *testing.T) {
	base := storetest.NewClock().Now()
	tests := []struct {
		name             string
		consuming, ready bool
		staged           bool // staging/manifest holds the newest snapshot
		chunksPut        bool // the crashed uploader had put s1's chunks
		wantCounter      uint32
	}{
		{name: "consuming only", consuming: true, staged: true, wantCounter: 1},
		{name: "consuming only, nothing staged", consuming: true, wantCounter: 1},
		{name: "ready only", ready: true, staged: true, wantCounter: 2},
		{name: "consuming and ready", consuming: true, ready: true, staged: true, wantCounter: 2},
		{name: "consuming and ready, nothing staged", consuming: true, ready: true, wantCounter: 2},
		{name: "consuming with chunks already put", consuming: true, ready: true, staged: true, chunksPut: true, wantCounter: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, fake, u, d := oneTarget(t, "/data/crash.db", nil)
			data1 := testData(10, 3*manifest.ChunkSize)
			s1 := d.snapshot(data1, base)
			// s2 rewrites chunk 2 and keeps chunk 1 of s1.
			s2 := d.snapshot(withChunk(data1, 2, 11), base.Add(time.Second))
			var want *snap
			if tt.consuming {
				if tt.chunksPut {
					// The crashed uploader put the chunks and removed
					// their files, but not the manifest.
					for fp, c := range s1.files {
						if err := fake.PutChunk(context.Background(), fp, c); err != nil {
							t.Fatal(err)
						}
					}
					d.publish(spool.InConsuming, s1, []manifest.Fingerprint{}...)
				} else {
					d.publish(spool.InConsuming, s1)
				}
				want = s1
			}
			if tt.ready {
				// Only the chunks s2 adds when s1 is spooled.
				var added []manifest.Fingerprint
				for fp := range s2.files {
					if _, ok := s1.files[fp]; !ok || !tt.consuming {
						added = append(added, fp)
					}
				}
				d.publish(spool.InReady, s2, added...)
				want = s2
			}
			if tt.staged {
				d.stage(want, []manifest.Fingerprint{}...)
			}
			before := fake.NumCalls()

			mustFlush(t, u, d.dir)

			got := manifestCounters(fake.ManifestPuts())
			if len(got) == 0 || got[len(got)-1] != tt.wantCounter || !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
				t.Errorf("manifests put in order %v, want increasing and ending with %d; calls: %v", got, tt.wantCounter, fake.CallsSince(before))
			}
			if got := d.snapshots(); len(got) != 0 {
				t.Errorf("snapshots left after Flush: %v", got)
			}
			checkStored(t, fake, d, want)
			fake.CheckIntegrity(t)
		})
	}
}

// After an upload, the spool can publish its next snapshot to ready/ (it
// renames a directory there with os.Rename, which fails on any existing
// directory, even an empty one).
func TestUploaderReadyReusable(t *testing.T) {
	now, fake, u, d := oneTarget(t, "/data/reuse.db", nil)
	data := testData(12, 2*manifest.ChunkSize)
	for i := range 3 {
		data = withChunk(data, 1, uint64(13+i))
		s := d.snapshot(data, now.Now())
		if !d.commit(s) {
			t.Fatalf("commit %d: not handed over (a snapshot left waiting: %v)", i+1, !d.sp.Idle())
		}
		mustFlush(t, u, d.dir)
		checkStored(t, fake, d, s)
	}
	fake.CheckIntegrity(t)
}

// 3. Only a staged snapshot: its chunks go and leave staging, then the
// manifest; an unchanged spool then costs no call, in this process or the
// next.
func TestUploaderStagingOnly(t *testing.T) {
	now, fake, opts := fakeTarget(nil)
	u := newTestUploader(t, opts)
	d := newTestSpool(t, t.TempDir(), "/data/staged.db")
	s := d.stageNew(testData(20, 3*manifest.ChunkSize+7), now.Now())

	t.Run("first flush", func(t *testing.T) {
		mustFlush(t, u, d.dir)
		calls := fake.CallLog()
		if n := storetest.CountOps(calls, storetest.OpPutChunk); n != len(s.files) {
			t.Errorf("%d chunk puts, want %d; calls: %v", n, len(s.files), calls)
		}
		if len(calls) == 0 || calls[len(calls)-1].Op != storetest.OpPutManifest || storetest.CountOps(calls, storetest.OpPutManifest) != 1 {
			t.Errorf("calls %v, want the chunks then one manifest", calls)
		}
		if got := d.stagedChunks(); len(got) != 0 {
			t.Errorf("staged chunks %v after Flush, want none", got)
		}
		if !d.hasStaged() {
			t.Error("staged snapshot removed; it must stay")
		}
		checkStored(t, fake, d, s)
		fake.CheckIntegrity(t)
	})
	t.Run("second flush", func(t *testing.T) {
		flushNoCalls(t, u, fake, d.dir, "second Flush")
	})
	t.Run("new process", func(t *testing.T) {
		u2 := newTestUploader(t, opts)
		flushNoCalls(t, u2, fake, d.dir, "Flush by a new uploader (the uploaded file says it is done)")
	})
}

// 4. A snapshot published while the staged one is being uploaded: the
// store never goes backwards, and no manifest is put before its chunks.
func TestUploaderStagingRace(t *testing.T) {
	tests := []struct {
		name    string
		blockOp string
	}{
		{"published during a staged chunk put", storetest.OpPutChunk},
		{"published during the staged manifest put", storetest.OpPutManifest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now, fake, u, d := oneTarget(t, "/data/race.db", nil)
			data1 := testData(30, 4*manifest.ChunkSize)
			s1 := d.stageNew(data1, now.Now())
			// The next transaction rewrites chunk 3 and adds a chunk; it
			// still references chunks 1 and 2 of s1.
			data2 := append(withChunk(data1, 3, 31), testData(32, 100)...)
			s2 := d.snapshot(data2, now.Now().Add(time.Second))
			added := s2.addedTo(s1)

			gate := fake.BlockOnce(tt.blockOp, nil)
			errc := flushAsync(u, d.dir)
			gate.Wait(t)
			if !d.commit(s2, added...) {
				t.Fatal("test setup: the transaction did not hand its snapshot over")
			}
			gate.Open()
			if err := <-errc; err != nil {
				t.Fatalf("Flush()=%v, want nil", err)
			}

			got := manifestCounters(fake.ManifestPuts())
			if !slices.IsSorted(got) {
				t.Errorf("manifests put in order %v: the store went backwards", got)
			}
			checkStored(t, fake, d, s2) // the newest, after Flush
			fake.CheckIntegrity(t)      // no manifest before its chunks
			if snaps, staged := d.snapshots(), d.stagedChunks(); len(snaps) != 0 || len(staged) != 0 {
				t.Errorf("spool not drained: snapshots %v, staged chunks %v", snaps, staged)
			}
			// And the next flush finds the staged manifest (s2) uploaded.
			flushNoCalls(t, u, fake, d.dir, "next Flush")
		})
	}
}

// 5. Several targets: all non-cache ones get everything; a failing one
// fails the flush and keeps the spool; a failing cache does not matter.
func TestUploaderTargets(t *testing.T) {
	tests := []struct {
		name     string
		failing  string // target name
		op       string
		err      error
		cache    bool // the failing target is a cache
		wantErr  error
		keepAll  bool // every spool file stays
		keepOnly bool // only the manifest stays (the chunks reached every target)
	}{
		{name: "all succeed"},
		{name: "second fails chunk put permanently", failing: "b", op: storetest.OpPutChunk, err: storetest.PermanentErr(), wantErr: store.ErrPermanent, keepAll: true},
		{name: "second fails chunk put transiently", failing: "b", op: storetest.OpPutChunk, err: storetest.RetryableErr(), wantErr: storetest.RetryableErr(), keepAll: true},
		{name: "second fails manifest put permanently", failing: "b", op: storetest.OpPutManifest, err: storetest.PermanentErr(), wantErr: store.ErrPermanent, keepOnly: true},
		{name: "cache fails permanently", failing: "cache", cache: true, op: storetest.OpPutChunk, err: storetest.PermanentErr()},
		{name: "cache fails transiently", failing: "cache", cache: true, op: storetest.OpPutChunk, err: storetest.RetryableErr()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := storetest.NewClock()
			a, b, c := storetest.NewFake("a"), storetest.NewFake("b"), storetest.NewFake("cache")
			byName := map[string]*storetest.Fake{"a": a, "b": b, "cache": c}
			u := newTestUploader(t, uploadOpts(now, Target{Name: "cache", Store: c, Cache: true}, target(a), target(b)))
			d := newTestSpool(t, t.TempDir(), "/data/multi.db")
			s := d.snapshot(testData(40, 3*manifest.ChunkSize), now.Now())
			d.stage(s, []manifest.Fingerprint{}...)
			h := d.publish(spool.InReady, s)
			if tt.failing != "" {
				byName[tt.failing].FailOn(tt.op, nil, tt.err)
			}

			err := u.Flush(context.Background(), d.dir)
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("Flush()=%v, want nil", err)
			case tt.wantErr == nil:
			case err == nil:
				t.Fatalf("Flush()=nil, want an error like %v", tt.wantErr)
			case errors.Is(tt.wantErr, store.ErrPermanent) && !errors.Is(err, store.ErrPermanent):
				t.Fatalf("Flush()=%v, want ErrPermanent", err)
			case !errors.Is(tt.wantErr, store.ErrPermanent) && !store.IsRetryable(err):
				t.Fatalf("Flush()=%v, want a retryable error", err)
			}

			if n := storetest.CountOps(c.CallLog(), storetest.OpPutManifest); n != 0 {
				t.Errorf("cache got %d manifest puts, want 0", n)
			}
			switch {
			case tt.keepAll:
				if !inSnapshot(d, h, s.fps()...) {
					t.Errorf("spool lost the manifest or a chunk of the snapshot after a failed Flush")
				}
				if d.sp.HasUploaded() {
					t.Error("uploaded file written after a failed Flush")
				}
			case tt.keepOnly:
				if !inSnapshot(d, h) {
					t.Error("spool lost the manifest after a failed Flush")
				}
				// Retried once the target is back: everything arrives.
				byName[tt.failing].ClearHooks()
				mustFlush(t, u, d.dir)
				for _, st := range []*storetest.Fake{a, b} {
					checkStored(t, st, d, s)
				}
			default:
				for _, st := range []*storetest.Fake{a, b} {
					checkStored(t, st, d, s)
					st.CheckIntegrity(t)
				}
				if got := d.snapshots(); len(got) != 0 {
					t.Errorf("snapshots left after a successful Flush: %v", got)
				}
				if tt.failing == "" {
					for _, fp := range s.fps() {
						if !c.HasChunk(fp) {
							t.Errorf("cache lacks chunk %s", fp.String()[:8])
						}
					}
				}
			}
		})
	}
}

// inSnapshot reports whether the handed-over snapshot h is still there,
// in ready/ or, once the uploader has taken it, in consuming/, with its
// manifest and the chunk files of fps.
func inSnapshot(d *testSpool, h spool.Handover, fps ...manifest.Fingerprint) bool {
	d.t.Helper()
	for _, list := range []func() ([]spool.Handover, error){d.sp.Ready, d.sp.Consuming} {
		hs, err := list()
		if err != nil {
			d.t.Fatal(err)
		}
		for _, x := range hs {
			if x.Name != h.Name {
				continue
			}
			if s, err := x.Snapshot(); err != nil || s == nil {
				return false
			}
			for _, fp := range fps {
				if !x.Chunks().Has(fp) {
					return false
				}
			}
			return true
		}
	}
	return false
}

// bgEnv runs an uploader's background path with one worker, and barrier
// databases whose uploads tell when every wake-up queued before them has
// been handled.
type bgEnv struct {
	t        *testing.T
	root     string
	now      *storetest.Clock
	store    *storetest.Fake
	u        *Uploader
	db       *testSpool
	barriers map[string]bool // manifest keys of the barrier databases
}

// failingChunkPuts commits a snapshot of data while every chunk put
// fails with err, and lets the background uploader try it: it returns
// once the uploader has done what it does for that commit.
func (e *bgEnv) failingChunkPuts(data []byte, err error) *snap {
	e.t.Helper()
	s := e.db.snapshot(data, e.now.Now())
	e.db.commit(s)
	e.store.FailOn(storetest.OpPutChunk, nil, err)
	e.u.Start()
	e.u.Add(e.db.dir)
	e.sync()
	return s
}

func newBGEnv(t *testing.T, tweak func(*Options)) *bgEnv {
	t.Helper()
	now, fake, opts := fakeTarget(tweak)
	root := t.TempDir()
	e := &bgEnv{
		t:        t,
		root:     root,
		now:      now,
		store:    fake,
		u:        newTestUploader(t, opts),
		db:       newTestSpool(t, root, "/data/bg.db"),
		barriers: map[string]bool{},
	}
	return e
}

// sync waits until a free worker has handled every wake-up queued so far
// (with one worker, or all others busy, wake-ups are handled in order,
// those queued together as one group, which it waits for):
// it notifies a new barrier database, which holds one snapshot of one
// inline chunk (so one manifest put and no other call), and waits for its
// manifest in the store. A new database each time: no pass still running
// for an earlier barrier can upload it early.
func (e *bgEnv) sync() {
	e.t.Helper()
	b := newTestSpool(e.t, e.root, fmt.Sprintf("/data/barrier-%d.db", len(e.barriers)))
	s := b.snapshot(testData(uint64(1000+len(e.barriers)), 100), e.now.Now())
	b.commit(s)
	key := b.key()
	e.barriers[key] = true
	e.u.Notify(b.dir)
	e.store.WaitFor(e.t, "the barrier's manifest", func(f *storetest.Fake) bool {
		return bytes.Equal(f.ManifestAt(key), s.mb)
	})
	// The worker may have taken the barrier together with the databases
	// queued before it, and uploads them all at once: wait for them too.
	st := e.u.state(b.dir)
	e.u.mu.Lock()
	g := st.group
	e.u.mu.Unlock()
	<-g.finished
}

// callsForDB returns the calls since the first n that are not the
// barriers'.
func (e *bgEnv) callsForDB(n int) []storetest.Call {
	var out []storetest.Call
	for _, c := range e.store.CallsSince(n) {
		if !e.barriers[c.Key] {
			out = append(out, c)
		}
	}
	return out
}

func (e *bgEnv) status() Status {
	e.t.Helper()
	for _, s := range e.u.Status() {
		if s.Dir == e.db.dir {
			return s
		}
	}
	e.t.Fatalf("Status() lacks %s", e.db.dir)
	return Status{}
}

// 6. Errors in the background: a permanent one stops the database until a
// flush succeeds; a transient one backs off.
func TestUploaderBackgroundErrors(t *testing.T) {
	t.Run("permanent", func(t *testing.T) {
		e := newBGEnv(t, nil)
		s1 := e.failingChunkPuts(testData(50, 3*manifest.ChunkSize), storetest.PermanentErr())
		if got := e.callsForDB(0); len(got) != 1 || got[0].Op != storetest.OpPutChunk || !errors.Is(got[0].Err, store.ErrPermanent) {
			t.Fatalf("calls %v, want one failed chunk put (a permanent error is not retried)", got)
		}
		st := e.status()
		if !st.Blocked || st.Failures != 1 || st.LastError == "" {
			t.Fatalf("Status()=%+v, want blocked with 1 failure and an error", st)
		}

		// Past any backoff, and with the store fixed, the background
		// still leaves the database alone.
		e.now.Advance(2 * maxFailureBackoff)
		e.store.ClearHooks()
		n := e.store.NumCalls()
		e.u.Notify(e.db.dir)
		e.sync()
		if got := e.callsForDB(n); len(got) != 0 {
			t.Fatalf("background calls %v for a blocked database, want none", got)
		}
		if st := e.status(); !st.Blocked {
			t.Fatalf("Status().Blocked=false after Notify, want true")
		}

		// A flush retries, and unblocks on success.
		mustFlush(t, e.u, e.db.dir)
		checkStored(t, e.store, e.db, s1)
		if st := e.status(); st.Blocked || st.LastError != "" {
			t.Fatalf("Status()=%+v after a successful Flush, want unblocked, no error", st)
		}

		// And the background uploads again.
		s2 := e.db.snapshot(withChunk(s1.data, 1, 51), e.now.Now())
		e.db.commit(s2, s2.m.Chunks[1]) // the changed chunk
		e.u.Notify(e.db.dir)
		e.sync()
		checkStored(t, e.store, e.db, s2)
		e.store.CheckIntegrity(t)
	})

	t.Run("retryable", func(t *testing.T) {
		e := newBGEnv(t, nil)
		s1 := e.failingChunkPuts(testData(60, 2*manifest.ChunkSize), storetest.RetryableErr())
		if got := e.callsForDB(0); storetest.CountOps(got, storetest.OpPutChunk) != 2 || len(got) != 2 {
			t.Fatalf("calls %v, want 2 failed chunk puts (MaxAttempts 2)", got)
		}
		if st := e.status(); st.Blocked || st.Failures != 1 || st.LastError == "" {
			t.Fatalf("Status()=%+v, want not blocked, 1 failure, an error", st)
		}
		e.store.ClearHooks()

		steps := []struct {
			name      string
			advance   time.Duration
			wantCalls bool
		}{
			{"at once", 0, false},
			{"within the backoff", minFailureBackoff / 2, false},
			{"after the backoff", minFailureBackoff, true},
		}
		for _, step := range steps {
			e.now.Advance(step.advance)
			n := e.store.NumCalls()
			e.u.Notify(e.db.dir)
			e.sync()
			got := e.callsForDB(n)
			if (len(got) > 0) != step.wantCalls {
				t.Fatalf("%s: calls %v, want calls: %v", step.name, got, step.wantCalls)
			}
		}
		checkStored(t, e.store, e.db, s1)
		if st := e.status(); st.LastError != "" || st.Uploads != 1 {
			t.Fatalf("Status()=%+v after recovery, want no error and 1 upload", st)
		}
	})
}

// 7. A chunk uploaded recently by this process is not put again.
func TestUploaderRecentChunks(t *testing.T) {
	const ttl = time.Hour
	tests := []struct {
		name    string
		advance time.Duration
		wantPut bool
	}{
		{"within RecentTTL", ttl / 2, false},
		{"after RecentTTL", ttl + time.Second, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now, fake, u, d := oneTarget(t, "/data/recent.db", func(o *Options) { o.RecentTTL = ttl })
			data := testData(70, 3*manifest.ChunkSize)
			s1 := d.snapshot(data, now.Now())
			d.commit(s1)
			mustFlush(t, u, d.dir)
			shared := s1.m.Chunks[1]
			fake.DeleteChunk(shared)

			now.Advance(tt.advance)
			s2 := d.snapshot(withChunk(data, 2, 71), now.Now())
			d.commit(s2) // chunk 1's file is spooled again
			before := fake.NumCalls()
			mustFlush(t, u, d.dir)
			putShared := slices.ContainsFunc(fake.CallsSince(before), func(c storetest.Call) bool {
				return c.Op == storetest.OpPutChunk && c.Key == shared.String()
			})
			if putShared != tt.wantPut {
				t.Errorf("chunk put again: %v, want %v; calls: %v", putShared, tt.wantPut, fake.CallsSince(before))
			}
			if !fake.HasChunk(s2.m.Chunks[2]) {
				t.Error("the new chunk was not put")
			}
			if got := d.snapshots(); len(got) != 0 {
				t.Errorf("snapshots left after Flush: %v", got)
			}
		})
	}
}

// TestUploaderForgetsOnInvalidation: another process invalidating the
// spool (vfsctl sync --full, repairing a store that lost a chunk) makes
// this process's uploader forget what it uploaded, recent chunks
// included: the lost chunk is put again, and the flush's success is true.
func TestUploaderForgetsOnInvalidation(t *testing.T) {
	now, fake, u, d := oneTarget(t, "/data/repair.db", func(o *Options) { o.RecentTTL = time.Hour })
	data := testData(90, 3*manifest.ChunkSize)
	s1 := d.snapshot(data, now.Now())
	d.commit(s1)
	mustFlush(t, u, d.dir)
	lost := s1.m.Chunks[1]
	fake.DeleteChunk(lost)

	// Another process repairs: under the upload lock, it invalidates the
	// spool, and the whole snapshot is staged again.
	sp := spool.OpenDir(d.dir)
	unlock, err := sp.LockUpload(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.Invalidate(); err != nil {
		t.Fatal(err)
	}
	unlock()
	now.Advance(time.Minute)
	d.commit(d.snapshot(data, now.Now()))
	mustFlush(t, u, d.dir)
	if !fake.HasChunk(lost) {
		t.Fatal("the flush succeeded with the lost chunk still missing from the store")
	}
}

// 8. Touching the chunks of the uploaded manifest, and invalidating the
// spool when one is missing.
func TestUploaderTouch(t *testing.T) {
	const period = 24 * time.Hour
	tests := []struct {
		name    string
		missing bool
	}{
		{"all present", false},
		{"one missing", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newBGEnv(t, func(o *Options) { o.TouchPeriod = period })
			// Chunks 1 and 3 are equal: touched once.
			c := testData(80, manifest.ChunkSize)
			data := slices.Concat(testData(81, manifest.ChunkSize), c, testData(82, manifest.ChunkSize), c)
			s := e.db.snapshot(data, e.now.Now())
			e.db.stage(s)
			mustFlush(t, e.u, e.db.dir)
			if err := e.db.sp.WriteMarker(spool.Marker{}); err != nil {
				t.Fatal(err)
			}
			e.u.Start()

			// The first background pass starts the period; nothing is
			// touched.
			e.u.Notify(e.db.dir)
			e.sync()
			if got := e.callsForDB(0); storetest.CountOps(got, storetest.OpTouchChunk) != 0 {
				t.Fatalf("touched on the first pass: %v", got)
			}

			if tt.missing {
				e.store.DeleteChunk(s.m.Chunks[2])
			}
			e.now.Advance(period)
			n := e.store.NumCalls()
			e.u.Notify(e.db.dir)
			e.sync()
			got := e.callsForDB(n)
			for _, c := range got {
				if c.Op != storetest.OpTouchChunk {
					t.Errorf("unexpected call %v during the touch pass", c)
				}
			}
			if tt.missing {
				if !slices.ContainsFunc(got, func(c storetest.Call) bool { return errors.Is(c.Err, store.ErrNotFound) }) {
					t.Fatalf("calls %v, want a touch that finds the chunk missing", got)
				}
				if e.db.hasStaged() {
					t.Error("staged snapshot kept after a missing chunk, want it removed")
				}
				if mk, err := e.db.sp.Marker(); err != nil || mk.State != spool.MarkerSet {
					t.Errorf("marker %+v, %v; want set", mk, err)
				}
				if e.db.sp.HasUploaded() {
					t.Error("uploaded file kept after a missing chunk, want it removed")
				}
				return
			}
			for _, fp := range s.fps() {
				if n := e.store.TouchCount(fp); n != 1 {
					t.Errorf("chunk %s touched %d times, want 1", fp.String()[:8], n)
				}
			}
			if n := storetest.CountOps(got, storetest.OpTouchChunk); n != len(s.files) {
				t.Errorf("%d touches, want %d", n, len(s.files))
			}

			// Within the next period nothing more is touched.
			e.now.Advance(period / 2)
			n = e.store.NumCalls()
			e.u.Notify(e.db.dir)
			e.sync()
			if got := e.callsForDB(n); len(got) != 0 {
				t.Errorf("calls %v within the period, want none", got)
			}
		})
	}
}

// 9. A spool chunk that does not match its name is never uploaded.
func TestUploaderCorruptSpoolChunk(t *testing.T) {
	tests := []struct {
		name string
		in   string // where the corrupt chunk waits: "ready" or "staged"
	}{
		{"in ready", "ready"},
		{"in staging", "staged"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now, fake, u, d := oneTarget(t, "/data/corrupt.db", nil)
			s := d.snapshot(testData(90, 3*manifest.ChunkSize), now.Now())
			bad := s.m.Chunks[2]
			var p string
			if tt.in == "ready" {
				d.stage(s, []manifest.Fingerprint{}...)
				p = d.publish(spool.InReady, s).Chunks().Path(bad)
			} else {
				d.stage(s)
				p = d.sp.StagedChunks().Path(bad)
			}
			corrupt := bytes.Clone(s.files[bad])
			corrupt[100] ^= 0x40
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, corrupt, 0o444); err != nil {
				t.Fatal(err)
			}

			err := u.Flush(context.Background(), d.dir)
			if !errors.Is(err, ErrSpoolCorrupt) {
				t.Fatalf("Flush()=%v, want ErrSpoolCorrupt", err)
			}
			for _, c := range fake.CallLog() {
				if c.Key == bad.String() {
					t.Errorf("corrupt chunk reached the store: %v", c)
				}
				if c.Op == storetest.OpPutManifest {
					t.Errorf("manifest put although a chunk is corrupt: %v", c)
				}
			}
			fake.CheckIntegrity(t)
		})
	}
}

// 10. Two uploaders (two processes) on one spool directory: one uploads
// at a time.
func TestUploaderLockDir(t *testing.T) {
	now := storetest.NewClock()
	s1, s2 := storetest.NewFake("first"), storetest.NewFake("second")
	root := t.TempDir()
	d := newTestSpool(t, root, "/data/shared.db")
	barrier := newTestSpool(t, root, "/data/barrier.db")
	first := newTestUploader(t, uploadOpts(now, target(s1)))
	second := newTestUploader(t, uploadOpts(now, target(s2)))
	snap1 := d.stageNew(testData(100, 3*manifest.ChunkSize), now.Now())

	gate := s1.BlockOnce(storetest.OpPutChunk, nil)
	errc1 := flushAsync(first, d.dir)
	gate.Wait(t)

	// The second uploader's background pass gives up at once.
	second.Start()
	second.Add(d.dir)
	b := barrier.snapshot(testData(101, 10), now.Now())
	barrier.commit(b)
	second.Add(barrier.dir)
	s2.WaitFor(t, "the barrier's manifest", func(f *storetest.Fake) bool { return f.ManifestAt(barrier.key()) != nil })
	if got := s2.CallLog(); len(got) != 1 || got[0].Key != barrier.key() {
		t.Fatalf("second uploader's calls %v while the first holds the lock, want only the barrier's manifest", got)
	}

	// Its flush waits for the lock.
	errc2 := flushAsync(second, d.dir)
	select {
	case err := <-errc2:
		t.Fatalf("second Flush()=%v returned while the first uploader held the lock", err)
	default:
	}
	gate.Open()
	if err := <-errc1; err != nil {
		t.Fatalf("first Flush()=%v, want nil", err)
	}
	// Its targets differ from the first's: it invalidates the spool, and
	// says that nothing it could upload is the database's state.
	if err := <-errc2; !errors.Is(err, ErrNotStaged) {
		t.Fatalf("second Flush()=%v, want ErrNotStaged", err)
	}
	checkStored(t, s1, d, snap1)
	s1.CheckIntegrity(t)
	// The first uploaded everything: the second has no chunk to put. (It
	// may put the same manifest again: it trusts its own memory of what
	// it uploaded, not the uploaded file.)
	for _, c := range s2.CallLog() {
		switch {
		case c.Key == barrier.key():
		case c.Op == storetest.OpPutManifest && bytes.Equal(s2.ManifestAt(d.key()), snap1.mb):
			t.Logf("second uploader put the manifest again: %v", c)
		default:
			t.Errorf("second uploader made call %v after the first uploaded everything", c)
		}
	}
}

// 11. Lag and pending bytes.
func TestSpoolLag(t *testing.T) {
	base := storetest.NewClock().Now()
	type state struct {
		consuming, ready, staged, uploaded int // snapshot numbers, 0 for none
	}
	tests := []struct {
		name    string
		st      state
		wantLag time.Duration
	}{
		{"empty", state{}, 0},
		{"staged and uploaded", state{staged: 3, uploaded: 3}, 0},
		{"staged, older uploaded", state{staged: 3, uploaded: 2}, 7 * time.Second},
		{"staged, nothing uploaded", state{staged: 1}, 9 * time.Second},
		{"ready and staged", state{ready: 2, staged: 3}, 8 * time.Second},
		{"consuming, ready and staged", state{consuming: 1, ready: 2, staged: 3, uploaded: 0}, 9 * time.Second},
		{"consuming and staged uploaded", state{consuming: 1, staged: 3, uploaded: 3}, 9 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newTestSpool(t, t.TempDir(), "/data/lag.db")
			// Snapshot i was created at base+i s; now is base+10 s.
			snaps := []*snap{nil}
			data := testData(110, 2*manifest.ChunkSize)
			for i := 1; i <= 3; i++ {
				data = withChunk(data, 1, uint64(110+i))
				snaps = append(snaps, d.snapshot(data, base.Add(time.Duration(i)*time.Second)))
			}
			now := base.Add(10 * time.Second)
			var wantPending int64
			var uploadedSum [32]byte
			if n := tt.st.uploaded; n > 0 {
				if err := d.sp.RecordUploaded(snaps[n].mb, nil); err != nil {
					t.Fatal(err)
				}
				uploadedSum = spool.ManifestID(snaps[n].mb)
			}
			if n := tt.st.consuming; n > 0 {
				d.publish(spool.InConsuming, snaps[n])
				wantPending += int64(len(snaps[n].mb) + manifest.ChunkSize)
			}
			if n := tt.st.ready; n > 0 {
				d.publish(spool.InReady, snaps[n])
				wantPending += int64(len(snaps[n].mb) + manifest.ChunkSize)
			}
			if n := tt.st.staged; n > 0 {
				if n == tt.st.uploaded {
					d.stage(snaps[n], []manifest.Fingerprint{}...)
				} else {
					d.stage(snaps[n]) // its chunk is waiting too
					wantPending += int64(len(snaps[n].mb) + manifest.ChunkSize)
				}
			}

			lag, pending := d.sp.Lag(uploadedSum, now)
			if lag != tt.wantLag || pending != wantPending {
				t.Errorf("Lag()=%v, %d, want %v, %d", lag, pending, tt.wantLag, wantPending)
			}
			st, err := ReadStatus(d.dir, now)
			if err != nil {
				t.Fatalf("ReadStatus()=%v", err)
			}
			if st.Lag != tt.wantLag || st.PendingBytes != wantPending || st.Source != d.path || st.Dir != d.dir {
				t.Errorf("ReadStatus()=%+v, want lag %v, pending %d, source %s", st, tt.wantLag, wantPending, d.path)
			}
		})
	}
}

// ReadStatus reports what the uploader saved, with the lag computed now.
func TestReadStatusAfterUpload(t *testing.T) {
	now, _, u, d := oneTarget(t, "/data/status.db", nil)
	s1 := d.stageNew(testData(120, 2*manifest.ChunkSize), now.Now())
	mustFlush(t, u, d.dir)
	now.Advance(time.Minute)
	s2 := d.stageNew(withChunk(s1.data, 1, 121), now.Now())
	now.Advance(5 * time.Second)

	st, err := ReadStatus(d.dir, now.Now())
	if err != nil {
		t.Fatalf("ReadStatus()=%v", err)
	}
	if st.Uploads != 1 || st.Chunks != 1 || st.Lag != 5*time.Second || st.PendingBytes != int64(len(s2.mb)+manifest.ChunkSize) || st.Source != d.path {
		t.Errorf("ReadStatus()=%+v, want 1 upload, 1 chunk, lag 5s, pending %d", st, len(s2.mb)+manifest.ChunkSize)
	}
	if got := u.Status(); len(got) != 1 || got[0].Lag != st.Lag || got[0].PendingBytes != st.PendingBytes {
		t.Errorf("Status()=%+v, want the same lag and pending bytes as ReadStatus", got)
	}
}

// The status of a database that another process's uploader keeps current
// shows no lag: the uploaded file, not this process's memory, says what
// the store has.
func TestStatusAfterOtherProcessUploads(t *testing.T) {
	now := storetest.NewClock()
	fake := storetest.NewFake("s3")
	d := newTestSpool(t, t.TempDir(), "/data/twoprocs.db")
	d.stageNew(testData(130, 2*manifest.ChunkSize), now.Now())
	idle := newTestUploader(t, uploadOpts(now, target(fake)))
	idle.Add(d.dir) // knows the database, never gets the lock
	active := newTestUploader(t, uploadOpts(now, target(fake)))
	mustFlush(t, active, d.dir)
	now.Advance(time.Hour)

	for name, u := range map[string]*Uploader{"active": active, "idle": idle} {
		got := u.Status()
		if len(got) != 1 || got[0].Lag != 0 || got[0].PendingBytes != 0 {
			t.Errorf("%s uploader: Status()=%+v, want no lag and nothing pending", name, got)
		}
	}
}

// A wake-up for a database that another worker is uploading is not lost
// when that worker has already looked at the spool for the last time.
func TestUploaderWakeDuringPass(t *testing.T) {
	const period = time.Hour
	e := newBGEnv(t, func(o *Options) {
		o.Workers = 2
		o.TouchPeriod = period
	})
	s1 := e.db.snapshot(testData(140, 3*manifest.ChunkSize), e.now.Now())
	e.db.stage(s1)
	mustFlush(t, e.u, e.db.dir)
	// The next background pass is due to touch: the period started long
	// ago.
	st := e.u.state(e.db.dir)
	st.mu.Lock()
	st.lastTouch = e.now.Now().Add(-2 * period)
	st.mu.Unlock()

	gate := e.store.BlockOnce(storetest.OpTouchChunk, nil)
	e.u.Start()
	e.u.Notify(e.db.dir)
	gate.Wait(t) // one worker is touching, after its last look at the spool

	s2 := e.db.snapshot(withChunk(s1.data, 2, 141), e.now.Now())
	e.db.commit(s2, s2.m.Chunks[2])
	e.u.Notify(e.db.dir)
	// The other worker is the only one free: when the barrier is through,
	// it has handled (and found busy) the database.
	e.sync()
	gate.Open()
	e.store.WaitFor(t, "the new snapshot's manifest", func(f *storetest.Fake) bool {
		return bytes.Equal(f.ManifestAt(e.db.key()), s2.mb)
	})
	checkStored(t, e.store, e.db, s2)
	e.store.CheckIntegrity(t)
}

// Close ends a background upload stuck in a store call, and leaves the
// spool as it was.
func TestUploaderCloseDuringUpload(t *testing.T) {
	e := newBGEnv(t, nil)
	s1 := e.db.snapshot(testData(150, 2*manifest.ChunkSize), e.now.Now())
	e.db.commit(s1)
	gate := e.store.BlockOnce(storetest.OpPutChunk, nil)
	e.u.Start()
	e.u.Notify(e.db.dir)
	gate.Wait(t)
	done := make(chan error, 1)
	go func() { done <- e.u.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Close()=%v", err)
		}
	case <-time.After(storetest.WaitTimeout):
		t.Fatal("Close() did not return while an upload was in a store call")
	}
	if e.db.sp.Idle() {
		t.Fatal("the unfinished snapshot left the spool")
	}
	if st := e.status(); st.Failures != 0 {
		t.Errorf("Status()=%+v, want no failure counted for a cancelled upload", st)
	}
}

// FlushAll flushes every database, and TargetStats counts the calls to
// each target, the retries and failures included.
func TestUploaderFlushAllAndTargetStats(t *testing.T) {
	now := storetest.NewClock()
	a, b := storetest.NewFake("a"), storetest.NewFake("b")
	u := newTestUploader(t, uploadOpts(now, target(a), target(b)))
	root := t.TempDir()
	var dbs []*testSpool
	var snaps []*snap
	for i := range 3 {
		d := newTestSpool(t, root, fmt.Sprintf("/data/all-%d.db", i))
		s := d.stageNew(testData(uint64(400+i), 2*manifest.ChunkSize), now.Now())
		u.Add(d.dir)
		dbs, snaps = append(dbs, d), append(snaps, s)
	}
	// b fails its first chunk put once, transiently: one retry.
	var failed atomic.Bool
	b.AddHook(func(_ context.Context, op, _ string) error {
		if op == storetest.OpPutChunk && failed.CompareAndSwap(false, true) {
			return storetest.RetryableErr()
		}
		return nil
	})
	if err := u.FlushAll(context.Background()); err != nil {
		t.Fatalf("FlushAll()=%v, want nil", err)
	}
	for i, d := range dbs {
		checkStored(t, a, d, snaps[i])
		checkStored(t, b, d, snaps[i])
	}
	stats := u.TargetStats()
	var mb int64
	for _, s := range snaps {
		mb += int64(len(s.mb))
	}
	up := 3*int64(manifest.ChunkSize) + mb // one non-inline chunk each
	tests := []struct {
		target                   string
		calls, retries, failures int64
	}{
		{"a", 6, 0, 0},
		{"b", 7, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			got, ok := stats[tt.target]
			if !ok {
				t.Fatalf("TargetStats() lacks %s: %v", tt.target, stats)
			}
			if got.Calls != tt.calls || got.Retries != tt.retries || got.Failures != tt.failures || got.BytesUp != up {
				t.Errorf("TargetStats()[%s]=%+v, want %d calls, %d retries, %d failures, %d bytes up", tt.target, got, tt.calls, tt.retries, tt.failures, up)
			}
		})
	}
	// FlushAll joins the errors of the databases that fail.
	a.FailOn(storetest.OpPutChunk, nil, storetest.PermanentErr())
	for i, d := range dbs {
		d.stageNew(withChunk(snaps[i].data, 1, uint64(500+i)), now.Now())
	}
	err := u.FlushAll(context.Background())
	if !errors.Is(err, store.ErrPermanent) || strings.Count(err.Error(), "\n") != 2 {
		t.Errorf("FlushAll()=%v, want 3 permanent errors joined", err)
	}
}

// A spool directory that disappeared (the database was deleted) is
// forgotten.
func TestUploaderForgetsRemovedDir(t *testing.T) {
	_, fake, u, d := oneTarget(t, "/data/gone.db", nil)
	u.Add(d.dir)
	if len(u.Status()) != 1 {
		t.Fatalf("Status()=%v, want one database", u.Status())
	}
	if err := os.RemoveAll(d.dir); err != nil {
		t.Fatal(err)
	}
	if err := u.FlushAll(context.Background()); err != nil {
		t.Fatalf("FlushAll()=%v with a deleted database, want nil", err)
	}
	if err := u.Flush(context.Background(), d.dir); !errors.Is(err, ErrNotStaged) {
		t.Fatalf("Flush()=%v of a deleted database, want ErrNotStaged", err)
	}
	if got := u.Status(); len(got) != 0 {
		t.Errorf("Status()=%v after the directory went, want none", got)
	}
	if n := fake.NumCalls(); n != 0 {
		t.Errorf("%d store calls, want none", n)
	}
}

// Two manifests of a database are at least ManifestGap apart, and the
// wait ends with the context.
func TestUploaderManifestGap(t *testing.T) {
	const gap = 50 * time.Millisecond
	now := storetest.NewClock() // frozen: the gap is measured from the last upload
	fake := storetest.NewFake("s3")
	opts := uploadOpts(now, target(fake))
	opts.ManifestGap = gap
	u := newTestUploader(t, opts)
	d := newTestSpool(t, t.TempDir(), "/data/gap.db")
	s1 := d.stageNew(testData(600, manifest.ChunkSize+10), now.Now())
	mustFlush(t, u, d.dir)

	s2 := d.stageNew(withChunk(s1.data, 1, 601), now.Now())
	start := time.Now()
	mustFlush(t, u, d.dir)
	if el := time.Since(start); el < gap {
		t.Errorf("second manifest %v after the first, want at least %v", el, gap)
	}
	checkStored(t, fake, d, s2)

	d.stageNew(withChunk(s2.data, 1, 602), now.Now())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := u.Flush(ctx, d.dir); !errors.Is(err, context.Canceled) {
		t.Errorf("Flush(cancelled)=%v, want context.Canceled", err)
	}
	checkStored(t, fake, d, s2)
}

// TestUploaderProgressUnderContinuousWrites: a writer commits during every
// chunk upload, so the staged manifest always changes while a pass runs and
// ready/ is never empty when a pass starts. Each flush must still upload a
// complete snapshot (no livelock), never going backwards.
func TestUploaderProgressUnderContinuousWrites(t *testing.T) {
	now, fake, u, d := oneTarget(t, "/data/busy.db", nil)
	data := testData(40, 12*manifest.ChunkSize)
	prev := d.snapshot(data, now.Now())
	if !d.commit(prev, prev.fps()...) {
		t.Fatal("test setup: the first snapshot did not publish")
	}
	// Then a second one is staged: ready/ is occupied when the flush starts.
	var mu sync.Mutex
	seq := 0
	next := func() {
		mu.Lock()
		defer mu.Unlock()
		seq++
		data = withChunk(data, 1+seq%11, uint64(100+seq))
		s := d.snapshot(data, now.Now().Add(time.Duration(seq)*time.Millisecond))
		added := s.addedTo(prev)
		d.commit(s, added...)
		prev = s
	}
	next()
	fake.AddHook(func(_ context.Context, op, _ string) error {
		if op == storetest.OpPutChunk {
			next()
		}
		return nil
	})
	for i := range 3 {
		before := len(fake.ManifestPuts())
		if err := u.Flush(context.Background(), d.dir); err != nil {
			t.Fatalf("Flush() %d=%v", i, err)
		}
		if len(fake.ManifestPuts()) == before {
			t.Fatalf("Flush() %d uploaded no manifest while the writer kept committing: livelock", i)
		}
	}
	got := manifestCounters(fake.ManifestPuts())
	if !slices.IsSorted(got) {
		t.Errorf("manifests put in order %v: the store went backwards", got)
	}
	fake.CheckIntegrity(t) // every manifest's chunks were stored before it
}

// TestUploaderNeverGoesBackwards: a snapshot older than the last uploaded
// one, left behind in consuming/ while nothing is staged (the database
// switched to WAL), is not uploaded over the newer one.
func TestUploaderNeverGoesBackwards(t *testing.T) {
	now, fake, u, d := oneTarget(t, "/data/back.db", nil)
	data := testData(50, 3*manifest.ChunkSize)
	older := d.snapshot(data, now.Now())
	newer := d.stageNew(withChunk(data, 1, 51), now.Now().Add(time.Hour))
	mustFlush(t, u, d.dir)
	checkStored(t, fake, d, newer)

	d.publish(spool.InConsuming, older)
	if err := d.sp.DropStaged(); err != nil {
		t.Fatal(err)
	}
	mustFlush(t, u, d.dir)
	checkStored(t, fake, d, newer)
	if got := manifestCounters(fake.ManifestPuts()); len(got) != 1 {
		t.Fatalf("manifests put %v, want only the newer one", got)
	}
}

// TestUploaderTargetsChanged: the staged snapshot assumes the store has
// every chunk it does not stage. After the targets change, the spool is
// invalidated, so that the next transaction stages, and the uploader sends
// to the new store, every chunk.
func TestUploaderTargetsChanged(t *testing.T) {
	now := storetest.NewClock()
	old, fake := storetest.NewFake("old"), storetest.NewFake("new")
	d := newTestSpool(t, t.TempDir(), "/data/moved.db")
	data := testData(60, 4*manifest.ChunkSize)
	s1 := d.stageNew(data, now.Now())
	mustFlush(t, newTestUploader(t, uploadOpts(now, target(old))), d.dir)
	checkStored(t, old, d, s1)

	u := newTestUploader(t, uploadOpts(now, target(fake)))
	// The new store has nothing yet: the flush must not report success.
	if err := u.Flush(context.Background(), d.dir); !errors.Is(err, ErrNotStaged) || !strings.Contains(err.Error(), "/data/moved.db") {
		t.Fatalf("Flush()=%v after the targets changed, want ErrNotStaged naming the database", err)
	}
	// It is not an upload failure: no backoff, no error in the status.
	if st := u.Status(); len(st) != 1 || st[0].Failures != 0 || st[0].LastError != "" {
		t.Fatalf("status after ErrNotStaged: %+v, want no failure", st)
	}
	if d.hasStaged() || d.sp.HasUploaded() {
		t.Fatal("spool not invalidated after the targets changed")
	}
	if mk, err := d.sp.Marker(); err != nil || mk.State != spool.MarkerSet {
		t.Fatalf("marker %+v, %v; want set", mk, err)
	}
	// The next transaction rebuilds: every chunk is staged again.
	s2 := d.stageNew(withChunk(data, 2, 61), now.Now().Add(time.Second))
	mustFlush(t, u, d.dir)
	checkStored(t, fake, d, s2)
	fake.CheckIntegrity(t)
	// Same targets again: no invalidation.
	before := fake.NumCalls()
	mustFlush(t, newTestUploader(t, uploadOpts(now, target(fake))), d.dir)
	if !d.hasStaged() || fake.NumCalls() != before {
		t.Fatalf("flush with unchanged targets invalidated or uploaded again: calls %v", fake.CallsSince(before))
	}
}

// TestUploaderClockStep: after the clock steps back, a newly staged
// manifest has an older Created than the last uploaded one; it is still the
// newest state and must be uploaded (the age check is only for snapshots
// left behind in ready/ or consuming/).
func TestUploaderClockStep(t *testing.T) {
	now, fake, u, d := oneTarget(t, "/data/clock.db", nil)
	data := testData(70, 3*manifest.ChunkSize)
	d.stageNew(data, now.Now().Add(time.Hour))
	mustFlush(t, u, d.dir)
	after := d.snapshot(withChunk(data, 1, 71), now.Now()) // the clock went back
	d.stage(after)
	mustFlush(t, u, d.dir)
	checkStored(t, fake, d, after)
}

// TestUploaderTargetsChangedByAnotherProcess: during a rolling deploy an
// uploader with the old targets must not drain the spool into the old
// store after one with the new targets invalidated it.
func TestUploaderTargetsChangedByAnotherProcess(t *testing.T) {
	now := storetest.NewClock()
	old, fake := storetest.NewFake("old"), storetest.NewFake("new")
	d := newTestSpool(t, t.TempDir(), "/data/deploy.db")
	data := testData(80, 4*manifest.ChunkSize)
	d.stageNew(data, now.Now())
	uOld := newTestUploader(t, uploadOpts(now, target(old)))
	mustFlush(t, uOld, d.dir)
	if err := newTestUploader(t, uploadOpts(now, target(fake))).Flush(context.Background(), d.dir); !errors.Is(err, ErrNotStaged) {
		t.Fatalf("Flush()=%v with new targets, want ErrNotStaged (it invalidates)", err)
	}
	s2 := d.snapshot(withChunk(data, 2, 81), now.Now().Add(time.Second))
	d.stage(s2) // the rebuild stages every chunk
	if err := uOld.Flush(context.Background(), d.dir); !errors.Is(err, ErrNotStaged) {
		t.Fatalf("Flush()=%v with the old targets, want ErrNotStaged (it invalidates)", err)
	}
	if d.hasStaged() {
		t.Fatal("the old-targets uploader consumed a snapshot meant for the new targets instead of invalidating")
	}
}

// TestUploaderPacks: a snapshot's chunks go up in packs of PackChunks, in
// file order; the manifest says where each is; a later snapshot keeps the
// places of the chunks it shares, across a restart of the uploader too,
// and the touch refreshes packs.
func TestUploaderPacks(t *testing.T) {
	now, fake, opts := fakeTarget(nil)
	opts.PackChunks = 4
	u := newTestUploader(t, opts)
	d := newTestSpool(t, t.TempDir(), "/data/packed.db")
	data := testData(40, 10*manifest.ChunkSize+9) // chunk 0 inline, 10 in files
	s1 := d.stageNew(data, now.Now())
	mustFlush(t, u, d.dir)
	calls := fake.CallLog()
	if n, c := storetest.CountOps(calls, storetest.OpPutPack), storetest.CountOps(calls, storetest.OpPutChunk); n != 3 || c != 0 {
		t.Fatalf("%d pack puts and %d chunk puts, want 3 packs (4+4+2) and no chunk; calls %v", n, c, calls)
	}
	stored := func() *manifest.Manifest {
		t.Helper()
		m, err := manifest.Decode(fake.ManifestAt(d.key()))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	m1 := stored()
	refs := m1.PackRefs()
	if len(refs) != 10 {
		t.Fatalf("%d packed chunks, want 10", len(refs))
	}
	// File order: chunks 1-4 share a pack, 5-8 another.
	if refs[1].ID != refs[4].ID || refs[5].ID != refs[8].ID || refs[4].ID == refs[5].ID || refs[9].ID != refs[10].ID {
		t.Errorf("packs not in file order: %v", refs)
	}
	m1.Packs = nil
	if plain, _ := m1.MarshalBinary(); !bytes.Equal(plain, s1.mb) {
		t.Error("the stored manifest, without its pack table, differs from the spool's")
	}
	checkReassembled(t, fake, d, s1)
	fake.CheckIntegrity(t)
	if d.sp.HasPlacements() {
		t.Error("placements file left after its manifest was uploaded")
	}
	if st := u.Status(); len(st) != 1 || st[0].Packs != 3 || st[0].Chunks != 10 {
		t.Errorf("status %+v, want 3 packs and 10 chunks", st)
	}

	// Change chunk 6: one chunk put, and the other places carried over
	// from the uploaded manifest.
	s2 := d.snapshot(withChunk(data, 6, 41), now.Now())
	d.stage(s2, s2.m.Chunks[6])
	before := fake.NumCalls()
	mustFlush(t, u, d.dir)
	calls = fake.CallsSince(before)
	if n, c := storetest.CountOps(calls, storetest.OpPutPack), storetest.CountOps(calls, storetest.OpPutChunk); n != 0 || c != 1 {
		t.Fatalf("calls %v, want one chunk put and the manifest", calls)
	}
	if r := stored().PackRefs(); len(r) != 9 || r[5] != refs[5] {
		t.Errorf("second manifest places %d chunks (chunk 5 at %+v), want 9 (at %+v)", len(r), r[5], refs[5])
	}
	checkReassembled(t, fake, d, s2)
	fake.CheckIntegrity(t)

	// Packs uploaded, then the manifest put fails and the process goes:
	// the next process finds the places in the placements file, since
	// the chunk files are gone from the spool.
	s3 := d.snapshot(withChunk(withChunk(s2.data, 2, 42), 3, 43), now.Now())
	d.stage(s3, s3.m.Chunks[2], s3.m.Chunks[3])
	failManifest := func(ctx context.Context, op, key string) error {
		if op == storetest.OpPutManifest {
			return storetest.PermanentErr()
		}
		return nil
	}
	fake.AddHook(failManifest)
	if err := u.Flush(context.Background(), d.dir); err == nil {
		t.Fatal("Flush succeeded with the manifest put failing")
	}
	fake.ClearHooks()
	if got := d.stagedChunks(); len(got) != 0 {
		t.Fatalf("staged chunks %v, want the packed chunks uploaded and gone", got)
	}
	if !d.sp.HasPlacements() {
		t.Fatal("no placements file while a pack waits for its manifest")
	}
	u2 := newTestUploader(t, opts)
	mustFlush(t, u2, d.dir)
	m3 := stored()
	if m3.ChangeCounter != s3.m.ChangeCounter {
		t.Fatalf("stored manifest #%d, want #%d", m3.ChangeCounter, s3.m.ChangeCounter)
	}
	if r := m3.PackRefs(); r[2].ID != r[3].ID || r[2].ID == refs[2].ID {
		t.Errorf("chunks 2 and 3 at %+v and %+v, want a new pack of their own", r[2], r[3])
	}
	checkReassembled(t, fake, d, s3)
	fake.CheckIntegrity(t)

}

// TestUploaderTouchPacks: the touch refreshes each pack of the uploaded
// manifest once, and a missing pack makes the next transaction upload
// everything again, as a missing chunk does.
func TestUploaderTouchPacks(t *testing.T) {
	const period = 24 * time.Hour
	for _, missing := range []bool{false, true} {
		t.Run(fmt.Sprintf("missing=%v", missing), func(t *testing.T) {
			e := newBGEnv(t, func(o *Options) { o.TouchPeriod = period; o.PackChunks = 3 })
			s := e.db.snapshot(testData(85, 8*manifest.ChunkSize), e.now.Now()) // 7 files: packs of 3, 3, 1
			e.db.stage(s)
			mustFlush(t, e.u, e.db.dir)
			m, err := manifest.Decode(e.store.ManifestAt(e.db.key()))
			if err != nil {
				t.Fatal(err)
			}
			packs := map[manifest.Fingerprint]bool{}
			for _, ref := range m.PackRefs() {
				packs[ref.ID] = true
			}
			if len(packs) != 2 {
				t.Fatalf("%d packs, want 2 (and one chunk alone)", len(packs))
			}
			if err := e.db.sp.WriteMarker(spool.Marker{}); err != nil {
				t.Fatal(err)
			}
			e.u.Start()
			e.u.Notify(e.db.dir)
			e.sync() // starts the period
			if missing {
				e.store.DeletePack(m.Packs[1].ID)
			}
			e.now.Advance(period)
			n := e.store.NumCalls()
			e.u.Notify(e.db.dir)
			e.sync()
			got := e.callsForDB(n)
			if missing {
				if !slices.ContainsFunc(got, func(c storetest.Call) bool {
					return c.Op == storetest.OpTouchPack && errors.Is(c.Err, store.ErrNotFound)
				}) {
					t.Fatalf("calls %v, want a pack touch that finds it missing", got)
				}
				if e.db.hasStaged() || e.db.sp.HasUploaded() {
					t.Error("staged snapshot or upload record kept after a missing pack, want them removed")
				}
				return
			}
			for id := range packs {
				if n := e.store.TouchCount(id); n != 1 {
					t.Errorf("pack %s touched %d times, want 1", id.String()[:8], n)
				}
			}
			if n, c := storetest.CountOps(got, storetest.OpTouchPack), storetest.CountOps(got, storetest.OpTouchChunk); n != 2 || c != 1 {
				t.Errorf("%d pack and %d chunk touches, want 2 and 1; calls %v", n, c, got)
			}
		})
	}
}

// checkReassembled checks that the store's manifest of d restores want's
// bytes.
func checkReassembled(t testing.TB, fake *storetest.Fake, d *testSpool, want *snap) {
	t.Helper()
	m, _, err := store.FetchManifest(context.Background(), []store.Store{fake}, d.key())
	if err != nil {
		t.Fatalf("FetchManifest()=%v", err)
	}
	var buf bytes.Buffer
	if err := restore.Reassemble(context.Background(), []store.Store{fake}, m, &buf); err != nil {
		t.Fatalf("Reassemble()=%v", err)
	}
	if !bytes.Equal(buf.Bytes(), want.data) {
		t.Fatalf("%s: reassembled %d bytes differ from the snapshot's %d", fake.Name(), buf.Len(), len(want.data))
	}
}

// TestUploaderPacksUploadedNotRecorded: when the record of an uploaded
// manifest cannot be written (a full disk), the placements of its packs
// stay, and the next manifest still says where those chunks are.
func TestUploaderPacksUploadedNotRecorded(t *testing.T) {
	now, fake, opts := fakeTarget(nil)
	opts.PackChunks = 4
	u := newTestUploader(t, opts)
	d := newTestSpool(t, t.TempDir(), "/data/full.db")
	data := testData(50, 9*manifest.ChunkSize)
	d.stageNew(data, now.Now())
	mustFlush(t, u, d.dir)

	// Chunks 2 and 3 change and go up as a pack; the uploaded file then
	// cannot be written.
	s2 := d.snapshot(withChunk(withChunk(data, 2, 51), 3, 52), now.Now())
	d.stage(s2, s2.m.Chunks[2], s2.m.Chunks[3])
	recordUploaded = func(spool.Dir, []byte, []byte) error { return syscall.ENOSPC }
	mustFlush(t, u, d.dir)
	recordUploaded = func(sp spool.Dir, b, base []byte) error { return sp.RecordUploaded(b, base) }
	checkReassembled(t, fake, d, s2)
	if !d.sp.HasPlacements() {
		t.Fatal("placements dropped although the uploaded file was not written")
	}

	// The next snapshot keeps chunks 2 and 3: the uploaded file still
	// describes s1, and only the placements know where they are.
	s3 := d.snapshot(withChunk(s2.data, 7, 53), now.Now())
	d.stage(s3, s3.m.Chunks[7])
	mustFlush(t, newTestUploader(t, opts), d.dir)
	checkReassembled(t, fake, d, s3)
	fake.CheckIntegrity(t)
	if d.sp.HasPlacements() {
		t.Error("placements left after an upload that was recorded")
	}
}

// TestUploaderFreshestUnderWrites: when a newer transaction is staged
// during a pass, the manifest the pass read still goes up if all its
// chunks are in the store, rather than the older snapshot waiting in
// consuming/: under continuous writes, that one is a manifest gap stale.
func TestUploaderFreshestUnderWrites(t *testing.T) {
	now, fake, u, d := oneTarget(t, "/data/fresh.db", nil)
	data0 := testData(60, 3*manifest.ChunkSize)
	s0 := d.snapshot(data0, now.Now())
	d.publish(spool.InReady, s0) // handed over, not uploaded yet
	data1 := withChunk(data0, 2, 61)
	s1 := d.stageNew(data1, now.Now().Add(time.Second))
	// The next transaction appends a chunk: every chunk of s1 stays.
	s2 := d.snapshot(append(bytes.Clone(data1), testData(62, 100)...), now.Now().Add(2*time.Second))
	added := s2.addedTo(s1)

	gate := fake.BlockOnce(storetest.OpPutChunk, nil)
	errc := flushAsync(u, d.dir)
	gate.Wait(t)
	d.stage(s2, added...)
	gate.Open()
	if err := <-errc; err != nil {
		t.Fatalf("Flush()=%v", err)
	}
	got := manifestCounters(fake.ManifestPuts())
	if len(got) == 0 || got[0] != s1.m.ChangeCounter || slices.Contains(got, s0.m.ChangeCounter) {
		t.Errorf("manifests put %v; want #%d first (the one the pass read, complete), never the older #%d", got, s1.m.ChangeCounter, s0.m.ChangeCounter)
	}
	checkStored(t, fake, d, s2)
	fake.CheckIntegrity(t)
}

// TestUploaderOnManifest: OnManifest is called for each uploaded
// manifest, with its host and path, once the store holds it.
func TestUploaderOnManifest(t *testing.T) {
	now, fake, opts := fakeTarget(nil)
	d := newTestSpool(t, t.TempDir(), "/data/own.db")
	var calls []string
	opts.OnManifest = func(host, path string) {
		stored := fake.ManifestAt(d.key()) != nil
		calls = append(calls, fmt.Sprintf("%s %s %v", host, path, stored))
	}
	u := newTestUploader(t, opts)
	d.stageNew(testData(90, 2*manifest.ChunkSize), now.Now())
	mustFlush(t, u, d.dir)
	mustFlush(t, u, d.dir) // nothing new: no call
	if want := testHost + " /data/own.db true"; len(calls) != 1 || calls[0] != want {
		t.Fatalf("OnManifest calls %q, want [%q]", calls, want)
	}
}

// The uploader fills a local cache target on the way.
func TestLocalCacheAsTarget(t *testing.T) {
	now := storetest.NewClock()
	fake := storetest.NewFake("s3")
	c, err := cache.New(t.TempDir(), 4, 100)
	if err != nil {
		t.Fatal(err)
	}
	u := newTestUploader(t, uploadOpts(now, Target{Name: "cache", Store: c, Cache: true}, target(fake)))
	d := newTestSpool(t, t.TempDir(), "/data/cached.db")
	s := d.stageNew(testData(300, 4*manifest.ChunkSize), now.Now())
	mustFlush(t, u, d.dir)
	checkStored(t, fake, d, s)
	for _, fp := range s.fps() {
		if got, err := c.GetChunk(context.Background(), fp); err != nil || !bytes.Equal(got, s.files[fp]) {
			t.Errorf("cache GetChunk(%s)=%v, want the chunk", fp.String()[:8], err)
		}
	}
	// Readers can reassemble from the cache first, the store for the rest.
	m, _, err := store.FetchManifest(context.Background(), []store.Store{c, fake}, d.key())
	if err != nil {
		t.Fatalf("FetchManifest()=%v", err)
	}
	var buf bytes.Buffer
	if err := restore.Reassemble(context.Background(), []store.Store{c, fake}, m, &buf); err != nil || !bytes.Equal(buf.Bytes(), s.data) {
		t.Errorf("Reassemble()=%v, equal %v", err, bytes.Equal(buf.Bytes(), s.data))
	}
}

// TestUploaderTransientRecordErrors: a spool record the uploader cannot
// read for want of descriptors (the targets it uploaded to, or where it
// packed chunks) fails the pass, which is retried; it does not count as
// a change of targets or a lost record, which would invalidate the spool
// and upload the whole database again.
func TestUploaderTransientRecordErrors(t *testing.T) {
	emfile := fmt.Errorf("open targets: %w", syscall.EMFILE)
	for _, tc := range []struct {
		name string
		fail func() (restore func())
	}{
		{"targets", func() func() {
			old := readTargets
			readTargets = func(spool.Dir) ([]byte, error) { return nil, emfile }
			return func() { readTargets = old }
		}},
		{"placements", func() func() {
			old := readPlacements
			readPlacements = func(spool.Dir) (map[manifest.Fingerprint]manifest.PackRef, error) { return nil, emfile }
			return func() { readPlacements = old }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now, fake, u, d := oneTarget(t, "/data/emfile.db", nil)
			data := testData(70, 4*manifest.ChunkSize)
			s1 := d.stageNew(data, now.Now())
			mustFlush(t, u, d.dir)
			checkStored(t, fake, d, s1)

			s2 := d.stageNew(withChunk(data, 2, 71), now.Now().Add(time.Second))
			restore := tc.fail()
			err := u.Flush(context.Background(), d.dir)
			restore()
			if !errors.Is(err, syscall.EMFILE) {
				t.Fatalf("Flush()=%v with the %s record unreadable, want EMFILE", err, tc.name)
			}
			if !d.hasStaged() || !d.sp.HasUploaded() {
				t.Fatalf("the spool was invalidated for want of descriptors (staged %v, uploaded %v)", d.hasStaged(), d.sp.HasUploaded())
			}
			before := fake.NumCalls()
			mustFlush(t, u, d.dir)
			if calls := fake.CallsSince(before); len(calls) > 2 {
				t.Errorf("the flush after the failure made %d calls, want at most 2 (the changed chunk and the manifest, not the database again): %v", len(calls), calls)
			}
			checkStored(t, fake, d, s2)
		})
	}
}

// mustPlainID is the [spool.Snapshot.ID] of m, its pack table aside.
func mustPlainID(t testing.TB, m *manifest.Manifest) [32]byte {
	t.Helper()
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return spool.ManifestID(b)
}

// TestStatusOutlivesItsUploader: status.json is shared by the processes
// that serve a database over time, and an upload counts as a heartbeat.
// One that uploads nothing (a vfsctl flush after the writer's uploader
// did the work) keeps the counts and
// the last upload that the one before saved, rather than show a database
// the store holds as never uploaded; one that uploads counts on.
func TestStatusOutlivesItsUploader(t *testing.T) {
	now := storetest.NewClock()
	fake := storetest.NewFake("s")
	d := newTestSpool(t, t.TempDir(), "/data/status.db")
	data := testData(80, 3*manifest.ChunkSize)
	d.stageNew(data, now.Now())
	mustFlush(t, newTestUploader(t, uploadOpts(now, target(fake))), d.dir)
	first, err := ReadStatus(d.dir, now.Now())
	if err != nil || first.Uploads != 1 || first.LastUpload.IsZero() {
		t.Fatalf("ReadStatus() after the first upload=%+v, %v; want 1 upload", first, err)
	}
	// The uploader that did it was seen, though it never started its
	// heartbeat loop (a writer that exits within a beat period).
	if first.UploaderSeen.IsZero() {
		t.Errorf("ReadStatus() after an upload: uploader never seen, want the upload's time")
	}

	now.Advance(time.Minute)
	mustFlush(t, newTestUploader(t, uploadOpts(now, target(fake))), d.dir) // nothing to upload
	got, err := ReadStatus(d.dir, now.Now())
	if err != nil || got.Uploads != first.Uploads || got.Chunks != first.Chunks || !got.LastUpload.Equal(first.LastUpload) {
		t.Fatalf("ReadStatus() after a flush with nothing to upload=%+v, %v; want the first uploader's counts and last upload (%d uploads at %v)", got, err, first.Uploads, first.LastUpload)
	}

	u := newTestUploader(t, uploadOpts(now, target(fake)))
	d.stageNew(withChunk(data, 1, 81), now.Now())
	mustFlush(t, u, d.dir)
	got, err = ReadStatus(d.dir, now.Now())
	if err != nil || got.Uploads != 2 || !got.LastUpload.After(first.LastUpload) {
		t.Fatalf("ReadStatus() after a third uploader's upload=%+v, %v; want 2 uploads, a later last upload", got, err)
	}
}

// TestFailedUploadWritesNoBeat: an uploader whose upload failed writes no
// heartbeat with its status: a short-lived vfsctl flush against a store
// that is down must not make status show a live uploader serving the
// database.
func TestFailedUploadWritesNoBeat(t *testing.T) {
	now := storetest.NewClock()
	fake := storetest.NewFake("s")
	fake.AddHook(func(context.Context, string, string) error { return errors.New("store down") })
	d := newTestSpool(t, t.TempDir(), "/data/down.db")
	d.stageNew(testData(90, 2*manifest.ChunkSize), now.Now())
	if err := newTestUploader(t, uploadOpts(now, target(fake))).Flush(context.Background(), d.dir); err == nil {
		t.Fatal("Flush()=nil with the store down, want an error")
	}
	if b, ok := d.sp.Beat(); ok {
		t.Fatalf("heartbeat %+v after a failed upload, want none", b)
	}
}

// TestUploaderPackedChunkComesBack: a chunk that went up in a pack, was
// dropped by a later manifest and comes back (a page rewritten to an
// earlier content, a VACUUM that lays a table out as before) must be
// found in its pack by the manifest that names it again, even when that
// manifest goes up without the chunk passing through the pass: here the
// transaction after it replaced the chunk in staging before the pass
// listed the staged chunks, and the pass found the chunk in the store by
// its record of recent uploads (reconsider, inStore). The torture test
// TestTinySpool once restored a manifest whose chunk the store lacked
// this way.
func TestUploaderPackedChunkComesBack(t *testing.T) {
	now, fake, u, d := oneTarget(t, "/data/back.db", func(o *Options) { o.PackChunks = 4 })
	s1 := d.stageNew(testData(70, 9*manifest.ChunkSize), now.Now())
	mustFlush(t, u, d.dir)
	if m, err := manifest.Decode(fake.ManifestAt(d.key())); err != nil || len(m.PackRefs()) != 8 {
		t.Fatalf("test setup: the first manifest (%v) should have its 8 chunk files in packs", err)
	}
	x := s1.m.Chunks[5]

	// Chunk 5 changes: no uploaded manifest or placement names x now.
	s2 := d.snapshot(withChunk(s1.data, 5, 71), now.Now().Add(time.Second))
	d.stage(s2, s2.addedTo(s1)...)
	mustFlush(t, u, d.dir)

	// Chunk 5 is x again, and chunk 2 changes. The next transaction
	// rewrites chunk 5 once more, which deletes x from staging before
	// the pass lists it: the pass sees chunk 2 only.
	data3 := withChunk(s2.data, 2, 72)
	copy(data3[5*manifest.ChunkSize:6*manifest.ChunkSize], s1.data[5*manifest.ChunkSize:])
	s3 := d.snapshot(data3, now.Now().Add(2*time.Second))
	if s3.m.Chunks[5] != x {
		t.Fatal("test setup: chunk 5 did not come back")
	}
	d.stage(s3, s3.m.Chunks[2])
	s4 := d.snapshot(withChunk(data3, 5, 73), now.Now().Add(3*time.Second))

	gate := fake.BlockOnce(storetest.OpPutChunk, nil)
	errc := flushAsync(u, d.dir)
	gate.Wait(t)
	d.stage(s4, s4.addedTo(s3)...)
	gate.Open()
	if err := <-errc; err != nil {
		t.Fatalf("Flush()=%v", err)
	}
	if got := manifestCounters(fake.ManifestPuts()); !slices.Contains(got, s3.m.ChangeCounter) {
		t.Fatalf("manifests put %v: the test did not take the path it means to (#%d goes up on the strength of the recent uploads)", got, s3.m.ChangeCounter)
	}
	fake.CheckIntegrity(t) // #3 says where x is
	checkReassembled(t, fake, d, s4)
}

// A spool so full that not even the record of a pack's placements fits
// still drains: the chunks go up one by one instead, their files go, and
// the manifest follows. Waiting for room would keep the spool full for
// good, putting the same pack on every pass.
func TestUploaderDrainsFullSpool(t *testing.T) {
	for _, group := range []bool{false, true} {
		t.Run(fmt.Sprintf("group=%v", group), func(t *testing.T) { testDrainsFullSpool(t, group) })
	}
}

// testDrainsFullSpool is TestUploaderDrainsFullSpool through Flush, or,
// with group, through FlushAll, whose uploads share packs.
func testDrainsFullSpool(t *testing.T, group bool) {
	root := filepath.Join(t.TempDir(), "spool")
	testfs.MountTmpfs(t, root, "2m")
	now, fake, opts := fakeTarget(nil)
	opts.PackChunks = 4
	u := newTestUploader(t, opts)
	d := newTestSpool(t, root, "/data/full.db")
	s1 := d.stageNew(testData(80, 9*manifest.ChunkSize), now.Now())
	mustFlush(t, u, d.dir)
	data := s1.data
	for i := 1; i < 9; i++ {
		data = withChunk(data, i, uint64(90+i))
	}
	s := d.snapshot(data, now.Now().Add(time.Second))
	d.stage(s, s.addedTo(s1)...)
	fillUp(t, filepath.Join(root, "filler"))

	if group {
		if err := u.FlushAll(context.Background()); err != nil {
			t.Fatalf("FlushAll()=%v, want nil", err)
		}
	} else {
		mustFlush(t, u, d.dir)
	}
	if got := d.stagedChunks(); len(got) != 0 {
		t.Errorf("%d chunk files still staged after the flush, want 0: the spool did not drain", len(got))
	}
	fake.CheckIntegrity(t)
	checkReassembled(t, fake, d, s)
}

// fillUp writes to p until its file system is full.
func fillUp(t testing.TB, p string) {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill %s: %v", p, err)
			}
			return
		}
	}
}

// A chunk file that the pass listed but found gone when it read it (a
// snapshot that staged it failed, and dropped it) may be staged again
// before the pass deletes the files of its upload: the next snapshot
// needs it, and nothing uploaded it. The pass deletes only the files it
// uploaded.
func TestUploaderKeepsChunkStagedAgain(t *testing.T) {
	now, fake, u, d := oneTarget(t, "/data/again.db", nil)
	s1 := d.stageNew(testData(81, 3*manifest.ChunkSize), now.Now())
	s2 := d.snapshot(withChunk(s1.data, 1, 82), now.Now().Add(time.Second))
	x := s2.m.Chunks[1]

	// The pass listed s1's two chunk files and x; x is gone when it reads.
	unit := []manifest.Fingerprint{s1.m.Chunks[1], s1.m.Chunks[2], x}
	gate := fake.BlockOnce(storetest.OpPutPack, nil)
	errc := make(chan error, 1)
	go func() { errc <- u.uploadUnit(context.Background(), u.state(d.dir), d.sp.StagedChunks(), unit, u.bg) }()
	gate.Wait(t)
	// While s1's chunks go up, the next snapshot stages x and commits.
	d.stage(s2, x)
	gate.Open()
	if err := <-errc; err != nil {
		t.Fatalf("uploadUnit()=%v", err)
	}
	if !slices.Contains(d.stagedChunks(), x) {
		t.Fatalf("the upload deleted chunk file %s, which it did not upload and the staged snapshot needs", x)
	}
	mustFlush(t, u, d.dir)
	fake.CheckIntegrity(t)
	checkReassembled(t, fake, d, s2)
}
