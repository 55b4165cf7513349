package snapshot

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/boule-vfs/boule/internal/fsutil"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/cache"
	"golang.org/x/sys/unix"
)

// ErrCorrupt is wrapped by the errors for chunks whose bytes do not match
// their fingerprint in every place they were found.
var ErrCorrupt = store.ErrCorrupt

// ReadOnlyDir is a directory of raw chunks that is read but never written,
// laid out as a local cache: <dir>/<shard>/<fingerprint>, or
// <dir>/<fingerprint> when Shards is 0.
type ReadOnlyDir struct {
	Dir    string
	Shards int
}

func (d ReadOnlyDir) path(fp manifest.Fingerprint) string {
	return cache.ChunkPath(d.Dir, d.Shards, fp)
}

// A mapping is one chunk's bytes, mapped read-only into memory outside the
// Go heap, so that C may read them. Mappings are shared by fingerprint
// across snapshots and connections, and unmapped when the last user lets
// go.
type mapping struct {
	b     []byte
	refs  int
	free  func()    // unmaps b or frees its slab slot
	anon  bool      // b is a copy in a slab, not a file's mapping
	file  bool      // b is a whole mapping of a file (see unmapFiles)
	stamp FileStamp // the cache file b was mapped from, when file
}

// loaded is what a loadFunc returns: a chunk's bytes outside the Go
// heap, the function that releases them, and whether they are a copy in
// anonymous memory.
type loaded struct {
	b     []byte
	free  func()
	anon  bool
	file  bool      // b is a whole mapping of a file, which free unmaps
	stamp FileStamp // that file, verified, when file
}

type flight struct {
	done    chan struct{}
	m       *mapping
	err     error
	waiters int // callers waiting for it; under chunkMaps.mu
}

// chunkMaps deduplicates mappings by fingerprint, and loads each chunk
// once for all who wait for it. How many are held is the pool's business.
type chunkMaps struct {
	mu       sync.Mutex
	maps     map[manifest.Fingerprint]*mapping
	inflight map[manifest.Fingerprint]*flight
}

// acquire returns the mapping of chunk fp, loading it unless it is
// mapped or being loaded already, and counts a reference to it. The
// caller that starts the load first tries local, if not nil, in its own
// goroutine: a chunk in a local file, mapped in microseconds, costs no
// goroutine and no hand-off between threads (the caller is often a C
// read, whose goroutine is locked to its thread: a cold scan paid two
// thread switches per chunk for a load that was a few system calls).
// When local fails, load runs on its own: a caller that gives up (ctx)
// does not stop it for the others waiting, and load must bound itself.
func (c *chunkMaps) acquire(ctx context.Context, spawn func(func()) bool, fp manifest.Fingerprint, local, load loadFunc) (*mapping, error) {
	for {
		c.mu.Lock()
		if m, ok := c.maps[fp]; ok {
			m.refs++
			c.mu.Unlock()
			return m, nil
		}
		f, ok := c.inflight[fp]
		if ok {
			f.waiters++
			c.mu.Unlock()
		} else {
			f = &flight{done: make(chan struct{}), waiters: 1}
			c.inflight[fp] = f
			c.mu.Unlock()
			if err := c.start(spawn, fp, f, local, load); err != nil {
				return nil, err
			}
		}
		select {
		case <-f.done:
		case <-ctx.Done():
			c.mu.Lock()
			f.waiters--
			c.mu.Unlock()
			return nil, ctx.Err()
		}
		if f.err != nil {
			return nil, f.err
		}
		// Mapped: take a reference under the lock (it may already have
		// been released and unmapped by the others, then load again).
	}
}

// start loads fp for flight f, which its caller registered: with local
// in the caller's goroutine if that finds it, otherwise with load in a
// goroutine of spawn's. It returns errReaderClosed, and fails the flight
// with it, when spawn runs nothing.
func (c *chunkMaps) start(spawn func(func()) bool, fp manifest.Fingerprint, f *flight, local, load loadFunc) error {
	if local != nil {
		if l, err := safeLoad(local); err == nil {
			c.finish(fp, f, l, nil)
			return nil
		}
	}
	if !spawn(func() { c.run(fp, f, load) }) {
		c.finish(fp, f, loaded{}, errReaderClosed)
		return errReaderClosed
	}
	return nil
}

