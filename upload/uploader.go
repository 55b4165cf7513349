package upload

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/time/rate"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/fsutil"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
)

// Log attribute keys.
const (
	logKeyDB     = "db"
	logKeyErr    = "err"
	logKeyTarget = "target"
)

// Defaults for [UploaderOptions].
const (
	DefaultWorkers       = 4
	DefaultScanPeriod    = 5 * time.Second
	DefaultRecentTTL     = time.Hour
	DefaultTouchPeriod   = 24 * time.Hour
	DefaultManifestGap   = 1100 * time.Millisecond
	DefaultFlushRate     = 1000
	recentMemory         = 200_000
	uploadedManifestFile = "uploaded"
	uploadLockFile       = "upload.lock"
)

// Target is one place snapshots are uploaded to (see store.Open).
type Target = store.Target

// UploaderOptions configure an [Uploader]. Zero values mean the defaults.
type Options struct {
	Targets []Target
	// Rate is the calls per second allowed to each target in the
	// background; zero means 30. Burst zero means 100.
	Rate  float64
	Burst int
	// FlushRate applies to synchronous flushes, which a caller waits for;
	// zero means DefaultFlushRate.
	FlushRate float64
	// Workers is the number of background upload goroutines.
	Workers int
	// ScanPeriod is how often every known database is looked at, as a
	// backstop for lost wake-ups. Zero means DefaultScanPeriod.
	ScanPeriod time.Duration
	// ManifestGap is the least time between two uploads of one database's
	// manifest (some S3 clones reorder overwrites closer than a second).
	// Zero means DefaultManifestGap; negative means none.
	ManifestGap time.Duration
	// RecentTTL: a chunk uploaded by this process within RecentTTL is not
	// uploaded again. Zero means DefaultRecentTTL.
	RecentTTL time.Duration
	// TouchPeriod: every chunk of a database's last uploaded manifest is
	// touched once per TouchPeriod, so that a lifecycle rule can expire
	// chunks no manifest uses. Zero means DefaultTouchPeriod; negative
	// disables touching.
	TouchPeriod time.Duration
	// PackChunks is the most chunks put together in one pack object;
	// zero means PackChunks, and 1 puts every chunk in an object of its
	// own.
	PackChunks int
	Retry      store.RetryOptions
	// Logger receives what stops or resumes replication, once per
	// episode, never a line per transaction. Nil means slog.Default().
	Logger *slog.Logger
	Now    func() time.Time
	// OnManifest, if set, is called with the hostname and source path of
	// each manifest once every store target has it, so that read
	// replicas in the same process see their own writes at once.
	OnManifest func(hostname, sourcePath string)
	// Restage, if set, brings the spool directory dir of the database at
	// source up to date with the file, under a SHARED lock, and returns
	// the error of the snapshot it took (see vfs.Restage). Flush calls it
	// when the spool's txn marker says the staged snapshot lacks
	// committed transactions (a snapshot failed or never finished), or
	// nothing is staged. Without it, such a flush fails.
	Restage func(ctx context.Context, dir, source string) error
}

// Uploader uploads the spooled snapshots of databases to the targets.
type Uploader struct {
	opts    Options
	log     *slog.Logger
	bg      []limitedTarget // background: the configured rate
	flush   []limitedTarget // synchronous flushes: FlushRate
	wake    chan string
	stop    chan struct{}
	wg      sync.WaitGroup
	started bool

	mu     sync.Mutex
	dbs    map[string]*dbState // by spool directory
	recent map[manifest.Fingerprint]recentUpload
}

// recentUpload records a chunk upload: when, and in which pack (a zero
// ID for an object of its own).
type recentUpload struct {
	at  time.Time
	ref manifest.PackRef
}

type limitedTarget struct {
	Target
	lim *store.Limited
}

// dbState is the uploader's view of one database's spool directory.
type dbState struct {
	dir    string
	upload sync.Mutex   // one upload of this database at a time in this process
	queued bool         // under Uploader.mu
	hurry  atomic.Int32 // flushes waiting: a background upload switches to the flush rate

	mu            sync.Mutex // guards the fields below
	status        Status
	lastManifest  time.Time // when a manifest was last uploaded
	uploadedSum   [32]byte  // SHA-256 of the last uploaded manifest bytes
	lastTouch     time.Time
	retryAt       time.Time     // background uploads wait until then after a failure
	backoff       time.Duration // the current wait after a failure
	blocked       error         // a permanent error: stop until reconfigured or flushed
	rerun         bool          // a wake-up came while the upload was busy
	blockedOnce   bool
	failingLogged bool      // the episode's first failure was logged (WARN)
	failingSince  time.Time // the first failure of the current episode
	outageLogged  bool      // the episode outlasted failingErrorAfter: logged at ERROR
	uploadedAt    time.Time // Created of the manifest uploadedSum describes
	// placed holds the chunks this database's uploads put in packs that
	// no uploaded manifest lists yet (see packing.go).
	placed map[manifest.Fingerprint]manifest.PackRef
}

// Status describes the replication of one database, for the Go API,
// vfsctl status and metrics. The uploader also saves it in the database's
// spool directory (status.json), so that other processes can read it.
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
	// disk, say), or it is in WAL mode, which is not replicated yet.
	// Problem says which, and why.
	NotReplicated bool   `json:"not_replicated"`
	Problem       string `json:"problem,omitempty"`
}

// withSpool completes s with what the spool directory says now: the lag
// (the age of the oldest commit not in the store, counting commits whose
// snapshots failed), the pending bytes, and whether the database is
// replicated at all.
func withSpool(s Status, dir string, uploadedSum [32]byte, now time.Time) Status {
	s.Lag, s.PendingBytes = SpoolLag(dir, uploadedSum, now)
	mk, err := spool.ReadMarker(dir)
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
		s.Problem = "the database is in WAL mode, which is not replicated yet"
	default:
		return s
	}
	if !mk.Since.IsZero() {
		s.Lag = max(s.Lag, now.Sub(mk.Since))
	}
	return s
}

const statusFile = "status.json"

// ReadStatus reads the status a database's uploader saved in its spool
// directory, with the lag and pending bytes computed now from the spool.
func ReadStatus(dir string, now time.Time) (Status, error) {
	s := Status{Dir: dir}
	if b, err := fsutil.ReadFile(filepath.Join(dir, statusFile)); err == nil {
		if err := json.Unmarshal(b, &s); err != nil {
			return s, fmt.Errorf("upload: %s: %w", filepath.Join(dir, statusFile), err)
		}
		s.Dir = dir
	}
	if s.Source == "" {
		if b, err := fsutil.ReadFile(filepath.Join(dir, "source")); err == nil {
			s.Source = string(b)
		}
	}
	var sum [32]byte
	if b, err := fsutil.ReadFile(filepath.Join(dir, uploadedManifestFile)); err == nil {
		sum = spoolSum(b)
	}
	return withSpool(s, dir, sum, now), nil
}

