package spool

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/boule-vfs/boule/internal/fsutil"
	"github.com/boule-vfs/boule/manifest"
	"github.com/zeebo/blake3"
)

// HeaderSize is the size of the SQLite database header.
const HeaderSize = 100

// inlineChunks is how many leading chunks the staged manifest carries
// inline. Chunk 0 holds the header, whose change counter changes with every
// commit: inline, it costs no file in the spool and no object in the store.
const inlineChunks = 1

var sqliteMagic = []byte("SQLite format 3\x00")

// journalMagic starts every hot rollback journal.
var journalMagic = []byte{0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7}

// Source is the database file as the VFS sees it. Reads go through the
// VFS's own file handle: opening and closing another descriptor on the file
// would drop the process's POSIX locks on it.
type Source interface {
	ReadAt(p []byte, off int64) (int, error)
	Size() (int64, error)
	// Reserved reports whether any connection holds a RESERVED or greater
	// lock: then a journal belongs to a live writer and is not hot.
	Reserved() (bool, error)
}

// A Lender is a Source that may hold copies of chunks the transaction
// wrote, made as it wrote them (boule's VFS copies a large transaction's).
// Lend hands over chunk i's first n bytes after the commit if it holds all
// of them, or returns nil; it is called only during Capture. ReturnLent
// gives a lent buffer back once the spool is done with it: from any
// goroutine, after Capture has returned, so it must not use what is valid
// only during the call.
type Lender interface {
	Source
	Lend(i, n int) []byte
	ReturnLent(b []byte)
}

// Change describes one transaction, as captured by the VFS.
type Change struct {
	// Wrote reports that the transaction wrote to or truncated the file.
	// When false, Snapshot only brings the spool up to date if it is stale.
	Wrote bool
	// Force requires a rebuild: the VFS could not capture the state before
	// the transaction, or found the txn marker of an unfinished one.
	Force bool
	// PreOK reports that the Pre* fields are valid.
	PreOK bool
	// PreHeader, PreSize and PreCtime are the file's header, size and ctime
	// just before the transaction's first write.
	PreHeader [HeaderSize]byte
	PreSize   int64
	PreCtime  time.Time
	// Dirty is a bitmap of the 64 KiB chunks written: bit i%64 of word i/64.
	Dirty []uint64
	// Chained reports that the change follows the staged snapshot by
	// construction: a capture of a write-ahead log's frames, whose
	// position in the log says what the capture before it held.
	Chained bool
}

// Stats are counters for one database, for status and metrics.
type Stats struct {
	Snapshots    int64 // snapshots published
	Incremental  int64 // of which incremental
	Failures     int64 // snapshots that failed
	ChunksStaged int64 // chunks staged
	BytesStaged  int64 // bytes of chunks staged
	Segments     int64 // segment files written (segment.go): a few per snapshot, whatever its chunks
	// Compactions counts the segments whose staged chunks were copied
	// out, to free the superseded chunks they kept (compactStaging), and
	// BytesCompacted the bytes of the chunks copied.
	Compactions    int64
	BytesCompacted int64
	// ManifestBytes counts the bytes of staged manifests written, heads
	// and bases included.
	ManifestBytes int64
	// LogBytesScanned counts the bytes of write-ahead log frames read
	// and checksummed to find what commits changed (WAL mode).
	LogBytesScanned int64
	// RestartBytesRead counts the bytes of the log that restarts of it on
	// the commit path read to carry its frames over (WAL mode): frame
	// headers, none for the frames the restarting connection wrote.
	RestartBytesRead int64
	LastSnapshot     time.Time // when the last snapshot was published
	LastError        string    // the last failure, "" after a success
}

// DB is the spool state of one source database.
type DB struct {
	s    *Spool
	path string
	dir  string

	mu      sync.Mutex
	ensured bool
	cur     *cached // staged manifest, nil when unknown
	failing bool
	stats   Stats
	sweptAt time.Time // when sweepTemps last ran; zero before the first snapshot
	// baseKept is the base file the staged manifest was last written
	// with ("" for none, "?" before the first write): the others in
	// staging/ are deleted when it changes.
	baseKept  string
	stagedNow []manifest.Fingerprint // chunks staged by the snapshot in progress
	// pinned counts the bytes of the chunks this process unstaged
	// (superseded before publication) whose segment other staged chunks
	// keep: compactStaging frees them (segment.go).
	pinned int64
	mode   fs.FileMode         // the database's permission bits, as last seen
	ctlp   atomic.Pointer[ctl] // the mapped txn marker, once opened

	// Captures waiting for the persister (capture.go), in generation
	// order, under qmu; persisting is set while a persister runs, and
	// staged is signalled whenever it stores a generation.
	qmu   sync.Mutex
	queue []*Capture
	// queuedChunk is, for each chunk a queued capture holds, the newest
	// such capture (enqueueFilling).
	queuedChunk map[int]*Capture
	// rollbackPending is the newest generation of a rollback commit this
	// process captured (the switch to WAL mode, say), for the hooks of
	// the log (walStageLocked).
	rollbackPending uint64
	persisting      bool
	staged          *sync.Cond
	// hurry cuts the persister's squash window short: someone waits for
	// the staged snapshot (a flush, a close). lastPersist is when the
	// persister last staged (its goroutine only).
	hurry chan struct{}
	// lastLazy is when the persister last took a batch of lazy log
	// reads: it lingers after one only if the one before was recent.
	lastLazy    time.Time
	lastPersist time.Time
	// expect is the file as the last capture or snapshot of this process
	// left it, at generation expect.gen: a transaction whose state before
	// it differs was preceded by a write outside boule. Under qmu.
	expect expectation
	// lastFile is the file as the last snapshot staged or found it
	// (under mu).
	lastFile fileState

	// walx is what this process knows of the database's write-ahead log
	// (wal.go), under walmu, which also orders captures of the log.
	walmu sync.Mutex
	walx  walIndex
	// carry is what a restart of the log left to stage (WALReset): the
	// chunks the old log changed beyond the staged snapshot, which the
	// next read of the new log reads too. carryVer counts the restarts
	// that set it, so that staging clears only the carry it read. Under
	// carrymu, a leaf lock (the persister's staging takes it with the
	// spool lock held).
	carrymu  sync.Mutex
	carry    []uint64
	carryVer uint64

	// The persister's reads of the log in a connection of its own, and
	// the VFS's holds on them (HoldReads, readhold.go), under readmu:
	// readDone, nil when no read is under way, is closed when it ends;
	// holdsGone when the last hold goes.
	readmu    sync.Mutex
	readDone  chan struct{}
	holds     int
	holdsGone chan struct{}
}

