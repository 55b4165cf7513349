package upload

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
)

// Status describes the replication of one database, for the Go API,
// vfsctl status and metrics. The uploader also saves it in the database's
// spool directory, so that other processes can read it (ReadStatus).
type Status struct {
	Dir          string        `json:"dir"`                  // spool directory
	Source       string        `json:"source"`               // source database path, when known
	Lag          time.Duration `json:"lag_ns"`               // age of the oldest snapshot not yet uploaded; 0 when current
	PendingBytes int64         `json:"pending_bytes"`        // bytes in the spool waiting for upload
	Uploads      int64         `json:"uploads"`              // snapshots (manifests) uploaded
	Chunks       int64         `json:"chunks"`               // chunks uploaded
	Packs        int64         `json:"packs"`                // packs uploaded (holding some of those chunks)
	Calls        int64         `json:"calls"`                // store calls made for this database
	Failures     int64         `json:"failures"`             // failed uploads
	LastUpload   time.Time     `json:"last_upload,omitzero"` // when the last manifest was uploaded
	LastError    string        `json:"last_error,omitempty"` // the last failure, "" after a success
	Blocked      bool          `json:"blocked"`              // stopped on a permanent error
	// NotReplicated reports that the database's commits cannot reach the
	// store whatever the store does: its snapshots fail (a full spool
	// disk, say), or an older boule left it in WAL mode unreplicated.
	// Problem says which, and why.
	NotReplicated bool   `json:"not_replicated"`
	Problem       string `json:"problem,omitempty"`
	// UploaderAlive reports that an uploader serving the database (in
	// any process) wrote its heartbeat lately; UploaderSeen is when it
	// last did, zero if none ever did in this boot. A lag without a live
	// uploader is a writer that exited before its uploads were done, not
	// a store outage.
	UploaderAlive bool      `json:"uploader_alive"`
	UploaderSeen  time.Time `json:"uploader_seen,omitzero"`
}

// withSpool completes s with what the spool directory says now: the lag
// (the age of the oldest commit not in the store, counting commits whose
// snapshots failed), the pending bytes, and whether the database is
// replicated at all.
func withSpool(s Status, sp spool.Dir, uploaded [32]byte, now time.Time) Status {
	s.Lag, s.PendingBytes = sp.Lag(uploaded, now)
	s.UploaderAlive, s.UploaderSeen = false, time.Time{}
	if b, ok := sp.Beat(); ok {
		s.UploaderAlive, s.UploaderSeen = b.Alive(now), b.At
	}
	mk, err := sp.Marker()
	if err != nil {
		s.NotReplicated, s.Problem = true, err.Error()
		return s
	}
	switch mk.State {
	case spool.MarkerFailed:
		s.NotReplicated = true
		s.Problem = "snapshots fail"
		if mk.Err != "" {
			s.Problem += ": " + mk.Err
		}
	case spool.MarkerWAL:
		s.NotReplicated = true
		s.Problem = "an older boule stopped replicating it in WAL mode; the next transaction resumes"
	case spool.MarkerSet:
		// Commits the staged snapshot lacks, until the next transaction
		// or a flush rebuilds it.
		s.Problem = "a writer died before staging its commits, or the store lost a chunk: the next transaction or vfsctl flush stages the database again"
	case spool.MarkerPending:
		// Commits captured in memory, being staged: they count in the lag.
	default:
		if s.Source != "" && sp.FileChanged(s.Source) {
			s.NotReplicated, s.Problem = true, ChangedUnrecorded
			if fi, err := os.Stat(s.Source); err == nil {
				// The oldest commit the store lacks is no later than
				// the file's last change.
				s.Lag = max(s.Lag, now.Sub(fi.ModTime()))
			}
		}
		return s
	}
	if !mk.Since.IsZero() {
		s.Lag = max(s.Lag, now.Sub(mk.Since))
	}
	return s
}

// savedStatus is the status saved in sp, if any that decodes.
func savedStatus(sp spool.Dir) (Status, bool) {
	var s Status
	b, err := sp.Status()
	if err != nil || b == nil || json.Unmarshal(b, &s) != nil {
		return Status{}, false
	}
	return s, true
}

// carry raises s's counters and last upload to saved's, which another
// process (or an earlier one) saved.
func (s *Status) carry(saved Status) {
	s.Uploads = max(s.Uploads, saved.Uploads)
	s.Chunks = max(s.Chunks, saved.Chunks)
	s.Packs = max(s.Packs, saved.Packs)
	s.Calls = max(s.Calls, saved.Calls)
	s.Failures = max(s.Failures, saved.Failures)
	if saved.LastUpload.After(s.LastUpload) {
		s.LastUpload = saved.LastUpload
	}
}

