package upload

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boule-vfs/boule/spool"
)

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

// Flush uploads everything the spool directory dir holds, now, and
// succeeds only if the store then holds a snapshot that includes every
// transaction committed through boule before the flush began. When the
// spool's txn marker says the staged snapshot lacks some (a snapshot
// failed or never finished), or nothing is staged, or the file is in WAL
// mode (where programs that do not use boule commit unrecorded), it first
// has Restage take a snapshot of the file, or of what its log committed;
// when that fails too, or an older boule left the database in WAL mode
// unreplicated, it fails with an error naming the database and the cause.
// It retries a database that a permanent error had stopped.
func (u *Uploader) Flush(ctx context.Context, dir string) error {
	return u.flushState(ctx, u.state(dir))
}

// FlushSource is Flush of the database at source, whose spool directory
// is dir. The caller knows the path, and errors name it even when the
// spool never recorded it: a directory that could not be made.
func (u *Uploader) FlushSource(ctx context.Context, dir, source string) error {
	st := u.state(dir)
	st.knowSource(source)
	return u.flushState(ctx, st)
}

func (u *Uploader) flushState(ctx context.Context, st *dbState) error {
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
	if !st.upload.TryLock() {
		// A background upload of this database is under way: a group's
		// round does not wait for it.
		mb := memberOf(ctx)
		mb.release()
		st.upload.Lock()
		mb.activate()
	}
	st.unblock()
	err := u.handle(ctx, st, u.flush, true)
	if err != nil {
		u.noteFailure(st, err)
	}
	u.saveStatus(st)
	st.upload.Unlock()
	u.requeue(st)
	return err
}

