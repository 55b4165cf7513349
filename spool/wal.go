package spool

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/boule-vfs/boule/manifest"
)

// A database in WAL mode is replicated from its logical content: the file
// with the committed frames of its log over it, which is what a full
// checkpoint would leave. Checkpoints change the file, not the logical
// content: they cost no snapshot. A commit only takes a generation (a lazy
// capture, CaptureWAL); the persister reads the log later, under the
// log's write lock, taken through a connection of its own (readLazy), so
// that no writer appends or restarts the log while it reads.
//
// Which commits the staged snapshot holds is a position in the log, kept
// in the control block next to the generations, for every process (ctl.go),
// and changed under the spool lock with the staged snapshot:
//
//	2048 walMode   0 unknown, walAt, walEmpty
//	2056 walSalt   walAt: the log's salts (salt-1 high, salt-2 low)
//	2064 walFrame  walAt: the frames the staged snapshot holds
//	2072 walSize   the logical size at that position, in bytes
//	2080 walCtime  walEmpty: the file's ctime (Unix ns)
//	2088 walFSize  walEmpty: the file's size
//
// walAt: the staged snapshot is the database at frame walFrame of the log
// with salts walSalt. A read then needs only the pages of the frames after
// walFrame; frames committed by a program that does not use boule, or by
// a writer that died, are among them.
//
// walEmpty: the staged snapshot is the file itself, with no log (a
// rollback-mode commit, or a log that a boule connection checkpointed
// whole and deleted or truncated). The file's ctime and size say whether
// it changed since: a read then takes every frame of the log.
//
// A capture records where it read from and up to (base, postPos); it
// applies to the staged snapshot when base is at or before the staged
// position and postPos at or after it, in the same log (covers). Before a
// boule connection restarts or truncates the log, and when the last one
// closes it, what the old log holds beyond the staged snapshot is staged
// synchronously, and the position moves to the new log (WALReset,
// WALStage, WALGone). A restart by any other program changes the salts
// and leaves the position behind: the next read rebuilds from the logical
// database.
const (
	ctlWALMode  = 2048
	ctlWALSalt  = 2056
	ctlWALFrame = 2064
	ctlWALSize  = 2072
	ctlWALCtime = 2080
	ctlWALFSize = 2088

	walUnknown = 0
	walAt      = 1
	walEmpty   = 2
)

// A WALFile is a database's log, read through the VFS's handle.
type WALFile interface {
	ReadAt(p []byte, off int64) (int, error)
	Size() (int64, error)
}

// noWAL is a log that does not exist.
type noWAL struct{}

func (noWAL) ReadAt(p []byte, off int64) (int, error) { return 0, fs.ErrNotExist }
func (noWAL) Size() (int64, error)                    { return 0, nil }

// emptyPos is the position of a database file f over which no log holds
// frames.
func emptyPos(f fileState) walPos {
	return walPos{mode: walEmpty, size: uint64(f.size), ctime: uint64(f.ctime.UnixNano()), fsize: uint64(f.size)}
}

// walDelta returns the pages the log committed since the latest capture,
// and whether the position says so: false asks for a rebuild.
func (d *DB) walDelta(c *ctl, x *walIndex) ([]uint32, bool) {
	switch c.load(ctlWALMode) {
	case walAt:
		if !x.valid || c.load(ctlWALSalt) != x.hdr.salt || int(c.load(ctlWALFrame)) > x.mx {
			return nil, false
		}
		return x.pagesSince(int(c.load(ctlWALFrame))), true
	case walEmpty:
		if !d.fileUnchanged(c) {
			return nil, false
		}
		return x.pagesSince(0), true
	}
	return nil, false
}

// fileUnchanged reports whether the database file is as walEmpty left it.
func (d *DB) fileUnchanged(c *ctl) bool {
	st, err := os.Stat(d.path)
	if err != nil {
		return false
	}
	return uint64(statCtime(st).UnixNano()) == c.load(ctlWALCtime) && uint64(st.Size()) == c.load(ctlWALFSize)
}

