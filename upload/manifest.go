package upload

import (
	"context"
	"errors"
	"fmt"

	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
)

// uploadManifest uploads the manifest of snapshot s to every non-cache
// target, with the pack table that says where its packed chunks are, then
// records it as the database's last uploaded manifest. A snapshot that
// does not come from staging (the newest by construction) but was handed
// over is uploaded only if it is not older than the last one uploaded, so
// that the store never goes backwards.
func (u *Uploader) uploadManifest(ctx context.Context, st *dbState, s *spool.Snapshot, handedOver bool, targets []limitedTarget) error {
	m := s.Manifest
	key, err := store.ManifestKey(m.Hostname, m.SourcePath)
	if err != nil {
		return err
	}
	// The last uploaded manifest says where the chunks this snapshot
	// shares with it are: without it, nothing can be relied on.
	prev, err := st.sp.Uploaded()
	if errors.Is(err, spool.ErrCorrupt) {
		if ierr := u.invalidate(st); ierr != nil {
			return ierr
		}
		return fmt.Errorf("%w: the last uploaded manifest: %w", ErrSpoolCorrupt, err)
	}
	if err != nil {
		return fmt.Errorf("upload: read the last uploaded manifest of %s: %w", m.SourcePath, err)
	}
	// Never make the store go backwards: a snapshot taken before the last
	// uploaded one (left behind in consuming/, say) is not uploaded.
	if prev != nil && handedOver && m.Created.Before(prev.Created) {
		u.log.Warn("upload: not uploading a snapshot older than the last uploaded one", logKeyDB, m.SourcePath)
		return nil
	}
	// Say where packed chunks are: placements of this upload and earlier
	// ones, then the last uploaded manifest's pack table.
	st.mu.Lock()
	packed := withPacks(m, st.placed, prev)
	st.mu.Unlock()
	mb, err := packed.MarshalBinary()
	if err != nil {
		return fmt.Errorf("upload: encode the manifest of %s: %w", m.SourcePath, err)
	}
	if st.hurry.Load() > 0 {
		targets = u.flush
	}
	put, base, err := u.storeEncoding(ctx, st, packed, mb, targets)
	if err != nil {
		return err
	}
	for _, t := range targets {
		if t.Cache {
			continue
		}
		if err := u.putManifest(ctx, st, t, key, put, m); err != nil {
			return err
		}
	}
	if u.opts.OnManifest != nil {
		u.opts.OnManifest(m.Hostname, m.SourcePath)
	}
	if err := recordUploaded(st.sp, put, base); err != nil {
		// The placements stay: without this record of the manifest's
		// pack table, they are the only one the next upload has.
		u.log.Warn("upload: cannot record the uploaded manifest", logKeyDB, m.SourcePath, logKeyErr, err)
	} else if err := st.forgetPlacements(packed); err != nil {
		u.log.Warn("upload: cannot update the pack placements", logKeyDB, m.SourcePath, logKeyErr, err)
	}
	u.noteSuccess(st, m, s.ID)
	return nil
}

// recordUploaded records the uploaded manifest in the spool, as the store
// got it (a head over base, or whole when base is nil); tests make it
// fail.
var recordUploaded = func(sp spool.Dir, b, base []byte) error { return sp.RecordUploaded(b, base) }
