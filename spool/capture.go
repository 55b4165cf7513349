package spool

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/boule-vfs/boule/manifest"
)

// DefaultCaptureMemory is the default bound, per process (per Spool), on
// the bytes commits have captured and their persisters not staged yet.
const DefaultCaptureMemory = 64 << 20

// captureWait bounds how long a commit waits for another process to stage
// the commits it captured before this one, before it rebuilds instead. A
// healthy persister stages a squash in milliseconds; the wait holds
// SQLite's SHARED lock, so it must stay well below the busy timeouts of
// other writers (5 s is common).
const captureWait = 500 * time.Millisecond

// A FullSource can also give the whole file, for builds that validate
// every staged snapshot (Options.Validate).
type FullSource interface {
	Source
	FullImage() ([]byte, error)
}

// A Capture is what one committed transaction changed, copied at its
// commit while SQLite's SHARED lock kept writers out: the chunks its
// snapshot needs, with the file's state after the commit. A persister
// stages captures in generation order, off the commit path.
type Capture struct {
	filled chan struct{} // closed once chunks are read (fillChunks)
	gen    uint64
	// wal: a capture of a log's commits. lazy: one that read nothing;
	// the persister reads the log for it (readLazy). base and postPos
	// are the positions in the log the capture reads from and up to;
	// reads and src what its caller reads into chunks.
	wal, lazy     bool
	base, postPos walPos
	carryVer      uint64 // the carry of a restart this read included (WALReset), or 0
	// big: a persister's read larger than the capture budget; its
	// chunks are in spill, a file, instead of chunks.
	big   bool
	spill *spilledSource
	// direct: a big read staged by a caller that keeps the log still
	// meanwhile (walStageLocked), from the log itself.
	direct Source
	reads  []int
	src    Source
	ch     Change         // what the VFS saw before the transaction
	post   fileState      // the file after the commit
	chunks map[int][]byte // the chunks a snapshot reads, as they were after the commit
	// lent: the chunks whose buffers a Lender lent (Source.Lend), which go
	// back to it instead of the pool.
	lent  map[int]Lender
	bytes int64
	full  []byte // the whole file after the commit, when validating
}

// budget bounds the bytes of the captures waiting for persisters. A
// commit that would go over it waits (backpressure); one larger than the
// whole budget is snapshotted synchronously instead.
type budget struct {
	mu      sync.Mutex
	cond    *sync.Cond
	used    int64
	max     int64
	waiting int // commits waiting for room
}

// pressed reports whether a commit waits for room: persisters then stage
// at once instead of waiting to squash.
func (b *budget) pressed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.waiting > 0 || b.used > b.max/2
}

func newBudget(max int64) *budget {
	b := &budget{max: max}
	b.cond = sync.NewCond(&b.mu)
	return b
}

func (b *budget) acquire(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.used > 0 && b.used+n > b.max {
		b.waiting++
		b.cond.Wait()
		b.waiting--
	}
	b.used += n
}

func (b *budget) release(n int64) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
	b.cond.Broadcast()
}

// CaptureBytes reports the bytes captured and not staged yet, in this process.
func (s *Spool) CaptureBytes() int64 {
	s.budget.mu.Lock()
	defer s.budget.mu.Unlock()
	return s.budget.used
}

// CaptureLimit is the bound on the bytes captured and not staged yet, in
// this process (Options.CaptureMemory, or its default); 0 or less when
// captures are off.
func (s *Spool) CaptureLimit() int64 { return s.budget.max }