// CaptureWAL records the commits of the log of a database in WAL mode. The
// VFS calls it at the end of a write transaction, before it releases the
// log's write lock (wrote), and for a check (a flush's re-staging) with
// that lock taken for the purpose. db reads the database file, wal the
// log.
//
// A commit only takes a generation and wakes the persister (a lazy
// capture): the persister reads what the log committed since the staged
// snapshot later, off the commit path, under the log's write lock taken
// through a connection of its own (Options.OpenWAL). When that is not
// possible (exclusive locking mode, eager, in which no other connection
// can open the database; no OpenWAL; no staged position to start from),
// and for checks, the capture reads now: the pages of the frames
// committed since the staged position are copied into memory, as Capture
// does, and the persister stages them; when the position cannot vouch
// for them (another program restarted the log, a rebuild is due, force),
// the logical database is snapshotted whole, synchronously.
func (d *DB) CaptureWAL(db Source, wal WALFile, wrote, force, eager bool) error {
	c := d.ctlp.Load()
	if wrote && !force && !eager && c != nil && d.s.opts.OpenWAL != nil && d.s.budget.max > 0 &&
		c.load(ctlState) == stateOK && c.load(ctlWALMode) != walUnknown {
		d.qmu.Lock()
		gen := max(c.load(ctlCommitted), c.load(ctlPersisted)) + 1
		c.store(ctlOwner, self())
		c.store(ctlCommitted, gen)
		c.cas(ctlSince, 0, uint64(time.Now().UnixNano()))
		d.expect = expectation{}
		d.enqueueLocked(&Capture{gen: gen, wal: true, lazy: true, filled: closedChan})
		d.qmu.Unlock()
		return nil
	}
	d.walmu.Lock()
	defer d.walmu.Unlock()
	cp, err := d.walRead(db, wal, wrote, force, wrote)
	if cp == nil || err != nil {
		return err
	}
	reads := cp.reads
	d.enqueueFilling(cp, reads, cp.post.size)
	if err := d.fillChunks(cp, cp.src, reads); err != nil {
		// The generation is taken, and its capture incomplete: its
		// persister finds a chunk missing and asks for a rebuild.
		return fmt.Errorf("spool: capture %s: %w", d.path, err)
	}
	cp.src = nil
	return nil
}

// closedChan is the filled channel of captures with nothing to read.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// walRead reads, with d.walmu held and the log kept still (its write
// lock), what the log committed since the staged position: it returns a
// capture with a new generation whose chunks the caller reads (cp.reads
// from cp.src), the budget for them acquired; or nil when there is
// nothing new, or when it snapshotted the logical database whole instead.
func (d *DB) walRead(db Source, wal WALFile, wrote, force, acquire bool) (*Capture, error) {
	return d.walReadGen(db, wal, wrote, force, acquire, 0)
}

// errRebuild is returned by walReadGen when only a rebuild can stage
// what the log holds, and its caller may not rebuild (a persister that
// does not hold the log's write lock).
var errRebuild = errors.New("spool: a rebuild is needed")

// walReadGen is walRead. A non-zero gen is the generation the caller took
// before the read, and that the capture gets: the caller reads without
// the log's write lock, so that every commit with an older generation is
// in the log when it scans; it may not rebuild (errRebuild).
func (d *DB) walReadGen(db Source, wal WALFile, wrote, force, acquire bool, gen uint64) (*Capture, error) {
	x := &d.walx
	if err := x.scan(wal); err != nil {
		return nil, d.walFailedLocked(fmt.Errorf("spool: %s: %w", d.path, err))
	}
	src := newLogicalSource(db, wal, x)
	c := d.ctlp.Load()
	if c == nil || force || c.load(ctlState) != stateOK || d.s.budget.max <= 0 {
		if gen != 0 {
			return nil, errRebuild
		}
		return nil, d.walRebuild(src, wrote)
	}
	pages, ok := d.walDelta(c, x)
	if ok {
		ok = d.fileSpansLog(src)
	}
	if !ok {
		if gen != 0 {
			return nil, errRebuild
		}
		return nil, d.walRebuild(src, wrote)
	}
	size, err := src.Size()
	if err != nil {
		return nil, d.walFailedLocked(err)
	}
	base := loadPos(c)
	if gen == 0 && len(pages) == 0 && size == int64(base.size) && c.load(ctlCommitted) == c.load(ctlPersisted) {
		return nil, nil // nothing committed since: a rollback, or a check
	}
	f, err := d.inspectLogical(src, size)
	if err != nil {
		if gen != 0 {
			return nil, errRebuild
		}
		return nil, d.walRebuild(src, wrote)
	}
	ps := int64(x.hdr.pageSize)
	var dirty []uint64
	for _, pg := range pages {
		i := (int64(pg) - 1) * ps / manifest.ChunkSize
		for int(i>>6) >= len(dirty) {
			dirty = append(dirty, 0)
		}
		dirty[i>>6] |= 1 << (i & 63)
	}
	reads := planReadsFrom(int64(base.size), f.size, dirty)
	var need int64
	for _, i := range reads {
		need += int64(manifest.ChunkLen(f.size, i))
	}
	if need > d.s.budget.max {
		if gen != 0 {
			return nil, errRebuild
		}
		return nil, d.walRebuild(src, wrote)
	}
	if gen == 0 {
		gen = d.takeGen(c)
	}

	if !acquire {
		// A persister's or a hook's read, which holds the log's write
		// lock and must not wait for persisters: its memory is the
		// chunks changed since the staged snapshot, and goes at once.
		need = 0
	}
	d.s.budget.acquire(need)
	cp := &Capture{gen: gen, wal: true, post: f, chunks: make(map[int][]byte, len(reads)), bytes: need,
		base: base, postPos: d.posOf(x, f), reads: reads, src: src}
	cp.ch = Change{Wrote: true, Chained: true, Dirty: dirty, PreSize: int64(base.size)}
	if d.s.opts.Validate != nil && f.size <= ValidateMax {
		cp.full, _ = src.FullImage()
	}
	return cp, nil
}

