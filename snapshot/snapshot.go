package snapshot

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boule-vfs/boule/manifest"
)

// Snapshot is one manifest of a replica, as this process reads it: the
// chunks it has mapped so far. Connections share it.
//
// Opening a snapshot allocates nothing per chunk: the chunks' mappings
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

	mu         sync.Mutex
	refs       int
	closed     bool
	maps       mapTable // by chunk index
	nMapped    int
	cancel     context.CancelFunc // stops the prefetch
	prefetched chan struct{}      // closed when the prefetch ends; nil without one
	onChunk    func(i int, b []byte)
	onClose    func()
}

func newSnapshot(rp *Replica, m *manifest.Manifest, sum manifest.Fingerprint, from int, fetched time.Time) *Snapshot {
	s := &Snapshot{M: m, rep: rp, sum: sum, from: from, maps: newMapTable(len(m.Chunks))}
	s.fetched.Store(fetched.UnixNano())
	return s
}

// packIndex returns the index of M's pack table, building it on first
// use: four bytes per chunk, and only for a manifest with packs.
func (s *Snapshot) packIndex() *manifest.PackIndex {
	s.packsOnce.Do(func() { s.packs = s.M.PackIndex() })
	return s.packs
}

// mapPage is the number of chunks whose mappings one page of a mapTable
// holds (32 KiB of pointers).
const mapPage = 4096

// A mapTable holds a snapshot's chunk mappings by chunk index, in pages
// allocated when one of their chunks is first mapped: the table of a
// snapshot of 2^26 chunks starts at 384 KiB rather than 512 MiB.
type mapTable struct {
	pages [][]*mapping // each nil or mapPage long
}

func newMapTable(n int) mapTable {
	return mapTable{pages: make([][]*mapping, (n+mapPage-1)/mapPage)}
}

func (t *mapTable) get(i int) *mapping {
	if p := t.pages[i/mapPage]; p != nil {
		return p[i%mapPage]
	}
	return nil
}

func (t *mapTable) set(i int, m *mapping) {
	p := &t.pages[i/mapPage]
	if *p == nil {
		*p = make([]*mapping, mapPage)
	}
	(*p)[i%mapPage] = m
}

// each calls f with every mapped chunk, by increasing index.
func (t *mapTable) each(f func(i int, m *mapping)) {
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

// Mapped reports how many of the snapshot's chunks are mapped.
func (s *Snapshot) Mapped() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nMapped
}

// Bind attaches the VFS's state to s. onChunk is called with each chunk as
// it is mapped, under the snapshot's lock, and at once for those mapped
// already; onClose is called when the last reference is released, after
// which onChunk is never called again. A second Bind replaces the first.
func (s *Snapshot) Bind(onChunk func(i int, b []byte), onClose func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onChunk, s.onClose = onChunk, onClose
	s.maps.each(func(i int, m *mapping) { onChunk(i, m.b) })
}

func (s *Snapshot) ref() {
	s.mu.Lock()
	s.refs++
	s.mu.Unlock()
}

// unref drops a reference; the last one unmaps the snapshot's chunks.
func (s *Snapshot) unref() {
	s.mu.Lock()
	s.refs--
	if s.refs > 0 {
		s.mu.Unlock()
		return
	}
	s.closed = true // from now on, Chunk never calls onChunk
	if s.cancel != nil {
		s.cancel()
	}
	onClose := s.onClose
	s.onChunk, s.onClose = nil, nil
	maps := s.maps
	s.maps = mapTable{}
	s.mu.Unlock()
	if onClose != nil {
		onClose()
	}
	maps.each(func(i int, _ *mapping) { s.rep.r.chunks.release(s.M.Chunks[i]) })
}

// Chunk returns chunk i, mapped read-only; the bytes stay valid while the
// snapshot is referenced. It fetches the chunk if needed, waiting at most
// the reader's chunk timeout.
func (s *Snapshot) Chunk(ctx context.Context, i int) ([]byte, error) {
	return s.chunk(ctx, i, false)
}

