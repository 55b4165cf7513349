package snapshot

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boule-vfs/boule/internal/fanout"
	"github.com/boule-vfs/boule/manifest"
)

// Snapshot is one manifest of a replica, as this process reads it: the
// chunks it holds now (the reader's pool lets the least recently read go
// past its bounds). Connections share it.
//
// Opening a snapshot allocates nothing per chunk: the chunks' entries
// are kept in pages allocated as chunks get mapped, and the index of the
// pack table is built when a chunk is first looked up in it.
type Snapshot struct {
	// M is the manifest. Callers must not modify it.
	M    *manifest.Manifest
	rep  *Replica
	sum  manifest.Fingerprint // M's checksum: equal for equal encodings
	gen  uint64
	from int // index of the store M came from; -1 for a manifest file

	packsOnce sync.Once
	packs     *manifest.PackIndex // built by packIndex

	fetched atomic.Int64 // Unix ns when the newest fetch that returned M started
	paced   atomic.Bool  // prefetched into the cache's files: scans wait for room in its queue
	loads   atomic.Int64 // chunks loaded for reads (see pacedLoad)

	used atomic.Pointer[func(i int) bool] // Binding.Used

	mu         sync.Mutex
	refs       int
	closed     bool
	maps       mapTable // by chunk index
	nMapped    int
	cancel     context.CancelFunc // stops the prefetch
	prefetched chan struct{}      // closed when the prefetch ends; nil without one
	bound      Binding
}

// Binding is what the VFS attaches to a snapshot (Bind): its view of the
// chunks held.
type Binding struct {
	// OnChunk is called with each chunk as it is mapped, under the
	// snapshot's lock, and at once for those held already.
	OnChunk func(i int, b []byte)
	// OnEvict is called, under the snapshot's lock, when chunk i is let
	// go: from then on, reads must not start on the bytes OnChunk gave.
	// The reader waits (Options.Quiesce) before it unmaps them.
	OnEvict func(i int)
	// Used reports whether chunk i was read since the last call, and
	// clears that; it may be called at any time before OnClose.
	Used func(i int) bool
	// OnFile, if set, is called under the snapshot's lock when the
	// reader knows that chunk i's verified bytes are in the cache file
	// stamped st (at CacheFiles' Path): it mapped the chunk from there,
	// or wrote the file itself. As long as a file opened at that path
	// has that stamp (and is its user's, with no write bit), it holds
	// chunk i: the VFS may read a chunk that is not held from there,
	// without asking the reader again.
	OnFile func(i int, st FileStamp)
	// OnClose is called when the last reference is released, after
	// which no other function is called.
	OnClose func()
}

// CacheFiles returns the directory and the number of shards of the chunk
// cache that Binding.OnFile speaks of (cache.Store.Path), or "" and 0
// when the reader has none.
func (s *Snapshot) CacheFiles() (dir string, shards int) {
	if c := s.rep.r.cache; c != nil {
		return c.Dir(), c.Shards()
	}
	return "", 0
}

// noteFile tells the VFS, if the snapshot is still in use, that chunk i's
// verified bytes are in the cache file st (Binding.OnFile).
//
// A snapshot larger than the memory bounds (paced) then lets go of its
// copy of the chunk, if it holds one: the VFS reads the chunk from the
// file from now on. Its scans, which the VFS serves from the files
// without a call into Go, overtake the prefetch and load chunks from
// their packs as copies; kept until the pool was full, they raised a
// cold 4 GiB scan's peak RssAnon from about 130 to 210 MiB.
func (s *Snapshot) noteFile(i int, st FileStamp) {
	s.mu.Lock()
	if s.closed || s.bound.OnFile == nil {
		s.mu.Unlock()
		return
	}
	s.bound.OnFile(i, st)
	e := s.maps.get(i)
	s.mu.Unlock()
	if e == nil || !e.m.anon || !s.paced.Load() {
		return
	}
	p := &s.rep.r.pool
	if !p.take(e) {
		return // evicted or released meanwhile
	}
	s.unmapEntry(e)
	if p.quiesce != nil {
		p.quiesce()
	}
	p.release([]*entry{e})
}

func newSnapshot(rp *Replica, m *manifest.Manifest, sum manifest.Fingerprint, from int, fetched time.Time) *Snapshot {
	s := &Snapshot{M: m, rep: rp, sum: sum, from: from, maps: newMapTable(len(m.Chunks))}
	s.fetched.Store(fetched.UnixNano())
	return s
}