// readLazy is the persister's read of what lazy captures left in the log:
// through its own connection, under the log's write lock, it reads as a
// commit's capture would, and returns the capture, chunks read. nil means
// nothing to stage (or a rebuild staged it all).
func (d *DB) readLazy() (*Capture, error) {
	for try := 0; ; try++ {
		cp, err := d.readLazyOnce()
		if !errors.Is(err, errWALMoved) || try == 3 {
			return cp, err
		}
	}
}

// errWALMoved is returned when the log restarted during a persister's
// read: what it read may be another log's.
var errWALMoved = errors.New("spool: the log restarted during the read")

// takeGen takes the next generation for a commit or a read of this
// process.
func (d *DB) takeGen(c *ctl) uint64 {
	d.qmu.Lock()
	defer d.qmu.Unlock()
	gen := max(c.load(ctlCommitted), c.load(ctlPersisted)) + 1
	c.store(ctlOwner, self())
	c.store(ctlCommitted, gen)
	c.cas(ctlSince, 0, uint64(time.Now().UnixNano()))
	d.expect = expectation{}
	return gen
}

// readLazyOnce is one try of readLazy. It reads in a read transaction of
// its own connection, which keeps the log from restarting (unless the
// log was checkpointed whole when it began: then the log's salts, read
// again at the end, tell) and checkpoints from writing the pages it reads
// from the file; writers go on meanwhile.
func (d *DB) readLazyOnce() (*Capture, error) {
	c := d.ctlp.Load()
	if c == nil {
		return nil, nil
	}
	r, err := d.s.opts.OpenWAL(d.path)
	if errors.Is(err, ErrNotWAL) {
		// The log is gone. Its last connection staged it (WALGone)
		// unless it was not boule's: then the next transaction rebuilds.
		if c := d.ctlp.Load(); c != nil && c.load(ctlPersisted) < c.load(ctlCommitted) {
			d.mu.Lock()
			d.needRebuild(c, "the log was deleted before its commits were staged")
			d.mu.Unlock()
		}
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("spool: read the log of %s: %w", d.path, err)
	}
	defer r.Close()
	db, wal := r.DB, r.WAL
	// The generation first: every commit with an older one is in the log
	// by the time of the scan.
	gen := d.takeGen(c)
	d.walmu.Lock()
	defer d.walmu.Unlock()
	cp, err := d.walReadGen(db, wal, true, false, false, gen)
	if errors.Is(err, errRebuild) {
		// Another program restarted the log, say: a rebuild, with the
		// log kept still by its write lock.
		if err := r.Lock(); err != nil {
			return nil, fmt.Errorf("spool: rebuild %s: %w", d.path, err)
		}
		x := &d.walx
		if err := x.scan(wal); err != nil {
			return nil, fmt.Errorf("spool: %s: %w", d.path, err)
		}
		return nil, d.walRebuild(newLogicalSource(db, wal, x), true)
	}
	if cp == nil || err != nil {
		return nil, err
	}
	for _, i := range cp.reads {
		b := getChunkBuf(manifest.ChunkLen(cp.post.size, i))
		if _, err := cp.src.ReadAt(b, int64(i)*manifest.ChunkSize); err != nil {
			putChunkBufs([]*Capture{cp})
			return nil, fmt.Errorf("spool: read %s: %w", d.path, err)
		}
		cp.chunks[i] = b
	}
	var hb [walHeaderSize]byte
	if x := &d.walx; x.valid {
		if _, err := wal.ReadAt(hb[:], 0); err != nil {
			putChunkBufs([]*Capture{cp})
			return nil, fmt.Errorf("spool: read the log of %s: %w", d.path, err)
		}
		if h, ok := parseWALHeader(hb[:]); !ok || h.salt != x.hdr.salt {
			putChunkBufs([]*Capture{cp})
			return nil, errWALMoved
		}
	}
	cp.src = nil
	cp.filled = closedChan
	return cp, nil
}

