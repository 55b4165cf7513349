package upload

import (
	"context"
	"fmt"

	"github.com/boule-vfs/boule/internal/fsutil"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/spool"
)

// pass uploads the newest snapshot of the database, and reports whether a
// newer one may be waiting.
//
// It reads the staged snapshot first (or, when there is none, the newest
// handed-over one), then sweeps chunk files in the order the spool moves
// them: the staged chunks, then ready/ (which it takes into consuming/),
// then consuming/. Chunks only move forward, so after the sweep every
// chunk the snapshot references is in the store (in a group, the small
// sets are gathered and go up together once the sweep has listed them:
// a staged chunk handed over meanwhile is read where it went, see
// chunkPhase), and its manifest can follow, unless the spool staged a newer snapshot meanwhile: it deletes
// the staged chunks that snapshot replaced, so the newest snapshot handed
// over since the first was read is uploaded instead (reconsider).
// Snapshots handed over before the manifest was read are obsolete once it
// is uploaded (a newer manifest that needs the same bytes stages them
// anew): they are deleted without upload, so snapshots squash at upload
// time as well as in the spool, and at most one manifest is uploaded per
// pass.
func (u *Uploader) pass(ctx context.Context, st *dbState, targets []limitedTarget) (more bool, err error) {
	if !st.pending() {
		return false, nil // nothing new
	}
	uploaded, _ := st.uploaded()
	if err := u.waitGap(ctx, st, targets); err != nil {
		return false, err
	}
	start := u.opts.Now()
	// In a group, the open round waits for this database's chunks until
	// it goes on to its manifest.
	mb := memberOf(ctx)
	defer mb.release()
	mb.activate()
	// Snapshots handed over before the manifest is read (in consuming/, or
	// still in ready/): after the upload, they are entirely obsolete.
	// Snapshots published later may be newer than the manifest: they stay.
	before, err := handedOverNames(st.sp)
	if err != nil {
		return false, err
	}
	c, err := u.candidate(st)
	if err != nil || c.snap == nil {
		return false, err // nil: no snapshot at all yet
	}
	if c.snap.ID == uploaded {
		// Already in the store: whatever waited before is older.
		if err := st.sp.TakeReady(); err != nil {
			return false, err
		}
		if err := st.sp.RemoveConsumed(before); err != nil {
			return false, err
		}
		return !st.sp.Idle(), nil // newer snapshots arrived meanwhile
	}
	// Staged chunks belong to the newest snapshot: all are uploaded.
	ph := &chunkPhase{u: u, st: st, mb: mb, targets: targets}
	if err := ph.add(ctx, st.sp.StagedChunks(), nil, c.snap.Manifest, true); err != nil {
		return false, err
	}
	if err := st.sp.TakeReady(); err != nil {
		return false, err
	}
	if err := u.sweep(ctx, ph, c.snap.Manifest); err != nil {
		return false, err
	}
	if err := ph.flush(ctx); err != nil {
		return false, err
	}
	if c.staged {
		if id, ok := st.sp.StagedID(); !ok || id != c.snap.ID {
			var again bool
			c, before, again, err = u.reconsider(ctx, ph, c, before, uploaded)
			if err != nil || again {
				return again, err
			}
		}
	}
	mb.release() // no more chunks in this pass
	if err := u.uploadManifest(ctx, st, c.snap, c.handedOver, targets); err != nil {
		return false, err
	}
	st.mu.Lock()
	st.lastStart = start
	st.mu.Unlock()
	if err := st.sp.RemoveConsumed(before); err != nil {
		return false, err
	}
	// A snapshot staged or published after the manifest was read is newer:
	// look again (the next pass returns at once if nothing is new).
	return true, nil
}

// candidate is the snapshot a pass means to upload.
type candidate struct {
	snap       *spool.Snapshot
	staged     bool // read from staging: the newest when it was read
	handedOver bool // read from ready/ or consuming/: uploaded only if not older than the store's
}