// packIndex returns the index of M's pack table, building it on first
// use: four bytes per chunk, and only for a manifest with packs, in a
// file from fileMemMin bytes.
func (s *Snapshot) packIndex() *manifest.PackIndex {
	s.packsOnce.Do(func() {
		// In a file if large, as the manifest's lists (filemem.go).
		bufs := &manifestBufs{dir: s.rep.r.tempDir()}
		x, err := s.M.PackIndexIn(bufs.lists())
		if err != nil {
			bufs.done()
			s.rep.r.log.Warn("snapshot: the pack index goes in memory", "replica", s.rep.id, "err", err)
			x = s.M.PackIndex()
		}
		keepAll(bufs, x)
		s.packs = x
	})
	return s.packs
}

// mapPage is the number of chunks whose mappings one page of a mapTable
// holds (32 KiB of pointers).
const mapPage = 4096

// A mapTable holds a snapshot's chunks held, by chunk index, in pages
// allocated when one of their chunks is first mapped: the table of a
// snapshot of 2^26 chunks starts at 384 KiB rather than 512 MiB.
type mapTable struct {
	pages [][]*entry // each nil or mapPage long
}

func newMapTable(n int) mapTable {
	return mapTable{pages: make([][]*entry, (n+mapPage-1)/mapPage)}
}

// get returns chunk i's entry, or nil: also once the table was let go
// (a released snapshot's is empty), for prefetches still finishing.
func (t *mapTable) get(i int) *entry {
	if i/mapPage >= len(t.pages) {
		return nil
	}
	if p := t.pages[i/mapPage]; p != nil {
		return p[i%mapPage]
	}
	return nil
}

func (t *mapTable) set(i int, m *entry) {
	p := &t.pages[i/mapPage]
	if *p == nil {
		if m == nil {
			return
		}
		*p = make([]*entry, mapPage)
	}
	(*p)[i%mapPage] = m
}

// each calls f with every chunk held, by increasing index.
func (t *mapTable) each(f func(i int, m *entry)) {
	for k, p := range t.pages {
		for j, m := range p {
			if m != nil {
				f(k*mapPage+j, m)
			}
		}
	}
}

// Gen is the snapshot's generation in its replica: later snapshots have
// larger ones.
func (s *Snapshot) Gen() uint64 { return s.gen }

// Fetched is when the fetch that last returned this snapshot's manifest
// started: the data was current at least until then.
func (s *Snapshot) Fetched() time.Time { return time.Unix(0, s.fetched.Load()) }

func (s *Snapshot) setFetched(t time.Time) {
	ns := t.UnixNano()
	for {
		old := s.fetched.Load()
		if ns <= old || s.fetched.CompareAndSwap(old, ns) {
			return
		}
	}
}

// Mapped reports how many of the snapshot's chunks it holds.
func (s *Snapshot) Mapped() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nMapped
}

// Bind attaches the VFS's state to s: OnChunk is called at once for the
// chunks held already. A second Bind replaces the first.
func (s *Snapshot) Bind(b Binding) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bound = b
	if b.Used != nil {
		s.used.Store(&b.Used)
	} else {
		s.used.Store(nil)
	}
	if b.OnChunk != nil {
		s.maps.each(func(i int, e *entry) { b.OnChunk(i, e.m.b) })
	}
}

// usedByC reports, and clears, whether the VFS read chunk i since the
// last call. The pool calls it only for entries it holds, which a
// released snapshot has none of (unref forgets them before OnClose).
func (s *Snapshot) usedByC(i int) bool {
	if f := s.used.Load(); f != nil {
		return (*f)(i)
	}
	return false
}

// unmapEntry takes e, which the pool evicted, out of the snapshot's table
// and view, if it is still there.
func (s *Snapshot) unmapEntry(e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.maps.get(e.i) != e {
		return
	}
	s.maps.set(e.i, nil)
	s.nMapped--
	if s.bound.OnEvict != nil {
		s.bound.OnEvict(e.i)
	}
}

func (s *Snapshot) ref() {
	s.mu.Lock()
	s.refs++
	s.mu.Unlock()
}

// unref drops a reference; the last one lets go of the snapshot's chunks.
func (s *Snapshot) unref() {
	s.mu.Lock()
	s.refs--
	if s.refs > 0 {
		s.mu.Unlock()
		return
	}
	s.closed = true // from now on, chunk never calls the binding
	if s.cancel != nil {
		s.cancel()
	}
	onClose := s.bound.OnClose
	s.bound = Binding{}
	maps := s.maps
	s.maps = mapTable{}
	s.mu.Unlock()
	var held []*entry
	maps.each(func(_ int, e *entry) { held = append(held, e) })
	// Forgotten by the pool before the view goes: the pool's clock
	// asks the view about the entries it holds.
	held = s.rep.r.pool.forget(held)
	s.used.Store(nil)
	if onClose != nil {
		onClose()
	}
	s.rep.r.pool.release(held)
	s.rep.r.retire(s.M)
}

