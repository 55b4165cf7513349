package upload

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/lowprio"
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

// Defaults for [Options].
const (
	DefaultWorkers     = 4
	DefaultScanPeriod  = 5 * time.Second
	DefaultRecentTTL   = time.Hour
	DefaultTouchPeriod = 24 * time.Hour
	DefaultManifestGap = 1100 * time.Millisecond
	DefaultFlushRate   = 1000
	DefaultBeatPeriod  = 5 * time.Second
	recentMemory       = 200_000
	// wakeQueue is the capacity of the wake-up queue, where databases
	// wait, in the order of their oldest change, while the limiter is
	// busy; a database that does not fit is found by the periodic scan.
	wakeQueue = 1 << 14
)

// Target is one place snapshots are uploaded to (see store.Open).
type Target = store.Target

// Options configure an [Uploader]. Zero values mean the defaults.
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
	// BeatPeriod is how often a started uploader rewrites the heartbeat
	// of every database it serves (spool.Beat), even when idle; zero
	// means DefaultBeatPeriod.
	BeatPeriod time.Duration
	// ScanPeriod is how often every known database is looked at, as a
	// backstop for lost wake-ups. Zero means DefaultScanPeriod.
	ScanPeriod time.Duration
	// ManifestGap is the least time between two uploads of one database's
	// manifest to targets without verified conditional puts: with last
	// writer wins, a put delayed or retried could otherwise land over a
	// newer manifest, and some S3 clones reorder overwrites closer than a
	// second. Zero means DefaultManifestGap; negative means none.
	ManifestGap time.Duration
	// ConditionalGap is the least time between two uploads of one
	// database's manifest when every target has verified conditional
	// puts (conditional.go), which keep the store from going backwards
	// at any pace: it only paces. Zero means DefaultConditionalGap;
	// negative means none.
	ConditionalGap time.Duration
	// NoConditionalPuts makes the uploader put manifests as is, keeping
	// ManifestGap, on every target, as on stores without conditional
	// writes.
	NoConditionalPuts bool
	// RecentTTL: a chunk uploaded by this process within RecentTTL is not
	// uploaded again. Zero means DefaultRecentTTL.
	RecentTTL time.Duration
	// TouchPeriod: every chunk of a database's last uploaded manifest is
	// touched once per TouchPeriod, so that a lifecycle rule can expire
	// chunks no manifest uses. Zero means DefaultTouchPeriod; negative
	// disables touching.
	TouchPeriod time.Duration
	// PackChunks is the most chunks put together in one pack object;
	// zero means store.PackChunks, and 1 puts every chunk in an object of
	// its own.
	PackChunks int
	// WholeManifests makes every manifest go up whole, in format v1, for
	// readers older than format v2; otherwise large databases' manifests
	// go up as a v2 head over a base (delta.go).
	WholeManifests bool
	Retry          store.RetryOptions
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

	// admit lets one worker at a time wait for the limiter, then take
	// the databases queued (worker).
	admit sync.Mutex
	// unitSlots bounds the units of chunks read from spools and being
	// put, across all uploads (see uploadChunks).
	unitSlots chan struct{}

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
	lim  *store.Limited
	rate *rate.Limiter // lim's limiter
	cond *condState    // shared by the target's background and flush limiters
}

// New returns an uploader; call Start to run its workers.
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
	if opts.BeatPeriod <= 0 {
		opts.BeatPeriod = DefaultBeatPeriod
	}
	if opts.ManifestGap == 0 {
		opts.ManifestGap = DefaultManifestGap
	}
	if opts.ConditionalGap == 0 {
		opts.ConditionalGap = DefaultConditionalGap
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
		wake:   make(chan string, wakeQueue),
		stop:   make(chan struct{}),
		dbs:    make(map[string]*dbState),
		recent: make(map[manifest.Fingerprint]recentUpload),
		// As many as the workers' uploads had in flight before they
		// could run together: at most 4 MiB of raw chunks each.
		unitSlots: make(chan struct{}, opts.Workers*flushConcurrency),
	}
	for _, t := range opts.Targets {
		cond := newCondState(t.Store, opts.NoConditionalPuts)
		bg := rate.NewLimiter(rate.Limit(opts.Rate), opts.Burst)
		u.bg = append(u.bg, limitedTarget{t, store.NewLimited(t.Store, bg, opts.Retry), bg, cond})
		fl := rate.NewLimiter(rate.Limit(opts.FlushRate), int(opts.FlushRate))
		u.flush = append(u.flush, limitedTarget{t, store.NewLimited(t.Store, fl, opts.Retry), fl, cond})
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
		// Background uploads hash, compress and encode below the
		// application's priority; a flush runs at the caller's.
		lowprio.Go(func() {
			defer u.wg.Done()
			u.worker(ctx)
		})
	}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		u.scanner(ctx)
	}()
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		u.beat(ctx)
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

