package snapshot

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
)

// packCache fetches each pack once for all the chunks that need it, and
// keeps the most recent ones, up to maxBytes, so that the other chunks of
// a pack just fetched (a scan's next reads, the prefetch) cost no GET.
// Packs are read into the reader's pack buffers (packBufs), outside the
// Go heap, and counted by reference: the cache keeps one on each pack it
// keeps, each caller of get one until it is done with the pack, and each
// chunk of it queued for the cache's files one until it is written.
//
// A pack the prefetch fetched is not kept but held (active) until the
// prefetch is done with its chunks (drop): reads that overtake the
// prefetch find it there, and it does not push out of the kept packs
// those of a scan, whose next reads would fetch them again.
type packCache struct {
	maxBytes int
	spawn    func(func()) bool // the reader's goBG: fetches end before Close returns

	mu       sync.Mutex
	inflight map[manifest.Fingerprint]*packFlight
	kept     map[manifest.Fingerprint]*packBuf
	order    []manifest.Fingerprint            // kept, oldest first
	active   map[manifest.Fingerprint]*packBuf // the prefetch's, until drop
	bytes    int
}

type packFlight struct {
	done    chan struct{}
	waiters int  // callers that will take a reference; under packCache.mu
	settled bool // the fetch ended; under packCache.mu
	buf     *packBuf
	err     error
}

// defaultPackCacheBytes keeps 16 packs of 4 MiB: more than the prefetch
// works on at once.
const defaultPackCacheBytes = 64 << 20

func newPackCache(maxBytes int, spawn func(func()) bool) *packCache {
	return &packCache{
		maxBytes: maxBytes,
		spawn:    spawn,
		inflight: map[manifest.Fingerprint]*packFlight{},
		kept:     map[manifest.Fingerprint]*packBuf{},
		active:   map[manifest.Fingerprint]*packBuf{},
	}
}

// get returns pack id, with a reference the caller drops (unref) when
// done with its bytes, from memory or fetched by fetch, once for all
// concurrent callers. The fetch runs under fctx, not under any caller's
// ctx: a caller that gives up does not fail the others. A pack fetched
// for the prefetch is held until drop, not kept.
func (c *packCache) get(ctx, fctx context.Context, id manifest.Fingerprint, prefetch bool, fetch func(context.Context) (*packBuf, error)) (*packBuf, error) {
	c.mu.Lock()
	b, ok := c.kept[id]
	if !ok {
		b, ok = c.active[id]
	}
	if ok {
		b.ref()
		c.mu.Unlock()
		return b, nil
	}
	f, ok := c.inflight[id]
	if !ok {
		f = &packFlight{done: make(chan struct{})}
		started := c.spawn(func() {
			b, err := fetch(fctx)
			c.mu.Lock()
			delete(c.inflight, id)
			f.settled = true
			f.buf, f.err = b, err
			if err == nil {
				// The fetch's reference goes to the waiters, one each,
				// and to the cache if it keeps or holds the pack.
				n := int32(f.waiters)
				if prefetch {
					if _, had := c.active[id]; !had {
						c.active[id] = b
						n++
					}
				} else if len(b.b) <= c.maxBytes && c.keep(id, b) {
					n++
				}
				if n == 0 {
					b.unref()
				} else {
					b.refs.Add(n - 1)
				}
			}
			c.mu.Unlock()
			close(f.done)
		})
		if !started {
			c.mu.Unlock()
			return nil, errReaderClosed
		}
		c.inflight[id] = f // before the fetch can end: c.mu is held
	}
	f.waiters++
	c.mu.Unlock()
	select {
	case <-f.done:
		return f.buf, f.err
	case <-ctx.Done():
		c.mu.Lock()
		if f.settled {
			c.mu.Unlock()
			if f.err == nil {
				f.buf.unref() // the reference taken for this caller
			}
		} else {
			f.waiters--
			c.mu.Unlock()
		}
		return nil, ctx.Err()
	}
}

// keep remembers pack id, dropping the oldest over maxBytes, and reports
// whether it did (it takes over a reference to b); under mu.
func (c *packCache) keep(id manifest.Fingerprint, b *packBuf) bool {
	if _, ok := c.kept[id]; ok {
		return false
	}
	c.kept[id] = b
	c.order = append(c.order, id)
	c.bytes += len(b.b)
	for c.bytes > c.maxBytes && len(c.order) > 0 {
		c.dropOldestLocked()
	}
	return true
}

func (c *packCache) dropOldestLocked() {
	old := c.order[0]
	c.order = c.order[1:]
	b := c.kept[old]
	c.bytes -= len(b.b)
	delete(c.kept, old)
	b.unref()
}

// dropOldest forgets the oldest pack kept, if any, and reports whether
// there was one: the pack buffers make room so.
func (c *packCache) dropOldest() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.order) == 0 {
		return false
	}
	c.dropOldestLocked()
	return true
}

// has reports whether pack id is kept, held or being fetched.
func (c *packCache) has(id manifest.Fingerprint) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, kept := c.kept[id]
	_, active := c.active[id]
	_, inflight := c.inflight[id]
	return kept || active || inflight
}

// clear forgets every pack kept or held.
func (c *packCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, b := range c.kept {
		b.unref()
	}
	for _, b := range c.active {
		b.unref()
	}
	clear(c.kept)
	clear(c.active)
	c.order, c.bytes = nil, 0
}

// release lets go of pack id if the prefetch holds it (it is done with
// its chunks).
func (c *packCache) release(id manifest.Fingerprint) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b, ok := c.active[id]; ok {
		delete(c.active, id)
		b.unref()
	}
}

