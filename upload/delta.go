package upload

import (
	"context"
	"errors"
	"fmt"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
)

// Manifests as deltas (doc/FORMAT.md, "Format v2"): the manifest of a
// large database goes up as a head that lists only the chunks that
// differ from a base, a full fingerprint list uploaded once under its
// hash. The spool records the base every target holds (spool.Dir.Base).

// deltaMinChunks is the fewest chunks whose manifest goes up as a head:
// below it, the whole fingerprint list is under 64 KiB, and a base would
// save little.
var deltaMinChunks = 2048 // a variable for tests

// storeEncoding returns the bytes to put in the store for m, whose
// format v1 encoding is whole: whole itself for a small database or
// with WholeManifests, otherwise a format v2 head, after uploading a new
// base to every target when there is none or the last one is too far
// behind m; with a head, it also returns the encoded base the head is
// over, which the spool's record of the upload needs.
//
// A new base is written when the overrides would exceed an eighth of
// the chunks, when the database shrank by more than an eighth, or when
// the heads uploaded since the last base have carried, in overrides,
// as many bytes as the base itself. That last rule keeps the bytes per
// upload near their least: with overrides growing by r bytes per upload,
// it writes a base of B bytes every sqrt(2B/r) uploads, which is what
// minimizes B/k + r*k/2, the base's share plus the average head.
func (u *Uploader) storeEncoding(ctx context.Context, st *dbState, m *manifest.Manifest, whole []byte, targets []limitedTarget) ([]byte, []byte, error) {
	if u.opts.WholeManifests || len(m.Chunks) < deltaMinChunks {
		if st.sp.HasBase() {
			if err := st.sp.RemoveBase(); err != nil {
				u.log.Warn("upload: cannot remove the record of the manifest base", logKeyDB, m.SourcePath, logKeyErr, err)
			}
		}
		return whole, nil, nil
	}
	n := len(m.Chunks)
	blob, err := st.sp.Base()
	if err != nil {
		u.log.Warn("upload: cannot read the record of the manifest base; writing a new one", logKeyDB, m.SourcePath, logKeyErr, err)
	}
	if blob != nil {
		if base, err := manifest.Decode(blob); err == nil {
			h, err := manifest.NewHead(m, base, manifest.Sum(blob), len(blob))
			if err != nil {
				return nil, nil, fmt.Errorf("upload: manifest head of %s: %w", m.SourcePath, err)
			}
			over := int64(len(h.Overrides)) * (4 + manifest.FingerprintSize)
			st.mu.Lock()
			spent := st.overBytes + over
			st.mu.Unlock()
			if len(h.Overrides) <= n/8 && len(base.Chunks) <= n+n/8 && spent < int64(len(blob)) {
				b, err := h.MarshalBinary()
				if err != nil {
					return nil, nil, fmt.Errorf("upload: encode the manifest head of %s: %w", m.SourcePath, err)
				}
				st.mu.Lock()
				st.overBytes = spent
				st.mu.Unlock()
				return b, blob, nil
			}
		} else {
			u.log.Warn("upload: the recorded manifest base does not decode; writing a new one", logKeyDB, m.SourcePath, logKeyErr, err)
		}
	}

	blob, id, err := manifest.NewBase(m)
	if err != nil {
		return nil, nil, fmt.Errorf("upload: encode the manifest base of %s: %w", m.SourcePath, err)
	}
	for _, t := range targets {
		if t.Cache {
			continue
		}
		err := t.lim.PutBase(ctx, id, blob)
		st.countCall()
		if err != nil {
			return nil, nil, err
		}
	}
	if err := st.sp.RecordBase(blob); err != nil {
		// The next upload writes a base again.
		u.log.Warn("upload: cannot record the manifest base", logKeyDB, m.SourcePath, logKeyErr, err)
	}
	st.mu.Lock()
	st.overBytes = 0
	st.mu.Unlock()
	base := *m
	base.Inline = nil
	h, err := manifest.NewHead(m, &base, id, len(blob))
	if err != nil {
		return nil, nil, fmt.Errorf("upload: manifest head of %s: %w", m.SourcePath, err)
	}
	b, err := h.MarshalBinary()
	if err != nil {
		return nil, nil, fmt.Errorf("upload: encode the manifest head of %s: %w", m.SourcePath, err)
	}
	return b, blob, nil
}

// touchBase touches the recorded manifest base in every target, as
// maybeTouch does chunks. A base found missing makes the next
// transaction re-upload everything, a new base included. It reports
// whether every target was touched.
func (u *Uploader) touchBase(ctx context.Context, st *dbState, db string, targets []limitedTarget) bool {
	blob, err := st.sp.Base()
	if err != nil || blob == nil {
		return err == nil
	}
	id := manifest.Sum(blob)
	for _, t := range targets {
		if t.Cache {
			continue
		}
		err := t.lim.TouchBase(ctx, id)
		st.countCall()
		if errors.Is(err, store.ErrNotFound) {
			u.log.Warn("upload: the manifest base of the last uploaded snapshot is missing from the store; the next transaction re-uploads everything",
				logKeyDB, db, logKeyTarget, t.Name, "base", id.String())
			_ = u.invalidate(st)
			return false
		}
		if err != nil {
			return false // retried next period
		}
	}
	return true
}
