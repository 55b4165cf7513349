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
type Snapshot struct {
	// M is the manifest. Callers must not modify it.
	M     *manifest.Manifest
	rep   *Replica
	raw   []byte
	gen   uint64
	packs map[uint32]manifest.PackRef // M.PackRefs()
	from  int                         // index of the store M came from; -1 for a manifest file

	fetched atomic.Int64 // Unix ns when the newest fetch that returned M started

	mu         sync.Mutex
	refs       int
	closed     bool
	maps       []*mapping // by chunk index; nil until mapped
	nMapped    int
	cancel     context.CancelFunc // stops the prefetch
	prefetched chan struct{}      // closed when the prefetch ends; nil without one
	onChunk    func(i int, b []byte)
	onClose    func()
}

func newSnapshot(rp *Replica, m *manifest.Manifest, raw []byte, from int, fetched time.Time) *Snapshot {
	s := &Snapshot{M: m, rep: rp, raw: raw, from: from, maps: make([]*mapping, len(m.Chunks)), packs: m.PackRefs()}
	s.fetched.Store(fetched.UnixNano())
	return s
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
	for i, m := range s.maps {
		if m != nil {
			onChunk(i, m.b)
		}
	}
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
	s.maps = nil
	s.mu.Unlock()
	if onClose != nil {
		onClose()
	}
	for i, m := range maps {
		if m != nil {
			s.rep.r.chunks.release(s.M.Chunks[i])
		}
	}
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
	if m := s.maps[i]; m != nil {
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
		if ref, ok := s.packs[uint32(i)]; ok {
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
	if s.maps[i] != nil {
		r.chunks.release(fp) // mapped meanwhile: keep one reference
		return s.maps[i].b, nil
	}
	s.maps[i] = m
	s.nMapped++
	if s.onChunk != nil {
		s.onChunk(i, m.b)
	}
	return m.b, nil
}

// load maps the chunks idx before an open or refresh returns.
func (s *Snapshot) load(ctx context.Context, idx []int) error {
	if len(idx) == 0 {
		return nil
	}
	groups := make([]group, len(idx))
	for k, i := range idx {
		groups[k] = group{idx: []int{i}}
	}
	return s.each(ctx, groups, max(s.rep.r.prefetch, 1), nil, false)
}

// A group is chunks that a worker maps in turn: one chunk, or the run of
// chunks in one pack.
type group struct {
	idx    []int
	packed bool
	pack   manifest.Fingerprint
}

// errPrefetchFull stops a prefetch that would crowd out reads.
var errPrefetchFull = errors.New("snapshot: mapped-chunk limit nearly reached")

// each maps the chunks in groups with n workers, each taking a group at a
// time and its chunks in order, and returns the first error; soft marks
// a prefetch (see chunkMaps.acquire). A worker holds a slot of packSlots,
// if not nil, while it maps a packed group, and then drops the pack from
// the reader's memory: its chunks are mapped.
func (s *Snapshot) each(ctx context.Context, groups []group, n int, packSlots chan struct{}, soft bool) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(next.Add(1)) - 1
				if k >= len(groups) || ctx.Err() != nil {
					return
				}
				if err := s.mapGroup(ctx, groups[k], packSlots, soft); err != nil {
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

func (s *Snapshot) mapGroup(ctx context.Context, g group, packSlots chan struct{}, soft bool) error {
	if g.packed && packSlots != nil {
		select {
		case packSlots <- struct{}{}:
			defer func() { <-packSlots }()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, i := range g.idx {
		if _, err := s.chunk(ctx, i, soft); err != nil {
			return err
		}
	}
	if g.packed {
		s.rep.r.packs.drop(g.pack)
	}
	return nil
}

// startPrefetch maps every chunk in the background, in file order (a scan
// then finds them ready), with the reader's prefetch concurrency, through
// the same rate-limited stores as reads. It stops when the snapshot is
// released. Only the default loading policy prefetches.
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
	// A group is a chunk, or every chunk of one pack (not only a run: a
	// pack whose other chunks were replaced since is fetched once), in
	// the order of their first chunk, so that the workers fetch
	// different packs at once rather than wait on one.
	var groups []group
	byPack := map[manifest.Fingerprint]int{}
	for i := range s.M.Chunks {
		ref, ok := s.packs[uint32(i)]
		if !ok {
			groups = append(groups, group{idx: []int{i}})
			continue
		}
		k, seen := byPack[ref.ID]
		if !seen {
			k = len(groups)
			byPack[ref.ID] = k
			groups = append(groups, group{packed: true, pack: ref.ID})
		}
		groups[k].idx = append(groups[k].idx, i)
	}
	// A pack is up to 64 chunks: a quarter as many packs as chunks in
	// flight keeps the store busy without queueing a read that waits,
	// such as an open's first query, behind megabytes of prefetch.
	packSlots := make(chan struct{}, max(2, r.prefetch/4))
	started := r.goBG(func() {
		defer close(done)
		defer cancel()
		err := s.each(ctx, groups, r.prefetch, packSlots, true)
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