// Capture records a transaction at its commit, while the caller holds at
// least a SHARED lock: for a transaction that wrote, the chunks it changed
// are copied into memory and a persister stages them later, off the
// commit path; a transaction that did not write is a check (Snapshot).
// When capturing cannot be trusted to give the right snapshot (the marker
// or ch asks for a rebuild, another process's commits cannot be staged
// first, the file cannot be captured) or would exceed the memory bound on
// its own, it snapshots synchronously, as Snapshot does. Errors are those
// of that snapshot; a capture itself does not fail.
func (d *DB) Capture(src Source, ch Change) error {
	if !ch.Wrote && walModeFile(src) {
		// A check of a database in WAL mode whose log this connection
		// does not have open (it closed it): while the log holds frames,
		// its writers capture them; without one, the file is the
		// database.
		if st, err := os.Stat(d.path + "-wal"); err == nil && st.Size() > walHeaderSize {
			return nil
		}
		return d.CaptureWAL(src, noWAL{}, false, false, true)
	}
	c := d.ctlp.Load()
	if !ch.Wrote || c == nil || ch.Force || c.load(ctlState) != stateOK || d.s.budget.max <= 0 {
		return d.Snapshot(src, ch)
	}
	if c.load(ctlCommitted) != c.load(ctlPersisted) {
		if owner := c.load(ctlOwner); owner != self() && !waitStagedBy(c, owner, captureWait) {
			return d.Snapshot(src, ch)
		}
	}
	// The first commit of this process snapshots synchronously, to learn
	// what the staged snapshot is; a commit that follows a write by a
	// program that does not use boule rebuilds now, under the lock,
	// rather than let the persister find out. After another process's
	// commits (expect is of an older generation), the persister checks
	// that the capture follows the snapshot they staged.
	d.qmu.Lock()
	e := d.expect
	d.qmu.Unlock()
	if !e.ok || (e.gen == c.load(ctlCommitted) && !e.matches(ch)) {
		return d.Snapshot(src, ch)
	}
	f, err := d.inspect(src)
	if err != nil {
		// WAL mode, a hot journal, a failure: the snapshot records it.
		return d.Snapshot(src, ch)
	}
	reads := planReadsFrom(ch.PreSize, f.size, ch.Dirty)
	var need int64
	for _, i := range reads {
		need += int64(manifest.ChunkLen(f.size, i))
	}
	if need > d.s.budget.max {
		return d.Snapshot(src, ch)
	}
	// The generation first: from now on a check by another connection,
	// in this process or another, sees a commit being staged and leaves
	// the staged snapshot to the persister.
	d.qmu.Lock()
	gen := max(c.load(ctlCommitted), c.load(ctlPersisted)) + 1
	c.store(ctlOwner, self())
	c.store(ctlCommitted, gen)
	c.cas(ctlSince, 0, uint64(time.Now().UnixNano()))
	c.store(ctlTxn, 0)
	d.expect = expectFile(f, gen)
	d.qmu.Unlock()

	d.s.budget.acquire(need)
	cp := &Capture{gen: gen, ch: ch, post: f, chunks: make(map[int][]byte, len(reads)), bytes: need}
	cp.ch.Dirty = append([]uint64(nil), ch.Dirty...) // the VFS reuses its bitmap
	if fs, ok := src.(FullSource); ok && d.s.opts.Validate != nil && f.size <= ValidateMax {
		cp.full, _ = fs.FullImage()
	}
	// The chunks the VFS copied as the transaction wrote them need no
	// read: what is left is read after enqueueFilling.
	unread := reads
	if l, ok := src.(Lender); ok {
		unread = unread[:0:0]
		for _, i := range reads {
			if b := l.Lend(i, manifest.ChunkLen(f.size, i)); b != nil {
				cp.holdLent(i, b, l)
				continue
			}
			unread = append(unread, i)
		}
	}
	d.enqueueFilling(cp, reads, f.size)
	if err := d.fillChunks(cp, src, unread); err != nil {
		// The generation is taken, and its capture incomplete: this
		// commit rebuilds now, which makes the capture obsolete.
		return d.Snapshot(src, ch)
	}
	return nil
}

