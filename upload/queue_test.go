package upload

import (
	"bytes"
	"context"
	"os"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/storetest"
)

// queued returns the spool directories in the wake-up queue, emptying it.
func queued(u *Uploader) []string {
	var out []string
	for {
		select {
		case d := <-u.wake:
			u.mu.Lock()
			u.dbs[d].queued = false
			u.mu.Unlock()
			out = append(out, d)
		default:
			slices.Sort(out)
			return out
		}
	}
}

// The periodic scan wakes only the databases with something to do: under
// load, an idle database in the wake-up queue takes the place of one
// waiting to upload.
func TestUploaderScanWakesOnlyDue(t *testing.T) {
	const period = 24 * time.Hour
	tests := []struct {
		name string
		// change does something to e's databases (3, all uploaded) and
		// returns the indexes the scan must queue.
		change func(t *testing.T, e *sharedEnv) []int
	}{
		{"all idle", func(*testing.T, *sharedEnv) []int { return nil }},
		{"a new snapshot staged", func(t *testing.T, e *sharedEnv) []int {
			d := e.dbs[1]
			s := d.snapshot(withChunk(e.snap[1].data, 1, 77), e.now.Now())
			d.stage(s, s.m.Chunks[1])
			return []int{1}
		}},
		{"a snapshot handed over", func(t *testing.T, e *sharedEnv) []int {
			d := e.dbs[2]
			s := d.snapshot(withChunk(e.snap[2].data, 2, 78), e.now.Now())
			d.publish(spool.InReady, s)
			return []int{2}
		}},
		{"a touch due", func(t *testing.T, e *sharedEnv) []int {
			e.now.Advance(period)
			return []int{0, 1, 2}
		}},
		{"a spool directory gone", func(t *testing.T, e *sharedEnv) []int {
			if err := os.RemoveAll(e.dbs[0].dir); err != nil {
				t.Fatal(err)
			}
			return []int{0}
		}},
		{"a database stopped by a permanent error", func(t *testing.T, e *sharedEnv) []int {
			d := e.dbs[1]
			s := d.snapshot(withChunk(e.snap[1].data, 1, 79), e.now.Now())
			d.stage(s, s.m.Chunks[1])
			st := e.u.state(d.dir)
			st.mu.Lock()
			st.blocked = store.ErrPermanent
			st.mu.Unlock()
			return nil // until flushed or reconfigured
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := storetest.NewFake("s3")
			e := newSharedEnv(t, 3, store.PackChunks, nil, target(fake))
			e.opts.TouchPeriod = period
			e.u = newTestUploader(t, e.opts)
			for _, d := range e.dbs {
				e.u.Add(d.dir) // not started: Add only queues
			}
			if err := e.u.FlushAll(context.Background()); err != nil {
				t.Fatalf("FlushAll()=%v, want nil", err)
			}
			queued(e.u)
			e.u.scan() // the first look starts the touch period
			if got := queued(e.u); len(got) != 0 {
				t.Fatalf("scan() of uploaded databases queued %v, want none", got)
			}
			var want []string
			for _, i := range tt.change(t, e) {
				want = append(want, e.dbs[i].dir)
			}
			slices.Sort(want)
			e.u.scan()
			if got := queued(e.u); !slices.Equal(got, want) {
				t.Errorf("scan() queued %v, want %v", got, want)
			}
		})
	}
}

// A group takes groupMax databases with something to upload from the
// wake-up queue, whatever the number of databases with nothing to upload
// queued between them, so that under load its pack is as full.
func TestUploaderDrainCountsUploads(t *testing.T) {
	fake := storetest.NewFake("s3")
	e := newSharedEnv(t, 2*groupMax, store.PackChunks, nil, target(fake))
	// The even databases are uploaded: nothing new.
	for i := 0; i < len(e.dbs); i += 2 {
		mustFlush(t, e.u, e.dbs[i].dir)
	}
	queued(e.u)
	for _, d := range e.dbs {
		e.u.Notify(d.dir)
	}
	first := <-e.u.wake
	dirs := e.u.drain(first)
	uploads := 0
	for _, d := range dirs {
		if e.u.state(d).pending() {
			uploads++
		}
	}
	if uploads != groupMax || len(dirs) != 2*groupMax {
		t.Errorf("drain() took %d databases, %d with something to upload, want %d and %d", len(dirs), uploads, 2*groupMax, groupMax)
	}
}