func (u *Uploader) saveStatus(st *dbState) {
	st.mu.Lock()
	s := st.status
	s.Blocked = st.blocked != nil
	st.mu.Unlock()
	s.Lag, s.PendingBytes = 0, 0 // computed by readers
	s.NotReplicated, s.Problem = false, ""
	b, err := json.Marshal(s)
	if err == nil {
		_ = writeFileAtomic(filepath.Join(st.dir, statusFile), b)
	}
}

// NewUploader returns an uploader; call Start to run its workers.
func New(opts Options) (*Uploader, error) {
	if len(opts.Targets) == 0 {
		return nil, errors.New("upload: no replication targets")
	}
	nonCache := 0
	for _, t := range opts.Targets {
		if !t.Cache {
			nonCache++
		}
	}
	if nonCache == 0 {
		return nil, errors.New("upload: only cache targets are configured; nothing to upload to")
	}
	if opts.Rate <= 0 {
		opts.Rate = config.DefaultMaxRequestsPerSecond
	}
	if opts.Burst <= 0 {
		opts.Burst = config.DefaultBurst
	}
	if opts.FlushRate <= 0 {
		opts.FlushRate = DefaultFlushRate
	}
	if opts.Workers <= 0 {
		opts.Workers = DefaultWorkers
	}
	if opts.ScanPeriod <= 0 {
		opts.ScanPeriod = DefaultScanPeriod
	}
	if opts.ManifestGap == 0 {
		opts.ManifestGap = DefaultManifestGap
	}
	if opts.PackChunks <= 0 {
		opts.PackChunks = store.PackChunks
	}
	if opts.RecentTTL <= 0 {
		opts.RecentTTL = DefaultRecentTTL
	}
	if opts.TouchPeriod == 0 {
		opts.TouchPeriod = DefaultTouchPeriod
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	u := &Uploader{
		opts:   opts,
		log:    log,
		wake:   make(chan string, 1024),
		stop:   make(chan struct{}),
		dbs:    make(map[string]*dbState),
		recent: make(map[manifest.Fingerprint]recentUpload),
	}
	for _, t := range opts.Targets {
		u.bg = append(u.bg, limitedTarget{t, store.NewLimited(t.Store, rate.NewLimiter(rate.Limit(opts.Rate), opts.Burst), opts.Retry)})
		u.flush = append(u.flush, limitedTarget{t, store.NewLimited(t.Store, rate.NewLimiter(rate.Limit(opts.FlushRate), int(opts.FlushRate)), opts.Retry)})
	}
	return u, nil
}

// Start runs the background workers and the periodic scan until Close.
func (u *Uploader) Start() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.started {
		return
	}
	u.started = true
	ctx, cancel := context.WithCancel(context.Background())
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		<-u.stop
		cancel()
	}()
	for range u.opts.Workers {
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			u.worker(ctx)
		}()
	}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		u.scanner(ctx)
	}()
}

// Close stops the workers and waits for them. Spooled data stays spooled.
func (u *Uploader) Close() error {
	u.mu.Lock()
	started := u.started
	u.started = false
	u.mu.Unlock()
	if started {
		close(u.stop)
		u.wg.Wait()
	}
	return nil
}

// Add makes the uploader responsible for a database's spool directory, and
// schedules an upload of whatever it holds (a crashed process may have left
// snapshots behind).
func (u *Uploader) Add(dir string) {
	u.state(dir)
	u.Notify(dir)
}

// Notify wakes a worker for dir. It never blocks: a lost wake-up is
// caught by the periodic scan.
func (u *Uploader) Notify(dir string) {
	st := u.state(dir)
	u.mu.Lock()
	if st.queued {
		u.mu.Unlock()
		return
	}
	st.queued = true
	u.mu.Unlock()
	select {
	case u.wake <- dir:
	default:
		u.mu.Lock()
		st.queued = false
		u.mu.Unlock()
	}
}

func (u *Uploader) state(dir string) *dbState {
	u.mu.Lock()
	defer u.mu.Unlock()
	st, ok := u.dbs[dir]
	if !ok {
		st = &dbState{dir: dir}
		st.status.Dir = dir
		if b, err := fsutil.ReadFile(filepath.Join(dir, "source")); err == nil {
			st.status.Source = string(b)
		}
		if b, err := fsutil.ReadFile(filepath.Join(dir, uploadedManifestFile)); err == nil {
			st.uploadedSum = spoolSum(b)
		}
		u.dbs[dir] = st
	}
	return st
}

func (u *Uploader) worker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case dir := <-u.wake:
			st := u.state(dir)
			u.mu.Lock()
			st.queued = false
			u.mu.Unlock()
			if st.waiting(u.opts.Now()) {
				continue // backing off after a failure; the scan comes back
			}
			// Set before TryLock, cleared once the lock is ours: an upload
			// that holds the lock meanwhile may have looked at the spool
			// for the last time already, so it queues dir again when done
			// (requeue).
			st.setRerun(true)
			if !st.upload.TryLock() {
				continue
			}
			st.setRerun(false)
			err := u.handle(ctx, st, u.bg, false)
			if err != nil && ctx.Err() == nil {
				u.noteFailure(st, err)
			}
			u.saveStatus(st)
			st.upload.Unlock()
			u.requeue(st)
		}
	}
}

func (st *dbState) setRerun(v bool) {
	st.mu.Lock()
	st.rerun = v
	st.mu.Unlock()
}

// requeue wakes a worker for st if a wake-up found its upload busy. It is
// called after the upload lock is released.
func (u *Uploader) requeue(st *dbState) {
	st.mu.Lock()
	again := st.rerun
	st.mu.Unlock()
	if again {
		u.Notify(st.dir)
	}
}

func (u *Uploader) scanner(ctx context.Context) {
	for {
		d := u.opts.ScanPeriod + time.Duration(rand.Int64N(int64(u.opts.ScanPeriod)/2+1))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		u.mu.Lock()
		dirs := make([]string, 0, len(u.dbs))
		for dir := range u.dbs {
			dirs = append(dirs, dir)
		}
		u.mu.Unlock()
		for _, dir := range dirs {
			u.Notify(dir)
		}
	}
}

