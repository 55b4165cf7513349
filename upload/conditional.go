package upload

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
)

// Conditional manifest puts (doc/DESIGN.md, "The uploader"). The store
// must never go backwards: an older manifest must not land after a newer
// one. With S3's last writer wins, a put delayed on the way or retried
// after a lost answer could; the old rule spaces two manifests of a
// database ManifestGap apart, which puts a floor under the lag. A put on
// the condition that the stored manifest is still the one this uploader
// last put (If-Match on its ETag) cannot land late: by then the ETag has
// moved on, and the store refuses it. On targets whose conditional puts
// are verified, passes that upload a manifest start ConditionalGap apart
// instead, which only paces; the others keep ManifestGap.

// DefaultConditionalGap is the default of Options.ConditionalGap. It
// orders nothing: it paces, so that a database under continuous writes
// costs two manifests a second rather than as many as the limiter
// allows. Measured with make bench-peers at 100 commits/s on a loaded
// machine (doc/BENCHMARKS.md, "Boule against Litestream"), medians: lag
// p99 1.05 s against 1.89 s with the old gap and 1.68 s for Litestream,
// for 3.1 times the old gap's requests; 1 s barely moved the p99 (1.82
// s) for 1.5 times the requests, and 250 ms made it 0.54 s for 4.7 times.
const DefaultConditionalGap = 500 * time.Millisecond

// probeTag is an entity tag no store gives out: S3's are quoted hex, a
// directory store's bare hex. A conditional put on it must fail.
const probeTag = `"boule-probe-never-matches"`

// What an uploader knows of a target's conditional puts.
const (
	condUnknown  int32 = iota // the store claims them; not verified yet
	condVerified              // a put on a tag that does not match was refused
	condOff                   // not claimed, refused, or ignored: the gap stays
)

// condState is what an uploader knows of one target's conditional puts,
// shared by its background and flush limiters.
type condState struct {
	state  atomic.Int32
	logged atomic.Bool // the fallback was logged
}

func newCondState(s store.Store, disabled bool) *condState {
	c := &condState{}
	if disabled || !store.ConditionalPuts(s) {
		c.state.Store(condOff)
	}
	return c
}

// ErrNewerInStore is returned when the store holds a manifest of the
// database newer than the snapshot being uploaded, written by another
// uploader (another process with its own spool for the same database,
// say): it is not replaced. The upload is retried with backoff; a newer
// snapshot goes up.
var ErrNewerInStore = errors.New("upload: the store holds a newer manifest of this database")

// manifestGap returns the least time between two manifests of a
// database uploaded to targets, and whether it counts from the start of
// the pass that uploaded the last one: ConditionalGap, from the start,
// when every target that holds manifests has verified conditional puts;
// otherwise ManifestGap, from the end of the last upload, as the old
// rule wants, two puts that far apart.
func (u *Uploader) manifestGap(targets []limitedTarget) (time.Duration, bool) {
	for _, t := range targets {
		if !t.Cache && t.cond.state.Load() != condVerified {
			return u.opts.ManifestGap, false
		}
	}
	return u.opts.ConditionalGap, true
}

// putManifest puts the manifest m, encoded as put, under key in target
// t: conditionally when t may have conditional puts, otherwise as is,
// after whatever is left of ManifestGap (the pass waited only
// ConditionalGap when t's conditional puts were verified).
func (u *Uploader) putManifest(ctx context.Context, st *dbState, t limitedTarget, key string, put []byte, m *manifest.Manifest) error {
	var refused error
	if t.cond.state.Load() != condOff {
		err := u.putManifestIf(ctx, st, t, key, put, m)
		unsupported := errors.Is(err, store.ErrUnsupported)
		if !unsupported && !(errors.Is(err, store.ErrPermanent) && t.cond.state.Load() == condUnknown) {
			return err
		}
		// Refused (501, or a 4xx to the headers): as a store without,
		// after the old gap.
		refused = err
		if unsupported {
			u.condOff(t, "the store refused a conditional put", err)
		}
		if wait := u.gapLeft(st, u.opts.ManifestGap); wait > 0 {
			if err := sleep(ctx, wait); err != nil {
				return err
			}
		}
	}
	err := t.lim.PutManifest(ctx, key, put)
	st.countCall()
	if err != nil {
		// A permanent error that fails the plain put as well (wrong
		// credentials, say) says nothing of conditional puts.
		return err
	}
	if refused != nil {
		u.condOff(t, "the store refused a conditional put", refused)
	}
	st.setETag(t.cond, "", false) // not known any more
	return nil
}

// condOff turns t's conditional puts off, saying so once.
func (u *Uploader) condOff(t limitedTarget, why string, err error) {
	t.cond.state.Store(condOff)
	if t.cond.logged.CompareAndSwap(false, true) {
		args := []any{logKeyTarget, t.Name, "gap", u.opts.ManifestGap.String()}
		if err != nil {
			args = append(args, logKeyErr, err)
		}
		u.log.Warn("upload: "+why+"; manifests of a database go up at least the manifest gap apart", args...)
	}
}