// expectation is what a transaction's state before it must be for its
// capture to follow the staged snapshot.
type expectation struct {
	ok      bool
	gen     uint64
	version [16]byte
	size    int64
	ctime   time.Time
}

func (e expectation) matches(ch Change) bool {
	return ch.PreOK && e.version == versionID(ch.PreHeader) && e.size == ch.PreSize && e.ctime.Equal(ch.PreCtime)
}

func expectFile(f fileState, gen uint64) expectation {
	return expectation{ok: true, gen: gen, version: versionID(f.hdr), size: f.size, ctime: f.ctime}
}

// cached is the staged manifest as last read or written, without the
// bytes of its inline chunks (newCached), with what identifies the file it
// came from and a reference count per chunk.
type cached struct {
	m    *manifest.Manifest
	id   fileID
	refs map[manifest.Fingerprint]int32
	// base is the base the staged manifest is a head over, nil when it
	// is whole (head.go).
	base *baseState
}

type fileID struct {
	ino, size    int64
	mtime, ctime int64
	dev          uint64
}

func newDB(s *Spool, path string) *DB {
	d := &DB{s: s, path: path, dir: filepath.Join(s.bootDir, MangleName(path)), baseKept: "?"}
	d.staged = sync.NewCond(&d.qmu)
	d.hurry = make(chan struct{}, 1)
	return d
}

// Path is the source database path.
func (d *DB) Path() string { return d.path }

// Dir is the database's spool directory.
func (d *DB) Dir() string { return d.dir }

// MarkerPath is the transaction marker the VFS creates before the first
// write of each transaction.
func (d *DB) MarkerPath() string { return markerPath(d.dir) }

// StagingManifestPath is the staged snapshot's manifest.
func (d *DB) StagingManifestPath() string { return filepath.Join(d.dir, stagingDir, manifestFile) }

// StagingChunksDir holds staged chunk files.
func (d *DB) StagingChunksDir() string { return filepath.Join(d.dir, stagingDir, chunksDir) }

func (d *DB) tmpDir() string       { return filepath.Join(d.dir, tmpDir) }
func (d *DB) readyDir() string     { return filepath.Join(d.dir, readyDir) }
func (d *DB) consumingDir() string { return filepath.Join(d.dir, consumingDir) }

// Stats returns a copy of the database's counters.
func (d *DB) Stats() Stats {
	d.mu.Lock()
	st := d.stats
	d.mu.Unlock()
	st.LogBytesScanned = d.walx.scanned.Load()
	st.RestartBytesRead = d.walx.headerRead.Load()
	return st
}

// Snapshot brings the staged snapshot up to date with the database after a
// transaction, and publishes it for upload when the uploader has room. The
// caller must hold at least a SHARED lock on the database for the whole
// call. Errors leave the spool consistent: the next transaction rebuilds.
func (d *DB) Snapshot(src Source, ch Change) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.snapshotLocked(src, ch)
}

// snapshotLocked is Snapshot, with d.mu held.
func (d *DB) snapshotLocked(src Source, ch Change) error {
	return d.snapshotLockedWith(src, ch, func(f fileState) {
		// The file is the database: no log is over it.
		if c := d.ctlp.Load(); c != nil {
			storePos(c, emptyPos(f))
		}
	})
}

// snapshotLockedWith is snapshotLocked, with staged called, under the
// spool lock, once the staged snapshot is the database f.
func (d *DB) snapshotLockedWith(src Source, ch Change, staged func(f fileState)) error {
	d.stagedNow = d.stagedNow[:0]
	c, _ := d.ctlLocked()
	var gen uint64
	var settled bool
	ls, logical := src.(*logicalSource)
	published, err := d.snapshot(src, ch, func(f fileState) {
		if logical && ls.upTo != 0 {
			gen, settled = d.settleUpTo(c, ls.upTo), true
		} else {
			gen, settled = d.settle(c, ch.Wrote), true
		}
		d.qmu.Lock()
		if logical {
			d.expect = expectation{}
		} else {
			d.expect = expectFile(f, gen)
		}
		d.qmu.Unlock()
		staged(f)
	})
	log := d.s.log
	switch {
	case err == nil:
		if fs, ok := src.(FullSource); ok && settled && d.s.opts.Validate != nil && c != nil && d.lastFile.size <= ValidateMax {
			if img, err := fs.FullImage(); err == nil {
				d.s.opts.Validate(d, gen, img)
			}
		}
		if published {
			d.stats.Snapshots++
			d.stats.LastSnapshot = time.Now()
		}
		d.stats.LastError = ""
		if d.failing {
			d.failing = false
			log.Warn("spool: replication resumed: snapshots succeed again", logKeyDB, d.path)
		}
		if published && d.s.opts.Notify != nil {
			d.s.opts.Notify(d.dir)
		}
	case errors.Is(err, ErrWAL):
		// The file alone is not the database: its log holds frames,
		// and is not open through boule here. The connections that
		// write the log capture its commits: a check leaves them be.
		if !ch.Wrote {
			return nil
		}
		d.markState(c, stateRebuild, nil)
	case errors.Is(err, errWALMoved):
		// A rebuild in a read transaction whose log restarted under
		// it: nothing was committed, and its caller reads again.
	case errors.Is(err, ErrHotJournal):
		// A crashed writer's transaction, to be rolled back: the staged
		// snapshot cannot be trusted to follow it incrementally, so the
		// next transaction rebuilds.
		d.markState(c, stateRebuild, nil)
	default:
		d.failed(c, err)
	}
	return err
}