// Chunk returns chunk i, mapped read-only. The bytes stay valid until the
// reader lets the chunk go (past its memory bounds) or the snapshot is
// released: for tests; ReadAt copies safely. It fetches the chunk if
// needed: the load gives up after the reader's chunk timeout.
func (s *Snapshot) Chunk(ctx context.Context, i int) ([]byte, error) {
	return s.chunk(ctx, i)
}

// Load makes sure chunk i is held, fetching it if needed.
func (s *Snapshot) Load(ctx context.Context, i int) error {
	_, err := s.chunk(ctx, i)
	return err
}

// ReadAt copies into dst the bytes of the snapshot's database at off,
// which must lie within one chunk.
func (s *Snapshot) ReadAt(ctx context.Context, dst []byte, off int64) error {
	i := int(off / manifest.ChunkSize)
	co := int(off % manifest.ChunkSize)
	for range 8 { // a chunk evicted between its load and the copy is loaded again
		if _, err := s.chunk(ctx, i); err != nil {
			return err
		}
		s.mu.Lock()
		if e := s.maps.get(i); e != nil {
			defer s.mu.Unlock()
			if co+len(dst) > len(e.m.b) {
				return fmt.Errorf("snapshot: read of %d bytes at %d crosses the end of chunk %d", len(dst), off, i)
			}
			e.used.Store(true)
			copy(dst, e.m.b[co:])
			return nil
		}
		s.mu.Unlock()
	}
	return fmt.Errorf("snapshot: chunk %d evicted as soon as it was loaded; the memory bounds are too small", i)
}

// chunk maps chunk i, if the snapshot does not hold it, and returns it.
func (s *Snapshot) chunk(ctx context.Context, i int) ([]byte, error) {
	return s.chunkFor(ctx, i, false)
}

