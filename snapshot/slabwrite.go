package snapshot

import (
	"errors"
	"io/fs"
	"sync"
	"time"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store/cache"
)

// The cache writers put the chunks of a pack, fetched by the prefetch or
// by reads, into one slab of the local cache (cache.SlabWriter) rather
// than a file each: creating a file was the largest cost of a cold scan
// (16,384 of them for 1 GiB, 50 to 200 µs each on ext4 without a
// journal). A slab is sealed, and its chunks become visible to readers
// and to the VFS, when the prefetch is done with the pack (a seal item
// after its chunks in the queue), when it is full, when nothing was
// added to it for slabIdle, or when the reader closes. Until then its
// chunks stay in Reader.queued, so that neither the prefetch nor a read
// queues them again.

// slabIdle is how long a slab being written may go without a chunk before
// it is sealed: the chunks a first query read, or those of a pack the
// prefetch did not get to.
const slabIdle = 200 * time.Millisecond

// slabBuild is a pack's slab being written.
type slabBuild struct {
	pack manifest.Fingerprint
	mu   sync.Mutex
	// Under mu: only one writer adds at a time.
	w       *cache.SlabWriter
	members []slabMember
	last    time.Time
	sealed  bool
}

// slabMember is a chunk added to a slab, and the chunk of a snapshot it
// was fetched for, if any, which learns of the file once it is sealed.
type slabMember struct {
	fp  manifest.Fingerprint
	off int64
	s   *Snapshot
	i   int
}

// slabAdd writes the chunk of it, a packed one, to its pack's slab, and
// reports whether it did; if not, the caller writes it to a file of its
// own.
func (r *Reader) slabAdd(it cacheItem) bool {
	if r.cache == nil || !r.cache.SlabsFit() {
		return false
	}
	for {
		r.slabMu.Lock()
		b := r.building[it.pack]
		if b == nil {
			r.slabMu.Unlock()
			// A read that fetched the chunk while its slab was being
			// sealed queues it again: a slab of its own for it, merged
			// into the pack's by its seal, was a waste.
			if r.cache.HasPacked(it.pack, it.fp) {
				r.cacheMu.Lock()
				delete(r.queued, it.fp)
				r.cacheMu.Unlock()
				return true
			}
			r.slabMu.Lock()
			b = r.building[it.pack]
		}
		fresh := b == nil
		if fresh {
			b = &slabBuild{pack: it.pack, last: time.Now()}
			if r.building == nil {
				r.building = map[manifest.Fingerprint]*slabBuild{}
			}
			r.building[it.pack] = b
			// Its file is created under b.mu, not r.slabMu: a
			// creation takes up to a millisecond here, and the
			// other writers work on other packs meanwhile.
			b.mu.Lock()
		}
		r.slabMu.Unlock()
		if fresh {
			w, err := r.cache.NewSlab(r.ctx, it.pack)
			b.w = w
			if err != nil {
				b.mu.Unlock()
				r.log.Debug("snapshot: cannot start a slab in the cache", "pack", it.pack.String(), "err", err)
				r.sealBuild(b) // forgets it
				return false
			}
		} else {
			b.mu.Lock()
		}
		if b.sealed { // sealed meanwhile: start another
			b.mu.Unlock()
			continue
		}
		off, err := b.w.Add(it.fp, it.data)
		if err == nil {
			b.members = append(b.members, slabMember{fp: it.fp, off: off, s: it.s, i: it.i})
			b.last = time.Now()
		}
		b.mu.Unlock()
		if err != nil {
			if !errors.Is(err, cache.ErrSlabFull) {
				r.log.Debug("snapshot: cannot write a slab in the cache", "pack", it.pack.String(), "err", err)
			}
			r.sealBuild(b)
			return false
		}
		return true
	}
}

// sealPack seals the slab being written for pack, if any.
func (r *Reader) sealPack(pack manifest.Fingerprint) {
	r.slabMu.Lock()
	b := r.building[pack]
	r.slabMu.Unlock()
	if b != nil {
		r.sealBuild(b)
	}
}

// sealBuild seals the slab b, records its chunks' places (written), and
// tells the snapshots they were fetched for (Snapshot.noteFile).
func (r *Reader) sealBuild(b *slabBuild) {
	r.slabMu.Lock()
	if r.building[b.pack] == b {
		delete(r.building, b.pack)
	}
	r.slabMu.Unlock()
	b.mu.Lock()
	if b.sealed {
		b.mu.Unlock()
		return
	}
	b.sealed = true
	var fi fs.FileInfo
	var err error
	if b.w != nil { // nil if its file could not be created
		fi, err = b.w.Seal()
	}
	members := b.members
	b.members = nil
	b.mu.Unlock()
	if err != nil {
		r.log.Debug("snapshot: cannot seal a slab in the cache", "pack", b.pack.String(), "err", err)
	}
	if fi != nil {
		if base, ok := stampOf(fi); ok {
			base.Slab = cache.SlabKey(b.pack)
			for _, m := range members {
				st := base
				st.Off = m.off
				r.written.note(m.fp, st) // its bytes were verified
				if m.s != nil {
					m.s.noteFile(m.i, st)
				}
			}
		}
	}
	r.cacheMu.Lock()
	for _, m := range members {
		delete(r.queued, m.fp)
	}
	r.cacheMu.Unlock()
}

// sealIdle seals the slabs that nothing was added to for slabIdle, until
// the reader closes.
func (r *Reader) sealIdle() {
	t := time.NewTicker(slabIdle / 2)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case now := <-t.C:
			var idle []*slabBuild
			r.slabMu.Lock()
			for _, b := range r.building {
				b.mu.Lock()
				if now.Sub(b.last) >= slabIdle {
					idle = append(idle, b)
				}
				b.mu.Unlock()
			}
			r.slabMu.Unlock()
			for _, b := range idle {
				r.sealBuild(b)
			}
		}
	}
}

// sealAll seals every slab being written.
func (r *Reader) sealAll() {
	r.slabMu.Lock()
	all := make([]*slabBuild, 0, len(r.building))
	for _, b := range r.building {
		all = append(all, b)
	}
	r.slabMu.Unlock()
	for _, b := range all {
		r.sealBuild(b)
	}
}