// run loads fp for flight f and publishes the result: the mapping, with
// no reference yet, for the waiters to take theirs. If every caller gave
// up meanwhile, it is unmapped at once.
func (c *chunkMaps) run(fp manifest.Fingerprint, f *flight, load loadFunc) {
	l, err := safeLoad(load)
	c.finish(fp, f, l, err)
}

// finish publishes the outcome of flight f (see run).
func (c *chunkMaps) finish(fp manifest.Fingerprint, f *flight, l loaded, err error) {
	c.mu.Lock()
	delete(c.inflight, fp)
	switch {
	case err != nil:
		f.err = err
	case f.waiters == 0:
		l.free()
		f.err = errClosed
	default:
		f.m = &mapping{b: l.b, free: l.free, anon: l.anon, file: l.file, stamp: l.stamp}
		c.maps[fp] = f.m
	}
	c.mu.Unlock()
	close(f.done)
}

// A loadFunc returns a chunk's bytes, outside the Go heap.
type loadFunc func() (loaded, error)

// safeLoad runs load, turning a panic into an error, so that a failed
// load never leaves its flight registered.
func safeLoad(load loadFunc) (l loaded, err error) {
	defer func() {
		if r := recover(); r != nil {
			l, err = loaded{}, fmt.Errorf("snapshot: panic loading a chunk: %v", r)
		}
	}()
	return load()
}

// release drops a reference to the mapping of fp, m, unmapping it at
// zero.
func (c *chunkMaps) release(fp manifest.Fingerprint, m *mapping) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.maps[fp] != m {
		return
	}
	m.refs--
	if m.refs == 0 {
		delete(c.maps, fp)
		m.free()
	}
}

// drop is release for many mappings at once: it drops a reference to
// each, and returns those that nobody uses any more, which the caller
// frees (see Reader.release).
func (c *chunkMaps) drop(fps []manifest.Fingerprint, ms []*mapping) []*mapping {
	c.mu.Lock()
	defer c.mu.Unlock()
	var gone []*mapping
	for k, m := range ms {
		if c.maps[fps[k]] != m {
			continue
		}
		m.refs--
		if m.refs == 0 {
			delete(c.maps, fps[k])
			gone = append(gone, m)
		}
	}
	return gone
}

// release drops the entries' references to their mappings, and frees
// the mappings nobody uses any more: the file mappings among them with
// as few munmap calls as their addresses allow (unmapFiles).
func (r *Reader) release(es []*entry) {
	fps := make([]manifest.Fingerprint, len(es))
	ms := make([]*mapping, len(es))
	for k, e := range es {
		fps[k], ms[k] = e.s.M.Chunks[e.i], e.m
	}
	var files [][]byte
	for _, m := range r.chunks.drop(fps, ms) {
		if m.file {
			files = append(files, m.b)
		} else {
			m.free()
		}
	}
	unmapFiles(files)
}

// unmapFiles unmaps the file mappings regions, each the whole of one mmap,
// with one munmap call for each run of regions that are adjacent in
// memory, and returns the number of calls. The kernel tends to place the
// mappings of a scan next to one another, and a scan of a replica larger
// than the chunks held unmaps as many as it maps: one call per mapping
// was a quarter of a warm 4 GiB scan's processor time (3.8 of 15.2 s;
// 0.16 s now), each call flushing the other processors' TLBs, which on
// a busy virtual machine waits for them.
func unmapFiles(regions [][]byte) int {
	if len(regions) == 0 {
		return 0
	}
	page := uintptr(os.Getpagesize())
	type span struct {
		start unsafe.Pointer
		size  uintptr // rounded up to whole pages
	}
	spans := make([]span, len(regions))
	for k, b := range regions {
		spans[k] = span{unsafe.Pointer(unsafe.SliceData(b)), (uintptr(len(b)) + page - 1) &^ (page - 1)}
	}
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(uintptr(a.start), uintptr(b.start)) })
	calls := 0
	for k := 0; k < len(spans); {
		run := spans[k]
		for k++; k < len(spans) && uintptr(spans[k].start) == uintptr(run.start)+run.size; k++ {
			run.size += spans[k].size
		}
		_ = unix.MunmapPtr(run.start, run.size)
		calls++
	}
	return calls
}