// Flush uploads everything the spool directory dir holds, now, and
// succeeds only if the store then holds a snapshot that includes every
// transaction committed through boule before the flush began. When the
// spool's txn marker says the staged snapshot lacks some (a snapshot
// failed or never finished), or nothing is staged, it first has Restage
// take a snapshot of the file; when that fails too, or the database is in
// WAL mode, it fails with an error naming the database and the cause. It
// retries a database that a permanent error had stopped.
func (u *Uploader) Flush(ctx context.Context, dir string) error {
	st := u.state(dir)
	// An upload already under way finishes at the flush rate, so that the
	// caller does not wait behind the background limiter.
	st.hurry.Add(1)
	defer st.hurry.Add(-1)
	for attempt := 0; ; attempt++ {
		want, err := u.mustHold(ctx, st)
		if err != nil {
			// Not an upload failure: no backoff, nothing in the status
			// (which shows the spool's state on its own).
			return err
		}
		if err := u.flushUpload(ctx, st); err != nil {
			return fmt.Errorf("upload: flush %s: %w", st.source(), err)
		}
		if u.holds(st, want) {
			return nil
		}
		if attempt > 0 {
			return fmt.Errorf("%w: %s: the store does not hold the snapshot staged when the flush began: "+
				"the spool was invalidated meanwhile (the targets changed, or the store lost a chunk)", ErrNotStaged, st.source())
		}
		// The upload invalidated the spool (the targets changed, or the
		// store lost a chunk): stage and upload everything again.
	}
}

// flushUpload is one synchronous upload of st, at the flush rate.
func (u *Uploader) flushUpload(ctx context.Context, st *dbState) error {
	st.upload.Lock()
	st.mu.Lock()
	st.blocked = nil
	st.mu.Unlock()
	err := u.handle(ctx, st, u.flush, true)
	if err != nil {
		u.noteFailure(st, err)
	}
	u.saveStatus(st)
	st.upload.Unlock()
	u.requeue(st)
	return err
}

// Errors of Flush.
var (
	// ErrNotStaged is returned by Flush when nothing staged can be the
	// database's current state, and it could not stage it: the spool
	// was never written or was invalidated, or a transaction never
	// finished its snapshot, and there is no Restage to take one.
	ErrNotStaged = errors.New("upload: no current snapshot of the database is staged")

	// ErrSnapshotFailed is returned by Flush when the database's staged
	// snapshot lacks committed transactions (its last snapshot failed, or
	// never finished) and taking one again failed: the cause, such as a
	// full spool disk, is wrapped.
	ErrSnapshotFailed = errors.New("upload: the store lacks committed transactions")

	// ErrSourceGone is returned by Flush, together with ErrNotStaged,
	// when the database file or its spool directory no longer exists:
	// there is nothing to flush. FlushAll skips such databases.
	ErrSourceGone = errors.New("upload: the database no longer exists")
)

// wanted is the snapshot a flush must find in the store once it is done:
// the one staged when the spool was known to hold every transaction
// committed before the flush began.
type wanted struct {
	sum     [32]byte
	created time.Time
	// any: the spool cannot say (nothing staged, a clean marker, no
	// Restage); any upload will do, as before markers told the state.
	any bool
}

func (st *dbState) source() string {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.status.Source != "" {
		return st.status.Source
	}
	return st.dir
}

// mustHold returns the snapshot the store must hold for a flush of st to
// succeed, re-staging the database first when its spool cannot vouch for
// the staged snapshot.
func (u *Uploader) mustHold(ctx context.Context, st *dbState) (wanted, error) {
	src := st.source()
	if _, err := os.Stat(st.dir); errors.Is(err, fs.ErrNotExist) {
		u.forget(st.dir)
		return wanted{}, fmt.Errorf("%w: %w: %s: its spool directory %s is gone", ErrNotStaged, ErrSourceGone, src, st.dir)
	}
	// The marker first, then the manifest: a clean marker means every
	// transaction committed so far is in the manifest staged now, or in
	// a newer one.
	mk, merr := spool.ReadMarker(st.dir)
	if merr == nil && mk.State == spool.MarkerClean {
		if w, ok := stagedNow(st.dir); ok {
			return w, nil
		}
	}
	if u.opts.Restage == nil {
		return u.unrestaged(st, src, mk, merr)
	}
	if err := u.opts.Restage(ctx, st.dir, src); err != nil {
		switch {
		case errors.Is(err, spool.ErrWAL):
			return wanted{}, walError(src)
		case errors.Is(err, ErrSourceGone):
			return wanted{}, fmt.Errorf("%w: flush %s: %w", ErrNotStaged, src, err)
		}
		why := lacking(mk, merr)
		if mk.State == spool.MarkerFailed {
			why = "its last snapshot failed" // the new failure says why
		}
		return wanted{}, fmt.Errorf("%w: %s: %s, and a new snapshot failed too: %w", ErrSnapshotFailed, src, why, err)
	}
	if w, ok := stagedNow(st.dir); ok {
		return w, nil
	}
	return wanted{}, fmt.Errorf("%w: %s: nothing is staged even after a fresh snapshot (the spool was invalidated meanwhile?)", ErrNotStaged, src)
}

// unrestaged is mustHold without Restage: it says what the marker says.
func (u *Uploader) unrestaged(st *dbState, src string, mk spool.Marker, merr error) (wanted, error) {
	switch {
	case merr != nil:
		return wanted{}, fmt.Errorf("upload: flush %s: %w", src, merr)
	case mk.State == spool.MarkerWAL:
		return wanted{}, walError(src)
	case mk.State == spool.MarkerFailed:
		return wanted{}, fmt.Errorf("%w: %s: %s; vfsctl flush or sync takes a new one", ErrSnapshotFailed, src, lacking(mk, nil))
	case mk.State == spool.MarkerSet:
		return wanted{}, fmt.Errorf("%w: %s: %s; the next transaction on the database stages one, or run vfsctl sync on it now", ErrNotStaged, src, lacking(mk, nil))
	}
	// A clean marker and no staged manifest: handed-over snapshots, or
	// none. Any upload is as good as this flush can know.
	if st.uploadedSumCopy() != ([32]byte{}) || fsutil.Exists(filepath.Join(st.dir, uploadedManifestFile)) ||
		!fsutil.DirEmpty(filepath.Join(st.dir, "ready")) || !fsutil.DirEmpty(filepath.Join(st.dir, "consuming")) {
		return wanted{any: true}, nil
	}
	return wanted{}, fmt.Errorf("%w: %s: the spool is empty or was invalidated (the targets changed, or the store lost a chunk); "+
		"the next transaction on the database stages a snapshot, or run vfsctl sync on it now", ErrNotStaged, src)
}

