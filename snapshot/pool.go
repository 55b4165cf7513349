package snapshot

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/boule-vfs/boule/manifest"
)

// Defaults of the Reader's memory bounds (Options.MemoryLimit and
// Options.MaxMappedChunks).
const (
	// DefaultMemoryLimit is the anonymous memory a Reader keeps chunks
	// in: a quarter for copies of chunks (fetched from a store, inline
	// in a manifest, or read from a file that may not be mapped), an
	// eighth for the buffers packs are read into (packBufs), both
	// outside the Go heap, and the rest for the Go heap (the manifests,
	// the records of chunks held and of cache files written, decoded
	// chunks waiting for the cache's files) and its garbage, which the
	// collector lets grow to what is live. Chunks mapped from the
	// cache's files are file-backed, and not counted. (Copies had half:
	// a cold scan of a 1 GiB replica, whose reads overtake the prefetch
	// and fill the copies, peaked at 255 MiB of RssAnon, with the
	// process's own.)
	DefaultMemoryLimit = 256 << 20
	// MinMemoryLimit is the least MemoryLimit: 8 chunk copies.
	MinMemoryLimit = 2 << 20
	// DefaultMaxMappedChunks is the most chunks mapped at once (2 GiB),
	// unless vm.max_map_count leaves less room (see maxMappedDefault).
	DefaultMaxMappedChunks = 32768
)

// maxMappedDefault is DefaultMaxMappedChunks, or half of vm.max_map_count
// (at least 64) when that is smaller: each chunk mapped from a file is a
// mapping of its own, and the rest of the process needs some too. The
// bound is what makes the process independent of the setting: past it,
// the least recently used chunks are unmapped.
func maxMappedDefault() int {
	n := 65530
	if b, err := os.ReadFile("/proc/sys/vm/max_map_count"); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && v > 0 {
			n = v
		}
	}
	return max(min(DefaultMaxMappedChunks, n/2), 64)
}

// A pool bounds what a Reader keeps of its snapshots' chunks: at most
// maxLive chunks held (each one mapping, or one slab slot), of which at
// most maxAnon copies in anonymous memory. Past a bound, it evicts with a
// clock (second chance) over the chunks held: a chunk read since the
// hand last passed it (Snapshot.used, set by C on every read without a
// call into Go) is spared once. Evicting a chunk takes it out of its
// snapshot's table and view, waits until no C read that may have seen
// it is under way (quiesce), and only then drops the mapping: a read
// never sees a chunk torn or unmapped under it, and finds the next one
// missing and asks Go again.
type pool struct {
	maxLive, maxAnon int
	quiesce          func()         // waits for the C reads under way; nil without C
	release          func([]*entry) // drops the entries' references to their mappings
	onRoom           func(bool)     // told when hasRoom changes (Options.OnRoom)

	evictMu sync.Mutex // one eviction at a time, outside mu

	mu      sync.Mutex
	ring    []*entry // in clock order; gone entries are compacted away
	hand    int
	dead    int // gone entries still in ring
	live    int // entries held
	anon    int // of which copies in slabs
	evicted int64
	room    int8 // hasRoom as onRoom was last told: 0 not yet, 1 yes, -1 no
}

// noteRoomLocked tells onRoom whether the pool has room to hold more
// chunks (an eighth of maxLive to spare), when that changed.
func (p *pool) noteRoomLocked() {
	if p.onRoom == nil {
		return
	}
	room := int8(-1)
	if p.live < p.maxLive-p.maxLive/8 {
		room = 1
	}
	if room != p.room {
		p.room = room
		p.onRoom(room == 1)
	}
}

// An entry is one chunk of one snapshot, held in the pool: it owns one
// reference to its mapping.
type entry struct {
	s    *Snapshot
	i    int
	m    *mapping
	gone bool        // evicted or released; under pool.mu
	used atomic.Bool // read from Go since the clock last passed
}

// add holds e, and reports whether the pool is now over a bound (the
// caller then calls evict, holding no snapshot lock).
func (p *pool) add(e *entry) bool {
	e.used.Store(true) // a chunk just asked for is about to be read
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ring = append(p.ring, e)
	p.live++
	if e.m.anon {
		p.anon++
	}
	p.noteRoomLocked()
	return p.overLocked()
}

func (p *pool) overLocked() bool { return p.live > p.maxLive || p.anon > p.maxAnon }

// forget marks the entries of a released snapshot gone, and returns those
// that were not already (an eviction under way releases the others).
func (p *pool) forget(es []*entry) []*entry {
	p.mu.Lock()
	defer p.mu.Unlock()
	kept := es[:0]
	for _, e := range es {
		if !e.gone {
			p.dropLocked(e)
			kept = append(kept, e)
		}
	}
	p.compactLocked()
	return kept
}

// take marks e gone, as an eviction does, unless it is already, and
// reports whether it did: the caller then takes e out of its snapshot's
// view, waits for the reads (quiesce), and releases it.
func (p *pool) take(e *entry) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e.gone {
		return false
	}
	p.dropLocked(e)
	p.compactLocked()
	return true
}

func (p *pool) dropLocked(e *entry) {
	e.gone = true
	p.dead++
	p.live--
	if e.m.anon {
		p.anon--
	}
	p.noteRoomLocked()
}

// compactLocked drops gone entries from the ring once they are half of
// it, keeping the clock order.
func (p *pool) compactLocked() {
	if p.dead == 0 || p.dead < len(p.ring)/2 {
		return
	}
	kept := p.ring[:0]
	hand := 0
	for k, e := range p.ring {
		if k == p.hand {
			hand = len(kept)
		}
		if !e.gone {
			kept = append(kept, e)
		}
	}
	clear(p.ring[len(kept):])
	p.ring, p.hand, p.dead = kept, hand, 0
}

// evict brings the pool back under its bounds, a sixteenth below them so
// that one wait for the C reads covers many chunks.
func (p *pool) evict() {
	p.evictMu.Lock()
	defer p.evictMu.Unlock()
	p.mu.Lock()
	if !p.overLocked() {
		p.mu.Unlock()
		return
	}
	live := p.maxLive - p.maxLive/16
	anon := p.maxAnon - p.maxAnon/16
	var victims []*entry
	for steps := 3 * len(p.ring); steps > 0 && (p.live > live || p.anon > anon); steps-- {
		if p.hand >= len(p.ring) {
			p.hand = 0
		}
		e := p.ring[p.hand]
		p.hand++
		if e.gone || (p.live <= live && !e.m.anon) {
			continue
		}
		if e.used.Swap(false) || e.s.usedByC(e.i) {
			continue // second chance
		}
		p.dropLocked(e)
		victims = append(victims, e)
	}
	p.evicted += int64(len(victims))
	p.compactLocked()
	p.mu.Unlock()
	if len(victims) == 0 {
		return
	}
	for _, e := range victims {
		e.s.unmapEntry(e)
	}
	if p.quiesce != nil {
		p.quiesce()
	}
	p.release(victims)
}

// counts reports the chunks held, the copies among them, and the
// evictions so far.
func (p *pool) counts() (live, anon int, evicted int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.live, p.anon, p.evicted
}

// chunkSlots is the number of chunk copies that bytes of memory hold.
func chunkSlots(bytes int64) int { return int(bytes / manifest.ChunkSize) }
