package spool

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/bits"
	"os"
	"slices"
	"time"

	"github.com/boule-vfs/boule/manifest"
)

// A database in WAL mode is replicated from its logical content: the file
// with the committed frames of its log over it, which is what a full
// checkpoint would leave. Checkpoints change the file, not the logical
// content: they cost no snapshot. A commit only takes a generation (a lazy
// capture, CaptureWAL); the persister reads the log later, in a read
// transaction of a connection of its own (readLazy), which keeps the log
// from restarting (or, begun with the log checkpointed whole, has its
// salts checked after) while writers append.
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
//	2096 walCarry  the process holding a restart's carry, or 0
//	2104 walCSalt  the salts of the log the carry leads to
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
// A carry: a boule connection of the process named in walCarry restarted
// the log before its persister had staged the old one, and left the
// position where it was, in the old log. The chunks the old log changed
// beyond the staged snapshot (the carry) are in that process's memory
// only; its persister's next read of the log with salts walCSalt reads
// them too, from the file, which holds the old log whole, and the new
// log, and its staging clears walCarry. Another process's read waits for
// that persister (waitCarry), and rebuilds if it is dead or does not
// stage in time; so does a version of boule that knows no carry, as the
// position's salts are the old log's.
//
// A capture records where it read from and up to (base, postPos); it
// applies to the staged snapshot when base is at or before the staged
// position and postPos at or after it, in the same log (covers); a read
// that takes a carry reads from the staged position, in the log before.
// Before a boule connection restarts the log on the commit path, it
// carries the old log over (WALReset). Before it truncates the log, restarts it in
// exclusive locking mode, and when the last connection closes it, what
// the old log holds beyond the staged snapshot is staged synchronously,
// and the position moves to the new log (WALReset, WALStage, WALGone). A
// restart by any other program changes the salts and leaves the position
// behind: the next read rebuilds from the logical database.
const (
	ctlWALMode  = 2048
	ctlWALSalt  = 2056
	ctlWALFrame = 2064
	ctlWALSize  = 2072
	ctlWALCtime = 2080
	ctlWALFSize = 2088
	// The carry of a restart (carryRestart): the process holding it, as
	// ctlOwner names it (0: none), and the salts of the log it leads to.
	ctlWALCarry     = 2096
	ctlWALCarrySalt = 2104
	// The process whose persister has a read of the log queued and not
	// begun (a lazy capture), as ctlOwner names it (0: none). While it
	// is, a commit of that process in WAL mode takes its generation in C,
	// without entering Go: the read that is queued stages it
	// (captureLazy).
	ctlWALLazy = 2112

	walUnknown = 0
	walAt      = 1
	walEmpty   = 2
)

// A WALFile is a database's log, read through the VFS's handle.
type WALFile interface {
	ReadAt(p []byte, off int64) (int, error)
	Size() (int64, error)
}