// candidate returns the staged snapshot, or, when nothing is staged, the
// newest handed-over one; a nil snapshot when there is none at all.
func (u *Uploader) candidate(st *dbState) (candidate, error) {
	s, err := st.sp.Staged()
	if err != nil {
		return candidate{}, fmt.Errorf("upload: read the staged snapshot of %s: %w", st.source(), err)
	}
	if s != nil {
		return candidate{snap: s, staged: true}, nil
	}
	s, err = st.sp.NewestHandedOver()
	if err != nil {
		return candidate{}, fmt.Errorf("upload: read the snapshots of %s: %w", st.source(), err)
	}
	return candidate{snap: s, handedOver: true}, nil
}

// reconsider is the part of a pass that runs when a newer snapshot was
// staged while the pass uploaded c's chunks. The spool deletes the staged
// chunks a snapshot replaces, so a chunk of c may have gone before it was
// uploaded. The pass uploads instead the newest snapshot handed over since
// c was read, whose chunks are all in consuming/ or in the store, or looks
// again (again true); unless that one is older than c and every chunk of c
// is known to be in the store (under continuous writes the handed-over
// snapshot is a manifest gap old), in which case c goes up.
//
// It takes ready/ once more first: under continuous writes the only
// snapshot handed over during this pass may be sitting there. The newest
// handed-over snapshot, whenever it was taken, is complete once swept for
// its own manifest: its chunks are in its directory, in an older one, or
// in the store; and every snapshot left in consuming/ is older, so all of
// them go (the returned before).
func (u *Uploader) reconsider(ctx context.Context, ph *chunkPhase, c candidate, before []string, uploaded [32]byte) (_ candidate, _ []string, again bool, err error) {
	st := ph.st
	if err := st.sp.TakeReady(); err != nil {
		return c, before, false, err
	}
	all, err := handedOverNames(st.sp)
	if err != nil {
		return c, before, false, err
	}
	h, err := newestConsumed(st.sp)
	if err != nil {
		return c, before, false, err
	}
	if h == nil || !h.Manifest.Created.After(c.snap.Manifest.Created) {
		ok, err := u.inStore(st, c.snap.Manifest)
		if err != nil || ok {
			return c, before, false, err
		}
	}
	if h == nil {
		return c, before, true, nil // look again
	}
	if h.ID == uploaded {
		return c, before, true, st.sp.RemoveConsumed(all)
	}
	if err := u.sweep(ctx, ph, h.Manifest); err != nil {
		return c, before, false, err
	}
	if err := ph.flush(ctx); err != nil {
		return c, before, false, err
	}
	return candidate{snap: h, handedOver: true}, all, false, nil
}

// handedOverNames lists the snapshots in consuming/ and ready/.
func handedOverNames(sp spool.Dir) ([]string, error) {
	var names []string
	for _, list := range []func() ([]spool.Handover, error){sp.Consuming, sp.Ready} {
		hs, err := list()
		if err != nil {
			return nil, err
		}
		for _, h := range hs {
			names = append(names, h.Name)
		}
	}
	return names, nil
}

// newestConsumed returns the newest snapshot in consuming/, or nil.
func newestConsumed(sp spool.Dir) (*spool.Snapshot, error) {
	hs, err := sp.Consuming()
	if err != nil {
		return nil, err
	}
	return spool.Newest(hs), nil
}

