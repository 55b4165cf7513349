package spool

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"
	"time"
)

// ctxn is txn through Capture: what a commit does with captures on.
func ctxn(t testing.TB, db *DB, fake *fakeSource, mutate func([]byte) []byte, dirty ...int) error {
	t.Helper()
	return db.Capture(fake, commitFile(t, db, fake, mutate, dirty...))
}

// mustCtxn is ctxn, failing the test on an error.
func mustCtxn(t testing.TB, db *DB, fake *fakeSource, mutate func([]byte) []byte, dirty ...int) {
	t.Helper()
	if err := ctxn(t, db, fake, mutate, dirty...); err != nil {
		t.Fatalf("Capture()=%v, want nil", err)
	}
}

func waitStaged(t testing.TB, db *DB) {
	t.Helper()
	waitFor(t, "WaitStaged", db.WaitStaged)
}

// waitIdle waits until db's persister has stopped with nothing queued:
// past WaitStaged, which returns as soon as the snapshot is staged, it has
// also given back the capture memory of what it staged.
func waitIdle(t testing.TB, db *DB) {
	t.Helper()
	waitFor(t, "WaitIdle", db.WaitIdle)
}

// waitFor calls wait, named name, with a 10 s deadline, and fails the test
// on its error.
func waitFor(t testing.TB, name string, wait func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := wait(ctx); err != nil {
		t.Fatalf("%s()=%v", name, err)
	}
}

// holdPersister gives the persister a squash window longer than the test,
// and captures all the memory they need: after the first commit's
// snapshot, only a wait for staging makes the persister stage.
func holdPersister(o *Options) {
	o.PersistGap = time.Hour
	o.CaptureMemory = 1 << 30
}

// commitUnseen writes to d's file what a commit that d's spool does not
// see would: 4096 new bytes at off, and the change counter bumped.
func (d *testDB) commitUnseen(t testing.TB, off int) {
	t.Helper()
	nb := rewrite(d.rng, off, 4096)(d.src.bytes())
	binary.BigEndian.PutUint32(nb[24:], counter(nb)+1)
	writeDBFile(t, d.src.path, nb)
	d.src.set(nb)
}

// TestCaptureStagesOffTheCommit: commits captured in memory are staged by
// the persister, consecutive ones squashed, and the staged snapshot is the
// file, byte for byte, with a clean marker.
func TestCaptureStagesOffTheCommit(t *testing.T) {
	d := newTestDB(t, 40*cs, holdPersister)
	mustTxn(t, d.db, d.src, unchanged)
	before := d.db.Stats().Snapshots
	const commits = 200
	for i := range commits {
		off := (1 + d.rng.IntN(37)) * cs
		var err error
		switch i % 4 {
		case 0:
			err = ctxn(t, d.db, d.src, rewrite(d.rng, off, 4096), off/cs)
		case 1: // grow by a page
			n := len(d.src.bytes())
			err = ctxn(t, d.db, d.src, func(b []byte) []byte { return append(b, make([]byte, 4096)...) }, n/cs)
		case 2: // two chunks
			err = ctxn(t, d.db, d.src, func(b []byte) []byte {
				return rewrite(d.rng, off+cs, 100)(rewrite(d.rng, off, 100)(b))
			}, off/cs, off/cs+1)
		default:
			err = ctxn(t, d.db, d.src, unchanged)
		}
		if err != nil {
			t.Fatalf("commit %d: Capture()=%v", i, err)
		}
	}
	waitStaged(t, d.db)
	assertExact(t, d.db, d.src)
	if m := markerState(t, d.db); m != MarkerClean {
		t.Fatalf("marker %v after the persister caught up, want clean", m)
	}
	snaps := d.db.Stats().Snapshots - before
	// Commits within the squash window squash: the first capture is
	// staged at once, the rest when the wait cuts the window short.
	if snaps < 1 || snaps > 2 {
		t.Fatalf("%d snapshots for %d commits in one squash window, want 1 or 2", snaps, commits)
	}
	t.Logf("%d commits staged as %d snapshots", commits, snaps)
	waitIdle(t, d.db)
	if n := d.sp.CaptureBytes(); n != 0 {
		t.Fatalf("CaptureBytes()=%d after the persister caught up, want 0", n)
	}
}

