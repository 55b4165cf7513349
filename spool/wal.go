package spool

import (
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
// content: they cost no snapshot. A commit is captured while its writer
// still holds the log's write lock (the VFS calls CaptureWAL), so that no
// other writer appends or restarts the log meanwhile.
//
// Which commits the latest captured snapshot holds is a position in the
// log, kept in the control block next to the generations, for every
// process (ctl.go):
//
//	2048 walMode   0 unknown, walAt, walEmpty
//	2056 walSalt   walAt: the log's salts (salt-1 high, salt-2 low)
//	2064 walFrame  walAt: the frames captured (the last commit captured)
//	2072 walSize   the logical size at that position, in bytes
//	2080 walCtime  walEmpty: the file's ctime (Unix ns)
//	2088 walFSize  walEmpty: the file's size
//
// walAt: the latest capture holds the database at frame walFrame of the
// log with salts walSalt. A capture then needs only the pages of the
// frames after walFrame; frames committed by a program that does not use
// boule, or by a writer that died before its capture, are among them.
//
// walEmpty: the latest capture holds the file itself, with no log (a
// rollback-mode commit, or a log that a boule connection checkpointed
// whole and deleted or truncated). The file's ctime and size say whether
// it changed since: a capture then takes every frame of the log.
//
// Before a boule connection restarts, truncates or deletes the log, it
// checks that every committed frame of the old log was captured, and
// moves the position to the new log (WALReset). A restart by any other
// program changes the salts and leaves the position behind: the next
// capture rebuilds from the logical database.
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

// walPosition records in c that the latest capture holds the logical
// database as x describes it.
func walPosition(c *ctl, x *walIndex, size int64, file fileState) {
	if c == nil {
		return
	}
	c.store(ctlWALSize, uint64(size))
	if x == nil || !x.valid {
		c.store(ctlWALCtime, uint64(file.ctime.UnixNano()))
		c.store(ctlWALFSize, uint64(file.size))
		c.store(ctlWALMode, walEmpty)
		return
	}
	c.store(ctlWALSalt, x.hdr.salt)
	c.store(ctlWALFrame, uint64(x.mx))
	c.store(ctlWALMode, walAt)
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
// log. The pages of the frames committed since the latest capture are
// copied into memory, as Capture does, and a persister stages them; when
// the position cannot vouch for them (another program restarted the log, a
// rebuild is due, force), the logical database is snapshotted whole,
// synchronously.
func (d *DB) CaptureWAL(db Source, wal WALFile, wrote, force bool) error {
	d.walmu.Lock()
	defer d.walmu.Unlock()
	x := &d.walx
	if err := x.scan(wal); err != nil {
		return d.walFailedLocked(fmt.Errorf("spool: %s: %w", d.path, err))
	}
	src := newLogicalSource(db, wal, x)
	c := d.ctlp.Load()
	if c == nil || force || c.load(ctlState) != stateOK || d.s.budget.max <= 0 {
		return d.walRebuild(src, wrote)
	}
	pages, ok := d.walDelta(c, x)
	if !ok {
		return d.walRebuild(src, wrote)
	}
	if c.load(ctlCommitted) != c.load(ctlPersisted) {
		if owner := c.load(ctlOwner); owner != self() && !waitStagedBy(c, owner, captureWait) {
			return d.walRebuild(src, wrote)
		}
	}
	size, err := src.Size()
	if err != nil {
		return d.walFailedLocked(err)
	}
	preSize := int64(c.load(ctlWALSize))
	if len(pages) == 0 && size == preSize {
		return nil // nothing committed since: a rollback, or a check
	}
	f, err := d.inspectLogical(src, size)
	if err != nil {
		return d.walRebuild(src, wrote)
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
	reads := planReadsFrom(preSize, f.size, dirty)
	var need int64
	for _, i := range reads {
		need += int64(manifest.ChunkLen(f.size, i))
	}
	if need > d.s.budget.max {
		return d.walRebuild(src, wrote)
	}
	d.qmu.Lock()
	gen := max(c.load(ctlCommitted), c.load(ctlPersisted)) + 1
	c.store(ctlOwner, self())
	c.store(ctlCommitted, gen)
	c.cas(ctlSince, 0, uint64(time.Now().UnixNano()))
	walPosition(c, x, f.size, f)
	d.expect = expectation{}
	d.qmu.Unlock()

	d.s.budget.acquire(need)
	cp := &Capture{gen: gen, post: f, chunks: make(map[int][]byte, len(reads)), bytes: need}
	cp.ch = Change{Wrote: true, Chained: true, Dirty: dirty, PreSize: preSize}
	if d.s.opts.Validate != nil {
		cp.full, _ = src.FullImage()
	}
	d.enqueueFilling(cp, reads, f.size)
	if err := d.fillChunks(cp, src, reads); err != nil {
		// The generation is taken, and its capture incomplete: its
		// persister finds a chunk missing and asks for a rebuild.
		return fmt.Errorf("spool: capture %s: %w", d.path, err)
	}
	return nil
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
		walPosition(c, src.x, size, f)
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

// WALReset is called by a boule connection just before it restarts its
// database's log (hdr is the new header it writes at the log's start),
// truncates it to nothing (hdr nil), or after it deleted it (wal is
// noWAL). When the captures hold every commit of the old log, the
// position moves to the new one; otherwise it is forgotten, and the next
// capture rebuilds.
func (d *DB) WALReset(wal WALFile, hdr []byte) {
	d.walmu.Lock()
	defer d.walmu.Unlock()
	c := d.ctlp.Load()
	if c == nil {
		return
	}
	x := &d.walx
	err := x.scan(wal)
	var pages []uint32
	ok := err == nil
	if ok {
		pages, ok = d.walDelta(c, x)
	}
	if !ok || len(pages) > 0 {
		if c.load(ctlWALMode) != walUnknown {
			c.store(ctlWALMode, walUnknown)
			d.s.log.Warn("spool: the write-ahead log restarts with commits no capture holds; the next transaction rebuilds the snapshot",
				logKeyDB, d.path)
		}
		return
	}
	if h, valid := parseWALHeader(hdr); valid {
		c.store(ctlWALSalt, h.salt)
		c.store(ctlWALFrame, 0)
		c.store(ctlWALMode, walAt)
		return
	}
	st, err := os.Stat(d.path)
	if err != nil {
		c.store(ctlWALMode, walUnknown)
		return
	}
	c.store(ctlWALCtime, uint64(statCtime(st).UnixNano()))
	c.store(ctlWALFSize, uint64(st.Size()))
	c.store(ctlWALMode, walEmpty)
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

// WALGone is WALReset for a log the VFS deleted.
func (d *DB) WALGone() {
	w, done, err := d.openWAL()
	if err != nil {
		d.walmu.Lock()
		if c := d.ctlp.Load(); c != nil {
			c.store(ctlWALMode, walUnknown)
		}
		d.walmu.Unlock()
		return
	}
	defer done()
	d.WALReset(w, nil)
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