// inStore reports whether every chunk of m that is not inline is known to
// be in the store: uploaded by this process within RecentTTL, placed in a
// pack by st's uploads, or used by the last uploaded manifest. Under
// continuous writes the staged manifest changes during every pass, and a
// chunk of the one a pass read may have been replaced in staging before
// it was uploaded; when none was, that manifest can go up rather than an
// older handed-over one, a manifest gap staler.
//
// A chunk known only as a recent upload into a pack is recorded as placed
// there before inStore says yes: a chunk that comes back (a page written
// back to an earlier content) may be in no uploaded manifest or placement
// any more, and m's pack table must still say where it is.
func (u *Uploader) inStore(st *dbState, m *manifest.Manifest) (bool, error) {
	var prev map[manifest.Fingerprint]bool
	if pm, err := st.sp.Uploaded(); err == nil && pm != nil {
		prev = make(map[manifest.Fingerprint]bool, len(pm.Chunks))
		for _, fp := range pm.Chunks {
			prev[fp] = true
		}
	}
	var rest []manifest.Fingerprint
	st.mu.Lock()
	for i, fp := range m.Chunks {
		if _, inline := m.Inline[uint32(i)]; inline || prev[fp] {
			continue
		}
		if _, ok := st.placed[fp]; !ok {
			rest = append(rest, fp)
		}
	}
	st.mu.Unlock()
	var packed []manifest.Fingerprint
	var refs []manifest.PackRef
	for _, fp := range rest {
		ref, ok := u.recentlyUploaded(fp)
		if !ok {
			return false, nil
		}
		if ref.ID != (manifest.Fingerprint{}) {
			packed, refs = append(packed, fp), append(refs, ref)
		}
	}
	if len(packed) > 0 {
		if err := st.recordPlacements(packed, refs); err != nil {
			if fsutil.NoSpace(err) {
				return false, nil // not known to be placed: the safe answer
			}
			return false, err
		}
	}
	return true, nil
}

// sweep uploads, through ph, the chunks of m that the snapshots in
// consuming/ hold.
func (u *Uploader) sweep(ctx context.Context, ph *chunkPhase, m *manifest.Manifest) error {
	need := make(map[manifest.Fingerprint]bool, len(m.Chunks))
	for i, fp := range m.Chunks {
		if _, inline := m.Inline[uint32(i)]; !inline {
			need[fp] = true
		}
	}
	hs, err := ph.st.sp.Consuming()
	if err != nil {
		return err
	}
	for _, h := range hs {
		if err := ph.add(ctx, h.Chunks(), need, m, false); err != nil {
			return err
		}
	}
	return nil
}

// A chunkPhase is the chunk uploads of one pass. In a group, it gathers
// the small chunk sets of the pass — the staged chunks and those of each
// snapshot in consuming/ — into one submission to the group's round, so
// that a database whose commits sit both in staging and in consuming/
// costs its group one pack, not one per place: the round closes when its
// last active member submits, and a second submission of a member goes
// up in a round of its own, often alone.
//
// Staged chunks may be submitted after the pass took ready/ into
// consuming/: the spool may hand one over to ready/ meanwhile, where no
// sweep of the pass looks, and the submission reads it there (part.read).
// A set too large for one pack goes up at once, on its own, as before.
type chunkPhase struct {
	u       *Uploader
	st      *dbState
	mb      *member // nil outside a group: every set goes up at once
	targets []limitedTarget
	parts   []part // gathered, not submitted yet
	n       int    // chunks in parts
}

// add uploads the chunk files of dir that need selects (all of them when
// need is nil), ordered by m, or gathers them for flush. staged says dir
// is staging.
func (ph *chunkPhase) add(ctx context.Context, dir spool.Chunks, need map[manifest.Fingerprint]bool, m *manifest.Manifest, staged bool) error {
	u := ph.u
	if ph.mb == nil || u.opts.PackChunks <= 1 {
		return u.uploadChunks(ctx, ph.st, dir, need, m, ph.targets)
	}
	fps, err := neededChunks(dir, need, m)
	if err != nil || len(fps) == 0 {
		return err
	}
	if ph.n+len(fps) > u.opts.PackChunks {
		// Not in one pack with what was gathered: that goes first.
		if err := ph.flush(ctx); err != nil {
			return err
		}
		if len(fps) > u.opts.PackChunks {
			return u.uploadChunks(ctx, ph.st, dir, need, m, ph.targets)
		}
	}
	ph.parts = append(ph.parts, part{dir: dir, fps: fps, staged: staged})
	ph.n += len(fps)
	return nil
}

// flush uploads the gathered chunks, in one submission.
func (ph *chunkPhase) flush(ctx context.Context) error {
	if len(ph.parts) == 0 {
		return nil
	}
	parts := ph.parts
	ph.parts, ph.n = nil, 0
	return ph.u.uploadShared(ctx, ph.mb, ph.st, parts, ph.targets)
}