// chunk is Chunk; soft marks a prefetch, which stops short of the
// process's mapped-chunk limit.
func (s *Snapshot) chunk(ctx context.Context, i int, soft bool) ([]byte, error) {
	if i < 0 || i >= len(s.M.Chunks) {
		return nil, fmt.Errorf("snapshot: chunk %d out of range [0, %d)", i, len(s.M.Chunks))
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errClosed
	}
	if m := s.maps.get(i); m != nil {
		s.mu.Unlock()
		return m.b, nil
	}
	s.mu.Unlock()

	r := s.rep.r
	fp := s.M.Chunks[i]
	want := manifest.ChunkLen(s.M.Size, i)
	wait, cancel := context.WithTimeout(ctx, r.chunkTO)
	defer cancel()
	m, err := r.chunks.acquire(wait, r.goBG, fp, soft, func() ([]byte, func(), error) {
		if data, ok := s.M.Inline[uint32(i)]; ok {
			return r.slabs.copy(data) // verified by manifest.Decode
		}
		// Other snapshots and connections may wait for this load: it
		// must not end when the caller that started it gives up.
		load, cancel := context.WithTimeout(r.ctx, r.chunkTO)
		defer cancel()
		if ref, ok := s.packIndex().Ref(i); ok {
			return r.loadChunk(load, fp, want, &ref)
		}
		return r.loadChunk(load, fp, want, nil)
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot: %s: chunk %d: %w", s.rep.id, i, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		r.chunks.release(fp)
		return nil, errClosed
	}
	if had := s.maps.get(i); had != nil {
		r.chunks.release(fp) // mapped meanwhile: keep one reference
		return had.b, nil
	}
	s.maps.set(i, m)
	s.nMapped++
	if s.onChunk != nil {
		s.onChunk(i, m.b)
	}
	return m.b, nil
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
		_, err := s.chunk(ctx, i, false)
		return err
	})
}

// errPrefetchFull stops a prefetch that would crowd out reads.
var errPrefetchFull = errors.New("snapshot: mapped-chunk limit nearly reached")

// each runs work(ctx, j) for j from 0 to count-1 with n workers, each
// taking the next j in turn, and returns the first error. It allocates
// nothing per j.
func (s *Snapshot) each(ctx context.Context, count, n int, work func(ctx context.Context, j int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				j := int(next.Add(1)) - 1
				if j >= count || ctx.Err() != nil {
					return
				}
				if err := work(ctx, j); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	return ctx.Err()
}

// prefetchChunk is the prefetch's work for chunk i: map it, or, if it is
// the first chunk of a pack, map every chunk of the pack (not only a run:
// a pack whose other chunks were replaced since is fetched once), holding
// a slot of packSlots meanwhile, and then drop the pack from the reader's
// memory: its chunks are mapped. The other chunks of a pack are skipped.
func (s *Snapshot) prefetchChunk(ctx context.Context, i int, packSlots chan struct{}) error {
	k, packed := s.packIndex().Pack(i)
	if !packed {
		_, err := s.chunk(ctx, i, true)
		return err
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
	for _, mb := range p.Members {
		if _, err := s.chunk(ctx, int(mb.Index), true); err != nil {
			return err
		}
	}
	s.rep.r.packs.drop(p.ID)
	return nil
}

// startPrefetch maps every chunk in the background, in file order (a scan
// then finds them ready), with the reader's prefetch concurrency, through
// the same rate-limited stores as reads; a pack is mapped whole when its
// first chunk's turn comes, so that the workers fetch different packs at
// once rather than wait on one. It stops when the snapshot is released.
// Only the default loading policy prefetches.
func (s *Snapshot) startPrefetch() {
	r := s.rep.r
	if r.prefetch < 0 || (r.policy.Kind != "" && r.policy.Kind != "default") || len(s.M.Chunks) == 0 {
		return
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
		err := s.each(ctx, len(s.M.Chunks), r.prefetch, func(ctx context.Context, i int) error {
			return s.prefetchChunk(ctx, i, packSlots)
		})
		switch {
		case errors.Is(err, errPrefetchFull):
			r.log.Warn("snapshot: prefetch stopped at 90% of the process's mapped-chunk limit; the rest is fetched when read",
				"replica", s.rep.id, "limit", r.chunks.limit)
		case err != nil && ctx.Err() == nil:
			r.log.Warn("snapshot: prefetch stopped; chunks will be fetched when read", "replica", s.rep.id, "err", err)
		}
	})
	if !started { // the reader is closing
		cancel()
		close(done)
	}
}