// ReadStatus reads the status a database's uploader saved in its spool
// directory, with the lag and pending bytes computed now from the spool.
func ReadStatus(dir string, now time.Time) (Status, error) {
	sp := spool.OpenDir(dir)
	s := Status{Dir: dir}
	b, err := sp.Status()
	if err != nil {
		return s, fmt.Errorf("upload: %w", err)
	}
	if b != nil {
		if err := json.Unmarshal(b, &s); err != nil {
			return s, fmt.Errorf("upload: %s: %w", sp.StatusFile(), err)
		}
		s.Dir = dir
	}
	if s.Source == "" {
		s.Source = sp.Source()
	}
	return withSpool(s, sp, sp.UploadedID(), now), nil
}

// saveStatus saves st's status in its spool directory, for ReadStatus.
//
// Several processes serve one database over time (a restart, a vfsctl
// flush), each with its own counters, and status.json is shared: what it
// saves never goes below what is saved, so that a process that uploaded
// nothing does not make the database look as if it never was.
func (u *Uploader) saveStatus(st *dbState) {
	st.mu.Lock()
	s := st.status
	s.Blocked = st.blocked != nil
	st.mu.Unlock()
	if saved, ok := savedStatus(st.sp); ok {
		s.carry(saved)
	}
	s.Lag, s.PendingBytes = 0, 0 // computed by readers
	s.NotReplicated, s.Problem = false, ""
	s.UploaderAlive, s.UploaderSeen = false, time.Time{}
	if b, err := json.Marshal(s); err == nil {
		_ = st.sp.SetStatus(b)
	}
	// A beat now too, after a success: the database's first may be a
	// period away, and a writer that uploads and exits before it would
	// leave status saying that no uploader ever served it. (Not after a
	// failure: a short-lived vfsctl flush must not make an uploader look
	// alive that is not.)
	if u.opts.BeatPeriod > 0 && s.LastError == "" {
		_ = st.sp.WriteBeat(spool.Beat{At: u.opts.Now(), Every: u.opts.BeatPeriod, PID: os.Getpid()})
	}
}

// beat rewrites the heartbeat of every database the uploader knows,
// every BeatPeriod, until ctx is done. It makes no store call.
func (u *Uploader) beat(ctx context.Context) {
	pid := os.Getpid()
	t := time.NewTicker(u.opts.BeatPeriod)
	defer t.Stop()
	for {
		u.mu.Lock()
		sps := make([]spool.Dir, 0, len(u.dbs))
		for _, st := range u.dbs {
			sps = append(sps, st.sp)
		}
		u.mu.Unlock()
		b := spool.Beat{At: u.opts.Now(), Every: u.opts.BeatPeriod, PID: pid}
		for _, sp := range sps {
			// A deleted database's directory is gone: the scan forgets it.
			_ = sp.WriteBeat(b)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Status reports on every database the uploader knows, sorted by source.
func (u *Uploader) Status() []Status {
	u.mu.Lock()
	sts := make([]*dbState, 0, len(u.dbs))
	for _, st := range u.dbs {
		sts = append(sts, st)
	}
	u.mu.Unlock()
	out := make([]Status, 0, len(sts))
	now := u.opts.Now()
	for _, st := range sts {
		st.mu.Lock()
		s := st.status
		s.Blocked = st.blocked != nil
		st.mu.Unlock()
		// The spool's record, not this process's memory: another process
		// may be the one uploading this database.
		out = append(out, withSpool(s, st.sp, st.sp.UploadedID(), now))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Source < out[j].Source })
	return out
}

// TargetStats reports the store calls made to each target.
func (u *Uploader) TargetStats() map[string]store.Stats {
	out := make(map[string]store.Stats, len(u.bg))
	for i, t := range u.bg {
		s := t.lim.Stats()
		f := u.flush[i].lim.Stats()
		s.Calls += f.Calls
		s.Retries += f.Retries
		s.Failures += f.Failures
		s.BytesUp += f.BytesUp
		s.BytesDown += f.BytesDown
		if f.LastErrorTime.After(s.LastErrorTime) {
			s.LastError, s.LastErrorTime = f.LastError, f.LastErrorTime
		}
		out[t.Name] = s
	}
	return out
}