// waiting reports how many callers wait for the load of fp; for tests.
func (c *chunkMaps) waiting(fp manifest.Fingerprint) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f, ok := c.inflight[fp]; ok {
		return f.waiters
	}
	return 0
}

// mapped reports how many chunks are mapped; for tests and status.
func (c *chunkMaps) mapped() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.maps)
}

// loadChunk finds chunk fp, of want bytes, and maps it: from the writable
// cache, then the read-only directories, then each remote store in turn,
// from the pack that ref names if it is not nil.
// Whatever it maps has been verified against fp, and nobody but this
// process's user can change it: a cache file that someone else could
// change is copied into memory after it is verified, as are chunks from
// read-only directories and stores.
//
// With paced set (a snapshot larger than the memory bounds, whose
// prefetch goes to the cache's files), a chunk fetched from a store
// waits, up to DefaultCachePace, for room in the cache writer's queue rather
// than go uncached: a scan that outran the writer left most of its
// chunks uncached, and the prefetch fetched and decoded their packs a
// second time to cache them (469 pack GETs for 251 packs in a cold 1 GiB
// scan).
//
// A chunk fetched from a store is written to the cache for chunk i of
// s, which learns of the file (Snapshot.noteFile) once it is written.
func (r *Reader) loadChunk(ctx context.Context, fp manifest.Fingerprint, want int, ref *manifest.PackRef, paced, prefetch bool, s *Snapshot, i int) (loaded, error) {
	var errs []error
	if r.cache != nil {
		l, p, err := r.loadCached(ctx, fp, want, ref)
		if err == nil {
			return l, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("%s: %w", r.cache, err))
			switch {
			case errors.Is(err, fs.ErrPermission):
				// Another user's cache (a cache is private to its user):
				// the chunk comes from elsewhere.
				r.log.Debug("snapshot: cannot read the cache", "chunk", fp.String(), "path", p, "err", err)
			case errors.Is(err, fsutil.ErrNotRegular):
				// Not a file this cache wrote: left alone.
				r.log.Warn("snapshot: skipping a cache entry that is not a regular file", "chunk", fp.String(), "path", p, "err", err)
			default:
				r.log.Warn("snapshot: dropping a bad chunk from the cache", "chunk", fp.String(), "path", p, "err", err)
				_ = os.Remove(p)
			}
		}
	}
	for _, d := range r.readOnly {
		// Someone else owns these files and may rewrite or truncate them
		// in place: copy the verified bytes rather than map the file.
		p := d.path(fp)
		data, err := readVerified(p, fp, want)
		if err == nil {
			return r.slabs.copy(data)
		}
		if !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("read_only %s: %w", p, err))
		}
	}
	if ref != nil {
		data, hold, err := r.packedChunk(ctx, fp, want, *ref, prefetch)
		if err != nil {
			return loaded{}, fmt.Errorf("snapshot: chunk %s: %w", fp, errors.Join(append(errs, err)...))
		}
		defer hold.unref()
		hold.ref() // the queue's, if the chunk is queued
		r.cacheRead(cacheItem{fp: fp, data: data, buf: hold, s: s, i: i, pack: ref.ID, packed: true}, paced)
		return r.slabs.copy(data)
	}
	data, err := r.remoteChunk(ctx, fp, want)
	if err != nil {
		if len(errs) == 0 {
			return loaded{}, fmt.Errorf("snapshot: chunk %s: %w", fp, err)
		}
		return loaded{}, fmt.Errorf("snapshot: chunk %s: %w", fp, errors.Join(append(errs, err)...))
	}
	// Creating a file costs a few hundred microseconds on some file
	// systems: the cache file, for the other processes of the host, is
	// written off the read path.
	r.cacheRead(cacheItem{fp: fp, data: data, s: s, i: i}, paced)
	return r.slabs.copy(data)
}

// defaultCachePace is the longest a read of a paced snapshot waits for
// room in the cache writer's queue: a few dozen files' writing, so that a
// cache on a stuck disk slows reads without stopping them.
const defaultCachePace = 20 * time.Millisecond

// defaultPaceAfter is the number of chunks a paced snapshot's reads load
// before they wait for room in the cache writers' queue: 16 MiB, which a
// scan crosses in its first tenth of a second, and a query that reads a
// few pages never does.
const defaultPaceAfter = 256