// TestCaptureKeepsOneCopyPerChunk: commits that rewrite the same chunks
// while the persister waits hold one copy of each chunk, not one per
// commit: the newest, which is what the squashed snapshot stages.
func TestCaptureKeepsOneCopyPerChunk(t *testing.T) {
	d := newTestDB(t, 10*cs, holdPersister)
	mustTxn(t, d.db, d.src, unchanged)
	waitStaged(t, d.db)
	for i := range 100 {
		if err := ctxn(t, d.db, d.src, rewrite(d.rng, 3*cs+(i%8)*4096, 4096), 3); err != nil {
			t.Fatalf("commit %d: Capture()=%v", i, err)
		}
	}
	// Chunk 0 (the header) and chunk 3; the first capture may be in
	// the persister's hands already, with a copy of each.
	if n := d.sp.CaptureBytes(); n > 4*cs {
		t.Fatalf("CaptureBytes()=%d after 100 commits of the same chunk, want at most %d", n, 4*cs)
	}
	waitStaged(t, d.db)
	assertExact(t, d.db, d.src)
	waitIdle(t, d.db)
	if n := d.sp.CaptureBytes(); n != 0 {
		t.Fatalf("CaptureBytes()=%d after the persister caught up, want 0", n)
	}
}

// TestCaptureMemoryBound: a commit whose capture would take the captured
// bytes over the bound waits for the persister; one larger than the whole
// bound is snapshotted at once, on the commit path.
func TestCaptureMemoryBound(t *testing.T) {
	d := newTestDB(t, 20*cs, func(o *Options) {
		o.CaptureMemory = 3 * cs // the chunk written and chunk 0: 2 chunks
	})
	sp, db, src, rng, fsw := d.sp, d.db, d.src, d.rng, d.fault
	mustTxn(t, db, src, unchanged)

	// Hold the persister in its first staging step.
	hold, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	fsw.set(func(op, p string) error {
		if op == "rename" {
			once.Do(func() { close(hold); <-release })
		}
		return nil
	})
	mustCtxn(t, db, src, rewrite(rng, 3*cs, 4096), 3)
	<-hold
	if n := sp.CaptureBytes(); n != 2*cs {
		t.Fatalf("CaptureBytes()=%d with one capture of 2 chunks waiting, want %d", n, 2*cs)
	}
	done := make(chan error, 1)
	go func() { done <- ctxn(t, db, src, rewrite(rng, 5*cs, 4096), 5) }()
	select {
	case err := <-done:
		t.Fatalf("a commit over the bound returned (%v) while the persister was held", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitStaged(t, db)
	assertExact(t, db, src)

	// A commit of 4 chunks (and chunk 0) exceeds the bound on its own: it
	// is staged before Capture returns.
	mustCtxn(t, db, src, rewrite(rng, 8*cs, 4*cs), 8, 9, 10, 11)
	if n := sp.CaptureBytes(); n != 0 {
		t.Fatalf("CaptureBytes()=%d after a commit over the bound, want 0", n)
	}
	assertExact(t, db, src)
}

// TestCaptureAfterDeadWriter: commits captured by a process that died
// before staging them are rebuilt by the next commit; a writer that died
// in a transaction likewise.
func TestCaptureAfterDeadWriter(t *testing.T) {
	for _, tc := range []struct {
		name   string
		marker func(m Marker) Marker
	}{
		{"died after its commit", func(m Marker) Marker {
			return Marker{Committed: m.Persisted + 1, Persisted: m.Persisted, Owner: deadOwner}
		}},
		{"died in its transaction", func(m Marker) Marker { return Marker{State: MarkerSet} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := snapshotted(t, 10*cs)
			// The dead writer's commit changed chunk 4; nothing of it was
			// staged.
			d.commitUnseen(t, 4*cs)
			m, err := ReadMarker(d.db.Dir())
			if err != nil {
				t.Fatal(err)
			}
			if err := OpenDir(d.db.Dir()).WriteMarker(tc.marker(m)); err != nil {
				t.Fatal(err)
			}
			// The next commit, with its pre-state taken from the file.
			mustCtxn(t, d.db, d.src, rewrite(d.rng, 6*cs, 4096), 6)
			waitStaged(t, d.db)
			assertExact(t, d.db, d.src)
			if m := markerState(t, d.db); m != MarkerClean {
				t.Fatalf("marker %v, want clean", m)
			}
		})
	}
}

// TestCaptureWaitsForAnotherProcess: a commit that follows commits
// another live process captured waits until that process stages them,
// then stages its own on top.
func TestCaptureWaitsForAnotherProcess(t *testing.T) {
	d := snapshotted(t, 10*cs)
	m, err := ReadMarker(d.db.Dir())
	if err != nil {
		t.Fatal(err)
	}
	// Another process (pid 1, which runs) committed chunk 2 and has not
	// staged it: the test plays its persister.
	start, err := processStart(1)
	if err != nil {
		t.Skipf("no /proc/1/stat: %v", err)
	}
	other := uint64(1)<<32 | uint64(uint32(start))
	c := d.db.ctlp.Load()
	if c == nil {
		if _, err := d.db.Ctl(); err != nil {
			t.Fatal(err)
		}
		c = d.db.ctlp.Load()
	}
	theirs := rewrite(d.rng, 2*cs, 4096)(d.src.bytes())
	binary.BigEndian.PutUint32(theirs[24:], counter(theirs)+1)
	c.store(ctlOwner, other)
	c.store(ctlCommitted, m.Persisted+1)
	writeDBFile(t, d.src.path, theirs)
	d.src.set(theirs)
	go func() {
		time.Sleep(50 * time.Millisecond)
		// Their persister stages their commit: a rebuild plays it, and
		// leaves committed and persisted equal.
		if err := d.db.Snapshot(d.src, Change{Wrote: true, Force: true}); err != nil {
			t.Error(err)
		}
	}()
	t0 := time.Now()
	mustCtxn(t, d.db, d.src, rewrite(d.rng, 7*cs, 4096), 7)
	if waited := time.Since(t0); waited < 40*time.Millisecond {
		t.Fatalf("the commit returned after %v, before the other process staged its commit", waited)
	}
	waitStaged(t, d.db)
	assertExact(t, d.db, d.src)
}

// TestCheckLeavesPendingCommits: a check (a read) while commits are
// captured and not staged yet leaves the staged snapshot to the
// persister instead of rebuilding it.
func TestCheckLeavesPendingCommits(t *testing.T) {
	d := snapshotted(t, 10*cs)
	m, err := ReadMarker(d.db.Dir())
	if err != nil {
		t.Fatal(err)
	}
	// This process committed chunk 3 and captured it; its persister has
	// not staged it yet.
	d.commitUnseen(t, 3*cs)
	if err := OpenDir(d.db.Dir()).WriteMarker(Marker{State: MarkerPending, Committed: m.Persisted + 1, Persisted: m.Persisted}); err != nil {
		t.Fatal(err)
	}
	before := d.db.Stats().Snapshots
	if err := d.db.Snapshot(d.src, Change{}); err != nil {
		t.Fatal(err)
	}
	if n := d.db.Stats().Snapshots - before; n != 0 {
		t.Fatalf("a check took %d snapshots, want none: commits being staged are the persister's", n)
	}
	// Once that process is gone, a check rebuilds.
	if err := OpenDir(d.db.Dir()).WriteMarker(Marker{Committed: m.Persisted + 1, Persisted: m.Persisted, Owner: deadOwner}); err != nil {
		t.Fatal(err)
	}
	if err := d.db.Snapshot(d.src, Change{}); err != nil {
		t.Fatal(err)
	}
	assertExact(t, d.db, d.src)
}

// TestCaptureAfterOutsideWriter: a program that does not use boule wrote
// the file since this process's last commit: the next commit sees that
// its state before it is not the one the last commit left, and rebuilds
// on the spot.
func TestCaptureAfterOutsideWriter(t *testing.T) {
	d := snapshotted(t, 10*cs)
	mustCtxn(t, d.db, d.src, rewrite(d.rng, 2*cs, 4096), 2)
	waitStaged(t, d.db)
	// The outside writer: chunk 5 and the counter, without boule.
	d.commitUnseen(t, 5*cs)
	rebuilds := d.db.Stats().Snapshots - d.db.Stats().Incremental
	mustCtxn(t, d.db, d.src, rewrite(d.rng, 7*cs, 4096), 7)
	if n := d.db.Stats().Snapshots - d.db.Stats().Incremental - rebuilds; n != 1 {
		t.Fatalf("%d rebuilds by the commit after an outside write, want 1", n)
	}
	assertExact(t, d.db, d.src)
}

// TestPersisterChecksCaptures: when this process cannot tell (another
// process committed since its last commit), the persister checks that a
// capture follows the staged snapshot; one that does not (another program
// wrote meanwhile) is not staged, and the marker asks the next transaction
// to rebuild.
func TestPersisterChecksCaptures(t *testing.T) {
	d := snapshotted(t, 10*cs)
	mustCtxn(t, d.db, d.src, rewrite(d.rng, 2*cs, 4096), 2)
	waitStaged(t, d.db)
	// Another process committed (and staged) since: this process's
	// expectation is of an older generation. Then a program that does
	// not use boule wrote chunk 5.
	c := d.db.ctlp.Load()
	g := c.load(ctlCommitted) + 1
	c.store(ctlCommitted, g)
	c.store(ctlPersisted, g)
	d.commitUnseen(t, 5*cs)
	mustCtxn(t, d.db, d.src, rewrite(d.rng, 7*cs, 4096), 7)
	waitStaged(t, d.db)
	if m := markerState(t, d.db); m != MarkerSet {
		t.Fatalf("marker %v after a capture that does not follow the staged snapshot, want set (rebuild)", m)
	}
	mustCtxn(t, d.db, d.src, rewrite(d.rng, 8*cs, 4096), 8)
	waitStaged(t, d.db)
	assertExact(t, d.db, d.src)
}

// TestWaitIdleOutlastsPersister: the staged snapshot can hold a commit
// (WaitStaged returns) while its persister still works on the spool: it
// hands the snapshot over and says so. A database's last close waits
// for WaitIdle, so that nothing of its writes to the spool after the
// close returns (a program that then removes the directory found it not
// empty).
func TestWaitIdleOutlastsPersister(t *testing.T) {
	var armed bool
	entered, release := make(chan struct{}), make(chan struct{})
	d := newTestDB(t, 10*cs, func(o *Options) {
		o.PersistGap = 0
		o.Notify = func(string) {
			if armed {
				close(entered)
				<-release
			}
		}
	})
	mustTxn(t, d.db, d.src, unchanged)
	armed = true
	mustCtxn(t, d.db, d.src, rewrite(d.rng, 3*cs, 4096), 3)
	<-entered // the persister staged, published, and is not done
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.db.WaitStaged(done); err != nil {
		t.Fatalf("WaitStaged()=%v while the persister hands over, want nil (staged)", err)
	}
	if err := d.db.WaitIdle(done); err == nil {
		t.Fatal("WaitIdle()=nil while the persister still runs, want the context's error")
	}
	close(release)
	ctx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	if err := d.db.WaitIdle(ctx); err != nil {
		t.Fatalf("WaitIdle()=%v once the persister is done, want nil", err)
	}
	if err := d.db.WaitIdle(done); err != nil {
		t.Fatalf("WaitIdle()=%v on an idle database, want nil even with its context done", err)
	}
	assertExact(t, d.db, d.src)
}

// TestNoHurryOutlivesPersister: a wait for the persister cuts its squash
// window short, and only that persister's: a wait while none runs, or a
// hurry the persister did not take before it stopped, must not leave a
// token that the next persister would take at once, staging its first
// commit without squashing (TestWALRestartCarriesOver saw it once).
func TestNoHurryOutlivesPersister(t *testing.T) {
	d := newTestDB(t, 10*cs, holdPersister)
	mustTxn(t, d.db, d.src, unchanged)
	waitStaged(t, d.db) // no persister runs
	if n := len(d.db.hurry); n != 0 {
		t.Fatalf("hurry tokens after a wait with no persister=%d, want 0", n)
	}
	mustCtxn(t, d.db, d.src, rewrite(d.rng, 3*cs, 4096), 3)
	waitStaged(t, d.db)
	waitIdle(t, d.db)
	if n := len(d.db.hurry); n != 0 {
		t.Fatalf("hurry tokens once the persister stopped=%d, want 0", n)
	}
	assertExact(t, d.db, d.src)
}