// FlushAll flushes every database the uploader knows, and returns the
// errors joined. Databases that no longer exist (ErrSourceGone) are
// skipped. Up to flushAllConcurrency databases are flushed at a time, as
// one group: their small uploads share packs (batch.go).
func (u *Uploader) FlushAll(ctx context.Context) error {
	u.mu.Lock()
	dirs := make([]string, 0, len(u.dbs))
	for dir := range u.dbs {
		dirs = append(dirs, dir)
	}
	u.mu.Unlock()
	sort.Strings(dirs)
	errs := make([]error, len(dirs))
	g := u.newGroup(ctx)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(flushAllConcurrency, len(dirs)) {
		// Active at once, before any flush starts: the first round waits
		// for the chunks of every database of the first wave.
		mb := g.join(true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(dirs) {
					mb.release()
					return
				}
				if mb == nil {
					mb = g.join(true)
				}
				err := u.Flush(withMember(ctx, mb), dirs[i])
				mb.release()
				mb = nil
				if err != nil && !errors.Is(err, ErrSourceGone) {
					errs[i] = err
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// wanted is the snapshot a flush must find in the store once it is done:
// the one staged when the spool was known to hold every transaction
// committed before the flush began.
type wanted struct {
	id      [32]byte
	created time.Time
	// any: the spool cannot say (nothing staged, a clean marker, no
	// Restage); any upload will do, as before markers told the state.
	any bool
}

// mustHold returns the snapshot the store must hold for a flush of st to
// succeed, re-staging the database first when its spool cannot vouch for
// the staged snapshot.
func (u *Uploader) mustHold(ctx context.Context, st *dbState) (wanted, error) {
	src := st.source()
	if !st.sp.Exists() {
		if _, err := os.Stat(src); err == nil {
			// The database is there: its spool could not be made (the
			// writer's log says why), or someone deleted it.
			return wanted{}, fmt.Errorf("%w: %s: its spool directory %s does not exist: the spool could not be created there "+
				"(permissions, a read-only or full file system, a file where a directory should be: the writer's log names the cause), "+
				"or it was deleted", ErrNotStaged, src, st.sp)
		}
		u.forget(st.sp.Path())
		return wanted{}, fmt.Errorf("%w: %w: %s: its spool directory %s is gone", ErrNotStaged, ErrSourceGone, src, st.sp)
	}
	// Commits captured in memory and not staged yet, by this process or
	// another live one, are staged first: wait for their persister.
	if err := st.sp.WaitStaged(ctx); err != nil {
		return wanted{}, fmt.Errorf("upload: flush %s: %w", src, err)
	}
	// The marker first, then the manifest: a clean marker means every
	// transaction committed through boule so far is in the snapshot
	// staged now, or in a newer one, unless the file says otherwise: a
	// writer that could not write the spool recorded nothing. Nor is a
	// clean marker trusted in WAL mode, where programs that do not use
	// boule commit unrecorded: while the last capture was read from the
	// log (mk.WAL), and also once the last boule connection has closed,
	// or when such a program switched the database to WAL mode.
	mk, merr := st.sp.Marker()
	changed, wal := false, false
	if merr == nil && mk.State == spool.MarkerClean {
		wal = mk.WAL || st.sp.WALMode(src)
	}
	if merr == nil && mk.State == spool.MarkerClean && !wal {
		if w, ok := stagedNow(st.sp); ok {
			if !st.sp.FileChanged(src) {
				return w, nil
			}
			changed = true
		}
	}
	if u.opts.Restage == nil {
		return u.unrestaged(st, src, mk, merr, changed)
	}
	// A group's round does not wait for a snapshot of the whole file.
	mb := memberOf(ctx)
	mb.release()
	err := u.opts.Restage(ctx, st.sp.Path(), src)
	mb.activate()
	if err != nil {
		switch {
		case errors.Is(err, spool.ErrWAL):
			return wanted{}, walError(src)
		case errors.Is(err, ErrSourceGone):
			return wanted{}, fmt.Errorf("%w: flush %s: %w", ErrNotStaged, src, err)
		}
		why := lacking(mk, merr, changed)
		switch {
		case mk.State == spool.MarkerFailed:
			why = "its last snapshot failed" // the new failure says why
		case wal:
			why = "it is in WAL mode, where only a look at its log can tell whether the staged snapshot holds every commit"
		}
		return wanted{}, fmt.Errorf("%w: %s: %s, and a new snapshot failed too: %w", ErrSnapshotFailed, src, why, err)
	}
	if w, ok := stagedNow(st.sp); ok {
		return w, nil
	}
	return wanted{}, fmt.Errorf("%w: %s: nothing is staged even after a fresh snapshot (the spool was invalidated meanwhile?)", ErrNotStaged, src)
}

// unrestaged is mustHold without Restage: it says what the marker says.
func (u *Uploader) unrestaged(st *dbState, src string, mk spool.Marker, merr error, changed bool) (wanted, error) {
	switch {
	case changed:
		return wanted{}, fmt.Errorf("%w: %s: %s; run vfsctl sync on it", ErrNotStaged, src, lacking(mk, merr, changed))
	case merr != nil:
		return wanted{}, fmt.Errorf("upload: flush %s: %w", src, merr)
	case mk.State == spool.MarkerWAL:
		return wanted{}, walError(src)
	case mk.State == spool.MarkerFailed:
		return wanted{}, fmt.Errorf("%w: %s: %s; vfsctl flush or sync takes a new one", ErrSnapshotFailed, src, lacking(mk, nil, false))
	case mk.State == spool.MarkerSet:
		return wanted{}, fmt.Errorf("%w: %s: %s; the next transaction on the database stages one, or run vfsctl sync on it now", ErrNotStaged, src, lacking(mk, nil, false))
	}
	// A clean marker and no staged manifest: handed-over snapshots, or
	// none. Any upload is as good as this flush can know.
	if id, _ := st.uploaded(); id != ([32]byte{}) || st.sp.HasUploaded() || !st.sp.Idle() {
		return wanted{any: true}, nil
	}
	return wanted{}, fmt.Errorf("%w: %s: the spool is empty or was invalidated (the targets changed, or the store lost a chunk); "+
		"the next transaction on the database stages a snapshot, or run vfsctl sync on it now", ErrNotStaged, src)
}

// lacking says why the staged snapshot of a database lacks transactions;
// changed: the file changed after it, unrecorded (spool.Dir.FileChanged).
func lacking(mk spool.Marker, merr error, changed bool) string {
	switch {
	case changed:
		return ChangedUnrecorded
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

// ChangedUnrecorded says why a database with a clean txn marker is not
// replicated when its file changed after its staged snapshot
// (spool.Dir.FileChanged).
const ChangedUnrecorded = "the database changed after its staged snapshot, and no writer recorded the change in the spool: " +
	"a writer may be unable to write the spool (permissions, a read-only or full file system; its log says), " +
	"or a program that does not use boule wrote the database"

// walError is the error of a flush of a database in WAL mode.
func walError(src string) error {
	return fmt.Errorf("upload: flush %s: an older boule, which did not replicate WAL mode, stopped replicating the database when it entered it: "+
		"the store holds its state from before the switch, if any; the next transaction through this version resumes replication (%w)", src, spool.ErrWAL)
}

// stagedNow returns the snapshot staged in sp.
func stagedNow(sp spool.Dir) (wanted, bool) {
	s, err := sp.Staged()
	if err != nil || s == nil {
		return wanted{}, false
	}
	return wanted{id: s.ID, created: s.Manifest.Created}, true
}

// holds reports whether the store holds w, or a newer snapshot: the last
// manifest this process uploaded, or the one the spool records.
func (u *Uploader) holds(st *dbState, w wanted) bool {
	id, at := st.uploaded()
	if w.any {
		return id != ([32]byte{}) || st.sp.HasUploaded()
	}
	// This process's memory: its record of the upload may have failed
	// (a full disk).
	if id == w.id || (id != ([32]byte{}) && !at.Before(w.created)) {
		return true
	}
	m, err := st.sp.Uploaded()
	if err != nil || m == nil {
		return false
	}
	return !m.Created.Before(w.created) || st.sp.UploadedIs(w.id)
}