// drop forgets pack id, kept or held (its bytes held a damaged chunk).
func (c *packCache) drop(id manifest.Fingerprint) {
	c.release(id)
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.kept[id]
	if !ok {
		return
	}
	delete(c.kept, id)
	c.bytes -= len(b.b)
	b.unref()
	for i, o := range c.order {
		if o == id {
			c.order = append(c.order[:i], c.order[i+1:]...)
			break
		}
	}
}

// packedChunk returns chunk fp, of want bytes, from the pack ref names,
// verified, trying each remote store in turn, and the buffer its bytes
// lie in (the pack's, or the one it was decoded into), with a reference
// the caller drops when done with them. A fetch for the prefetch leaves
// room to reads (packBufs).
func (r *Reader) packedChunk(ctx context.Context, fp manifest.Fingerprint, want int, ref manifest.PackRef, prefetch bool) ([]byte, bufRef, error) {
	var errs []error
	byRange := !prefetch && r.packs.maxBytes < wholePackMin && !r.packs.has(ref.ID)
	for _, s := range r.remote {
		if store.IsCache(s) {
			continue
		}
		if byRange {
			data, buf, err := r.packMember(ctx, s, fp, want, ref)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", s, err))
				continue
			}
			return data, buf, nil
		}
		pack, err := r.packs.get(ctx, r.ctx, ref.ID, prefetch, func(fctx context.Context) (*packBuf, error) {
			fctx, cancel := context.WithTimeout(fctx, r.chunkTO)
			defer cancel()
			return r.readPack(fctx, s, ref.ID, prefetch)
		})
		if err != nil {
			if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
				// Gave up waiting for the pack's fetch, which has a
				// deadline of its own: say what it waited for.
				err = fmt.Errorf("%s: pack %s: no answer in time: %w", s, ref.ID, err)
			}
			errs = append(errs, err)
			continue
		}
		dec := getChunkBuf()
		data, err := store.DecodePackMemberInto(dec.b[:0], pack.b, ref, fp)
		if err == nil && len(data) != want {
			err = fmt.Errorf("pack %s: chunk %s is %d bytes, want %d: %w", ref.ID, fp, len(data), want, ErrCorrupt)
		}
		if err != nil {
			dec.unref()
			pack.unref()
			r.packs.drop(ref.ID)
			errs = append(errs, fmt.Errorf("%s: %w", s, err))
			continue
		}
		if &data[0] == &dec.b[0] { // decoded: the pack is not needed any more
			pack.unref()
			return data, dec, nil
		}
		dec.unref() // stored raw: the bytes lie in the pack
		return data, pack, nil
	}
	if len(errs) == 0 {
		return nil, nil, errors.New("no store to read packs from")
	}
	return nil, nil, errors.Join(errs...)
}

// wholePackMin is the room for packs kept under which a read (not the
// prefetch) of a packed chunk that no pack in memory holds reads only
// the chunk's blob from its pack: a full pack (store.PackChunks chunks)
// would not be kept, and each read of one of its chunks would fetch it
// whole again (315 pack reads of 4 MiB for 314 chunks, with a 2 MiB
// memory limit).
const wholePackMin = store.PackChunks * manifest.ChunkSize

// memberBufs hold the blobs packMember reads, reused: a stored blob is
// at most store.MaxChunkBlob (a longer one is read into a buffer of its
// own, and is corrupt).
var memberBufs = sync.Pool{New: func() any { b := make([]byte, 0, store.MaxChunkBlob); return &b }}

// packMember returns chunk fp, of want bytes, read from the blob ref
// names alone (store.ReadPackRange), verified, in a chunk buffer with a
// reference the caller drops when done with its bytes.
func (r *Reader) packMember(ctx context.Context, s store.Store, fp manifest.Fingerprint, want int, ref manifest.PackRef) ([]byte, bufRef, error) {
	ctx, cancel := context.WithTimeout(ctx, r.chunkTO)
	defer cancel()
	mb := memberBufs.Get().(*[]byte)
	defer memberBufs.Put(mb)
	blob, err := store.ReadPackRange(ctx, s, ref.ID, int(ref.Offset), int(ref.Length), *mb)
	if err != nil {
		return nil, nil, err
	}
	dec := getChunkBuf()
	data, err := store.DecodePackMemberInto(dec.b[:0], blob, manifest.PackRef{ID: ref.ID, Length: ref.Length}, fp)
	if err == nil && len(data) != want {
		err = fmt.Errorf("pack %s: chunk %s is %d bytes, want %d: %w", ref.ID, fp, len(data), want, ErrCorrupt)
	}
	if err != nil {
		dec.unref()
		return nil, nil, err
	}
	if &data[0] != &dec.b[0] { // stored raw: the bytes lie in blob
		data = dec.b[:copy(dec.b[:], data)]
	}
	return data, dec, nil
}

// readPack reads pack id from s into one of the reader's pack buffers,
// which it returns with a reference.
func (r *Reader) readPack(ctx context.Context, s store.Store, id manifest.Fingerprint, prefetch bool) (*packBuf, error) {
	var buf *packBuf
	got, err := store.ReadPack(ctx, s, id, func(size int) ([]byte, error) {
		if buf != nil { // a retry
			if size <= len(buf.mem) {
				buf.b = buf.mem[:size]
				return buf.b, nil
			}
			buf.unref()
			buf = nil
		}
		b, err := r.bufs.get(ctx, size, prefetch)
		if err != nil {
			return nil, err
		}
		buf = b
		return b.b, nil
	})
	if err != nil {
		if buf != nil {
			buf.unref()
		}
		return nil, err
	}
	if buf == nil {
		return nil, fmt.Errorf("snapshot: pack %s: the store returned no bytes", id)
	}
	buf.b = got
	return buf, nil
}