// lacking says why the staged snapshot of a database lacks transactions.
func lacking(mk spool.Marker, merr error) string {
	switch {
	case merr != nil:
		return "its txn marker is unreadable (" + merr.Error() + ")"
	case mk.State == spool.MarkerFailed && mk.Err != "":
		return "its last snapshot failed (" + mk.Err + ")"
	case mk.State == spool.MarkerFailed:
		return "its last snapshot failed"
	case mk.State == spool.MarkerSet:
		return "its last snapshot never finished (a transaction is in flight, or its writer died)"
	}
	return "nothing is staged"
}

// walError is the error of a flush of a database in WAL mode.
func walError(src string) error {
	return fmt.Errorf("upload: flush %s: the database is in WAL mode, which is not replicated yet: "+
		"the store holds its state from before the switch, if any; PRAGMA journal_mode=DELETE resumes replication (%w)", src, spool.ErrWAL)
}

// stagedNow returns the staged manifest of the spool directory dir.
func stagedNow(dir string) (wanted, bool) {
	b, err := fsutil.ReadFile(filepath.Join(dir, "staging", "manifest"))
	if err != nil {
		return wanted{}, false
	}
	m, err := manifest.Decode(b)
	if err != nil {
		return wanted{}, false
	}
	return wanted{sum: sha256.Sum256(b), created: m.Created}, true
}

// holds reports whether the store holds w, or a newer snapshot: the last
// manifest this process uploaded, or the one the uploaded file records.
func (u *Uploader) holds(st *dbState, w wanted) bool {
	st.mu.Lock()
	sum, at := st.uploadedSum, st.uploadedAt
	st.mu.Unlock()
	file := filepath.Join(st.dir, uploadedManifestFile)
	if w.any {
		return sum != ([32]byte{}) || fsutil.Exists(file)
	}
	// This process's memory: its record of the upload may have failed
	// (a full disk).
	if sum == w.sum || (sum != ([32]byte{}) && !at.Before(w.created)) {
		return true
	}
	b, err := fsutil.ReadFile(file)
	if err != nil {
		return false
	}
	if spoolSum(b) == w.sum {
		return true
	}
	m, err := manifest.Decode(b)
	return err == nil && !m.Created.Before(w.created)
}