// chunkFor is chunk, for the prefetch if prefetch is set: then a pack it
// fetches leaves room to reads (packBufs).
func (s *Snapshot) chunkFor(ctx context.Context, i int, prefetch bool) ([]byte, error) {
	if i < 0 || i >= len(s.M.Chunks) {
		return nil, fmt.Errorf("snapshot: chunk %d out of range [0, %d)", i, len(s.M.Chunks))
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errClosed
	}
	if e := s.maps.get(i); e != nil {
		e.used.Store(true)
		s.mu.Unlock()
		return e.m.b, nil
	}
	s.mu.Unlock()

	r := s.rep.r
	fp := s.M.Chunks[i]
	want := manifest.ChunkLen(s.M.Size, i)
	// The load bounds itself by the chunk timeout; the wait for it is a
	// backstop a quarter longer, so that a load that times out (a store
	// that never answers) reports its own error, which names the store,
	// the object and the last attempt's cause, rather than the wait
	// giving up a moment before with a bare "context deadline exceeded".
	wait, cancel := context.WithTimeout(ctx, r.chunkTO+r.chunkTO/4)
	defer cancel()
	// A chunk inline in the manifest, or in the chunk cache's files, is
	// mapped by this goroutine (see chunkMaps.acquire); any other, or a
	// cache file that fails, is loaded on its own.
	local := func() (loaded, error) {
		if data, ok := s.M.Inline[uint32(i)]; ok {
			return r.slabs.copy(data) // verified by manifest.Decode
		}
		if r.cache == nil || r.ctx.Err() != nil {
			return loaded{}, errNotLocal
		}
		var ref *manifest.PackRef
		if pr, ok := s.packIndex().Ref(i); ok {
			ref = &pr
		}
		l, _, err := r.loadCached(r.ctx, fp, want, ref)
		if err == nil && s.paced.Load() {
			s.loads.Add(1) // a read's load, as pacedLoad counts them
		}
		return l, err
	}
	m, err := r.chunks.acquire(wait, r.goBG, fp, local, func() (loaded, error) {
		if data, ok := s.M.Inline[uint32(i)]; ok {
			return r.slabs.copy(data) // verified by manifest.Decode
		}
		// Other snapshots and connections may wait for this load: it
		// must not end when the caller that started it gives up.
		load, cancel := context.WithTimeout(r.ctx, r.chunkTO)
		defer cancel()
		paced := s.pacedLoad()
		if ref, ok := s.packIndex().Ref(i); ok {
			return r.loadChunk(load, fp, want, &ref, paced, prefetch, s, i)
		}
		return r.loadChunk(load, fp, want, nil, paced, prefetch, s, i)
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot: %s: chunk %d: %w", s.rep.id, i, err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		r.chunks.release(fp, m)
		return nil, errClosed
	}
	if had := s.maps.get(i); had != nil {
		s.mu.Unlock()
		r.chunks.release(fp, m) // held meanwhile: keep one reference
		return had.m.b, nil
	}
	e := &entry{s: s, i: i, m: m}
	s.maps.set(i, e)
	s.nMapped++
	if s.bound.OnChunk != nil {
		s.bound.OnChunk(i, m.b)
	}
	if s.bound.OnFile != nil {
		if m.file {
			s.bound.OnFile(i, m.stamp)
		} else if st, ok := r.written.get(fp); ok {
			// A copy (a chunk whose bytes another chunk of the
			// same fingerprint loaded) whose file this process
			// wrote: the VFS checks that it is still that file.
			s.bound.OnFile(i, st)
		}
	}
	over := r.pool.add(e) // under s.mu: unref finds e in maps or not at all
	s.mu.Unlock()
	if over {
		r.pool.evict()
	}
	return m.b, nil
}

// errNotLocal: the chunk is neither inline nor in the cache's files.
var errNotLocal = errors.New("snapshot: chunk not local")

// pacedLoad counts a load for a read, and reports whether it waits for
// room in the cache writers' queue (Reader.loadChunk): for a snapshot
// prefetched into the cache's files, once its reads have loaded
// Reader.paceAfter chunks, as a scan does. The first reads, those of a
// first query, do not wait behind the prefetch's chunks.
func (s *Snapshot) pacedLoad() bool {
	return s.paced.Load() && s.loads.Add(1) > s.rep.r.paceAfter
}

// load maps, before an open or refresh returns, the chunks that the
// loading policy wants up front: none if k is 0, otherwise the first k,
// and the last one too when k is less than all of them.
func (s *Snapshot) load(ctx context.Context, k int) error {
	n := len(s.M.Chunks)
	if k <= 0 {
		return nil
	}
	count := k
	if k < n {
		count++
	}
	return s.each(ctx, count, max(s.rep.r.prefetch, 1), func(ctx context.Context, j int) error {
		i := j
		if j == k {
			i = n - 1
		}
		_, err := s.chunk(ctx, i)
		return err
	})
}

// each runs work(ctx, j) for j from 0 to count-1 with n workers, each
// taking the next j in turn, and returns the first error. It allocates
// nothing per j.
func (s *Snapshot) each(ctx context.Context, count, n int, work func(ctx context.Context, j int) error) error {
	errs := make(chan error, n)
	fanout.Each(n, count, func(j int) bool {
		if ctx.Err() != nil {
			return false
		}
		if err := work(ctx, j); err != nil {
			errs <- err
			return false
		}
		return true
	})
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	return ctx.Err()
}

// prefetchChunk is the prefetch's work for chunk i: map it, or, if it is
// the first chunk of a pack, map every chunk of the pack (not only a run:
// a pack whose other chunks were replaced since is fetched once), holding
// a slot of packSlots meanwhile, and then let go of the pack it fetched
// (packCache.release): its chunks are mapped. A pack kept for reads stays
// kept. The other chunks of a pack are skipped.
// With warm set, the chunks go to the chunk cache's files instead of
// memory (see startPrefetch).
func (s *Snapshot) prefetchChunk(ctx context.Context, i int, packSlots chan struct{}, warm bool) error {
	// A pack whose slab is not in the cache when the prefetch comes to
	// it has none of its chunks there (or a read's, just sealed, which
	// its writer then drops): its chunks are not looked for one by one.
	noSlab := false
	get := func(i int) error {
		if warm {
			return s.warm(ctx, i, noSlab)
		}
		_, err := s.chunkFor(ctx, i, true)
		return err
	}
	k, packed := s.packIndex().Pack(i)
	if !packed {
		return get(i)
	}
	p := &s.M.Packs[k]
	if int(p.Members[0].Index) != i {
		return nil
	}
	select {
	case packSlots <- struct{}{}:
		defer func() { <-packSlots }()
	case <-ctx.Done():
		return ctx.Err()
	}
	defer s.rep.r.packs.release(p.ID) // its chunks are mapped or queued, or the prefetch stops
	noSlab = warm && !s.rep.r.cache.HasSlab(p.ID)
	for _, mb := range p.Members {
		if err := get(int(mb.Index)); err != nil {
			return err
		}
	}
	if s.rep.r.cache != nil {
		// The pack's chunks are queued for its slab: seal it after
		// them.
		s.rep.r.enqueueCache(ctx.Done(), cacheItem{pack: p.ID, seal: true})
	}
	return nil
}

// warm puts chunk i in the chunk cache's files, fetching it unless it is
// there or held already, without holding it in memory. With noSlab, its
// pack's slab is known to be missing.
func (s *Snapshot) warm(ctx context.Context, i int, noSlab bool) error {
	r := s.rep.r
	if _, ok := s.M.Inline[uint32(i)]; ok {
		return nil
	}
	// A chunk held as a copy (read from a pack by a scan that overtook
	// the prefetch) is written all the same: the copy is let go soon,
	// and the next read of it would fetch it again.
	s.mu.Lock()
	e, closed := s.maps.get(i), s.closed
	mapped := e != nil && !e.m.anon
	s.mu.Unlock()
	if closed {
		return errClosed
	}
	fp := s.M.Chunks[i]
	if mapped || r.isQueued(fp) {
		return nil
	}
	ref, packed := s.packIndex().Ref(i)
	if (packed && !noSlab && r.cache.HasPacked(ref.ID, fp)) || r.cache.HasChunk(fp) {
		if st, ok := r.written.get(fp); ok {
			s.noteFile(i, st) // written for another chunk of the same bytes
		}
		return nil
	}
	want := manifest.ChunkLen(s.M.Size, i)
	load, cancel := context.WithTimeout(ctx, r.chunkTO)
	defer cancel()
	var data []byte
	var buf bufRef // the buffer data lies in, if any; its reference goes to the queue
	var err error
	if packed {
		data, buf, err = r.packedChunk(load, fp, want, ref, true)
	} else {
		data, err = r.remoteChunk(load, fp, want)
	}
	if err != nil {
		return fmt.Errorf("snapshot: %s: chunk %d: %w", s.rep.id, i, err)
	}
	return r.cacheWait(ctx, cacheItem{fp: fp, data: data, buf: buf, s: s, i: i, pack: ref.ID, packed: packed})
}

// startPrefetch fetches every chunk in the background, in file order (a
// scan then finds them ready), with the reader's prefetch concurrency,
// through the same rate-limited stores as reads; a pack is fetched whole
// when its first chunk's turn comes, so that the workers fetch different
// packs at once rather than wait on one. It stops when the snapshot is
// released. Only the default loading policy prefetches.
//
// A snapshot that fits in half of the reader's memory bounds is mapped
// whole: reads then never call into Go. A larger one would only evict
// its own chunks before they are read: its chunks are written to the
// chunk cache instead, up to three quarters of the cache's capacity, and
// mapped from there when read; without a cache, it is not prefetched.
func (s *Snapshot) startPrefetch() {
	r := s.rep.r
	if r.prefetch < 0 || (r.policy.Kind != "" && r.policy.Kind != "default") || len(s.M.Chunks) == 0 {
		return
	}
	count := len(s.M.Chunks)
	warm := count > r.pool.maxLive/2 || count > r.pool.maxAnon/2
	if warm {
		if r.cache == nil {
			return
		}
		count = min(count, int(r.cache.Capacity()*3/4))
		s.paced.Store(true)
	}
	ctx, cancel := context.WithCancel(r.ctx)
	done := make(chan struct{})
	s.mu.Lock()
	s.cancel = cancel
	s.prefetched = done
	s.mu.Unlock()
	// A pack is up to 64 chunks: a quarter as many packs as chunks in
	// flight keeps the store busy without queueing a read that waits,
	// such as an open's first query, behind megabytes of prefetch.
	packSlots := make(chan struct{}, max(2, r.prefetch/4))
	started := r.goBG(func() {
		defer close(done)
		defer cancel()
		err := s.each(ctx, count, r.prefetch, func(ctx context.Context, i int) error {
			return s.prefetchChunk(ctx, i, packSlots, warm)
		})
		if err != nil && ctx.Err() == nil {
			r.log.Warn("snapshot: prefetch stopped; chunks will be fetched when read", "replica", s.rep.id, "err", err)
		}
	})
	if !started { // the reader is closing
		cancel()
		close(done)
	}
}
