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
type packCache struct {
	maxBytes int
	spawn    func(func()) bool // the reader's goBG: fetches end before Close returns

	mu       sync.Mutex
	inflight map[manifest.Fingerprint]*packFlight
	kept     map[manifest.Fingerprint][]byte
	order    []manifest.Fingerprint // kept, oldest first
	bytes    int
}

type packFlight struct {
	done chan struct{}
	data []byte
	err  error
}

// defaultPackCacheBytes keeps 16 packs of 4 MiB: more than the prefetch
// works on at once.
const defaultPackCacheBytes = 64 << 20

func newPackCache(maxBytes int, spawn func(func()) bool) *packCache {
	return &packCache{
		maxBytes: maxBytes,
		spawn:    spawn,
		inflight: map[manifest.Fingerprint]*packFlight{},
		kept:     map[manifest.Fingerprint][]byte{},
	}
}

// get returns the bytes of pack id, from memory or fetched by fetch, once
// for all concurrent callers. The fetch runs under fctx, not under any
// caller's ctx: a caller that gives up does not fail the others.
func (c *packCache) get(ctx, fctx context.Context, id manifest.Fingerprint, fetch func(context.Context) ([]byte, error)) ([]byte, error) {
	c.mu.Lock()
	if b, ok := c.kept[id]; ok {
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
			f.data, f.err = b, err
			if err == nil && len(b) <= c.maxBytes {
				c.keep(id, b)
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
	c.mu.Unlock()
	select {
	case <-f.done:
		return f.data, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// keep remembers pack id, dropping the oldest over maxBytes; under mu.
func (c *packCache) keep(id manifest.Fingerprint, b []byte) {
	if _, ok := c.kept[id]; ok {
		return
	}
	c.kept[id] = b
	c.order = append(c.order, id)
	c.bytes += len(b)
	for c.bytes > c.maxBytes && len(c.order) > 0 {
		old := c.order[0]
		c.order = c.order[1:]
		c.bytes -= len(c.kept[old])
		delete(c.kept, old)
	}
}

// clear forgets every pack kept.
func (c *packCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.kept)
	c.order, c.bytes = nil, 0
}

// drop forgets pack id (its bytes held a damaged chunk).
func (c *packCache) drop(id manifest.Fingerprint) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.kept[id]
	if !ok {
		return
	}
	delete(c.kept, id)
	c.bytes -= len(b)
	for i, o := range c.order {
		if o == id {
			c.order = append(c.order[:i], c.order[i+1:]...)
			break
		}
	}
}

// packedChunk returns chunk fp, of want bytes, from the pack ref names,
// verified, trying each remote store in turn.
func (r *Reader) packedChunk(ctx context.Context, fp manifest.Fingerprint, want int, ref manifest.PackRef) ([]byte, error) {
	var errs []error
	for _, s := range r.remote {
		if store.IsCache(s) {
			continue
		}
		pack, err := r.packs.get(ctx, r.ctx, ref.ID, func(fctx context.Context) ([]byte, error) {
			fctx, cancel := context.WithTimeout(fctx, r.chunkTO)
			defer cancel()
			return s.GetPack(fctx, ref.ID)
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
		data, err := store.DecodePackMember(pack, ref, fp)
		if err == nil && len(data) != want {
			err = fmt.Errorf("pack %s: chunk %s is %d bytes, want %d: %w", ref.ID, fp, len(data), want, ErrCorrupt)
		}
		if err != nil {
			r.packs.drop(ref.ID)
			errs = append(errs, fmt.Errorf("%s: %w", s, err))
			continue
		}
		return data, nil
	}
	if len(errs) == 0 {
		return nil, errors.New("no store to read packs from")
	}
	return nil, errors.Join(errs...)
}
