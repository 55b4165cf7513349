package upload

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
)

// dbState is the uploader's state of one database: its spool directory,
// what the store holds of it, and the scheduling of its uploads.
type dbState struct {
	sp     spool.Dir
	upload sync.Mutex   // one upload of this database at a time in this process
	queued bool         // under Uploader.mu: a wake-up is in the channel
	group  *group       // under Uploader.mu: the last worker group that took it
	hurry  atomic.Int32 // flushes waiting: a background upload switches to the flush rate

	mu     sync.Mutex // guards the fields below
	status Status
	// What the store holds, as far as this process knows.
	uploadedID   [32]byte  // the snapshot last uploaded (spool.Snapshot.ID)
	uploadedAt   time.Time // its manifest's Created
	lastManifest time.Time // when a manifest was last uploaded, for ManifestGap
	lastStart    time.Time // when the pass that uploaded it started, for ConditionalGap
	// etags holds, by target, the entity tag of the manifest this
	// process last put or read there: the condition of the next put.
	etags     map[*condState]string
	lastTouch time.Time // when the last uploaded snapshot was last touched
	overBytes int64     // override bytes uploaded in heads since the last base (delta.go)
	// placed holds the chunks this database's uploads put in packs that
	// no uploaded manifest lists yet (see packing.go).
	placed map[manifest.Fingerprint]manifest.PackRef
	// The spool's invalidation token when this uploader last looked
	// (noticeInvalidation).
	invalidation     string
	invalidationSeen bool
	// Scheduling after failures.
	retryAt time.Time     // background uploads wait until then after a failure
	backoff time.Duration // the current wait after a failure
	blocked error         // a permanent error: stop until reconfigured or flushed
	rerun   bool          // a wake-up came while the upload was busy
	// The current failure episode, logged once when it starts (WARN),
	// once if it outlasts failingErrorAfter (ERROR), once when it ends.
	failingSince  time.Time
	failingLogged bool
	outageLogged  bool
	blockedOnce   bool
}

func newDBState(sp spool.Dir) *dbState {
	st := &dbState{sp: sp}
	st.status.Dir = sp.Path()
	st.status.Source = sp.Source()
	st.uploadedID = sp.UploadedID()
	// Counted on from what the processes before this one saved.
	if saved, ok := savedStatus(sp); ok {
		st.status.carry(saved)
	}
	return st
}

func (st *dbState) setRerun(v bool) {
	st.mu.Lock()
	st.rerun = v
	st.mu.Unlock()
}

// takeRerun reports whether a wake-up found the upload busy.
func (st *dbState) takeRerun() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.rerun
}

// source is the database's path, or its spool directory while the path is
// not known yet.
func (st *dbState) source() string {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.status.Source == "" { // registered at open, before its first transaction wrote it
		st.status.Source = st.sp.Source()
	}
	if st.status.Source != "" {
		return st.status.Source
	}
	return st.sp.Path()
}

// knowSource records source as the database's path, unless the spool
// named it already.
func (st *dbState) knowSource(source string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.status.Source == "" {
		st.status.Source = source
	}
}

func (st *dbState) uploaded() ([32]byte, time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.uploadedID, st.uploadedAt
}

// pending reports whether st's spool holds a snapshot the store may
// lack: a staged one other than the last uploaded, or one handed over.
func (st *dbState) pending() bool {
	uploaded, _ := st.uploaded()
	id, ok := st.sp.StagedID()
	return !ok || id != uploaded || !st.sp.Idle()
}

func (st *dbState) isBlocked() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.blocked != nil
}

func (st *dbState) unblock() {
	st.mu.Lock()
	st.blocked = nil
	st.mu.Unlock()
}

func (st *dbState) setPlaced(placed map[manifest.Fingerprint]manifest.PackRef) {
	st.mu.Lock()
	st.placed = placed
	st.mu.Unlock()
}

func (st *dbState) countCall() {
	st.mu.Lock()
	st.status.Calls++
	st.mu.Unlock()
}