// A FramePager is a WALFile that knows the pages of frames of the log
// without reading them: those its connection wrote, in order, checked
// against the committed log (the VFS's log, during WALReset). It names
// the log's salts (salt-1 high, salt-2 low), its page size, and the pages
// of its frames lo to lo+len(pages)-1. A restart's carry reads from the
// log only the frames it does not know (walIndex.pagesAfter): at 1,000
// frames of 4 KiB, reading them all took about 1 ms of the commit that
// restarted the log, the slowest 0.3% of a busy writer's commits.
type FramePager interface {
	FramePages() (salt uint64, pageSize, lo int, pages []uint32)
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

// walDelta returns the pages the log committed since the staged
// snapshot, and the chunks a restart carried over (carry, with its
// version; nil when none), and whether the position says so: false asks
// for a rebuild.
func (d *DB) walDelta(c *ctl, x *walIndex) (pages []uint32, carry []uint64, ver uint64, ok bool) {
	from, carry, ver, ok := d.deltaStart(c, x.hdr.salt, x.valid)
	if !ok || from > x.mx {
		return nil, nil, 0, false
	}
	return x.pagesSince(from), carry, ver, true
}

// deltaStart is where, in the log whose salts are salt (valid false: no
// log holds frames), the commits since the staged snapshot start: the
// frame after which they follow, and the carry of a restart with its
// version; ok false asks for a rebuild.
func (d *DB) deltaStart(c *ctl, salt uint64, valid bool) (from int, carry []uint64, ver uint64, ok bool) {
	if owner := c.load(ctlWALCarry); owner != 0 {
		if owner != self() || !valid || c.load(ctlWALCarrySalt) != salt {
			return 0, nil, 0, false
		}
		d.carrymu.Lock()
		carry, ver = slices.Clone(d.carry), d.carryVer
		d.carrymu.Unlock()
		if carry == nil {
			return 0, nil, 0, false // this process's carry, lost with a spool closed since
		}
		return 0, carry, ver, true
	}
	switch c.load(ctlWALMode) {
	case walAt:
		if !valid || c.load(ctlWALSalt) != salt {
			return 0, nil, 0, false
		}
		return int(c.load(ctlWALFrame)), nil, 0, true
	case walEmpty:
		return 0, nil, 0, d.fileUnchanged(c)
	}
	return 0, nil, 0, false
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
// snapshot later, off the commit path, in a read transaction of a
// connection of its own (Options.OpenWAL). When that is not
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
		lazyState(c.load(ctlState)) && c.load(ctlWALMode) != walUnknown {
		d.captureLazy(c)
		return nil
	}
	if c != nil {
		// Another process's carry is staged by its persister, which
		// needs no lock this caller holds; waiting for it beats a
		// rebuild.
		waitCarry(c, captureWait)
	}
	d.walmu.Lock()
	defer d.unlockWAL()
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

// lazyState reports whether a commit in the marker's state may leave its
// capture to the persister. A rebuild that is due (a log restarted by
// another program, a capture lost) or a snapshot that failed (a full
// spool disk) is the persister's too: it rebuilds in its read
// transaction, writers going on meanwhile, where the commit would read
// and hash the whole database while it holds the log's write lock.
func lazyState(s uint64) bool { return s == stateOK || s == stateRebuild || s == stateFailed }

// captureLazy takes a generation for commits the log holds and queues a
// capture that reads nothing: the persister reads the log for it.
//
// It also names this process in ctlWALLazy, until the persister takes the
// capture (disarmLazy): the commits of its connections meanwhile take
// their generations in C, as takeGenLocked would, and do not enter Go,
// since the queued read will find them in the log. A commit in C checks
// the word again after it took its generation and enters Go if it was
// cleared meanwhile: either the generation it took precedes the
// persister's clear, and so the generation the read takes after it, or
// the commit queues a read of its own.
func (d *DB) captureLazy(c *ctl) {
	d.qmu.Lock()
	defer d.qmu.Unlock()
	d.enqueueLocked(&Capture{gen: d.takeGenLocked(c), wal: true, lazy: true, filled: closedChan})
	c.store(ctlWALLazy, self())
}

// disarmLazy clears ctlWALLazy when it names this process, with d.qmu
// held, as the persister takes its queue: commits from now on enter Go
// and queue reads of their own. When it did, it returns the capture the
// commits that counted on the word need, to end the persister's batch: a
// read, with their newest generation. The capture queued with the word
// will not do: its generation is older than theirs, and a read staged
// meanwhile (with a newer one) would let the persister drop it unread,
// and a capture that read the log, queued after it, read before some of
// them.
func (d *DB) disarmLazy() *Capture {
	c := d.ctlp.Load()
	if c == nil || !c.cas(ctlWALLazy, self(), 0) {
		return nil
	}
	return &Capture{gen: c.load(ctlCommitted), wal: true, lazy: true, filled: closedChan}
}

// closedChan is the filled channel of captures with nothing to read.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// walRead reads, with d.walmu held and the log kept still (its write
// lock), what the log committed since the staged position: it returns a
// capture with a new generation whose chunks the caller reads (cp.reads
// from cp.src), the budget for them acquired; or nil when there is
// nothing new, or when it snapshotted the logical database whole instead.
func (d *DB) walRead(db Source, wal WALFile, wrote, force, acquire bool) (*Capture, error) {
	return d.walReadGen(db, wal, wrote, force, acquire, 0, false)
}

// errRebuild is returned by walReadGen when only a rebuild can stage
// what the log holds, and its caller may not rebuild (a persister that
// does not hold the log's write lock).
var errRebuild = errors.New("spool: a rebuild is needed")

// walReadGen is walRead. A non-zero gen is the generation the caller took
// before the read, and that the capture gets: the caller reads without
// the log's write lock, so that every commit with an older generation is
// in the log when it scans; it may not rebuild (errRebuild). direct says
// that the caller stages the capture itself while it keeps the log still:
// a read larger than the capture budget is then staged straight from the
// log (cp.big, chunks read from cp.src), not rebuilt.
func (d *DB) walReadGen(db Source, wal WALFile, wrote, force, acquire bool, gen uint64, direct bool) (*Capture, error) {
	x := &d.walx
	if err := x.scan(wal); errors.Is(err, errWALMoved) {
		return nil, fmt.Errorf("spool: %s: %w", d.path, err) // a persister's read: it reads again
	} else if err != nil {
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
	pages, carry, carryVer, ok := d.walDelta(c, x)
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
	if gen == 0 && len(pages) == 0 && carry == nil && size == int64(base.size) && c.load(ctlCommitted) == c.load(ctlPersisted) {
		return nil, nil // nothing committed since: a rollback, or a check
	}
	f, err := d.inspectLogical(src, size)
	if err != nil {
		if gen != 0 {
			return nil, errRebuild
		}
		return nil, d.walRebuild(src, wrote)
	}
	dirty := pageChunks(carry, pages, int64(x.hdr.pageSize))
	reads := planReadsFrom(int64(base.size), f.size, dirty)
	var need int64
	for _, i := range reads {
		need += int64(manifest.ChunkLen(f.size, i))
	}
	big := false
	if need > d.s.budget.max {
		if gen == 0 && !direct {
			return nil, d.walRebuild(src, wrote)
		}
		// A persister's read: its chunks go to a file (spillChunks),
		// not to memory, and it needs no lock but its read
		// transaction. A direct read: its caller stages them from the
		// log.
		big, need = true, 0
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
		base: base, postPos: d.posOf(x, f), reads: reads, src: src, carryVer: carryVer, big: big}
	cp.ch = Change{Wrote: true, Chained: true, Dirty: dirty, PreSize: int64(base.size)}
	if d.s.opts.Validate != nil && f.size <= ValidateMax {
		cp.full, _ = src.FullImage()
	}
	return cp, nil
}

// pageChunks adds to dirty, a bitmap of chunk indexes, the chunks that
// hold pages (page numbers from 1, of ps bytes).
func pageChunks(dirty []uint64, pages []uint32, ps int64) []uint64 {
	for _, pg := range pages {
		i := (int64(pg) - 1) * ps / manifest.ChunkSize
		for int(i>>6) >= len(dirty) {
			dirty = append(dirty, 0)
		}
		dirty[i>>6] |= 1 << (i & 63)
	}
	return dirty
}

// readLazy is the persister's read of what lazy captures left in the log:
// through its own connection, in a read transaction, it reads as a
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
	return d.takeGenLocked(c)
}

// takeGenLocked is takeGen with d.qmu held.
func (d *DB) takeGenLocked(c *ctl) uint64 {
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
	waitCarry(c, captureWait)
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
	defer d.unlockWAL()
	cp, err := d.walReadGen(db, wal, true, false, false, gen, false)
	if errors.Is(err, errRebuild) {
		// Another program restarted the log, say: a rebuild, in the read
		// transaction, not under the log's write lock: it reads the
		// whole database, and writers go on meanwhile. What it reads
		// holds up to the scan's last commit, a state at or after gen's;
		// later commits take later generations, which the next reads
		// stage from the position the rebuild leaves.
		pos := loadPos(c)
		x := &d.walx
		if err := x.scan(wal); err != nil {
			return nil, fmt.Errorf("spool: %s: %w", d.path, err)
		}
		src := newLogicalSource(db, wal, x)
		src.upTo = gen
		src.verify = rebuildCheck(c, wal, x, pos)
		return nil, d.walRebuild(src, true)
	}
	if cp == nil || err != nil {
		return nil, err
	}
	if cp.big {
		err = d.spillChunks(cp)
	} else {
		err = fillFrom(cp)
	}
	if err != nil {
		cp.release()
		return nil, fmt.Errorf("spool: read %s: %w", d.path, err)
	}
	if x := &d.walx; x.valid {
		if err := sameLog(wal, x.hdr.salt); err != nil {
			cp.release()
			return nil, fmt.Errorf("spool: %s: %w", d.path, err)
		}
	}
	cp.src = nil
	cp.filled = closedChan
	return cp, nil
}

// rebuildCheck returns the check, under the spool lock and before the
// manifest is committed, of a rebuild in a read transaction that scanned
// x from wal with the position at pos: errWALMoved when the log restarted
// under the read, or when someone staged meanwhile (another process's
// rebuild or persister, this process's restart or close), whose newer
// state this older read would undo.
func rebuildCheck(c *ctl, wal WALFile, x *walIndex, pos walPos) func() error {
	salt, valid := x.hdr.salt, x.valid
	return func() error {
		if valid {
			if err := sameLog(wal, salt); err != nil {
				return err
			}
		}
		if loadPos(c) != pos {
			return errWALMoved
		}
		return nil
	}
}

// sameLog returns errWALMoved unless the log's header still has salt:
// a read transaction that began with the log checkpointed whole does not
// keep it from restarting, or from being truncated (a TRUNCATE
// checkpoint: the header's read then fails short), and what such a read
// took from the log may be another log's.
func sameLog(wal WALFile, salt uint64) error {
	var hb [walHeaderSize]byte
	if _, err := wal.ReadAt(hb[:], 0); err != nil {
		if shrunk(wal, walHeaderSize) {
			return errWALMoved
		}
		return fmt.Errorf("read the log's header: %w", err)
	}
	if h, ok := parseWALHeader(hb[:]); !ok || h.salt != salt {
		return errWALMoved
	}
	return nil
}

// fillFrom reads the chunks of a capture into memory.
func fillFrom(cp *Capture) error {
	for _, i := range cp.reads {
		b := getChunkBuf(manifest.ChunkLen(cp.post.size, i))
		if _, err := cp.src.ReadAt(b, int64(i)*manifest.ChunkSize); err != nil {
			return err
		}
		cp.chunks[i] = b
	}
	return nil
}

// spillChunks copies the chunks of a capture larger than the capture
// budget into a file of the spool's, unlinked: the persister then stages
// them from it, with the log's read transaction over, in bounded memory.
func (d *DB) spillChunks(cp *Capture) error {
	f, err := os.CreateTemp(d.tmpDir(), "spill-")
	if err != nil {
		return err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return err
	}
	cp.spill = &spilledSource{size: cp.post.size, f: f, at: make(map[int]int64, len(cp.reads))}
	buf := getChunkBuf(manifest.ChunkSize)
	defer capturedBufs.Put((*[manifest.ChunkSize]byte)(buf))
	for k, i := range cp.reads {
		b := buf[:manifest.ChunkLen(cp.post.size, i)]
		if _, err := cp.src.ReadAt(b, int64(i)*manifest.ChunkSize); err != nil {
			return err
		}
		off := int64(k) * manifest.ChunkSize
		if _, err := f.WriteAt(b, off); err != nil {
			return err
		}
		cp.spill.at[i] = off
	}
	return nil
}

// A WALReader is a connection of a persister's own to a database in WAL
// mode, in a read transaction: the database file and the log, read
// through it.
type WALReader struct {
	DB  Source
	WAL WALFile
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

// String is the position as the log names it, for messages.
func (p walPos) String() string {
	switch p.mode {
	case walAt:
		return fmt.Sprintf("frame %d of the log with salts %016x", p.frame, p.salt)
	case walEmpty:
		return "the file without a log"
	}
	return "unknown"
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
// staged and post. A read that took a carry (carried) holds every page
// changed from base, in the log before the restart, through post, in the
// log after it.
func covers(base, post, staged walPos, carried bool) bool {
	if base == staged {
		return true
	}
	if carried {
		return (staged.mode == walAt && staged.salt == post.salt && staged.frame <= post.frame) ||
			(base.mode == walAt && staged.mode == walAt && staged.salt == base.salt && staged.frame >= base.frame)
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
			d.dropCarry(c, 0, true)
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
	d.failed(c, err)
	return err
}

// WALStage stages, synchronously, what the log holds beyond the staged
// snapshot, while the caller keeps the log still (a boule connection that
// holds its write lock, or the last connection closing it). It reports
// whether the staged snapshot is then at the log's last commit.
func (d *DB) WALStage(db Source, wal WALFile) bool {
	d.walmu.Lock()
	defer d.unlockWAL()
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
	cp, err := d.walReadGen(db, wal, false, false, false, 0, true)
	if err != nil {
		return false
	}
	if cp != nil {
		if cp.big {
			// More than the capture budget: staged from the log, which
			// the caller keeps still until this returns.
			cp.direct = cp.src
		} else if err := fillFrom(cp); err != nil {
			cp.release()
			d.s.budget.release(cp.bytes)
			return false
		}
		cp.src, cp.filled = nil, closedChan
		d.persistRun([]*Capture{cp})
		d.s.budget.release(cp.bytes)
		cp.release()
	}
	// Every frame of the log is staged. (A persister's read under way
	// may have taken a generation meanwhile: it reads nothing newer.)
	pages, carry, _, ok := d.walDelta(c, &d.walx)
	return ok && len(pages) == 0 && carry == nil && pending <= c.load(ctlPersisted)
}

// waitPersisted waits, at most limit, until this process's persister has
// staged generation gen.
func (d *DB) waitPersisted(c *ctl, gen uint64, limit time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	stop := context.AfterFunc(ctx, d.signalStaged)
	defer stop()
	d.qmu.Lock()
	defer d.qmu.Unlock()
	d.hurryLocked()
	for c.load(ctlPersisted) < gen && (d.persisting || len(d.queue) > 0) && ctx.Err() == nil {
		d.staged.Wait()
	}
}

// WALReset is called by a boule connection that holds the log's write
// lock, just before it restarts the log (hdr is the new header it writes
// at the log's start) or truncates it to nothing (hdr nil). The old log
// was checkpointed whole: the file holds all of it.
//
// A restart on the commit path (a lazy persister, not eager: the log's
// locks go through the shm) stages nothing and takes no spool lock: the
// chunks the old log changed beyond the staged snapshot are carried
// over, in this process's memory, to the persister's next read, which
// reads them from the file and the new log (carryRestart). Otherwise,
// and for a truncation, what the old log holds beyond the staged
// snapshot is staged first, synchronously; then the position moves to
// the new log, which starts from the file. If that staging fails, the
// position is forgotten and the next capture rebuilds.
func (d *DB) WALReset(db Source, wal WALFile, hdr []byte, eager bool) {
	d.walmu.Lock()
	defer d.unlockWAL()
	c := d.ctlp.Load()
	if c == nil {
		return
	}
	if h, valid := parseWALHeader(hdr); valid && !eager && d.carryRestart(c, wal, h) {
		return
	}
	if !d.walStageLocked(db, wal) {
		d.forgetPos(c, "staging the old log before its restart or truncation failed")
		return
	}
	d.movePos(c, hdr)
}

// carryRestart carries the old log over to the new one (h), with d.walmu
// held: the chunks it changed beyond the staged snapshot, with those of
// a carry it had itself, become the carry, and the control block names
// this process as its holder, for the log with h's salts; a lazy capture
// asks the persister to read. It reports false when it cannot (no lazy
// persister; rollback commits pending; a position the log does not
// vouch for; nothing to carry): the restart then stages synchronously.
func (d *DB) carryRestart(c *ctl, wal WALFile, h walHeader) bool {
	if d.s.opts.OpenWAL == nil || d.s.budget.max <= 0 || c.load(ctlState) != stateOK {
		return false
	}
	d.qmu.Lock()
	pending := d.rollbackPending
	d.qmu.Unlock()
	if pending > c.load(ctlPersisted) {
		return false
	}
	old, pages, carry, ok := d.restartDelta(c, wal)
	if !ok || (len(pages) == 0 && carry == nil) {
		return false
	}
	carry = pageChunks(carry, pages, int64(old.pageSize))
	d.carrymu.Lock()
	d.carry = carry
	d.carryVer++
	c.store(ctlWALCarry, 0)
	c.store(ctlWALCarrySalt, h.salt)
	c.store(ctlWALCarry, self())
	d.carrymu.Unlock()
	d.captureLazy(c)
	return true
}

// restartDelta is walDelta for a restart's carry, on the commit path: the
// pages of the old log (whose header it returns) beyond the staged
// position, read from the frame headers (walIndex.pagesAfter), not
// scanned and checksummed: the persister may not have read the log for a
// whole squash window, in which a busy writer fills a log of 1,000
// frames, and a full scan of it took 3 ms of the commit that restarted it.
// The old log was checkpointed whole, so a superset of its pages is
// correct: their chunks are read again from the file.
func (d *DB) restartDelta(c *ctl, wal WALFile) (h walHeader, pages []uint32, carry []uint64, ok bool) {
	var hb [walHeaderSize]byte
	if n, _ := wal.ReadAt(hb[:], 0); n < walHeaderSize {
		return h, nil, nil, false
	}
	h, valid := parseWALHeader(hb[:])
	if !valid {
		return h, nil, nil, false
	}
	from, carry, _, ok := d.deltaStart(c, h.salt, true)
	if !ok {
		return h, nil, nil, false
	}
	pages, last, err := d.walx.pagesAfter(wal, h, from)
	if err != nil || from > last {
		return h, nil, nil, false
	}
	return h, pages, carry, true
}

// bitCount counts the bits set in a bitmap.
func bitCount(b []uint64) (n int) {
	for _, w := range b {
		n += bits.OnesCount64(w)
	}
	return n
}

// dropCarry forgets the carry, when the snapshot staged now holds what
// it held: a read of version ver (0: none) was staged, or a rebuild.
// Only this process's own carry goes; another's stays, for its holder.
func (d *DB) dropCarry(c *ctl, ver uint64, rebuilt bool) {
	d.carrymu.Lock()
	defer d.carrymu.Unlock()
	if rebuilt || (ver != 0 && d.carryVer == ver) {
		d.carry = nil
		if rebuilt || c.load(ctlWALCarry) == self() {
			c.store(ctlWALCarry, 0)
		}
	}
}

// waitCarry waits, at most limit, while another live process holds the
// carry of a restart of the log: only its persister can stage it, and
// does so within its squash window.
func waitCarry(c *ctl, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for sleep := 50 * time.Microsecond; ; sleep = min(2*sleep, 5*time.Millisecond) {
		owner := c.load(ctlWALCarry)
		if owner == 0 || owner == self() || !ownerAlive(owner) || time.Now().After(deadline) {
			return
		}
		time.Sleep(sleep)
	}
}

// forgetPos forgets the staged position, saying why once.
func (d *DB) forgetPos(c *ctl, why string) {
	if c.load(ctlWALMode) != walUnknown {
		c.store(ctlWALMode, walUnknown)
		d.s.log.Warn("spool: the next transaction rebuilds the snapshot: the write-ahead log moves on with commits no snapshot holds",
			logKeyDB, d.path, "why", why)
	}
}

// movePos moves the staged position, at the end of the old log, to the
// start of the new one (hdr), or to the file alone, under the spool lock.
func (d *DB) movePos(c *ctl, hdr []byte) {
	unlock, err := d.lockSpool()
	if err != nil {
		d.forgetPos(c, err.Error())
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
		d.forgetPos(c, err.Error())
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
	defer d.unlockWAL()
	c := d.ctlp.Load()
	if c == nil {
		return
	}
	w, done, err := d.openWAL()
	if err != nil {
		d.forgetPos(c, err.Error())
		return
	}
	defer done()
	x := &d.walx
	if err := x.scan(w); err != nil {
		d.forgetPos(c, err.Error())
		return
	}
	d.qmu.Lock()
	pending := d.rollbackPending
	d.qmu.Unlock()
	pages, carry, _, ok := d.walDelta(c, x)
	switch {
	case !ok:
		d.forgetPos(c, "the log being deleted is not the one the staged position is in")
		return
	case len(pages) > 0 || carry != nil:
		d.forgetPos(c, fmt.Sprintf("the log being deleted holds %d pages and %d carried chunks no snapshot holds", len(pages), bitCount(carry)))
		return
	case pending > c.load(ctlPersisted):
		d.forgetPos(c, "the log being deleted follows rollback commits not staged")
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
	return walModeHeader(b[:])
}

// walModeHeader reports whether a database header (its first 20 bytes at
// least) says WAL mode: file format version 2 for writing or reading.
func walModeHeader(hdr []byte) bool { return hdr[18] == 2 || hdr[19] == 2 }

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
	return f, d.statFile(&f)
}

// unlockWAL releases d.walmu, dropping the page content the log's index
// held for the capture that just ended (walIndex.shed).
func (d *DB) unlockWAL() {
	d.walx.shed()
	d.walmu.Unlock()
}
