package snapshot

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/boule-vfs/boule/manifest"
)

// packBufs are the buffers packs are fetched into: mapped outside the Go
// heap, reused from one pack to the next, and bounded in total bytes
// mapped (in use or free), which is what they can cost in anonymous
// memory. A fetch waits for room, so that the fetches under way narrow
// as the buffers fill; to make room it first drops the packs the reader
// keeps for their other chunks (evict).
//
// Packs were read into the Go heap, one allocation each: a cold scan of
// a 10 GiB replica allocated its 10 GiB of packs there, and the heap,
// which the collector lets grow to twice what is live, peaked at 237 MiB
// held (of which 76 MiB freed but not yet returned) for 89 MiB live.
//
// A pack larger than the whole bound is fetched all the same, alone:
// once no other buffer is in use, so that a small bound slows fetches
// without stopping them.
//
// The prefetch's fetches leave a quarter of the bound to reads, and drop
// kept packs only after waiting prefetchEvictAfter in vain: those are a
// scan's, whose next reads would fetch them again, but with no reads
// under way, nothing else would make room.
type packBufs struct {
	max   int64       // bytes mapped at most, but for one pack alone
	evict func() bool // drops a kept pack, reporting whether there was one

	mu     sync.Mutex
	free   []*packBuf // mapped, not in use
	mapped int64      // bytes mapped, in use or free
	inUse  int64      // bytes of the buffers in use
	peak   int64      // the most bytes mapped at once
	waits  int64      // gets that waited for room
	wake   chan struct{}
	closed bool
}

// A packBuf is one mapped buffer; b is the pack read into it. It is
// returned to its packBufs when the last reference goes (unref).
type packBuf struct {
	mem  []byte // the whole mapping
	b    []byte // the pack: mem[:size]
	refs atomic.Int32
	from *packBufs
}

// bufGrain rounds buffer sizes, so that packs of nearby sizes reuse one
// another's buffers.
const bufGrain = 256 << 10

func newPackBufs(max int64, evict func() bool) *packBufs {
	return &packBufs{max: max, evict: evict, wake: make(chan struct{})}
}

// get returns a buffer of size bytes with one reference, waiting for room
// under the bound until ctx ends; for the prefetch, under three quarters
// of it.
func (p *packBufs) get(ctx context.Context, size int, prefetch bool) (*packBuf, error) {
	want := max((int64(size)+bufGrain-1)/bufGrain*bufGrain, bufGrain)
	limit := p.max
	if prefetch {
		limit -= p.max / 4
	}
	waited := false
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, errReaderClosed
		}
		if b := p.takeFreeLocked(want); b != nil {
			p.mu.Unlock()
			b.b = b.mem[:size]
			return b, nil
		}
		// Make room: give back free buffers too small to use, then map.
		for len(p.free) > 0 && p.mapped+want > limit {
			p.unmapLocked(p.free[0])
			p.free = p.free[1:]
		}
		if p.mapped+want <= limit || p.mapped == 0 {
			mem, err := syscall.Mmap(-1, 0, int(want), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
			if err != nil {
				p.mu.Unlock()
				return nil, fmt.Errorf("snapshot: map a pack buffer of %d bytes: %w", want, err)
			}
			p.mapped += want
			p.inUse += want
			p.peak = max(p.peak, p.mapped)
			p.mu.Unlock()
			b := &packBuf{mem: mem, b: mem[:size], from: p}
			b.refs.Store(1)
			return b, nil
		}
		wake := p.wake
		if !waited {
			waited = true
			p.waits++
		}
		p.mu.Unlock()
		if !prefetch && p.evict != nil && p.evict() {
			continue // a kept pack went: its buffer may be free now
		}
		var late <-chan time.Time
		if prefetch && p.evict != nil {
			late = time.After(prefetchEvictAfter) // collected once it fires or is dropped
		}
		select {
		case <-wake:
		case <-late:
			p.evict()
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// prefetchEvictAfter is how long a fetch of the prefetch waits for room
// in the pack buffers before it drops a kept pack.
const prefetchEvictAfter = 50 * time.Millisecond

// takeFreeLocked takes the smallest free buffer of at least want bytes,
// if any.
func (p *packBufs) takeFreeLocked(want int64) *packBuf {
	best := -1
	for k, b := range p.free {
		if int64(len(b.mem)) >= want && (best < 0 || len(b.mem) < len(p.free[best].mem)) {
			best = k
		}
	}
	if best < 0 {
		return nil
	}
	b := p.free[best]
	p.free = append(p.free[:best], p.free[best+1:]...)
	p.inUse += int64(len(b.mem))
	b.refs.Store(1)
	return b
}

func (p *packBufs) unmapLocked(b *packBuf) {
	p.mapped -= int64(len(b.mem))
	_ = syscall.Munmap(b.mem)
	b.mem, b.b = nil, nil
}

// ref adds a reference to b.
func (b *packBuf) ref() { b.refs.Add(1) }

// unref drops a reference to b; the last one returns it to its
// packBufs, for the next pack (or unmaps it, once the reader is closed).
// Nothing may read b.b after its holder's unref.
func (b *packBuf) unref() {
	switch n := b.refs.Add(-1); {
	case n > 0:
		return
	case n < 0:
		panic("snapshot: pack buffer released twice")
	}
	p := b.from
	p.mu.Lock()
	p.inUse -= int64(len(b.mem))
	if p.closed {
		p.unmapLocked(b)
	} else {
		b.b = nil
		p.free = append(p.free, b)
	}
	close(p.wake)
	p.wake = make(chan struct{})
	p.mu.Unlock()
}

// close unmaps the free buffers, and from now on each buffer as soon as
// it is released.
func (p *packBufs) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, b := range p.free {
		p.unmapLocked(b)
	}
	p.free = nil
	close(p.wake)
	p.wake = make(chan struct{})
}

// counts reports the bytes mapped, in use, the most mapped at once, and
// the gets that waited for room.
func (p *packBufs) counts() (mapped, inUse, peak, waits int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mapped, p.inUse, p.peak, p.waits
}

// A bufRef is a buffer counted by reference that a chunk's bytes lie in:
// a pack's (packBuf) or a decoded chunk's (chunkBuf).
type bufRef interface {
	ref()
	unref()
}

var (
	_ bufRef = (*packBuf)(nil)
	_ bufRef = (*chunkBuf)(nil)
)

// A chunkBuf is a buffer that a compressed chunk of a pack is decoded
// into, reused through chunkBufs once the last reference goes: the
// chunk is copied from it, or written to the cache's files. A cold scan
// of a 10 GiB replica, whose packs hold compressed chunks, allocated a
// new 64 KiB for each (9.8 GB in all), which is what made the Go heap
// collect and grow to twice what is live, again and again. The buffers
// in use are bounded by the chunks queued for the cache's files and the
// loads under way.
type chunkBuf struct {
	b    [manifest.ChunkSize]byte
	refs atomic.Int32
}

var chunkBufs = sync.Pool{New: func() any { return new(chunkBuf) }}

// getChunkBuf returns a chunkBuf with one reference.
func getChunkBuf() *chunkBuf {
	c := chunkBufs.Get().(*chunkBuf)
	c.refs.Store(1)
	return c
}

func (c *chunkBuf) ref() { c.refs.Add(1) }

func (c *chunkBuf) unref() {
	switch n := c.refs.Add(-1); {
	case n == 0:
		chunkBufs.Put(c)
	case n < 0:
		panic("snapshot: chunk buffer released twice")
	}
}