// cacheRead queues a chunk a read fetched for the cache: at once or not
// at all, or, if paced, waiting up to the reader's cachePace. A reference
// to it.buf, the buffer its data lies in (if not nil), goes with it.
func (r *Reader) cacheRead(it cacheItem, paced bool) {
	if !paced {
		r.enqueueCache(nil, it)
		return
	}
	if it.buf != nil {
		it.buf.ref() // for the second try: each try drops one
	}
	if r.enqueueCache(nil, it) {
		it.unref()
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, r.cachePace)
	defer cancel()
	r.enqueueCache(ctx.Done(), it)
}

// errNoStore is returned for a chunk that no store could be asked for.
var errNoStore = errors.New("no store to read it from")

// remoteChunk fetches chunk fp, of want bytes, from each remote store in
// turn, verified.
func (r *Reader) remoteChunk(ctx context.Context, fp manifest.Fingerprint, want int) ([]byte, error) {
	var errs []error
	for _, s := range r.remote {
		data, err := s.GetChunk(ctx, fp)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if len(data) != want {
			errs = append(errs, fmt.Errorf("%s: chunk %s is %d bytes, want %d: %w", s, fp, len(data), want, ErrCorrupt))
			continue
		}
		return data, nil
	}
	if len(errs) == 0 {
		return nil, errNoStore
	}
	return nil, errors.Join(errs...)
}

// cacheWriters is the number of goroutines that write the cache's files.
// The cold scan of a snapshot larger than memory goes at the writers'
// pace: when each chunk cost a file creation (100 to 200 µs on the
// benchmark machine under load), 4 writers took a cold 1 GiB scan from
// 10.2 to 8.6 s (median of 2, load average 8 on 2 cores), and kept its
// reads from outrunning them (no chunk copies). Packed chunks now go to
// their pack's slab (slabwrite.go): a creation per pack.
const cacheWriters = 4

// cacheWait queues a verified chunk for writing to the local cache, and
// waits for room in the queue if it is full (the prefetch of a snapshot
// that does not fit in memory: the queue, not the prefetch, sets the
// pace, and the files are written by one goroutine as for reads).
//
// A reference to buf, the buffer data lies in (if not nil), goes with
// the chunk.
func (r *Reader) cacheWait(ctx context.Context, it cacheItem) error {
	if !r.enqueueCache(ctx.Done(), it) {
		return ctx.Err()
	}
	return nil
}

// enqueueCache queues it for the cache writer; with a nil stop it gives
// up at once if the queue is full, otherwise it waits until stop. It
// reports whether the chunk was queued (or there is no cache). A chunk
// queued already is not queued again, and reported queued. The item's
// reference to its pack buffer is dropped when it leaves the queue, or at
// once if it is not queued.
func (r *Reader) enqueueCache(stop <-chan struct{}, it cacheItem) bool {
	fp := it.fp
	if r.cache == nil {
		it.unref()
		return true
	}
	r.startCacheWriters()
	r.cacheMu.Lock()
	if r.cacheClosed {
		r.cacheMu.Unlock()
		it.unref()
		return false
	}
	if it.seal {
		r.cachePending.Add(1)
		r.cacheMu.Unlock()
		select {
		case r.cacheQ <- it:
			return true
		case <-stop:
		case <-r.ctx.Done():
		}
		r.cachePending.Done()
		return false
	}
	if _, ok := r.queued[fp]; ok {
		r.cacheMu.Unlock()
		it.unref()
		return true
	}
	if r.queued == nil {
		r.queued = map[manifest.Fingerprint]struct{}{}
	}
	// Noted before it is in the queue, where the writer may take it at
	// once.
	r.queued[fp] = struct{}{}
	if it.packed {
		if r.packQueued == nil {
			r.packQueued = map[manifest.Fingerprint]int{}
		}
		r.packQueued[it.pack]++
	}
	r.cachePending.Add(1)
	r.cacheMu.Unlock()
	select {
	case r.cacheQ <- it:
		return true
	default:
	}
	if stop != nil {
		select {
		case r.cacheQ <- it:
			return true
		case <-stop:
		case <-r.ctx.Done():
		}
	}
	r.cacheDone(it)
	return false
}