// FlushAll flushes every database the uploader knows, and returns the
// errors joined. Databases that no longer exist (ErrSourceGone) are
// skipped.
func (u *Uploader) FlushAll(ctx context.Context) error {
	u.mu.Lock()
	dirs := make([]string, 0, len(u.dbs))
	for dir := range u.dbs {
		dirs = append(dirs, dir)
	}
	u.mu.Unlock()
	sort.Strings(dirs)
	var errs []error
	for _, dir := range dirs {
		if err := u.Flush(ctx, dir); err != nil && !errors.Is(err, ErrSourceGone) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
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
		// The uploaded file, not this process's memory: another process
		// may be the one uploading this database.
		out = append(out, withSpool(s, st.dir, uploadedFileSum(st.dir), now))
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

// uploadedFileSum returns the SHA-256 of the database's uploaded file, the
// manifest last put in the store by any process; zero when there is none.
func uploadedFileSum(dir string) [32]byte {
	b, err := fsutil.ReadFile(filepath.Join(dir, uploadedManifestFile))
	if err != nil {
		return [32]byte{}
	}
	return spoolSum(b)
}

func (st *dbState) uploadedSumCopy() [32]byte {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.uploadedSum
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
	st.mu.Lock()
	defer st.mu.Unlock()
	now := u.opts.Now()
	st.backoff = min(max(2*st.backoff, minFailureBackoff), maxFailureBackoff)
	st.retryAt = now.Add(st.backoff)
	st.status.Failures++
	st.status.LastError = err.Error()
	if st.status.Source == "" { // registered at open, before its first transaction wrote the file
		b, _ := fsutil.ReadFile(filepath.Join(st.dir, "source"))
		st.status.Source = string(b)
	}
	if st.failingSince.IsZero() {
		st.failingSince = now
	}
	if errors.Is(err, store.ErrPermanent) {
		st.blocked = err
		if !st.blockedOnce {
			st.blockedOnce = true
			u.log.Error("upload: replication of this database stopped on a permanent error; fix the configuration or credentials, then re-register or flush",
				logKeyDB, st.status.Source, logKeyErr, err)
		}
		return
	}
	if !st.failingLogged {
		st.failingLogged = true
		u.log.Warn("upload: upload failed; retrying in the background", logKeyDB, st.status.Source, logKeyErr, err)
	}
	if down := now.Sub(st.failingSince); down >= failingErrorAfter && !st.outageLogged && !st.blockedOnce {
		st.outageLogged = true
		u.log.Error("upload: replication stopped: uploads have failed for over a minute; commits wait in the spool until the store answers",
			logKeyDB, st.status.Source, "for", down.Round(time.Second).String(), logKeyErr, err)
	}
}

func (u *Uploader) noteSuccess(st *dbState, m *manifest.Manifest, sum [32]byte) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.status.Uploads++
	st.backoff, st.retryAt = 0, time.Time{}
	st.status.LastUpload = u.opts.Now()
	st.status.LastError = ""
	st.status.Source = m.SourcePath
	st.uploadedSum = sum
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

// handle uploads what dir holds. Only one process uploads a database at a
// time (an advisory lock); each pass uploads at most one manifest, the
// newest (see pass).
func (u *Uploader) handle(ctx context.Context, st *dbState, targets []limitedTarget, flush bool) error {
	st.mu.Lock()
	blocked := st.blocked
	st.mu.Unlock()
	if blocked != nil && !flush {
		return nil // reported when it happened
	}
	if _, err := os.Stat(st.dir); errors.Is(err, fs.ErrNotExist) {
		u.forget(st.dir)
		return nil
	}
	unlock, err := lockDir(ctx, filepath.Join(st.dir, uploadLockFile), flush)
	if err != nil {
		return err
	}
	if unlock == nil {
		return nil // another process is uploading this database
	}
	defer unlock()
	// What the stores write for this database is at most as readable as
	// the database itself.
	ctx = store.WithSourcePerm(ctx, spool.Perm(st.dir))
	// Every pass, under upload.lock: another process (a rolling deploy)
	// may have changed the targets since.
	if err := u.checkTargets(st); err != nil {
		return err
	}
	// Another process may have uploaded since: its placements are in the
	// file.
	placed, err := loadPlacements(st.dir)
	if err != nil {
		// The next manifest could not say where those chunks are.
		u.log.Error("upload: cannot read the pack placements; re-uploading the database", logKeyDB, st.status.Source, logKeyErr, err)
		if ierr := u.invalidate(st); ierr != nil {
			return ierr
		}
		return err
	}
	st.mu.Lock()
	st.placed = placed
	st.mu.Unlock()
	for range 3 {
		more, err := u.pass(ctx, st, targets)
		if err != nil {
			return err
		}
		if !more {
			break
		}
	}
	if !flush {
		u.maybeTouch(ctx, st, targets)
	}
	return nil
}

func (u *Uploader) forget(dir string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.dbs, dir)
}

// pass uploads the newest snapshot of the database, and reports whether a
// newer one may be waiting.
//
// It reads the staged manifest first (or, when there is none, the newest
// handed-over one), then sweeps chunk files in the order the spool moves
// them: staging/chunks, then ready/ (which it takes into consuming/), then
// consuming/. Chunks only move forward, so after the sweep every chunk the
// manifest references is in the store, and the manifest can follow, unless
// the spool staged a newer snapshot meanwhile: it deletes the staged chunks
// that snapshot replaced, so the newest snapshot handed over since the
// manifest was read is uploaded instead. Chunk files of older snapshots
// (handed over before the manifest was read) that the uploaded manifest
// does not reference are obsolete (a newer manifest that needs the same
// bytes stages them anew): they are deleted without upload, so snapshots
// squash at upload time as well as in the spool, and at most one manifest
// is uploaded per pass.
func (u *Uploader) pass(ctx context.Context, st *dbState, targets []limitedTarget) (more bool, err error) {
	staged := filepath.Join(st.dir, "staging", "manifest")
	consuming := filepath.Join(st.dir, "consuming")
	uploaded := st.uploadedSumCopy()
	if b, err := fsutil.ReadFile(staged); err == nil && sha256.Sum256(b) == uploaded &&
		fsutil.DirEmpty(filepath.Join(st.dir, "ready")) && fsutil.DirEmpty(consuming) {
		return false, nil // nothing new
	}
	if err := u.waitManifestGap(ctx, st); err != nil {
		return false, err
	}

	// Snapshots handed over before the manifest is read (in consuming/, or
	// still in ready/): after the upload, they are entirely obsolete.
	// Snapshots published later may be newer than the manifest: they stay.
	before, err := listDirs(consuming)
	if err != nil {
		return false, err
	}
	inReady, err := listDirs(filepath.Join(st.dir, "ready"))
	if err != nil {
		return false, err
	}
	before = append(before, inReady...)
	mb, err := fsutil.ReadFile(staged)
	fromStaging := err == nil
	handedOver := !fromStaging
	if errors.Is(err, fs.ErrNotExist) {
		mb, err = u.newestHandedOver(st.dir)
	}
	if err != nil {
		return false, fmt.Errorf("upload: read manifest of %s: %w", st.status.Source, err)
	}
	if mb == nil {
		return false, nil // no snapshot at all yet
	}
	if sha256.Sum256(mb) == uploaded {
		// Already in the store: whatever waited before is older.
		if err := takeReady(st.dir); err != nil {
			return false, err
		}
		if err := removeSnapshots(consuming, before); err != nil {
			return false, err
		}
		return !fsutil.DirEmpty(consuming), nil // newer snapshots arrived meanwhile
	}
	m, err := manifest.Decode(mb)
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrSpoolCorrupt, err)
	}
	// Staged chunks belong to the newest snapshot: all are uploaded.
	if err := u.uploadChunkDir(ctx, st, filepath.Join(st.dir, "staging", "chunks"), nil, m, targets); err != nil {
		return false, err
	}
	if err := takeReady(st.dir); err != nil {
		return false, err
	}
	if err := u.sweep(ctx, st, consuming, m, targets); err != nil {
		return false, err
	}
	if fromStaging {
		if b, err := fsutil.ReadFile(staged); err != nil || string(b) != string(mb) {
			// A newer snapshot was staged meanwhile, and the spool deletes
			// the staged chunks a snapshot replaces: a chunk of this one
			// may have gone before it was uploaded. Upload instead the
			// newest snapshot handed over since it was read, whose chunks
			// are all in consuming/ or in the store, or look again;
			// unless it is older than this one and every chunk of this
			// one is known to be in the store (under continuous writes
			// the handed-over snapshot is a manifest gap old).
			//
			// Take ready/ once more: under continuous writes the only
			// snapshot handed over during this pass may be sitting there.
			// The newest handed-over snapshot, whenever it was taken, is
			// complete once swept for its own manifest: its chunks are in
			// its directory, in an older one, or in the store; and every
			// snapshot left in consuming/ is older, so all of them go.
			if err := takeReady(st.dir); err != nil {
				return false, err
			}
			all, err := listDirs(consuming)
			if err != nil {
				return false, err
			}
			hmb, hm, err := newestSince(consuming, nil)
			if err != nil {
				return false, err
			}
			if (hm != nil && hm.Created.After(m.Created)) || !u.inStore(st, m) {
				if hmb == nil {
					return true, nil // look again
				}
				before, mb, m, handedOver = all, hmb, hm, true
				if sha256.Sum256(mb) == uploaded {
					return true, removeSnapshots(consuming, before)
				}
				if err := u.sweep(ctx, st, consuming, m, targets); err != nil {
					return false, err
				}
			}
		}
	}
	if err := u.uploadManifest(ctx, st, mb, handedOver, targets); err != nil {
		return false, err
	}
	if err := removeSnapshots(consuming, before); err != nil {
		return false, err
	}

	// A snapshot staged or published after the manifest was read is newer:
	// look again (the next pass returns at once if nothing is new).
	return true, nil
}