// enqueueFilling hands cp, whose chunks are not read yet, to the
// persister, and gives it the buffers of the chunks in reads that a
// capture still queued holds: the persister stages a queue as one
// snapshot, so only the newest copy of a chunk counts, and the new content
// is read into the old copy's buffer. Both happen under one lock, so that
// a capture a buffer is taken from is staged together with cp. The caller
// has acquired the budget for every chunk of reads, cp.bytes; the bytes of
// those found are released, as the captures they came from no longer
// hold them. The caller then reads the chunks (fillChunks).
func (d *DB) enqueueFilling(cp *Capture, reads []int, size int64) {
	var found int64
	d.qmu.Lock()
	for _, i := range reads {
		n := manifest.ChunkLen(size, i)
		if old := d.queuedChunk[i]; old != nil && old != cp {
			if b, ok := old.chunks[i]; ok && cp.lent[i] != nil {
				// cp has the chunk already, lent: old's copy is stale.
				delete(old.chunks, i)
				old.bytes -= int64(len(b))
				found += int64(len(b))
				old.giveBack(i, b)
				continue
			}
			if b := old.chunks[i]; len(b) == n {
				delete(old.chunks, i)
				old.bytes -= int64(n)
				found += int64(n)
				if l := old.lent[i]; l != nil {
					delete(old.lent, i)
					cp.holdLent(i, b, l)
				} else {
					cp.chunks[i] = b
				}
				continue
			}
		}
		if cp.lent[i] == nil {
			cp.chunks[i] = getChunkBuf(n)
		}
	}
	// The buffers taken move their share of the budget from old to cp,
	// which acquired for them too: that share is released now.
	d.enqueueLocked(cp)
	d.qmu.Unlock()
	d.s.budget.release(found)
}

// enqueue hands cp, filled, to the database's persister.
func (d *DB) enqueue(cp *Capture) {
	d.qmu.Lock()
	d.enqueueLocked(cp)
	d.qmu.Unlock()
	cp.markFilled()
}

// enqueueLocked queues cp, starting the persister if needed.
func (d *DB) enqueueLocked(cp *Capture) {
	d.queue = append(d.queue, cp)
	if !cp.wal {
		d.rollbackPending = max(d.rollbackPending, cp.gen)
	}
	if d.queuedChunk == nil {
		d.queuedChunk = map[int]*Capture{}
	}
	for i := range cp.chunks {
		d.queuedChunk[i] = cp
	}
	if cp.filled == nil {
		cp.filled = make(chan struct{})
	}
	if !d.persisting {
		d.persisting = true
		go d.persistLoop()
	}
}

// markFilled says that cp's chunks are read: its persister may stage it.
func (cp *Capture) markFilled() { close(cp.filled) }

// fillChunks reads the chunks of reads into cp, after enqueueFilling. A
// chunk that cannot be read is left out: the persister then finds the
// captures do not describe the change, and asks for a rebuild.
func (d *DB) fillChunks(cp *Capture, src Source, reads []int) error {
	defer cp.markFilled()
	for _, i := range reads {
		if _, err := src.ReadAt(cp.chunks[i], int64(i)*manifest.ChunkSize); err != nil {
			d.qmu.Lock()
			delete(cp.chunks, i)
			d.qmu.Unlock()
			return err
		}
	}
	return nil
}

// waitStagedBy waits until owner's captured commits are staged (persisted
// catches up with committed), while owner runs, for at most limit. It
// reports whether they were.
func waitStagedBy(c *ctl, owner uint64, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for sleep := 50 * time.Microsecond; ; sleep = min(2*sleep, 5*time.Millisecond) {
		if c.load(ctlCommitted) == c.load(ctlPersisted) {
			return true
		}
		if c.load(ctlOwner) != owner {
			owner = c.load(ctlOwner)
		}
		if !ownerAlive(owner) || time.Now().After(deadline) {
			return false
		}
		time.Sleep(sleep)
	}
}

// planReadsFrom is planUpdate for an update of a snapshot of prevSize
// bytes.
func planReadsFrom(prevSize, size int64, dirty []uint64) []int {
	return planUpdate(prevSize, manifest.NumChunks(prevSize), size, dirty)
}