// startCacheWriters starts the cache writers and the slab sealer, once.
func (r *Reader) startCacheWriters() {
	r.cacheOnce.Do(func() {
		r.cacheQ = make(chan cacheItem, r.cacheQLen)
		for range cacheWriters {
			r.goBG(func() {
				for {
					select {
					case it := <-r.cacheQ:
						r.writeCached(it)
					case <-r.ctx.Done():
						return
					}
				}
			})
		}
		r.goBG(r.sealIdle)
	})
}

// writeCached is a cache writer's work for it: write the chunk to its
// pack's slab, or to a file of its own, record it, and tell the snapshot
// it was fetched for; or, for a seal, seal the pack's slab.
func (r *Reader) writeCached(it cacheItem) {
	switch {
	case it.seal:
		r.sealWhenWritten(it.pack)
		r.cachePending.Done()
		return
	case it.packed:
		if r.slabAdd(it) {
			// Its fingerprint stays queued until the slab is
			// sealed: until then, no file holds it.
			r.leftQueue(it, true)
			return
		}
	}
	fi, err := r.cache.PutChunkFile(r.ctx, it.fp, it.data)
	if err != nil {
		r.log.Debug("snapshot: cannot cache a chunk", "chunk", it.fp.String(), "err", err)
	} else if fi != nil {
		r.written.noteFile(it.fp, fi) // it.data was verified
		if st, ok := stampOf(fi); ok && it.s != nil {
			it.s.noteFile(it.i, st)
		}
	}
	r.cacheDone(it)
}

// cacheDone records that chunk it left the cache writer's queue: written,
// or given up.
func (r *Reader) cacheDone(it cacheItem) { r.leftQueue(it, false) }

// leftQueue records that chunk it left the cache writer's queue, its
// fingerprint still counted as queued if keepQueued (added to a slab not
// sealed yet), lets go of its data, and seals its pack's slab if it was
// the last of the pack's chunks queued and the prefetch asked for it.
func (r *Reader) leftQueue(it cacheItem, keepQueued bool) {
	r.cacheMu.Lock()
	if !keepQueued {
		delete(r.queued, it.fp)
	}
	seal := r.leftQueueLocked(it)
	r.cacheMu.Unlock()
	it.unref()
	if seal {
		r.sealPack(it.pack)
	}
	r.cachePending.Done()
}

// leftQueueLocked counts that it, if packed, left the queue, and reports
// whether its pack's slab is to be sealed now: the prefetch asked for it,
// and it was the last of the pack's chunks queued. Under cacheMu.
func (r *Reader) leftQueueLocked(it cacheItem) bool {
	if !it.packed {
		return false
	}
	n := r.packQueued[it.pack] - 1
	if n > 0 {
		r.packQueued[it.pack] = n
		return false
	}
	delete(r.packQueued, it.pack)
	if r.sealDue[it.pack] {
		delete(r.sealDue, it.pack)
		return true
	}
	return false
}

// sealWhenWritten seals pack's slab once the chunks of it queued now are
// written: at once if there are none.
func (r *Reader) sealWhenWritten(pack manifest.Fingerprint) {
	r.cacheMu.Lock()
	if r.packQueued[pack] > 0 {
		if r.sealDue == nil {
			r.sealDue = map[manifest.Fingerprint]bool{}
		}
		r.sealDue[pack] = true
		r.cacheMu.Unlock()
		return
	}
	r.cacheMu.Unlock()
	r.sealPack(pack)
}

// isQueued reports whether chunk fp waits in the cache writer's queue.
func (r *Reader) isQueued(fp manifest.Fingerprint) bool {
	r.cacheMu.Lock()
	defer r.cacheMu.Unlock()
	_, ok := r.queued[fp]
	return ok
}

// A cacheItem is a verified chunk for the cache writers, and the chunk
// of a snapshot it was fetched for, if any, which learns of the file; or
// the order to seal a pack's slab.
type cacheItem struct {
	fp     manifest.Fingerprint
	data   []byte
	buf    bufRef // the buffer data lies in, with a reference; or nil
	s      *Snapshot
	i      int
	pack   manifest.Fingerprint // the pack it came from, if packed
	packed bool                 // written to pack's slab
	seal   bool                 // not a chunk: seal pack's slab
}

// unref drops the item's reference to its pack buffer, if it has one.
func (it cacheItem) unref() {
	if it.buf != nil {
		it.buf.unref()
	}
}