// inStore reports whether every chunk of m that is not inline is known to
// be in the store: uploaded by this process within RecentTTL, placed in a
// pack by st's uploads, or used by the last uploaded manifest. Under
// continuous writes the staged manifest changes during every pass, and a
// chunk of the one a pass read may have been replaced in staging before
// it was uploaded; when none was, that manifest can go up rather than an
// older handed-over one, a manifest gap staler.
func (u *Uploader) inStore(st *dbState, m *manifest.Manifest) bool {
	var prev map[manifest.Fingerprint]bool
	if b, err := fsutil.ReadFile(filepath.Join(st.dir, uploadedManifestFile)); err == nil {
		if pm, err := manifest.Decode(b); err == nil {
			prev = make(map[manifest.Fingerprint]bool, len(pm.Chunks))
			for _, fp := range pm.Chunks {
				prev[fp] = true
			}
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
	for _, fp := range rest {
		if _, ok := u.recentlyUploaded(fp); !ok {
			return false
		}
	}
	return true
}

// sweep uploads the chunks of m that the snapshots in consuming/ hold.
func (u *Uploader) sweep(ctx context.Context, st *dbState, consuming string, m *manifest.Manifest, targets []limitedTarget) error {
	need := make(map[manifest.Fingerprint]bool, len(m.Chunks))
	for i, fp := range m.Chunks {
		if _, inline := m.Inline[uint32(i)]; !inline {
			need[fp] = true
		}
	}
	snaps, err := listDirs(consuming)
	if err != nil {
		return err
	}
	for _, snap := range snaps {
		if err := u.uploadChunkDir(ctx, st, filepath.Join(consuming, snap, "chunks"), need, m, targets); err != nil {
			return err
		}
	}
	return nil
}

// newestSince returns the manifest of the newest snapshot in consuming/
// that is not named in before, or nil if there is none.
func newestSince(consuming string, before []string) ([]byte, *manifest.Manifest, error) {
	snaps, err := listDirs(consuming)
	if err != nil {
		return nil, nil, err
	}
	var newest []byte
	var nm *manifest.Manifest
	for _, s := range snaps {
		if slices.Contains(before, s) {
			continue
		}
		b, err := fsutil.ReadFile(filepath.Join(consuming, s, "manifest"))
		if err != nil {
			continue
		}
		m, err := manifest.Decode(b)
		if err != nil {
			continue
		}
		if nm == nil || m.Created.After(nm.Created) {
			newest, nm = b, m
		}
	}
	return newest, nm, nil
}

// newestHandedOver returns the manifest of the newest snapshot in ready/
// or consuming/, or nil: the upload source when nothing is staged (the
// database switched to WAL, or a crash lost the staged manifest).
func (u *Uploader) newestHandedOver(dir string) ([]byte, error) {
	var newest []byte
	var when time.Time
	for _, state := range []string{"consuming", "ready"} {
		snaps, err := listDirs(filepath.Join(dir, state))
		if err != nil {
			return nil, err
		}
		for _, s := range snaps {
			b, err := fsutil.ReadFile(filepath.Join(dir, state, s, "manifest"))
			if err != nil {
				continue
			}
			m, err := manifest.Decode(b)
			if err != nil {
				continue
			}
			if newest == nil || m.Created.After(when) {
				newest, when = b, m.Created
			}
		}
	}
	return newest, nil
}

// takeReady moves every snapshot in ready/ into consuming/, then removes
// ready/, so the spool may publish the next snapshot there at once: it
// renames a directory onto ready/ with os.Rename, which refuses any
// existing directory, even an empty one.
func takeReady(dir string) error {
	ready := filepath.Join(dir, "ready")
	snaps, err := listDirs(ready)
	if err != nil {
		return err
	}
	if len(snaps) > 0 {
		consuming := filepath.Join(dir, "consuming")
		if err := os.Mkdir(consuming, 0o777); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("upload: create %s: %w", consuming, err)
		}
		for _, s := range snaps {
			if err := os.Rename(filepath.Join(ready, s), filepath.Join(consuming, s)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("upload: take %s: %w", filepath.Join(ready, s), err)
			}
		}
	}
	// Fails, harmlessly, when a snapshot was published meanwhile (a
	// publication never leaves ready/ empty) or ready/ is already gone.
	_ = os.Remove(ready)
	return nil
}

// removeSnapshots deletes the snapshot directories in consuming/ named in
// only.
func removeSnapshots(consuming string, only []string) error {
	snaps, err := listDirs(consuming)
	if err != nil {
		return err
	}
	for _, s := range snaps {
		if !slices.Contains(only, s) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(consuming, s)); err != nil {
			return fmt.Errorf("upload: remove %s: %w", filepath.Join(consuming, s), err)
		}
	}
	return nil
}

func listDirs(dir string) ([]string, error) {
	entries, err := fsutil.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("upload: list %s: %w", dir, err)
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// uploadChunkDir uploads the chunk files in dir that need selects (all of
// them when need is nil), deleting each once it is in every target. Each
// is verified against its name first: a corrupt spool file is never
// uploaded. Chunks go up in packs of up to PackChunks, in the order of
// their first index in m, so that a pack holds neighbouring chunks.
func (u *Uploader) uploadChunkDir(ctx context.Context, st *dbState, dir string, need map[manifest.Fingerprint]bool, m *manifest.Manifest, targets []limitedTarget) error {
	entries, err := fsutil.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("upload: list %s: %w", dir, err)
	}
	var fps []manifest.Fingerprint
	for _, e := range entries {
		fp, err := manifest.ParseFingerprint(e.Name())
		if err != nil || (need != nil && !need[fp]) {
			continue
		}
		fps = append(fps, fp)
	}
	if len(fps) == 0 {
		return nil
	}
	first := make(map[manifest.Fingerprint]int, len(m.Chunks))
	for i := len(m.Chunks) - 1; i >= 0; i-- {
		first[m.Chunks[i]] = i
	}
	pos := func(fp manifest.Fingerprint) int {
		if i, ok := first[fp]; ok {
			return i
		}
		return len(m.Chunks) // not in m: a newer snapshot's, last
	}
	slices.SortFunc(fps, func(a, b manifest.Fingerprint) int { return pos(a) - pos(b) })
	var units [][]manifest.Fingerprint
	for len(fps) > 0 {
		n := min(len(fps), u.opts.PackChunks)
		units = append(units, fps[:n])
		fps = fps[n:]
	}

	// Background uploads go one at a time (the limiter allows a few per
	// second anyway); flushes keep several requests in flight, and so
	// does a background upload as soon as a flush waits for it.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error // the cause; the other workers' errors are its cancellation
	var helpers atomic.Bool
	var work func(lead bool)
	work = func(lead bool) {
		defer wg.Done()
		for {
			if lead && u.hurried(st, targets) && helpers.CompareAndSwap(false, true) {
				for range flushConcurrency - 1 {
					wg.Add(1)
					go work(false)
				}
			}
			k := int(next.Add(1)) - 1
			if k >= len(units) {
				return
			}
			if err := u.uploadUnit(ctx, st, dir, units[k], targets); err != nil {
				once.Do(func() { firstErr = err; cancel() })
				return
			}
		}
	}
	wg.Add(1)
	go work(true)
	wg.Wait()
	return firstErr
}

// flushConcurrency is the number of uploads a flush keeps in flight.
const flushConcurrency = 8

