package snapshot

import (
	"fmt"
	"sync"
	"syscall"

	"github.com/boule-vfs/boule/manifest"
)

// slabSize is the size of one slab: 512 chunk slots, 32 MiB.
const slabSize = 512 * manifest.ChunkSize

// slabs hold the chunks that do not come from a cache file (fetched from a
// store, inline in the manifest, read from a read_only directory) outside
// the Go heap, where C may read them. One mapping per 512 chunks, rather
// than one per chunk, keeps the process far from vm.max_map_count and
// spares the per-chunk mmap and mprotect calls, which serialize on the
// kernel's memory-map lock: profiles of a cold scan showed them taking
// half a millisecond per chunk. Slabs ask for transparent huge pages, and
// freed slots are reused; a slab is unmapped when it is empty and another
// slab has room.
type slabs struct {
	mu     sync.Mutex
	all    []*slab
	free   []slot
	closed bool // the reader is closed: empty slabs are unmapped at once
}

type slab struct {
	mem  []byte
	used int
}

type slot struct {
	s *slab
	i int
}

// copy places data (at most one chunk) in a free slot and returns the
// copy and the function that frees it. The pool bounds how many slots are
// used at once, and freed slots are reused before a slab is added.
func (a *slabs) copy(data []byte) (loaded, error) {
	if len(data) > manifest.ChunkSize {
		return loaded{}, fmt.Errorf("snapshot: %d bytes do not fit a chunk slot", len(data))
	}
	a.mu.Lock()
	if len(a.free) == 0 {
		mem, err := syscall.Mmap(-1, 0, slabSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
		if err != nil {
			a.mu.Unlock()
			return loaded{}, fmt.Errorf("snapshot: map a %d MiB slab: %w", slabSize>>20, err)
		}
		hugePages(mem)
		s := &slab{mem: mem}
		a.all = append(a.all, s)
		for i := slabSize/manifest.ChunkSize - 1; i >= 0; i-- {
			a.free = append(a.free, slot{s, i})
		}
	}
	sl := a.free[len(a.free)-1]
	a.free = a.free[:len(a.free)-1]
	sl.s.used++
	a.mu.Unlock()

	b := sl.s.mem[sl.i*manifest.ChunkSize : sl.i*manifest.ChunkSize+len(data) : sl.i*manifest.ChunkSize+len(data)]
	copy(b, data)
	return loaded{b: b, free: func() { a.release(sl) }, anon: true}, nil
}

func (a *slabs) release(sl slot) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sl.s.used--
	a.free = append(a.free, sl)
	if sl.s.used > 0 || (!a.closed && len(a.free) < 2*slabSize/manifest.ChunkSize) {
		return
	}
	// An empty slab, and another slab's worth of free slots besides (or
	// a closed reader): give this one back.
	a.unmapLocked(sl.s)
}

// close unmaps the empty slabs, and from then on each slab as soon as it
// is empty: a closed reader keeps none (it kept one, 32 MiB, for good).
func (a *slabs) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	for _, s := range append([]*slab(nil), a.all...) {
		if s.used == 0 {
			a.unmapLocked(s)
		}
	}
}

// unmapLocked unmaps s, which is empty, and forgets its slots.
func (a *slabs) unmapLocked(s *slab) {
	sl := slot{s: s}
	kept := a.free[:0]
	for _, f := range a.free {
		if f.s != sl.s {
			kept = append(kept, f)
		}
	}
	a.free = kept
	for i, s := range a.all {
		if s == sl.s {
			a.all = append(a.all[:i], a.all[i+1:]...)
			break
		}
	}
	_ = syscall.Munmap(sl.s.mem)
}

// mapped reports the slabs in use; for tests.
func (a *slabs) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.all)
}