// settle records in the marker that the staged snapshot, just written
// from the file under SHARED, holds every commit so far: a commit of this
// process (wrote) takes a new generation.
func (d *DB) settle(c *ctl, wrote bool) (gen uint64) {
	if c == nil {
		return 0
	}
	gen = c.load(ctlCommitted)
	if wrote {
		gen = max(gen, c.load(ctlPersisted)) + 1
		c.store(ctlOwner, self())
		c.store(ctlCommitted, gen)
	}
	c.store(ctlPersisted, gen)
	c.store(ctlErrLen, 0)
	c.store(ctlState, stateOK)
	c.store(ctlTxn, 0)
	c.store(ctlSince, 0)
	d.signalStaged()
	return gen
}

// settleUpTo records in the marker that the staged snapshot, just
// rebuilt in a read transaction while writers went on, holds every
// commit up to generation upTo. Later commits stay to be staged, their
// transactions' words and the time of the oldest untouched.
func (d *DB) settleUpTo(c *ctl, upTo uint64) (gen uint64) {
	if c == nil {
		return 0
	}
	gen = max(c.load(ctlPersisted), upTo)
	c.store(ctlPersisted, gen)
	c.store(ctlErrLen, 0)
	c.store(ctlState, stateOK)
	if gen >= c.load(ctlCommitted) {
		c.store(ctlSince, 0)
	}
	d.signalStaged()
	return gen
}

// markState records in the marker that the last snapshot failed (with its
// error) or found the database in WAL mode: the next transaction rebuilds.
// The transaction that wrote is over: its txn word is cleared.
func (d *DB) markState(c *ctl, state uint64, cause error) {
	if c == nil {
		return
	}
	c.setState(state, cause)
	c.store(ctlTxn, 0)
}

// snapshot brings the staged snapshot up to date: it inspects the file,
// classifies the change (nothing to do, an incremental update, or a
// rebuild), plans which chunks to read, reads and stages them, and
// commits the new manifest.
func (d *DB) snapshot(src Source, ch Change, onStaged func(f fileState)) (published bool, err error) {
	f, err := d.inspect(src)
	if err != nil {
		return false, err
	}
	return d.stageFile(src, ch, f, false, onStaged)
}

// errNotIncremental is returned by stageFile when it may only update the
// staged snapshot and cannot.
var errNotIncremental = errors.New("spool: the staged snapshot is not the state before the change")

// stageFile stages the snapshot of the file f that src reads, after the
// change ch: nothing when the staged snapshot is the file already, an
// incremental update, or a rebuild, which incremental forbids.
// onStaged, when the staged snapshot is the file f at the end (staged now,
// or already), runs before the spool lock is released: the marker's
// generations change under that lock only, so that the persisters and
// snapshots of every process agree on them.
func (d *DB) stageFile(src Source, ch Change, f fileState, incrementalOnly bool, onStaged func(f fileState)) (published bool, err error) {
	unlock, err := d.lockFor(f)
	if err != nil {
		return false, err
	}
	defer unlock()
	return d.stageFileLocked(src, ch, f, incrementalOnly, onStaged)
}

// lockFor makes the spool directories (with the database's mode f.mode)
// and takes the spool lock: snapshots, persisters and invalidations of
// this database, in every process, take turns (see Invalidate).
func (d *DB) lockFor(f fileState) (unlock func(), err error) {
	d.mode = f.mode
	if err := d.ensureDirs(f.mode); err != nil {
		return nil, err
	}
	return d.lockSpool()
}

// stageFileLocked is stageFile with the spool lock held.
func (d *DB) stageFileLocked(src Source, ch Change, f fileState, incrementalOnly bool, onStaged func(f fileState)) (published bool, err error) {
	defer func() {
		if err != nil && len(d.stagedNow) > 0 {
			d.dropUnreferenced(d.stagedNow)
		}
	}()

	if !ch.Wrote {
		if m, err := ReadMarker(d.dir); err == nil && m.State == MarkerPending {
			// A live process (this one, maybe) stages commits the file
			// holds already: the staged snapshot catches up without us.
			return false, nil
		}
	}
	cur := d.loadStaged()
	act := classify(cur, ch, f, d.markerSet)
	if incrementalOnly && act != actIncremental {
		return false, errNotIncremental
	}
	d.lastFile = f
	switch act {
	case actNone:
		if onStaged != nil {
			onStaged(f)
		}
		return false, nil
	case actRebuild:
		// A rebuild trusts nothing cached: re-read what is staged.
		d.cur = nil
		cur = d.loadStaged()
		// A writer killed mid-snapshot may have left staged chunks that
		// the staged manifest does not reference. The rebuild's commit
		// deletes them, but when they are what fills the spool it cannot
		// get there: delete them first. Only against a manifest read
		// whole: one that could not be read this time may still be on
		// disk, and in the middle of its upload.
		if cur != nil {
			d.gcStaging(cur.refs)
		}
	}
	incremental := act == actIncremental
	var prev *manifest.Manifest
	if incremental {
		prev = cur.m
		// The new manifest takes over cur's fingerprint list, changed
		// in place (newManifest): from here on cur is only this
		// snapshot's, and a failure must read the staged one again.
		d.cur = nil
	}
	d.sweepTemps()
	reads := planReads(prev, f.size, ch.Dirty)
	m := d.newManifest(f, prev)
	changed, replaced, err := d.readAndStage(src, m, cur, incremental, reads)
	if err != nil {
		return false, err
	}
	if ls, ok := src.(*logicalSource); ok && ls.verify != nil {
		if err := ls.verify(); err != nil {
			return false, err
		}
	}
	if err := d.commit(m, cur, changed, replaced, incremental); err != nil {
		return false, err
	}
	if onStaged != nil {
		onStaged(f)
	}
	return true, nil
}