// hurried reports whether an upload of st should use the flush targets:
// it is a flush, or a flush waits for it.
func (u *Uploader) hurried(st *dbState, targets []limitedTarget) bool {
	return st.hurry.Load() > 0 || (len(targets) > 0 && len(u.flush) > 0 && &targets[0] == &u.flush[0])
}

// uploadUnit uploads the spool chunk files dir/fp of unit that were not
// uploaded recently, verified against their names first, in one pack when
// there are several, and deletes them.
func (u *Uploader) uploadUnit(ctx context.Context, st *dbState, dir string, unit []manifest.Fingerprint, targets []limitedTarget) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var chunks []store.PackedChunk
	var reused []manifest.Fingerprint // recently put in a pack
	var reusedRefs []manifest.PackRef
	for _, fp := range unit {
		if ref, ok := u.recentlyUploaded(fp); ok {
			if ref.ID != (manifest.Fingerprint{}) {
				reused, reusedRefs = append(reused, fp), append(reusedRefs, ref)
			}
			continue
		}
		p := filepath.Join(dir, fp.String())
		data, err := fsutil.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue // moved on to ready/, or no longer referenced
		}
		if err != nil {
			return fmt.Errorf("upload: read %s: %w", p, err)
		}
		if manifest.Sum(data) != fp {
			return fmt.Errorf("%w: spool chunk %s does not match its fingerprint", ErrSpoolCorrupt, p)
		}
		chunks = append(chunks, store.PackedChunk{FP: fp, Data: data})
	}
	if len(reused) > 0 {
		if err := st.recordPlacements(reused, reusedRefs); err != nil {
			return err
		}
	}
	if st.hurry.Load() > 0 {
		targets = u.flush
	}
	switch len(chunks) {
	case 0:
	case 1:
		if err := u.putChunk(ctx, st, chunks[0].FP, chunks[0].Data, targets); err != nil {
			return err
		}
	default:
		if err := u.putPack(ctx, st, chunks, targets); err != nil {
			return err
		}
	}
	for _, fp := range unit {
		p := filepath.Join(dir, fp.String())
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("upload: remove %s: %w", p, err)
		}
	}
	return nil
}

func (u *Uploader) putChunk(ctx context.Context, st *dbState, fp manifest.Fingerprint, data []byte, targets []limitedTarget) error {
	for _, t := range targets {
		err := t.lim.PutChunk(ctx, fp, data)
		st.countCall()
		if err != nil {
			if t.Cache {
				u.log.Debug("upload: cache put failed", logKeyTarget, t.Name, logKeyErr, err)
				continue
			}
			return err
		}
	}
	u.remember([]manifest.Fingerprint{fp}, nil)
	st.mu.Lock()
	st.status.Chunks++
	st.mu.Unlock()
	return nil
}

// putPack uploads chunks as one pack to every store target, and one by
// one to caches, then records where they are.
func (u *Uploader) putPack(ctx context.Context, st *dbState, chunks []store.PackedChunk, targets []limitedTarget) error {
	blob, id, refs := store.EncodePack(chunks)
	for _, t := range targets {
		if t.Cache {
			for _, c := range chunks {
				if err := t.lim.PutChunk(ctx, c.FP, c.Data); err != nil {
					u.log.Debug("upload: cache put failed", logKeyTarget, t.Name, logKeyErr, err)
					break
				}
			}
			continue
		}
		err := t.lim.PutPack(ctx, id, blob)
		st.countCall()
		if err != nil {
			return err
		}
	}
	fps := make([]manifest.Fingerprint, len(chunks))
	for i, c := range chunks {
		fps[i] = c.FP
	}
	// Recorded before the spool files go: the manifest must say where
	// these chunks are, even after a restart.
	if err := st.recordPlacements(fps, refs); err != nil {
		return err
	}
	u.remember(fps, refs)
	st.mu.Lock()
	st.status.Chunks += int64(len(chunks))
	st.status.Packs++
	st.mu.Unlock()
	return nil
}

// remember notes chunks just uploaded, in packs refs (nil: one object
// each).
func (u *Uploader) remember(fps []manifest.Fingerprint, refs []manifest.PackRef) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.recent)+len(fps) > recentMemory {
		clear(u.recent) // crude but bounded; costs only re-uploads
	}
	now := u.opts.Now()
	for i, fp := range fps {
		r := recentUpload{at: now}
		if refs != nil {
			r.ref = refs[i]
		}
		u.recent[fp] = r
	}
}

func (st *dbState) countCall() {
	st.mu.Lock()
	st.status.Calls++
	st.mu.Unlock()
}

// recentlyUploaded reports whether fp was uploaded within RecentTTL, and
// where it went.
func (u *Uploader) recentlyUploaded(fp manifest.Fingerprint) (manifest.PackRef, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	r, ok := u.recent[fp]
	return r.ref, ok && u.opts.Now().Sub(r.at) < u.opts.RecentTTL
}