// A WALReader is a connection of a persister's own to a database in WAL
// mode, in a read transaction: the database file and the log, read
// through it.
type WALReader struct {
	DB  Source
	WAL WALFile
	// Lock takes the log's write lock, for a rebuild: no writer then
	// changes the log until Close.
	Lock func() error
	// Close ends the transaction and closes the connection.
	Close func()
}

// ErrNotWAL is returned by Options.OpenWAL when the database is not in WAL
// mode (or its log does not exist).
var ErrNotWAL = errors.New("spool: the database has no write-ahead log")

// walPos is a position in a database's log (the wal* words of the control
// block): the staged snapshot's, or a capture's.
type walPos struct {
	mode, salt, frame, size, ctime, fsize uint64
}

func loadPos(c *ctl) walPos {
	return walPos{
		mode: c.load(ctlWALMode), salt: c.load(ctlWALSalt), frame: c.load(ctlWALFrame),
		size: c.load(ctlWALSize), ctime: c.load(ctlWALCtime), fsize: c.load(ctlWALFSize),
	}
}

func storePos(c *ctl, p walPos) {
	c.store(ctlWALMode, walUnknown)
	c.store(ctlWALSalt, p.salt)
	c.store(ctlWALFrame, p.frame)
	c.store(ctlWALSize, p.size)
	c.store(ctlWALCtime, p.ctime)
	c.store(ctlWALFSize, p.fsize)
	c.store(ctlWALMode, p.mode)
}

// posOf is the position x describes, the database being f.
func (d *DB) posOf(x *walIndex, f fileState) walPos {
	p := walPos{size: uint64(f.size)}
	if x != nil && x.valid {
		p.mode, p.salt, p.frame = walAt, x.hdr.salt, uint64(x.mx)
		return p
	}
	p.mode = walEmpty
	if st, err := os.Stat(d.path); err == nil {
		p.ctime, p.fsize = uint64(statCtime(st).UnixNano()), uint64(st.Size())
	} else {
		p.mode = walUnknown
	}
	return p
}

// within reports whether the snapshot staged at staged holds every page
// a capture read up to post: it is in the same log, at or after post.
func within(post, staged walPos) bool {
	return post.mode == walAt && staged.mode == walAt && post.salt == staged.salt && post.frame <= staged.frame
}

// covers reports whether a capture read from base up to post applies to
// the snapshot staged at staged: it holds every page changed between
// staged and post.
func covers(base, post, staged walPos) bool {
	if base == staged {
		return true
	}
	if post.mode != walAt || staged.mode != walAt || staged.salt != post.salt || staged.frame > post.frame {
		return false
	}
	return base.mode == walEmpty || (base.mode == walAt && base.salt == post.salt && base.frame <= staged.frame)
}

// fileSpansLog reports whether the file holds every page of the
// database that the log does not: with boule, only checkpoints write the
// file of a database in WAL mode, and they never drop a page the log
// lacks. A file cut short by another program (SQLite's test suite does)
// fails it, and the read rebuilds from what is there.
func (d *DB) fileSpansLog(src *logicalSource) bool {
	x := src.x
	if x.mx == 0 {
		return true
	}
	fsize, err := src.fileSize()
	if err != nil {
		return false
	}
	ps := int64(x.hdr.pageSize)
	for pg := fsize / ps; pg < int64(x.nPages); pg++ {
		if x.latest[uint32(pg+1)] == 0 {
			return false
		}
	}
	return true
}