// putManifestIf puts the manifest conditionally, on the ETag this
// uploader last saw for key in t, reading the stored one first when it
// knows none. A precondition failure means the stored manifest is not
// the one it last saw: its own put landed though its answer was lost (the
// stored bytes are put: done), or another uploader wrote since. Then put
// goes up over the stored manifest if that one is older, never if it is
// newer (ErrNewerInStore).
func (u *Uploader) putManifestIf(ctx context.Context, st *dbState, t limitedTarget, key string, put []byte, m *manifest.Manifest) error {
	etag, known := st.etag(t.cond)
	for attempt := 0; ; attempt++ {
		if !known {
			cur, tag, err := t.lim.GetManifestTag(ctx, key)
			st.countCall()
			switch {
			case errors.Is(err, store.ErrNotFound):
				etag = ""
			case err != nil:
				return err
			case bytes.Equal(cur, put):
				st.setETag(t.cond, tag, true)
				return nil // there already
			default:
				if err := u.checkNotNewer(t, cur, m); err != nil {
					return err
				}
				etag = tag
			}
			known = true
		}
		tag, err := t.lim.PutManifestIf(ctx, key, put, etag)
		st.countCall()
		if err == nil {
			st.setETag(t.cond, tag, true)
			u.probe(ctx, st, t, key, put)
			return nil
		}
		if !errors.Is(err, store.ErrPrecondition) {
			return err
		}
		if attempt == 2 {
			return fmt.Errorf("upload: put the manifest of %s to %s: the stored manifest kept changing: %w", m.SourcePath, t.Name, err)
		}
		// Read what is there, then decide.
		known = false
		st.setETag(t.cond, "", false)
	}
}

// checkNotNewer returns ErrNewerInStore, logged, if cur, the manifest
// stored for m's database, was created after m.
func (u *Uploader) checkNotNewer(t limitedTarget, cur []byte, m *manifest.Manifest) error {
	created, err := manifestCreated(cur)
	if err != nil {
		u.log.Warn("upload: the stored manifest does not decode; replacing it", logKeyDB, m.SourcePath, logKeyTarget, t.Name, logKeyErr, err)
		return nil
	}
	if created.After(m.Created) {
		u.log.Error("upload: the store holds a newer manifest of this database than the snapshot to upload: another uploader writes it; not replacing it",
			logKeyDB, m.SourcePath, logKeyTarget, t.Name)
		return fmt.Errorf("%w (in %s: created %s, the snapshot %s)", ErrNewerInStore, t.Name,
			created.UTC().Format(time.RFC3339Nano), m.Created.UTC().Format(time.RFC3339Nano))
	}
	u.log.Info("upload: the stored manifest changed under this uploader (another process wrote it); replacing it with a newer snapshot",
		logKeyDB, m.SourcePath, logKeyTarget, t.Name)
	return nil
}

// manifestCreated returns when the encoded manifest b, of any format, was
// created, reading its header only.
func manifestCreated(b []byte) (time.Time, error) {
	if v, err := manifest.FormatVersion(b); err == nil && v == 2 {
		h, err := manifest.DecodeHead(b)
		if err != nil {
			return time.Time{}, err
		}
		return h.M.Created, nil
	}
	m, err := manifest.Decode(b)
	if err != nil {
		return time.Time{}, err
	}
	return m.Created, nil
}

// probe checks, once per target, that the store honours conditional
// puts: it puts the same bytes again, on a tag that matches nothing. A
// store that refuses it honours them; one that stores it ignores them
// (it stored the same manifest again: no harm), and keeps the gap.
func (u *Uploader) probe(ctx context.Context, st *dbState, t limitedTarget, key string, put []byte) {
	if t.cond.state.Load() != condUnknown {
		return
	}
	tag, err := t.lim.PutManifestIf(ctx, key, put, probeTag)
	st.countCall()
	switch {
	case errors.Is(err, store.ErrPrecondition):
		if t.cond.state.CompareAndSwap(condUnknown, condVerified) {
			u.log.Debug("upload: conditional manifest puts verified", logKeyTarget, t.Name)
		}
	case err == nil:
		st.setETag(t.cond, tag, true)
		u.condOff(t, "the store ignores conditional puts (If-Match)", nil)
	case errors.Is(err, store.ErrUnsupported), errors.Is(err, store.ErrPermanent):
		u.condOff(t, "the store refused a conditional put", err)
	}
	// Anything else (a store down, a cancellation): probe again next time.
}

// waitGap waits out what is left of the database's manifest gap
// (manifestGap). A pass waits before the manifest is read, so that the
// upload is as fresh as it can be; the group's round does not wait for it
// meanwhile.
func (u *Uploader) waitGap(ctx context.Context, st *dbState, targets []limitedTarget) error {
	gap, fromStart := u.manifestGap(targets)
	var wait time.Duration
	if fromStart {
		st.mu.Lock()
		last := st.lastStart
		st.mu.Unlock()
		wait = left(gap, u.opts.Now().Sub(last))
	} else {
		wait = u.gapLeft(st, gap)
	}
	if wait <= 0 {
		return nil
	}
	mb := memberOf(ctx)
	mb.release()
	defer mb.activate()
	return sleep(ctx, wait)
}

// gapLeft returns how long is left of gap since the database's last
// manifest upload, by this process or another (its mark on the spool).
func (u *Uploader) gapLeft(st *dbState, gap time.Duration) time.Duration {
	st.mu.Lock()
	last := st.lastManifest
	st.mu.Unlock()
	if t := st.sp.UploadedTime(); t.After(last) {
		last = t
	}
	return left(gap, u.opts.Now().Sub(last))
}

// left returns what is left of gap after elapsed, zero on a clock step
// back (do not stall on it).
func left(gap, elapsed time.Duration) time.Duration {
	if gap <= 0 || elapsed < 0 || elapsed >= gap {
		return 0
	}
	return gap - elapsed
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-tm.C:
		return nil
	}
}