// waitManifestGap waits until ManifestGap has passed since the database's
// last manifest upload (some S3 clones order overwrites by the second). It
// waits before the manifest is read, so that the upload is as fresh as it
// can be.
func (u *Uploader) waitManifestGap(ctx context.Context, st *dbState) error {
	gap := u.opts.ManifestGap
	if gap <= 0 {
		return nil
	}
	st.mu.Lock()
	last := st.lastManifest
	st.mu.Unlock()
	// Another process may have uploaded last: its upload left its mark on
	// the shared uploaded file.
	if fi, err := os.Stat(filepath.Join(st.dir, uploadedManifestFile)); err == nil && fi.ModTime().After(last) {
		last = fi.ModTime()
	}
	wait := gap - u.opts.Now().Sub(last)
	if wait <= 0 || wait > gap {
		return nil // wait > gap: a clock step; do not stall on it
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// uploadManifest uploads encoded manifest bytes to every non-cache target,
// then records them as the database's last uploaded manifest.
// A manifest that does not come from staging/ (the newest by construction)
// but was handed over is uploaded only if it is not older than the last
// one uploaded, so that the store never goes backwards.
func (u *Uploader) uploadManifest(ctx context.Context, st *dbState, mb []byte, handedOver bool, targets []limitedTarget) error {
	m, err := manifest.Decode(mb)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrSpoolCorrupt, err)
	}
	key, err := store.ManifestKey(m.Hostname, m.SourcePath)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(mb)
	// The last uploaded manifest says where the chunks this snapshot
	// shares with it are: without it, nothing can be relied on.
	var prev *manifest.Manifest
	if b, err := fsutil.ReadFile(filepath.Join(st.dir, uploadedManifestFile)); err == nil {
		if prev, err = manifest.Decode(b); err != nil {
			if ierr := u.invalidate(st); ierr != nil {
				return ierr
			}
			return fmt.Errorf("%w: the last uploaded manifest: %w", ErrSpoolCorrupt, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
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
	if len(packed.Packs) > 0 {
		if mb, err = packed.MarshalBinary(); err != nil {
			return fmt.Errorf("upload: encode the manifest of %s with its packs: %w", m.SourcePath, err)
		}
	}
	if st.hurry.Load() > 0 {
		targets = u.flush
	}
	for _, t := range targets {
		if t.Cache {
			continue
		}
		err := t.lim.PutManifest(ctx, key, mb)
		st.countCall()
		if err != nil {
			return err
		}
	}
	if u.opts.OnManifest != nil {
		u.opts.OnManifest(m.Hostname, m.SourcePath)
	}
	tap := filepath.Join(st.dir, uploadedManifestFile)
	if err := recordUploaded(tap, mb); err != nil {
		// The placements stay: without this record of the manifest's
		// pack table, they are the only one the next upload has.
		u.log.Warn("upload: cannot record the uploaded manifest", logKeyDB, m.SourcePath, logKeyErr, err)
	} else if err := st.forgetPlacements(packed); err != nil {
		u.log.Warn("upload: cannot update the pack placements", logKeyDB, m.SourcePath, logKeyErr, err)
	}
	u.noteSuccess(st, m, sum)
	return nil
}

// recordUploaded writes the uploaded file; tests make it fail.
var recordUploaded = writeFileAtomic

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
	mb, err := fsutil.ReadFile(filepath.Join(st.dir, uploadedManifestFile))
	if err != nil {
		return
	}
	m, err := manifest.Decode(mb)
	if err != nil {
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
				u.invalidate(st)
				return
			}
			if err != nil {
				return // retried next period
			}
		}
	}
	st.mu.Lock()
	st.lastTouch = now
	st.mu.Unlock()
}

// invalidate makes the next transaction rebuild and re-upload the whole
// snapshot: the staged manifest is deleted, the txn marker set, and the
// memory of recent uploads cleared.
func (u *Uploader) invalidate(st *dbState) error {
	if err := spool.Invalidate(st.dir); err != nil {
		u.log.Error("upload: cannot invalidate the spool", logKeyDB, st.status.Source, logKeyErr, err)
		return err
	}
	st.mu.Lock()
	st.uploadedSum = [32]byte{}
	st.uploadedAt = time.Time{}
	st.placed = nil
	st.mu.Unlock()
	if err := os.Remove(filepath.Join(st.dir, packedFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		u.log.Warn("upload: cannot remove the pack placements", logKeyDB, st.status.Source, logKeyErr, err)
	}
	u.mu.Lock()
	clear(u.recent)
	u.mu.Unlock()
	return nil
}

// targetsFile records, in a database's spool directory, the non-cache
// targets its chunks were uploaded to.
const targetsFile = "targets"

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
	p := filepath.Join(st.dir, targetsFile)
	got, err := fsutil.ReadFile(p)
	if err == nil && string(got) == want {
		return nil
	}
	if err == nil || fsutil.Exists(filepath.Join(st.dir, uploadedManifestFile)) {
		u.log.Warn("upload: the replication targets changed; this database's snapshot is uploaded again in full",
			logKeyDB, st.status.Source)
		if err := u.invalidate(st); err != nil {
			return err // the targets file stays as it was: retried next pass
		}
	}
	return writeFileAtomic(p, []byte(want))
}

// ErrSpoolCorrupt is returned when a spooled file does not match its
// fingerprint or does not decode: it is not uploaded.
var ErrSpoolCorrupt = errors.New("upload: spool file corrupt")

// lockDir takes the advisory lock that keeps two processes from uploading
// one database at once. In the background it gives up at once (returning a
// nil unlock); a flush waits for it.
func lockDir(ctx context.Context, path string, wait bool) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o666)
	if err != nil {
		return nil, fmt.Errorf("upload: open lock %s: %w", path, err)
	}
	backoff := time.Millisecond
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("upload: lock %s: %w", path, err)
		}
		if !wait {
			f.Close()
			return nil, nil
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			return nil, fmt.Errorf("upload: waiting for another process's upload of %s: %w", filepath.Dir(path), ctx.Err())
		case <-t.C:
		}
		backoff = min(backoff*2, 100*time.Millisecond)
	}
}

// writeFileAtomic writes b to dst, a file of a database's spool
// directory, by rename; the file is at most as readable as the database.
func writeFileAtomic(dst string, b []byte) error {
	tmp := fmt.Sprintf("%s.tmp.%d.%d", dst, os.Getpid(), rand.Uint64())
	if err := os.WriteFile(tmp, b, store.FilePerm(spool.Perm(filepath.Dir(dst)))); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

// SpoolLag reports, for a database's spool directory, the age of the
// oldest snapshot not yet uploaded (the replication lag: the commit that
// made it is the oldest one the store lacks) and the bytes waiting. A
// staged snapshot counts only if it differs from uploadedSum.
func SpoolLag(dir string, uploadedSum [32]byte, now time.Time) (lag time.Duration, pending int64) {
	var oldest time.Time
	consider := func(manifestPath string) {
		b, err := fsutil.ReadFile(manifestPath)
		if err != nil {
			return
		}
		if sha256.Sum256(b) == uploadedSum {
			return
		}
		m, err := manifest.Decode(b)
		if err != nil {
			return
		}
		if oldest.IsZero() || m.Created.Before(oldest) {
			oldest = m.Created
		}
		pending += int64(len(b))
	}
	for _, state := range []string{"consuming", "ready"} {
		subs, _ := fsutil.ReadDir(filepath.Join(dir, state))
		for _, s := range subs {
			snap := filepath.Join(dir, state, s.Name())
			consider(filepath.Join(snap, "manifest"))
			pending += dirBytes(filepath.Join(snap, "chunks"))
		}
	}
	consider(filepath.Join(dir, "staging", "manifest"))
	pending += dirBytes(filepath.Join(dir, "staging", "chunks"))
	if oldest.IsZero() {
		return 0, pending
	}
	return max(now.Sub(oldest), 0), pending
}

func dirBytes(dir string) int64 {
	entries, err := fsutil.ReadDir(dir)
	if err != nil {
		return 0
	}
	var n int64
	for _, e := range entries {
		if info, err := e.Info(); err == nil {
			n += info.Size()
		}
	}
	return n
}