// walRebuild snapshots the logical database whole, synchronously, and
// moves the position to it.
func (d *DB) walRebuild(src *logicalSource, wrote bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	size, err := src.Size()
	if err != nil {
		return d.walFailed(err)
	}
	c, _ := d.ctlLocked()
	err = d.snapshotLockedWith(src, Change{Wrote: wrote, Force: true}, func(f fileState) {
		if c != nil {
			storePos(c, d.posOf(src.x, fileState{size: size, ctime: f.ctime}))
		}
	})
	return err
}

// walFailedLocked records a capture that could not read the log.
func (d *DB) walFailedLocked(err error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.walFailed(err)
}

func (d *DB) walFailed(err error) error {
	c, _ := d.ctlLocked()
	d.stats.Failures++
	d.stats.LastError = err.Error()
	d.markState(c, stateFailed, err)
	if !d.failing {
		d.failing = true
		d.s.log.Error("spool: replication paused: snapshot failed; the transaction itself committed, and replication resumes once the cause is gone",
			logKeyDB, d.path, logKeyErr, err)
	}
	return err
}

// WALStage stages, synchronously, what the log holds beyond the staged
// snapshot, while the caller keeps the log still (a boule connection that
// holds its write lock, or the last connection closing it). It reports
// whether the staged snapshot is then at the log's last commit.
func (d *DB) WALStage(db Source, wal WALFile) bool {
	d.walmu.Lock()
	defer d.walmu.Unlock()
	return d.walStageLocked(db, wal)
}

func (d *DB) walStageLocked(db Source, wal WALFile) bool {
	c := d.ctlp.Load()
	if c == nil {
		return false
	}
	// Rollback commits this process captured (the switch to WAL mode)
	// come first: the log starts from them. Their persister needs no
	// lock of the log's.
	d.qmu.Lock()
	pending := d.rollbackPending
	d.qmu.Unlock()
	if pending > c.load(ctlPersisted) {
		d.waitPersisted(c, pending, captureWait)
	}
	cp, err := d.walRead(db, wal, false, false, false)
	if err != nil {
		return false
	}
	if cp != nil {
		for _, i := range cp.reads {
			b := getChunkBuf(manifest.ChunkLen(cp.post.size, i))
			if _, err := cp.src.ReadAt(b, int64(i)*manifest.ChunkSize); err != nil {
				d.s.budget.release(cp.bytes)
				return false
			}
			cp.chunks[i] = b
		}
		cp.src, cp.filled = nil, closedChan
		d.persistRun([]*Capture{cp})
		d.s.budget.release(cp.bytes)
		putChunkBufs([]*Capture{cp})
	}
	// Every frame of the log is staged. (A persister's read under way
	// may have taken a generation meanwhile: it reads nothing newer.)
	pages, ok := d.walDelta(c, &d.walx)
	return ok && len(pages) == 0 && pending <= c.load(ctlPersisted)
}