// capturedSource serves the chunks of squashed captures as the file they
// were taken from.
type capturedSource struct {
	size   int64
	chunks map[int][]byte
}

// errNotCaptured is returned when a snapshot of captures needs a chunk no
// capture holds: the captures do not describe the change.
var errNotCaptured = errors.New("spool: chunk not captured")

func (s capturedSource) Size() (int64, error)    { return s.size, nil }
func (s capturedSource) Reserved() (bool, error) { return true, nil }

func (s capturedSource) ReadAt(p []byte, off int64) (int, error) {
	i := int(off / manifest.ChunkSize)
	c, ok := s.chunks[i]
	rel := int(off % manifest.ChunkSize)
	if !ok || rel+len(p) > len(c) {
		return 0, fmt.Errorf("%w: %d bytes at %d", errNotCaptured, len(p), off)
	}
	return copy(p, c[rel:]), nil
}

// heldChunk returns chunk i's first n bytes as the capture holds them,
// without a copy, or nil: the caller must neither change nor keep them.
func (s capturedSource) heldChunk(i, n int) []byte {
	if c := s.chunks[i]; len(c) >= n {
		return c[:n]
	}
	return nil
}

// A chunkHolder is a Source that holds its chunks in memory already
// (capturedSource): staging reads them in place.
type chunkHolder interface {
	heldChunk(i, n int) []byte
}

// spilledSource serves the chunks of a big read (spillChunks) from the
// file they were copied to.
type spilledSource struct {
	size int64
	f    *os.File
	at   map[int]int64 // chunk index -> offset in f
}

func (s *spilledSource) Size() (int64, error)    { return s.size, nil }
func (s *spilledSource) Reserved() (bool, error) { return true, nil }

func (s *spilledSource) ReadAt(p []byte, off int64) (int, error) {
	i := int(off / manifest.ChunkSize)
	at, ok := s.at[i]
	rel := off % manifest.ChunkSize
	if !ok || rel+int64(len(p)) > int64(manifest.ChunkLen(s.size, i)) {
		return 0, fmt.Errorf("%w: %d bytes at %d", errNotCaptured, len(p), off)
	}
	return s.f.ReadAt(p, at+rel)
}

// release lets go of what a capture holds: its chunk buffers, and its
// spill file.
func (cp *Capture) release() {
	putChunkBufs([]*Capture{cp})
	if cp.spill != nil {
		cp.spill.f.Close()
		cp.spill = nil
	}
	cp.direct = nil
}

// capturedBufs recycles the 64 KiB buffers of captured chunks once staged,
// so that a commit's capture does not allocate (and zero) them anew.
var capturedBufs = sync.Pool{New: func() any { return new([manifest.ChunkSize]byte) }}

func getChunkBuf(n int) []byte {
	if n != manifest.ChunkSize {
		return make([]byte, n)
	}
	return capturedBufs.Get().(*[manifest.ChunkSize]byte)[:]
}

// putChunkBufs returns the chunk buffers of staged captures to the pool,
// or to the Lender that lent them.
func putChunkBufs(batch []*Capture) {
	for _, cp := range batch {
		for i, b := range cp.chunks {
			cp.giveBack(i, b)
			delete(cp.chunks, i)
		}
	}
}

// holdLent makes b, lent by l, cp's buffer of chunk i.
func (cp *Capture) holdLent(i int, b []byte, l Lender) {
	if cp.lent == nil {
		cp.lent = map[int]Lender{}
	}
	cp.chunks[i], cp.lent[i] = b, l
}

// giveBack lets go of b, the buffer of cp's chunk i, which cp no longer
// holds (or is about to stop holding).
func (cp *Capture) giveBack(i int, b []byte) {
	if l := cp.lent[i]; l != nil {
		delete(cp.lent, i)
		l.ReturnLent(b)
		return
	}
	if len(b) == manifest.ChunkSize {
		capturedBufs.Put((*[manifest.ChunkSize]byte)(b))
	}
}