// Backoff after a failed background upload of a database: a store that is
// down is not asked again on every commit.
const (
	minFailureBackoff = time.Second
	maxFailureBackoff = time.Minute
)

func (st *dbState) waiting(now time.Time) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return now.Before(st.retryAt)
}

// failingErrorAfter is how long uploads of a database may fail before
// the failure is logged at ERROR: a store down that long stops
// replication, where a shorter outage only delays it.
const failingErrorAfter = time.Minute

func (u *Uploader) noteFailure(st *dbState, err error) {
	src := st.source()
	st.mu.Lock()
	defer st.mu.Unlock()
	now := u.opts.Now()
	st.backoff = min(max(2*st.backoff, minFailureBackoff), maxFailureBackoff)
	st.retryAt = now.Add(st.backoff)
	st.status.Failures++
	st.status.LastError = err.Error()
	if st.failingSince.IsZero() {
		st.failingSince = now
	}
	if errors.Is(err, store.ErrPermanent) {
		st.blocked = err
		if !st.blockedOnce {
			st.blockedOnce = true
			u.log.Error("upload: replication of this database stopped on a permanent error; fix the configuration or credentials, then re-register or flush",
				logKeyDB, src, logKeyErr, err)
		}
		return
	}
	if !st.failingLogged {
		st.failingLogged = true
		u.log.Warn("upload: upload failed; retrying in the background", logKeyDB, src, logKeyErr, err)
	}
	if down := now.Sub(st.failingSince); down >= failingErrorAfter && !st.outageLogged && !st.blockedOnce {
		st.outageLogged = true
		u.log.Error("upload: replication stopped: uploads have failed for over a minute; commits wait in the spool until the store answers",
			logKeyDB, src, "for", down.Round(time.Second).String(), logKeyErr, err)
	}
}

func (u *Uploader) noteSuccess(st *dbState, m *manifest.Manifest, id [32]byte) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.status.Uploads++
	st.backoff, st.retryAt = 0, time.Time{}
	st.status.LastUpload = u.opts.Now()
	st.status.LastError = ""
	st.status.Source = m.SourcePath
	st.uploadedID = id
	st.uploadedAt = m.Created
	st.lastManifest = u.opts.Now()
	if st.failingLogged || st.blockedOnce || st.outageLogged {
		u.log.Warn("upload: replication resumed: uploads succeed again", logKeyDB, m.SourcePath,
			"after", u.opts.Now().Sub(st.failingSince).Round(time.Second).String())
	}
	st.failingLogged = false
	st.blockedOnce = false
	st.outageLogged = false
	st.failingSince = time.Time{}
}

// recordPlacements adds placements to st, in memory and in the spool.
func (st *dbState) recordPlacements(fps []manifest.Fingerprint, refs []manifest.PackRef) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.placed == nil {
		st.placed = map[manifest.Fingerprint]manifest.PackRef{}
	}
	for i := range fps {
		st.placed[fps[i]] = refs[i]
	}
	return st.sp.AddPlacements(fps, refs)
}

// forgetPlacements drops the placements that m, now uploaded, carries, and
// rewrites the spool's record with the others (usually none).
func (st *dbState) forgetPlacements(m *manifest.Manifest) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.placed) == 0 {
		return nil
	}
	for idx, ref := range m.PackRefs() {
		if r, ok := st.placed[m.Chunks[idx]]; ok && r == ref {
			delete(st.placed, m.Chunks[idx])
		}
	}
	return st.sp.SetPlacements(st.placed)
}

// etag returns the entity tag of the manifest this process last put or
// read in the target of c ("" for none there), and whether it knows one.
func (st *dbState) etag(c *condState) (string, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	tag, ok := st.etags[c]
	return tag, ok
}

// setETag records tag as the one of the manifest in the target of c, or,
// with known false, forgets it.
func (st *dbState) setETag(c *condState, tag string, known bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if !known {
		delete(st.etags, c)
		return
	}
	if st.etags == nil {
		st.etags = make(map[*condState]string)
	}
	st.etags[c] = tag
}