// waitPersisted waits, at most limit, until this process's persister has
// staged generation gen.
func (d *DB) waitPersisted(c *ctl, gen uint64, limit time.Duration) {
	select {
	case d.hurry <- struct{}{}:
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	stop := context.AfterFunc(ctx, d.signalStaged)
	defer stop()
	d.qmu.Lock()
	defer d.qmu.Unlock()
	for c.load(ctlPersisted) < gen && (d.persisting || len(d.queue) > 0) && ctx.Err() == nil {
		d.staged.Wait()
	}
}

// WALReset is called by a boule connection that holds the log's write
// lock, just before it restarts the log (hdr is the new header it writes
// at the log's start) or truncates it to nothing (hdr nil). What the old
// log holds beyond the staged snapshot is staged first; then the staged
// position moves to the new log, which starts from the file (the log was
// checkpointed whole). If that staging fails, the position is forgotten
// and the next capture rebuilds.
func (d *DB) WALReset(db Source, wal WALFile, hdr []byte) {
	d.walmu.Lock()
	defer d.walmu.Unlock()
	c := d.ctlp.Load()
	if c == nil {
		return
	}
	if !d.walStageLocked(db, wal) {
		d.forgetPos(c)
		return
	}
	d.movePos(c, hdr)
}

// forgetPos forgets the staged position, saying why once.
func (d *DB) forgetPos(c *ctl) {
	if c.load(ctlWALMode) != walUnknown {
		c.store(ctlWALMode, walUnknown)
		d.s.log.Warn("spool: the write-ahead log restarts with commits no snapshot holds; the next transaction rebuilds the snapshot",
			logKeyDB, d.path)
	}
}

// movePos moves the staged position, at the end of the old log, to the
// start of the new one (hdr), or to the file alone, under the spool lock.
func (d *DB) movePos(c *ctl, hdr []byte) {
	unlock, err := d.lockSpool()
	if err != nil {
		d.forgetPos(c)
		return
	}
	defer unlock()
	// The old log is staged whole: every generation taken so far (a
	// persister's read under way included) is in the staged snapshot.
	c.store(ctlPersisted, max(c.load(ctlPersisted), c.load(ctlCommitted)))
	p := loadPos(c)
	if h, valid := parseWALHeader(hdr); valid {
		p.mode, p.salt, p.frame = walAt, h.salt, 0
		storePos(c, p)
		return
	}
	st, err := os.Stat(d.path)
	if err != nil {
		d.forgetPos(c)
		return
	}
	p.mode, p.ctime, p.fsize = walEmpty, uint64(statCtime(st).UnixNano()), uint64(st.Size())
	storePos(c, p)
}

// WALGone is called by the VFS just before it deletes the log, checkpointed
// whole by its last connection, which staged it (WALStage): the file
// alone is the database. Anything the snapshot lacks makes the next
// capture rebuild.
func (d *DB) WALGone() {
	d.walmu.Lock()
	defer d.walmu.Unlock()
	c := d.ctlp.Load()
	if c == nil {
		return
	}
	w, done, err := d.openWAL()
	if err != nil {
		d.forgetPos(c)
		return
	}
	defer done()
	x := &d.walx
	if err := x.scan(w); err != nil {
		d.forgetPos(c)
		return
	}
	d.qmu.Lock()
	pending := d.rollbackPending
	d.qmu.Unlock()
	if pages, ok := d.walDelta(c, x); !ok || len(pages) > 0 || pending > c.load(ctlPersisted) {
		d.forgetPos(c)
		return
	}
	d.movePos(c, nil)
}

// OpenWAL opens the log of the database, for WALReset after the VFS
// deleted it: a log that does not exist reads as empty.
func (d *DB) openWAL() (WALFile, func(), error) {
	f, err := os.Open(d.path + "-wal")
	if errors.Is(err, fs.ErrNotExist) {
		return noWAL{}, func() {}, nil
	}
	if err != nil {
		return nil, nil, err
	}
	return osWAL{f}, func() { f.Close() }, nil
}

type osWAL struct{ f *os.File }

func (w osWAL) ReadAt(p []byte, off int64) (int, error) { return w.f.ReadAt(p, off) }
func (w osWAL) Size() (int64, error) {
	st, err := w.f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// walModeFile reports whether the database file src says it is in WAL
// mode.
func walModeFile(src Source) bool {
	var b [20]byte
	if n, err := src.Size(); err != nil || n < HeaderSize {
		return false
	}
	if _, err := src.ReadAt(b[:], 0); err != nil {
		return false
	}
	return b[18] == 2 || b[19] == 2
}

// inspectLogical is inspect for the logical database of size bytes: its
// header, and the file's ctime and mode.
func (d *DB) inspectLogical(src *logicalSource, size int64) (fileState, error) {
	f := fileState{size: size}
	if size > manifest.MaxSize {
		return f, fmt.Errorf("spool: %s: %d bytes exceeds the %d-byte limit", d.path, size, int64(manifest.MaxSize))
	}
	if size >= HeaderSize {
		if _, err := src.ReadAt(f.hdr[:], 0); err != nil {
			return f, fmt.Errorf("spool: read header of %s: %w", d.path, err)
		}
		if string(f.hdr[:16]) != string(sqliteMagic) {
			return f, fmt.Errorf("%w: %s", ErrNotDatabase, d.path)
		}
	}
	st, err := os.Stat(d.path)
	if err != nil {
		return f, fmt.Errorf("spool: stat %s: %w", d.path, err)
	}
	f.ctime = statCtime(st)
	f.mode = st.Mode().Perm()
	return f, nil
}