// loadCached returns the want bytes of chunk fp from the local cache,
// verified: from the slab of the pack ref names, if ref is not nil and
// the slab holds it, otherwise from the chunk's own file (which the
// uploader writes, and older versions wrote for every chunk). It also
// returns the path of the file it tried last, for the caller to delete if
// it is damaged.
//
// The chunk is mapped when nobody but this process's user can change
// the file afterwards (LocalCache.OpenChunk, OpenPacked), so that
// processes share the page cache; otherwise read, verified, and copied,
// so that a file another user rewrites or truncates later changes
// nothing, and cannot fault a reader (SIGBUS).
//
// A mappable file that this process wrote itself, from bytes it had
// verified, and that is still the same file (device and inode), with the
// same size and change time, is not hashed again: its bytes are the
// verified ones. The change time moves with every write, truncation or
// chmod (it cannot be set back by anyone but root), and such a file can
// be changed only by its owner, this process's user, who could as well
// change it after it is mapped and verified: hashing it again at each
// map would not add to what "mappable" already trusts. A file from
// another process, or one changed since, is hashed as before.
//
// The cache evicts the least recently used files by mtime: a read here
// is a use, recorded unless the file's mtime is less than a minute old
// (a chunk read a thousand times a second costs one touch a minute).
func (r *Reader) loadCached(ctx context.Context, fp manifest.Fingerprint, want int, ref *manifest.PackRef) (loaded, string, error) {
	if ref != nil {
		f, st, off, n, mappable, err := r.cache.OpenPacked(ref.ID, fp)
		if err == nil {
			l, err := r.loadCachedFile(ctx, fp, want, f, st, off, n, cache.SlabKey(ref.ID), mappable)
			return l, f.Name(), err
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return loaded{}, r.cache.SlabPath(ref.ID), err
		}
	}
	f, st, mappable, err := r.cache.OpenChunk(fp)
	if err != nil {
		return loaded{}, r.cache.Path(fp), err
	}
	l, err := r.loadCachedFile(ctx, fp, want, f, st, 0, int(min(st.Size(), manifest.ChunkSize+1)), 0, mappable)
	return l, f.Name(), err
}

// loadCachedFile is loadCached's work on f, the open cache file (status
// st), whose n bytes at off are said to be chunk fp, of want bytes; slab
// is the slab's key, or 0 for a chunk's own file. It closes f.
func (r *Reader) loadCachedFile(ctx context.Context, fp manifest.Fingerprint, want int, f *os.File, st fs.FileInfo, off int64, n int, slab uint64, mappable bool) (loaded, error) {
	defer f.Close()
	p := f.Name()
	if n != want {
		return loaded{}, fmt.Errorf("%s holds %d bytes for chunk %s, want %d: %w", p, n, fp, want, ErrCorrupt)
	}
	stamp, _ := stampOf(st)
	stamp.Slab, stamp.Off = slab, off
	if !mappable {
		data, err := readAllVerified(io.NewSectionReader(f, off, int64(want)), p, fp, want)
		if err != nil {
			return loaded{}, err
		}
		r.touch(fp, stamp, st, f, false)
		return r.slabs.copy(data)
	}
	// Mapped with MmapPtr, not syscall.Mmap, which keeps a table of its
	// mappings and unmaps only whole ones: unmapFiles unmaps runs of
	// them. A slab's chunks start on page boundaries (SlabSlot).
	ptr, err := unix.MmapPtr(int(f.Fd()), off, nil, uintptr(want), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return loaded{}, fmt.Errorf("map %s: %w", p, err)
	}
	b := unsafe.Slice((*byte)(ptr), want)
	free := func() { _ = unix.MunmapPtr(ptr, uintptr(want)) }
	if !r.written.same(fp, stamp) {
		if manifest.Sum(b) != fp {
			free()
			return loaded{}, fmt.Errorf("%s does not match its fingerprint: %w", p, ErrCorrupt)
		}
		// Verified now, as if this process had written it: mapped
		// again, or read by the VFS (Binding.OnFile), it is not hashed
		// again while it is unchanged.
		r.written.note(fp, stamp)
	}
	stamp = r.touch(fp, stamp, st, f, true)
	return loaded{b: b, free: free, file: true, stamp: stamp}, nil
}

