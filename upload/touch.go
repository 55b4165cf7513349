package upload

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
)

// maybeTouch refreshes, spread over TouchPeriod, the chunks of the last
// uploaded manifest, so that a lifecycle rule on the chunk bucket expires
// only chunks no live manifest uses. A chunk found missing is re-uploaded
// on the next transaction: the staged snapshot is invalidated.
func (u *Uploader) maybeTouch(ctx context.Context, st *dbState, targets []limitedTarget) {
	if u.opts.TouchPeriod < 0 {
		return
	}
	st.mu.Lock()
	now := u.opts.Now()
	if st.lastTouch.IsZero() {
		st.lastTouch = now // the first pass after start waits a full period
	}
	due := now.Sub(st.lastTouch) >= u.opts.TouchPeriod
	st.mu.Unlock()
	if !due {
		return
	}
	m, err := st.sp.Uploaded()
	if err != nil || m == nil {
		return
	}
	// Each object once: a chunk of its own, or the pack holding it.
	refs := m.PackRefs()
	seen := map[manifest.Fingerprint]bool{}
	for i, fp := range m.Chunks {
		ref, packed := refs[uint32(i)]
		obj, what := fp, "chunk"
		if packed {
			obj, what = ref.ID, "pack"
		}
		if _, inline := m.Inline[uint32(i)]; inline || seen[obj] {
			continue
		}
		seen[obj] = true
		for _, t := range targets {
			if t.Cache {
				continue
			}
			var err error
			if packed {
				err = t.lim.TouchPack(ctx, obj)
			} else {
				err = t.lim.TouchChunk(ctx, obj)
			}
			st.countCall()
			if errors.Is(err, store.ErrNotFound) {
				u.log.Warn("upload: a "+what+" of the last uploaded snapshot is missing from the store; the next transaction re-uploads everything",
					logKeyDB, m.SourcePath, logKeyTarget, t.Name, what, obj.String())
				_ = u.invalidate(st)
				return
			}
			if err != nil {
				return // retried next period
			}
		}
	}
	if !u.touchBase(ctx, st, m.SourcePath, targets) {
		return
	}
	st.mu.Lock()
	st.lastTouch = now
	st.mu.Unlock()
}

// invalidate makes the next transaction rebuild and re-upload the whole
// snapshot: the spool is invalidated (spool.Invalidate), and this
// uploader forgets what it uploaded.
func (u *Uploader) invalidate(st *dbState) error {
	if err := st.sp.Invalidate(); err != nil {
		u.log.Error("upload: cannot invalidate the spool", logKeyDB, st.source(), logKeyErr, err)
		return err
	}
	u.forgetStore(st, st.sp.Invalidation())
	return nil
}

// noticeInvalidation makes this uploader forget what it knew the store to
// hold of st's database when another process invalidated its spool since
// the last look (vfsctl sync --full, repairing a store that lost or
// corrupted objects): the chunks it uploaded recently may be among them.
// It runs under the upload lock, which invalidations also hold, so no
// invalidation falls inside a pass.
func (u *Uploader) noticeInvalidation(st *dbState) {
	token := st.sp.Invalidation()
	st.mu.Lock()
	changed := st.invalidationSeen && token != st.invalidation
	st.invalidation, st.invalidationSeen = token, true
	st.mu.Unlock()
	if changed {
		u.log.Info("upload: the spool was invalidated by another process; uploading every chunk again", logKeyDB, st.source())
		u.forgetStore(st, token)
	}
}

// forgetStore forgets what this uploader knew the store to hold of st's
// database: the last upload, the pack placements and the chunks uploaded
// recently (of every database: they share fingerprints). token is the
// spool's invalidation token now.
func (u *Uploader) forgetStore(st *dbState, token string) {
	st.mu.Lock()
	st.uploadedID = [32]byte{}
	st.uploadedAt = time.Time{}
	st.placed = nil
	st.invalidation, st.invalidationSeen = token, true
	st.mu.Unlock()
	u.mu.Lock()
	clear(u.recent)
	u.mu.Unlock()
}

// readTargets reads the record of the targets the spool's chunks went to;
// tests make it fail.
var readTargets = func(sp spool.Dir) ([]byte, error) { return sp.Targets() }

// readPlacements reads where the chunks packed since the last uploaded
// manifest are; tests make it fail.
var readPlacements = func(sp spool.Dir) (map[manifest.Fingerprint]manifest.PackRef, error) { return sp.Placements() }

// transient reports whether err is a shortage of the process's or the
// system's resources (descriptors, memory), which passes: no reason to
// invalidate a spool and upload the whole database again.
func transient(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOMEM, syscall.EAGAIN, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// checkTargets invalidates the spool when its chunks were uploaded to other
// targets than the uploader's: the staged snapshot assumes the store holds
// every chunk it does not stage, which is true only of the old targets.
func (u *Uploader) checkTargets(st *dbState) error {
	var names []string
	for _, t := range u.opts.Targets {
		if !t.Cache {
			names = append(names, t.Name)
		}
	}
	slices.Sort(names)
	want := strings.Join(names, "\n") + "\n"
	got, err := readTargets(st.sp)
	if err == nil && string(got) == want {
		return nil
	}
	if transient(err) {
		// Out of descriptors, say: nothing says the targets changed,
		// and a full upload of the database is no answer. The pass
		// fails and is retried.
		return fmt.Errorf("upload: read the targets record of %s: %w", st.source(), err)
	}
	if got != nil || st.sp.HasUploaded() {
		u.log.Warn("upload: the replication targets changed; this database's snapshot is uploaded again in full",
			logKeyDB, st.source())
		if err := u.invalidate(st); err != nil {
			return err // the targets record stays as it was: retried next pass
		}
	}
	return st.sp.SetTargets([]byte(want))
}