// state returns the uploader's state of the spool directory dir, made on
// first use.
func (u *Uploader) state(dir string) *dbState {
	u.mu.Lock()
	defer u.mu.Unlock()
	st, ok := u.dbs[dir]
	if !ok {
		st = newDBState(spool.OpenDir(dir))
		u.dbs[dir] = st
	}
	return st
}

func (u *Uploader) forget(dir string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.dbs, dir)
}

func (u *Uploader) worker(ctx context.Context) {
	for {
		// Under load, databases wait in the wake-up queue, in the order
		// of their oldest change, and are taken only once the limiter
		// can serve them: each upload then carries every commit made
		// until it starts, rather than the state of the database when it
		// began to wait for the limiter, and costs no more calls.
		u.admit.Lock()
		if err := u.waitBacklog(ctx); err != nil {
			u.admit.Unlock()
			return
		}
		var dir string
		select {
		case <-ctx.Done():
			u.admit.Unlock()
			return
		case dir = <-u.wake:
		}
		u.uploadGroup(ctx, u.drain(dir), u.admit.Unlock)
	}
}

// drainMax is the most databases a worker takes from the wake-up queue
// at once, counting those with nothing to upload.
const drainMax = 4 * groupMax

// drain returns first and the databases queued now, which are uploaded
// together: their small uploads share packs (batch.go). Those with
// nothing to upload (queued again by a commit their last upload carried,
// say) cost no call and do not count, so that under load a group still
// carries groupMax uploads, and its pack as many.
func (u *Uploader) drain(first string) []string {
	dirs := []string{first}
	uploads := 0
	if u.state(first).pending() {
		uploads++
	}
	for uploads < groupMax && len(dirs) < drainMax {
		select {
		case d := <-u.wake:
			if slices.Contains(dirs, d) {
				continue
			}
			dirs = append(dirs, d)
			if u.state(d).pending() {
				uploads++
			}
		default:
			return dirs
		}
	}
	return dirs
}

// waitBacklog waits until every background limiter has a call to give
// now: the calls already waiting for it are served.
func (u *Uploader) waitBacklog(ctx context.Context) error {
	for _, t := range u.bg {
		if t.Cache {
			continue
		}
		for {
			lack := 1 - t.rate.Tokens()
			if lack <= 0 {
				break
			}
			d := time.Duration(lack / float64(t.rate.Limit()) * float64(time.Second))
			tm := time.NewTimer(max(d, time.Millisecond))
			select {
			case <-ctx.Done():
				tm.Stop()
				return ctx.Err()
			case <-tm.C:
			}
		}
	}
	return nil
}

// uploadGroup uploads the databases whose spool directories are dirs, in
// the background, at the same time, as one group. It calls admitted once
// every database of the group is past its chunks (their calls wait for
// the limiter, or are done): the next group is taken when the limiter
// can serve it.
func (u *Uploader) uploadGroup(ctx context.Context, dirs []string, admitted func()) {
	g := u.newGroup(ctx)
	defer close(g.finished)
	var once sync.Once
	admit := func() { once.Do(admitted) }
	defer admit()
	var wg sync.WaitGroup
	// Every member joins before any starts: a member started first could
	// otherwise find itself the only active one and send its chunks up
	// alone.
	type joined struct {
		st *dbState
		mb *member
	}
	var members []joined
	for _, dir := range dirs {
		st := u.state(dir)
		u.mu.Lock()
		st.queued = false
		st.group = g
		u.mu.Unlock()
		if st.waiting(u.opts.Now()) {
			continue // backing off after a failure; the scan comes back
		}
		// Set before TryLock, cleared once the lock is ours: an upload
		// that holds the lock meanwhile may have looked at the spool for
		// the last time already, so it queues dir again when done
		// (requeue).
		st.setRerun(true)
		if !st.upload.TryLock() {
			continue
		}
		st.setRerun(false)
		// Active from now: every member's first chunks go in one round.
		members = append(members, joined{st, g.join(true)})
	}
	for _, j := range members {
		st, mb := j.st, j.mb
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := u.handle(withMember(ctx, mb), st, u.bg, false)
			mb.release()
			if err != nil && ctx.Err() == nil {
				u.noteFailure(st, err)
			}
			u.saveStatus(st)
			st.upload.Unlock()
			u.requeue(st)
		}()
	}
	g.mu.Lock()
	pending := g.first > 0
	g.mu.Unlock()
	if pending {
		select {
		case <-g.ready:
		case <-ctx.Done():
		}
	}
	admit()
	wg.Wait()
}