// touchAge is how old a cache file's mtime may be before a read refreshes
// it.
const touchAge = time.Minute

// touch refreshes the mtime of chunk fp's cache file, f (status st,
// stamp), if it is older than touchAge, and returns the chunk's stamp
// after it. If the file was known to hold the verified bytes (known), its
// new stamp is recorded.
func (r *Reader) touch(fp manifest.Fingerprint, stamp FileStamp, st fs.FileInfo, f *os.File, known bool) FileStamp {
	if time.Since(st.ModTime()) < touchAge {
		return stamp
	}
	_ = r.cache.TouchFile(f.Name())
	if known {
		if now, err := f.Stat(); err == nil && now.Size() == st.Size() {
			if cur, ok := stampOf(now); ok {
				cur.Slab, cur.Off = stamp.Slab, stamp.Off
				r.written.note(fp, cur)
				return cur
			}
		}
	}
	return stamp
}

// writtenFiles remembers the cache files this process wrote from verified
// bytes, by fingerprint: their device, inode, size and change time. It
// holds at most max entries (a fixed few MiB): past that it forgets
// arbitrary ones, whose files are then hashed when mapped.
type writtenFiles struct {
	mu    sync.Mutex
	max   int
	files map[manifest.Fingerprint]FileStamp
}

// A FileStamp is what identifies a cache file and its state: its device,
// inode, size and change time (ns). Any write, truncation, chmod or
// replacement of the file changes it (except one by the owner within the
// same clock tick as the stamp was taken).
//
// A chunk in a slab (store/cache's SlabWriter) has its slab's stamp, and
// the slab's key and the chunk's offset in it; Slab is 0 for a chunk in
// a file of its own.
type FileStamp struct {
	Dev, Ino uint64
	Size     int64 // the file's
	Ctime    int64
	Slab     uint64 // the slab's key (cache.SlabKey), or 0
	Off      int64  // the chunk's offset in the slab
}

func stampOf(fi fs.FileInfo) (FileStamp, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return FileStamp{}, false
	}
	ct := statCtim(st)
	return FileStamp{Dev: uint64(st.Dev), Ino: st.Ino, Size: st.Size, Ctime: ct.Nano()}, true
}

// noteFile records that the file fi holds the verified bytes of chunk
// fp, alone.
func (w *writtenFiles) noteFile(fp manifest.Fingerprint, fi fs.FileInfo) {
	if s, ok := stampOf(fi); ok {
		w.note(fp, s)
	}
}

// note records that the file and place s holds the verified bytes of
// chunk fp.
func (w *writtenFiles) note(fp manifest.Fingerprint, s FileStamp) {
	if w.max <= 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.files == nil {
		w.files = map[manifest.Fingerprint]FileStamp{}
	}
	if _, had := w.files[fp]; !had && len(w.files) >= w.max {
		for k := range w.files {
			delete(w.files, k)
			break
		}
	}
	w.files[fp] = s
}

// clear forgets every file recorded.
func (w *writtenFiles) clear() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.files = nil
}

// get returns the stamp recorded for chunk fp's file, if any.
func (w *writtenFiles) get(fp manifest.Fingerprint) (FileStamp, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	st, ok := w.files[fp]
	return st, ok
}

// same reports whether s is the file and place recorded for chunk fp,
// unchanged.
func (w *writtenFiles) same(fp manifest.Fingerprint, s FileStamp) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	had, ok := w.files[fp]
	return ok && had == s
}

// readVerified reads the file at p, without blocking in open(2) and only
// if it is a regular file (or a symbolic link to one: read-only
// directories are someone else's), and checks that it holds the want
// bytes of chunk fp.
func readVerified(p string, fp manifest.Fingerprint, want int) ([]byte, error) {
	f, _, err := fsutil.OpenFollow(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readAllVerified(f, p, fp, want)
}

// readAllVerified reads f, the file at p, and checks that it holds the
// want bytes of chunk fp, no more.
func readAllVerified(f io.Reader, p string, fp manifest.Fingerprint, want int) ([]byte, error) {
	data := make([]byte, want+1)
	n, err := io.ReadFull(f, data)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, err
	}
	if n != want || manifest.Sum(data[:n]) != fp {
		return nil, fmt.Errorf("%s does not hold chunk %s: %w", p, fp, ErrCorrupt)
	}
	return data[:n], nil
}