// A background upload sends one manifest per turn: a snapshot staged
// while its manifest goes up waits in the wake-up queue, behind the
// databases that changed before it, instead of going up at once in a
// second pass (which would send its chunks in a pack of their own).
func TestUploaderOneManifestPerTurn(t *testing.T) {
	fake := storetest.NewFake("s3")
	e := newSharedEnv(t, 2, store.PackChunks, nil, target(fake))
	d := e.dbs[0]
	s2 := d.snapshot(withChunk(e.snap[0].data, 1, 90), e.now.Now())
	var committed atomic.Bool
	fake.AddHook(func(_ context.Context, op, key string) error {
		if op == storetest.OpPutManifest && key == d.key() && committed.CompareAndSwap(false, true) {
			d.stage(s2, s2.m.Chunks[1]) // a commit, whose wake-up is lost
		}
		return nil
	})
	dirs := []string{d.dir, e.dbs[1].dir}
	e.u.uploadGroup(context.Background(), dirs, func() {})
	if got := manifestCounters(fake.ManifestPuts()); !slices.Equal(got, []uint32{1, 1}) {
		t.Fatalf("manifests put %v, want each database's first snapshot once", got)
	}
	if got := queued(e.u); !slices.Equal(got, []string{d.dir}) {
		t.Fatalf("queued %v after the group, want %s", got, d.dir)
	}
	e.u.uploadGroup(context.Background(), []string{d.dir}, func() {})
	if got := withoutPacks(t, fake.ManifestAt(d.key())); !bytes.Equal(got, s2.mb) {
		t.Fatalf("stored manifest %v, want the second snapshot's", manifestCounters([][]byte{got}))
	}
	checkReassembled(t, fake, d, s2)
	fake.CheckIntegrity(t)
}

// A database whose commits sit both in consuming/ (handed over) and in
// staging (staged since) submits both sets of chunks to its group's round
// at once: the group costs one pack, not one per place.
func TestUploaderSharedPacksStagedAndHandedOver(t *testing.T) {
	tests := []struct {
		name  string
		flush bool
	}{
		{"background", false},
		{"FlushAll", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const n = 6
			fake := storetest.NewFake("s3")
			e := newSharedEnv(t, n, store.PackChunks, nil, target(fake))
			for i, d := range e.dbs {
				// The staged snapshot goes to ready/, then a commit
				// changes chunk 1: staged, since ready/ is taken.
				if published, err := d.db.Publish(); err != nil || !published {
					t.Fatalf("Publish()=%v, %v, want true, nil", published, err)
				}
				s := d.snapshot(withChunk(e.snap[i].data, 1, uint64(600+i)), e.now.Now())
				if d.commit(s, s.m.Chunks[1]) {
					t.Fatal("commit() handed over though ready/ was taken")
				}
				e.snap[i] = s
			}
			if tt.flush {
				for _, d := range e.dbs {
					e.u.Add(d.dir) // not started: Add only registers
				}
				if err := e.u.FlushAll(context.Background()); err != nil {
					t.Fatalf("FlushAll()=%v, want nil", err)
				}
			} else {
				e.background(fake)
			}
			calls := fake.CallLog()
			if packs, chunks := storetest.CountOps(calls, storetest.OpPutPack), storetest.CountOps(calls, storetest.OpPutChunk); packs != 1 || chunks != 0 {
				t.Fatalf("%d packs and %d chunks put, want one pack; calls %v", packs, chunks, calls)
			}
			if ids := e.checkShared(fake); distinct(ids) != 1 {
				t.Errorf("chunks in %d packs, want one", distinct(ids))
			}
			for _, d := range e.dbs {
				if left := d.snapshots(); len(left) != 0 {
					t.Errorf("%s: snapshots %v left in the spool", d.path, left)
				}
			}
			fake.CheckIntegrity(t)
		})
	}
}

// A staged chunk handed over to ready/ after its pass took ready/ into
// consuming/ (so that no sweep of the pass lists it) is read from ready/
// when the pass's submission goes up, not skipped.
func TestUploaderSharedStagedChunkHandedOver(t *testing.T) {
	fake := storetest.NewFake("s3")
	e := newSharedEnv(t, 1, store.PackChunks, nil, target(fake))
	d, s := e.dbs[0], e.snap[0]
	st := e.u.state(d.dir)
	fps, err := neededChunks(d.sp.StagedChunks(), nil, s.m)
	if err != nil || len(fps) != len(s.files) {
		t.Fatalf("neededChunks()=%v, %v, want the %d staged chunks", fps, err, len(s.files))
	}
	if published, err := d.db.Publish(); err != nil || !published {
		t.Fatalf("Publish()=%v, %v, want true, nil", published, err)
	}
	g := e.u.newGroup(context.Background())
	mb := g.join(true)
	parts := []part{{dir: d.sp.StagedChunks(), fps: fps, staged: true}}
	if err := e.u.uploadShared(context.Background(), mb, st, parts, e.u.bg); err != nil {
		t.Fatalf("uploadShared()=%v, want nil", err)
	}
	for _, fp := range fps {
		if _, ok := st.placed[fp]; !ok {
			t.Errorf("chunk %s not placed in a pack", fp)
		}
	}
	if got, want := storetest.CountOps(fake.CallLog(), storetest.OpPutPack), 1; got != want {
		t.Fatalf("%d packs put, want %d", got, want)
	}
	mustFlush(t, e.u, d.dir) // its chunks are known to be in the pack: no more put
	if got := storetest.CountOps(fake.CallLog(), storetest.OpPutPack) + storetest.CountOps(fake.CallLog(), storetest.OpPutChunk); got != 1 {
		t.Errorf("%d pack and chunk puts, want the first pack only", got)
	}
	checkReassembled(t, fake, d, s)
	fake.CheckIntegrity(t)
}