// sweepTemps deletes what dead writers left in tmp/ (removeStaleTemps)
// before a snapshot writes there: at the first of this process, after
// every failure (a leftover may be what filled the spool; the torture
// test's killed writers filled a small one with their segments), and
// otherwise once a minute. A sweep reads one small directory.
func (d *DB) sweepTemps() {
	now := time.Now()
	if !d.failing && !d.sweptAt.IsZero() && now.Sub(d.sweptAt) < staleTemp {
		return
	}
	d.sweptAt = now
	removeStaleTemps(d.tmpDir(), now)
}

// fileState is the database file as a snapshot found it.
type fileState struct {
	size  int64
	hdr   [HeaderSize]byte
	ctime time.Time
	mode  fs.FileMode
}

// inspect reads the size, header, ctime and mode of the database, and
// refuses what cannot be snapshotted: a file over the format's limit, not
// a database, in WAL mode, or with a hot journal of a transaction that
// did not commit. It changes nothing, so Capture calls it without d.mu.
func (d *DB) inspect(src Source) (fileState, error) {
	var f fileState
	size, err := src.Size()
	if err != nil {
		return f, fmt.Errorf("spool: size of %s: %w", d.path, err)
	}
	if size > manifest.MaxSize {
		return f, fmt.Errorf("spool: %s: %d bytes exceeds the %d-byte limit", d.path, size, int64(manifest.MaxSize))
	}
	f.size = size
	if size > 0 {
		n := min(int64(HeaderSize), size)
		if _, err := src.ReadAt(f.hdr[:n], 0); err != nil {
			return f, fmt.Errorf("spool: read header of %s: %w", d.path, err)
		}
		if n == HeaderSize && !bytes.Equal(f.hdr[:16], sqliteMagic) {
			return f, fmt.Errorf("%w: %s", ErrNotDatabase, d.path)
		}
	}
	_, logical := src.(*logicalSource)
	if !logical && size >= HeaderSize && walModeHeader(f.hdr[:]) {
		// WAL mode: the file is the database only while no log holds
		// frames (the commit that switched to WAL mode, say).
		if st, err := os.Stat(d.path + "-wal"); err == nil && st.Size() > walHeaderSize {
			return f, ErrWAL
		}
	}
	if hot, err := hasHotJournal(d.path + "-journal"); err != nil {
		return f, err
	} else if hot && !logical {
		if live, err := src.Reserved(); err != nil || !live {
			return f, ErrHotJournal
		}
	}
	return f, d.statFile(&f)
}

// statFile records in f the database file's ctime and permission bits.
func (d *DB) statFile(f *fileState) error {
	st, err := os.Stat(d.path)
	if err != nil {
		return fmt.Errorf("spool: stat %s: %w", d.path, err)
	}
	f.ctime = statCtime(st)
	f.mode = fsutil.CopyPerm(st)
	return nil
}

// loadStaged returns the staged snapshot of this database, or nil.
func (d *DB) loadStaged() *cached {
	cur := d.loadCached()
	if cur != nil && cur.m.SourcePath != d.path {
		return nil
	}
	return cur
}

// action is what a snapshot has to do.
type action int

const (
	actNone        action = iota // the staged snapshot is the file: nothing to do
	actIncremental               // update the staged snapshot with the dirty chunks
	actRebuild                   // read every chunk
)

// classify decides what a snapshot does. An incremental update is safe
// only when the staged snapshot provably describes the file as it was
// just before the transaction: same header (so same change counter), same
// size, same ctime (doc.go). A transaction that did not write only checks
// that the staged snapshot is the file, and that no transaction left the
// marker set (markerSet is called only then).
func classify(cur *cached, ch Change, f fileState, markerSet func() bool) action {
	switch {
	case cur == nil || ch.Force:
		return actRebuild
	case ch.Wrote && ch.Chained:
		return actIncremental
	case ch.Wrote:
		if ch.PreOK && cur.m.VersionID == versionID(ch.PreHeader) &&
			cur.m.Size == ch.PreSize && cur.m.SourceCtime.Equal(ch.PreCtime) {
			return actIncremental
		}
		return actRebuild
	}
	if cur.m.VersionID == versionID(f.hdr) && cur.m.Size == f.size && cur.m.SourceCtime.Equal(f.ctime) && !markerSet() {
		return actNone
	}
	return actRebuild
}

// planReads returns the chunk indexes a snapshot reads, in increasing
// order, each once: all of them for a rebuild (prev nil); for an
// incremental update of prev, planUpdate's.
func planReads(prev *manifest.Manifest, size int64, dirty []uint64) []int {
	if prev == nil {
		return seq(0, manifest.NumChunks(size))
	}
	return planUpdate(prev.Size, len(prev.Chunks), size, dirty)
}