// requeue wakes a worker for st if a wake-up found its upload busy. It is
// called after the upload lock is released.
func (u *Uploader) requeue(st *dbState) {
	if st.takeRerun() {
		u.Notify(st.sp.Path())
	}
}

// scanner wakes, every ScanPeriod or so, the databases a wake-up may
// have missed: those with a snapshot to upload, a touch due, or a spool
// directory gone. The others stay out of the wake-up queue, where under
// load they would take the place of databases waiting to upload: the
// queue holds, in the order of their oldest change, only databases with
// something to do.
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
		u.scan()
	}
}

// scan wakes the databases that are due (see scanner).
func (u *Uploader) scan() {
	u.mu.Lock()
	dirs := make([]string, 0, len(u.dbs))
	for dir := range u.dbs {
		dirs = append(dirs, dir)
	}
	u.mu.Unlock()
	for _, dir := range dirs {
		if u.due(u.state(dir)) {
			u.Notify(dir)
		}
	}
}

// due reports whether a wake-up of st may do something (see handle): a
// snapshot to upload, a touch due, the spool directory to forget.
func (u *Uploader) due(st *dbState) bool {
	if st.isBlocked() {
		return false // until flushed or reconfigured
	}
	if !st.sp.Exists() {
		return true
	}
	if u.opts.TouchPeriod >= 0 {
		st.mu.Lock()
		now := u.opts.Now()
		if st.lastTouch.IsZero() {
			st.lastTouch = now // as the first pass does: a full period from now
		}
		touch := now.Sub(st.lastTouch) >= u.opts.TouchPeriod
		st.mu.Unlock()
		if touch {
			return true
		}
	}
	return st.pending()
}

// handle uploads what st's spool directory holds. Only one process uploads
// a database at a time (an advisory lock); each pass uploads at most one
// manifest, the newest (see pass).
func (u *Uploader) handle(ctx context.Context, st *dbState, targets []limitedTarget, flush bool) error {
	if st.isBlocked() && !flush {
		return nil // reported when it happened
	}
	if !st.sp.Exists() {
		u.forget(st.sp.Path())
		return nil
	}
	unlock, err := st.sp.LockUpload(ctx, false)
	if err == nil && unlock == nil && flush {
		// Another process uploads this database: a group's round does
		// not wait for it.
		mb := memberOf(ctx)
		mb.release()
		unlock, err = st.sp.LockUpload(ctx, true)
		mb.activate()
	}
	if err != nil {
		return err
	}
	if unlock == nil {
		return nil // another process is uploading this database
	}
	defer unlock()
	// What the stores write for this database is at most as readable as
	// the database itself.
	ctx = store.WithSourcePerm(ctx, st.sp.Perm())
	// Every pass, under the upload lock: another process (a rolling
	// deploy) may have changed the targets since.
	if err := u.checkTargets(st); err != nil {
		return err
	}
	// Another process may have invalidated the spool since, and what this
	// one uploaded may be gone from the store.
	u.noticeInvalidation(st)
	// Another process may have uploaded since: its placements are in the
	// spool.
	placed, err := readPlacements(st.sp)
	if err != nil && transient(err) {
		return fmt.Errorf("upload: read the pack placements of %s: %w", st.source(), err)
	}
	if err != nil {
		// The next manifest could not say where those chunks are.
		u.log.Error("upload: cannot read the pack placements; re-uploading the database", logKeyDB, st.source(), logKeyErr, err)
		if ierr := u.invalidate(st); ierr != nil {
			return ierr
		}
		return err
	}
	st.setPlaced(placed)
	mb := memberOf(ctx)
	for range 3 {
		id, _ := st.uploaded()
		more, err := u.pass(ctx, st, targets)
		if err != nil {
			return err
		}
		if !more {
			break
		}
		if after, _ := st.uploaded(); mb != nil && !flush && after != id {
			// One manifest per turn in the background: a commit made
			// during this upload queued the database again, behind
			// those that waited longer. Another pass now would wait
			// for the manifest gap and send its chunks in a round of
			// its own. (requeue is the backstop.)
			if st.pending() {
				st.setRerun(true)
			}
			break
		}
	}
	mb.release() // touches are calls of its own
	if !flush {
		u.maybeTouch(ctx, st, targets)
	}
	return nil
}

// ErrSpoolCorrupt is returned when a spooled file does not match its
// fingerprint or does not decode: it is not uploaded.
var ErrSpoolCorrupt = errors.New("upload: spool file corrupt")