// planUpdate returns the chunk indexes an incremental update of a
// snapshot of prevSize bytes in prevChunks chunks reads, in increasing
// order, each once: the dirty ones, the inline ones (their bytes go in the
// manifest), and those whose extent changed with the file's size. It runs
// at every commit, so its cost follows the chunks read, never the size of
// the database.
func planUpdate(prevSize int64, prevChunks int, size int64, dirty []uint64) []int {
	n := manifest.NumChunks(size)
	out := dirtyIndexes(dirty, n)
	for i := range min(inlineChunks, n) {
		out = append(out, i)
	}
	if size != prevSize {
		for i := max(min(prevChunks, n)-1, 0); i < n; i++ {
			out = append(out, i)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// newManifest returns the manifest of the file f: prev's fingerprints
// (nil for a rebuild), to be overwritten by what is read. It takes over
// prev's list, cut or extended, rather than copying it: at 4 GiB a copy
// is 2 MiB per snapshot. prev.Chunks keeps its length, and the entries a
// shrink cut off keep their fingerprints.
func (d *DB) newManifest(f fileState, prev *manifest.Manifest) *manifest.Manifest {
	m := &manifest.Manifest{
		Hostname:      d.s.host,
		SourcePath:    d.path,
		Generator:     d.s.opts.Generator,
		Size:          f.size,
		PageSize:      pageSize(f.hdr, f.size),
		ChangeCounter: be32(f.hdr[24:28]),
		VersionID:     versionID(f.hdr),
		SourceCtime:   f.ctime,
		Created:       time.Now().UTC(),
	}
	n := manifest.NumChunks(f.size)
	switch {
	case prev == nil:
		m.Chunks = make([]manifest.Fingerprint, n)
	case n <= len(prev.Chunks):
		m.Chunks = prev.Chunks[:n:n] // an append must not write over what was cut off
	default:
		// Growth in place when the list has room: past its length the
		// backing array holds nothing anyone reads.
		m.Chunks = append(prev.Chunks, make([]manifest.Fingerprint, n-len(prev.Chunks))...)
	}
	return m
}

// readAndStage reads the chunks toRead of the file into m, stages those
// that the staged snapshot (cur, nil if none) does not hold, and returns
// the blob slots (index ≥ inlineChunks) whose fingerprint changed from
// cur's in an incremental update, or all that were read in a rebuild,
// and, in an update, the fingerprints those of them within cur's list
// had (m may share cur's list, whose entries it overwrites).
// chunkBufs holds buffers of ChunkSize bytes for readAndStage.
var chunkBufs = sync.Pool{New: func() any { b := make([]byte, manifest.ChunkSize); return &b }}

func (d *DB) readAndStage(src Source, m *manifest.Manifest, cur *cached, incremental bool, toRead []int) (changed []int, replaced []manifest.Fingerprint, err error) {
	var prev []manifest.Fingerprint
	var oldRefs map[manifest.Fingerprint]int32
	if cur != nil {
		oldRefs = cur.refs
		if incremental {
			prev = cur.m.Chunks
		}
	}
	// A buffer from a pool, not one per database: a process with
	// thousands of databases would keep 64 KiB for each.
	bp := chunkBufs.Get().(*[]byte)
	defer chunkBufs.Put(bp)
	staged := make(map[manifest.Fingerprint]bool)
	// The chunks go into segments (segment.go): one file per
	// segMaxChunks chunks staged, not one per chunk.
	var seg *segment
	defer func() {
		if seg != nil {
			seg.discard()
		}
	}()
	held, _ := src.(chunkHolder)
	for _, i := range toRead {
		n := manifest.ChunkLen(m.Size, i)
		var buf []byte
		if held != nil {
			buf = held.heldChunk(i, n)
		}
		if buf == nil {
			buf = (*bp)[:n]
			if _, err := src.ReadAt(buf, m.ChunkOffset(i)); err != nil {
				return nil, nil, fmt.Errorf("spool: read chunk %d of %s: %w", i, d.path, err)
			}
		}
		fp := manifest.Sum(buf)
		var old manifest.Fingerprint
		inPrev := i < len(prev)
		if inPrev {
			old = prev[i] // before m, which may share prev's entries, changes it
		}
		m.Chunks[i] = fp
		if i < inlineChunks {
			if m.Inline == nil {
				m.Inline = make(map[uint32][]byte, inlineChunks)
			}
			m.Inline[uint32(i)] = bytes.Clone(buf)
			continue
		}
		if inPrev && old == fp {
			continue
		}
		changed = append(changed, i)
		if inPrev {
			replaced = append(replaced, old)
		}
		// A fingerprint in a blob slot of the staged manifest is uploaded
		// or spooled already.
		if oldRefs[fp] == 0 && !staged[fp] {
			if seg == nil {
				if seg, err = createSegment(d.tmpDir(), d.s.fault); err != nil {
					return nil, nil, err
				}
			}
			if err := seg.add(fp, buf); err != nil {
				return nil, nil, err
			}
			staged[fp] = true
			if seg.full() {
				err := d.publishSegment(seg, d.mode)
				seg = nil
				if err != nil {
					return nil, nil, err
				}
			}
		}
	}
	if seg != nil {
		err := d.publishSegment(seg, d.mode)
		seg = nil
		if err != nil {
			return nil, nil, err
		}
	}
	return changed, replaced, nil
}

// commit makes m, whose changed blob slots readAndStage returned, the
// staged snapshot: it updates the reference counts of the staged chunks,
// writes the manifest, deletes the staged chunks nothing references any
// more, hands the snapshot over when the uploader has room, and clears the
// txn marker.
func (d *DB) commit(m *manifest.Manifest, cur *cached, changed []int, replaced []manifest.Fingerprint, incremental bool) error {
	refs, replaced := nextRefs(cur, m, changed, replaced, incremental)
	// From here on the cached state is being changed; drop it on failure.
	d.cur = nil
	var bs *baseState
	if incremental && cur != nil && cur.base != nil {
		bs = cur.base
		for _, i := range changed {
			bs.over[uint32(i)] = struct{}{}
		}
	}
	id, bs, err := d.writeManifest(m, bs, d.mode)
	if err != nil {
		return err
	}
	d.cur = newCached(m, id, refs, bs)
	if incremental {
		d.stats.Incremental++
		for _, fp := range replaced {
			if refs[fp] == 0 {
				d.unstage(fp.String())
			}
		}
	} else {
		d.gcStaging(refs)
	}
	if d.maybePublishReady(d.cur) {
		// Staging is empty: what it pinned went with the snapshot.
		d.pinned = 0
	} else if d.pinned >= d.compactAt(m.Size) {
		d.compactStaging(m.Size)
	}
	return nil
}

// nextRefs returns the reference counts of m's blob slots (index ≥
// inlineChunks), with no zero count, and, for an incremental update of
// cur, the fingerprints m no longer references: replaced, those of the
// slots changed (readAndStage), and those cut off by a shrink. An
// incremental update changes cur's counts in place: the caller drops cur.
func nextRefs(cur *cached, m *manifest.Manifest, changed []int, replaced []manifest.Fingerprint, incremental bool) (map[manifest.Fingerprint]int32, []manifest.Fingerprint) {
	n := len(m.Chunks)
	if !incremental {
		refs := make(map[manifest.Fingerprint]int32, n)
		for i := inlineChunks; i < n; i++ {
			refs[m.Chunks[i]]++
		}
		return refs, nil
	}
	refs := cur.refs
	oldN := len(cur.m.Chunks)
	for i := max(n, inlineChunks); i < oldN; i++ { // cut off by a shrink (m's reads stop at n)
		replaced = append(replaced, cur.m.Chunks[i])
	}
	for _, fp := range replaced {
		refs[fp]--
	}
	for _, i := range changed {
		refs[m.Chunks[i]]++
	}
	// Only a replaced chunk can have lost its last reference: this stays
	// proportional to the change, not to the database.
	for _, fp := range replaced {
		if refs[fp] <= 0 {
			delete(refs, fp)
		}
	}
	return refs, replaced
}

// markerSet reports whether the marker says the staged snapshot cannot be
// trusted for a check: a writer died mid-transaction, or before staging
// its commits, or a snapshot failed, or the uploader invalidated the
// spool. Commits that a live process has captured and not staged yet do
// not count: that process stages them.
func (d *DB) markerSet() bool {
	m, err := ReadMarker(d.dir)
	return err != nil || (m.State != MarkerClean && m.State != MarkerPending)
}

// Ctl maps the database's txn marker, creating the spool directory and
// the marker as needed, and returns the address of its txn word, which the
// VFS exchanges at the first write of each transaction (see ctl.go).
func (d *DB) Ctl() (unsafe.Pointer, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, err := d.ctlLocked()
	if err != nil {
		return nil, err
	}
	return c.TxnWord(), nil
}

// ctlLocked returns the mapped txn marker, mapping it on first use; d.mu
// is held.
func (d *DB) ctlLocked() (*ctl, error) {
	if c := d.ctlp.Load(); c != nil {
		return c, nil
	}
	if err := d.s.Check(); err != nil {
		return nil, err
	}
	dm := dirMode(d.stageMode())
	for _, p := range []string{d.dir, d.tmpDir()} {
		if err := mkdirSpool(p, dm, d.path); err != nil {
			return nil, err
		}
	}
	c, err := openCtl(d.MarkerPath(), d.tmpDir(), d.stageMode())
	if err != nil {
		return nil, err
	}
	// The directory names its database from the start, so that a flush
	// before the first snapshot (a database in WAL mode only read so far)
	// knows what to re-stage.
	src := filepath.Join(d.dir, sourceFile)
	if _, err := os.Lstat(src); errors.Is(err, fs.ErrNotExist) {
		_ = d.writeFile(src, []byte(d.path), fileMode(d.stageMode()))
	}
	d.ctlp.Store(c)
	return c, nil
}

// loadCached returns the staged manifest, from memory when the file has not
// changed since it was last read or written. A missing, unreadable or
// corrupt manifest reads as nil: the caller rebuilds.
func (d *DB) loadCached() *cached {
	p := d.StagingManifestPath()
	st, err := os.Stat(p)
	if err != nil {
		d.cur = nil
		return nil
	}
	id := identity(st)
	if d.cur != nil && d.cur.id == id {
		return d.cur
	}
	d.cur = nil
	b, err := fsutil.ReadFile(p)
	if err != nil {
		return nil
	}
	m, bs, err := decodeStaged(filepath.Join(d.dir, stagingDir), b)
	if err != nil {
		d.s.log.Warn("spool: staged manifest is unreadable; rebuilding", logKeyDB, d.path, logKeyErr, err)
		return nil
	}
	refs := make(map[manifest.Fingerprint]int32, len(m.Chunks))
	for i, fp := range m.Chunks {
		if _, inline := m.Inline[uint32(i)]; !inline {
			refs[fp]++
		}
	}
	d.cur = newCached(m, id, refs, bs)
	return d.cur
}

// newCached returns the staged manifest m, as written or read, to keep in
// memory between transactions. The bytes of its inline chunks stay out:
// a snapshot reads the inline chunks anew (planReads), so they would only
// hold a chunk of every open database, 64 KiB each, for nothing.
func newCached(m *manifest.Manifest, id fileID, refs map[manifest.Fingerprint]int32, base *baseState) *cached {
	if m.Inline != nil {
		c := *m
		c.Inline = nil
		m = &c
	}
	return &cached{m: m, id: id, refs: refs, base: base}
}

func (d *DB) ensureDirs(mode fs.FileMode) error {
	if d.ensured {
		// Still there, and still a directory, not a link put in its
		// place since (a shared root's boot directory is sticky, but
		// its owner may rename what others made in it).
		if fi, err := os.Lstat(d.dir); err == nil && fi.IsDir() {
			if _, err := os.Lstat(d.StagingChunksDir()); err == nil {
				return nil
			}
		}
		d.ensured = false
	}
	if err := d.s.Check(); err != nil {
		return err
	}
	dm := dirMode(mode)
	for _, p := range []string{d.dir, filepath.Join(d.dir, stagingDir), d.StagingChunksDir(), d.tmpDir()} {
		if err := d.s.fault("mkdir", p); err != nil {
			return fmt.Errorf("spool: create %s: %w", p, err)
		}
		if err := mkdirSpool(p, dm, d.path); err != nil {
			return err
		}
	}
	src := filepath.Join(d.dir, sourceFile)
	if b, err := fsutil.ReadFile(src); err != nil || string(b) != d.path {
		if err := d.writeFile(src, []byte(d.path), fileMode(mode)); err != nil {
			return err
		}
	}
	d.ensured = true
	return nil
}

// publishSegment seals seg and links each of its chunks into
// staging/chunks under its fingerprint, then drops its temp name. A chunk
// name that exists already is left alone: another process snapshotting
// the same state staged it, it is theirs, and must survive a failure of
// this snapshot. seg is discarded in any case.
func (d *DB) publishSegment(seg *segment, mode fs.FileMode) error {
	defer seg.discard()
	if err := seg.seal(fileMode(mode)); err != nil {
		return err
	}
	d.stats.Segments++
	for _, e := range seg.index {
		created, err := seg.link(filepath.Join(d.StagingChunksDir(), e.fp.String()))
		if err != nil {
			return err
		}
		if !created {
			continue
		}
		d.stagedNow = append(d.stagedNow, e.fp)
		d.stats.ChunksStaged++
		d.stats.BytesStaged += int64(e.n)
	}
	return nil
}

// writeFile writes b whole to a temp file, makes it read-only, and renames
// it to dst. Readers see the old file or the new one, never a torn one.
func (d *DB) writeFile(dst string, b []byte, perm fs.FileMode) error {
	_, err := d.publishFile(dst, b, perm, true)
	return err
}

// publishFile writes b to a temp file, makes it read-only, and publishes
// it as dst: by rename when replace is set, else by link(2), which leaves
// an existing dst alone (and reports created false). Content-addressed
// chunks use link, so that a snapshot only ever owns the files it made.
func (d *DB) publishFile(dst string, b []byte, perm fs.FileMode, replace bool) (created bool, err error) {
	tmp := filepath.Join(d.tmpDir(), uniqueName())
	if err := d.s.fault("create", tmp); err != nil {
		return false, fmt.Errorf("spool: create %s: %w", tmp, err)
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return false, fmt.Errorf("spool: create %s: %w", tmp, pathless(err))
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	if err = d.s.fault("write", tmp); err == nil {
		_, err = f.Write(b)
	}
	if err == nil {
		err = f.Chmod(perm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, fmt.Errorf("spool: write %s: %w", tmp, pathless(err))
	}
	if err = d.s.fault("rename", dst); err == nil {
		if replace {
			err = replaceFile(tmp, dst)
		} else {
			err = os.Link(tmp, dst)
			if errors.Is(err, fs.ErrExist) {
				_ = os.Remove(tmp)
				return false, nil
			}
			if err == nil {
				_ = os.Remove(tmp)
			}
		}
	}
	if err != nil {
		return false, fmt.Errorf("spool: publish %s: %w", dst, err)
	}
	return true, nil
}

// pathless strips an *fs.PathError to its cause, for messages that name
// the path already.
func pathless(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func (d *DB) remove(p string) error {
	if err := d.s.fault("remove", p); err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// lockSpool takes the database's spool lock. The lock file is opened for
// each snapshot and closed after it, so that a process that opens many
// databases holds no descriptor per database between transactions.
func (d *DB) lockSpool() (func(), error) {
	f, err := openLockFile(filepath.Join(d.dir, LockFile))
	if err != nil {
		return nil, err
	}
	if err := flock(f, syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("spool: lock %s: %w", d.dir, err)
	}
	return func() { f.Close() }, nil // closing releases the lock
}

// dropUnreferenced deletes, after a failed snapshot, the chunks it staged
// that the staged manifest on disk does not reference (another process may
// have published one that does), so that failures cannot grow the spool.
func (d *DB) dropUnreferenced(fps []manifest.Fingerprint) {
	d.cur = nil
	cur := d.loadCached()
	for _, fp := range fps {
		if cur != nil && cur.refs[fp] > 0 {
			continue
		}
		d.unstage(fp.String())
	}
}

// gcStaging deletes staged chunks that the staged manifest does not use.
func (d *DB) gcStaging(refs map[manifest.Fingerprint]int32) {
	entries, err := fsutil.ReadDir(d.StagingChunksDir())
	if err != nil {
		return
	}
	for _, e := range entries {
		fp, err := manifest.ParseFingerprint(e.Name())
		if err == nil && refs[fp] > 0 {
			continue
		}
		d.unstage(e.Name())
	}
}

// maybePublishReady hands the staged snapshot to the uploader when it has
// nothing waiting: ready/ gets, atomically, a directory holding hard links
// to the manifest and to the staged chunks, which then leave staging. A
// snapshot that finds ready/ occupied is squashed into a later one.
func (d *DB) maybePublishReady(cur *cached) (published bool) {
	if !fsutil.DirEmpty(d.readyDir()) {
		return false
	}
	refs := cur.refs
	top := filepath.Join(d.tmpDir(), uniqueName())
	snap := filepath.Join(top, uniqueName())
	fail := func(err error) {
		_ = os.RemoveAll(top)
		d.s.log.Debug("spool: ready publication skipped", logKeyDB, d.path, logKeyErr, err)
	}
	dm := dirMode(d.mode)
	for _, p := range []string{top, snap, filepath.Join(snap, chunksDir)} {
		if err := os.Mkdir(p, dm); err != nil {
			fail(err)
			return false
		}
		_ = os.Chmod(p, dm) // umask-proof
	}
	if err := os.Link(d.StagingManifestPath(), filepath.Join(snap, manifestFile)); err != nil {
		fail(err)
		return false
	}
	if cur.base != nil {
		name := baseName(cur.base.id)
		if err := os.Link(filepath.Join(d.dir, stagingDir, name), filepath.Join(snap, name)); err != nil {
			fail(err)
			return false
		}
	}
	entries, err := fsutil.ReadDir(d.StagingChunksDir())
	if err != nil {
		fail(err)
		return false
	}
	var moved []string
	for _, e := range entries {
		fp, err := manifest.ParseFingerprint(e.Name())
		if err != nil || refs[fp] <= 0 {
			continue
		}
		if err := os.Link(filepath.Join(d.StagingChunksDir(), e.Name()), filepath.Join(snap, chunksDir, e.Name())); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // taken by a concurrent publisher of the same state
			}
			fail(err)
			return false
		}
		moved = append(moved, e.Name())
	}
	if err := d.s.fault("rename", d.readyDir()); err != nil {
		fail(err)
		return false
	}
	// rename(2) itself, not os.Rename, which refuses to replace even an
	// empty directory: an empty ready/ is replaced atomically, and a
	// non-empty one (another process published first) makes this fail.
	if err := syscall.Rename(top, d.readyDir()); err != nil {
		fail(err)
		return false
	}
	for _, name := range moved {
		_ = d.remove(filepath.Join(d.StagingChunksDir(), name))
	}
	return true
}

func hasHotJournal(p string) (bool, error) {
	f, _, err := fsutil.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("spool: open journal %s: %w", p, err)
	}
	defer f.Close()
	var b [8]byte
	if _, err := io.ReadFull(f, b[:]); err != nil {
		return false, nil // empty or truncated: not hot
	}
	return bytes.Equal(b[:], journalMagic), nil
}

// versionID identifies a database state by its header, which covers the
// change counter, page count, freelist and schema cookie.
func versionID(hdr [HeaderSize]byte) (v [16]byte) {
	sum := blake3.Sum256(hdr[:])
	copy(v[:], sum[:16])
	return v
}

func pageSize(hdr [HeaderSize]byte, size int64) uint32 {
	if size < HeaderSize || !bytes.Equal(hdr[:16], sqliteMagic) {
		return 0
	}
	ps := uint32(hdr[16])<<8 | uint32(hdr[17])
	if ps == 1 {
		return 65536
	}
	if ps < 512 || ps&(ps-1) != 0 {
		return 0
	}
	return ps
}

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func dirtyIndexes(words []uint64, n int) []int {
	out := make([]int, 0, inlineChunks+8)
	for w, word := range words {
		for word != 0 {
			i := w*64 + bits.TrailingZeros64(word)
			if i >= n {
				return out
			}
			out = append(out, i)
			word &= word - 1
		}
	}
	return out
}

func seq(from, to int) []int {
	out := make([]int, 0, max(to-from, 0))
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

func statCtime(st fs.FileInfo) time.Time {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		ct := statCtim(s)
		return time.Unix(ct.Sec, ct.Nsec).UTC()
	}
	return st.ModTime().UTC()
}

func identity(st fs.FileInfo) fileID {
	id := fileID{size: st.Size(), mtime: st.ModTime().UnixNano()}
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		id.ino = int64(s.Ino)
		id.dev = uint64(s.Dev)
		ct := statCtim(s)
		id.ctime = ct.Nano()
	}
	return id
}

// fileMode is the mode of spool files: the database's read bits.
func fileMode(db fs.FileMode) fs.FileMode { return db & 0o444 }

// dirMode gives directories the database's access: for group and others,
// read becomes r-x and write becomes -wx; the owner always has rwx.
func dirMode(db fs.FileMode) fs.FileMode {
	m := fs.FileMode(0o700)
	for _, shift := range []uint{3, 0} {
		if db&(0o4<<shift) != 0 {
			m |= 0o5 << shift
		}
		if db&(0o2<<shift) != 0 {
			m |= 0o3 << shift
		}
	}
	return m
}

// uniqueName is never reused: pid, time, this process's incarnation and
// 32 random bits. The pid and the incarnation tell whose scratch file it
// is (tempOwner).
func uniqueName() string {
	var r [4]byte
	_, _ = rand.Read(r[:])
	return fmt.Sprintf("%d.%d.%s%s", os.Getpid(), time.Now().UnixNano(), incarnation, hex.EncodeToString(r[:]))
}

// incarnation tells this process from an earlier one with the same pid (a
// container's program restarts with the same pid): 8 random hex digits,
// drawn once per process.
var incarnation = func() string {
	var r [4]byte
	_, _ = rand.Read(r[:])
	return hex.EncodeToString(r[:])
}()
