package upload

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
)

// uploadChunks uploads the chunk files of dir that need selects (all of
// them when need is nil), deleting each once it is in every target. Each
// is verified against its fingerprint first: a corrupt spool file is
// never uploaded. Chunks go up in packs of up to PackChunks, in the order
// of their first index in m, so that a pack holds neighbouring chunks.
func (u *Uploader) uploadChunks(ctx context.Context, st *dbState, dir spool.Chunks, need map[manifest.Fingerprint]bool, m *manifest.Manifest, targets []limitedTarget) error {
	fps, err := neededChunks(dir, need, m)
	if err != nil || len(fps) == 0 {
		return err
	}
	if mb := memberOf(ctx); mb != nil {
		if u.opts.PackChunks > 1 && len(fps) <= u.opts.PackChunks {
			return u.uploadShared(ctx, mb, st, []part{{dir: dir, fps: fps}}, targets)
		}
		mb.release() // an upload of its own, which other databases need not wait for
	}
	var units [][]manifest.Fingerprint
	for len(fps) > 0 {
		n := min(len(fps), u.opts.PackChunks)
		units = append(units, fps[:n])
		fps = fps[n:]
	}

	// Background uploads go one at a time (the limiter allows a few per
	// second anyway); flushes keep several requests in flight, and so
	// does a background upload as soon as a flush waits for it.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error // the cause; the other workers' errors are its cancellation
	var helpers atomic.Bool
	var work func(lead bool)
	work = func(lead bool) {
		defer wg.Done()
		for {
			if lead && u.hurried(st, targets) && helpers.CompareAndSwap(false, true) {
				for range flushConcurrency - 1 {
					wg.Add(1)
					go work(false)
				}
			}
			k := int(next.Add(1)) - 1
			if k >= len(units) {
				return
			}
			// A slot bounds the chunks held in memory whatever the
			// number of uploads under way.
			select {
			case u.unitSlots <- struct{}{}:
			case <-ctx.Done():
				once.Do(func() { firstErr = ctx.Err() })
				return
			}
			err := u.uploadUnit(ctx, st, dir, units[k], targets)
			<-u.unitSlots
			if err != nil {
				once.Do(func() { firstErr = err; cancel() })
				return
			}
		}
	}
	// The lead works in the caller's goroutine: a background worker runs
	// on a lowered thread (internal/lowprio), and so does its upload.
	wg.Add(1)
	work(true)
	wg.Wait()
	return firstErr
}

// neededChunks lists the chunk files of dir that need selects (all of
// them when need is nil), in the order of their first index in m.
func neededChunks(dir spool.Chunks, need map[manifest.Fingerprint]bool, m *manifest.Manifest) ([]manifest.Fingerprint, error) {
	all, err := dir.List()
	if err != nil {
		return nil, err
	}
	var fps []manifest.Fingerprint
	for _, fp := range all {
		if need == nil || need[fp] {
			fps = append(fps, fp)
		}
	}
	if len(fps) == 0 {
		return nil, nil
	}
	first := make(map[manifest.Fingerprint]int, len(m.Chunks))
	for i := len(m.Chunks) - 1; i >= 0; i-- {
		first[m.Chunks[i]] = i
	}
	pos := func(fp manifest.Fingerprint) int {
		if i, ok := first[fp]; ok {
			return i
		}
		return len(m.Chunks) // not in m: a newer snapshot's, last
	}
	slices.SortFunc(fps, func(a, b manifest.Fingerprint) int { return pos(a) - pos(b) })
	return fps, nil
}

// flushConcurrency is the number of uploads a flush keeps in flight.
const flushConcurrency = 8

// hurried reports whether an upload of st should use the flush targets:
// it is a flush, or a flush waits for it.
func (u *Uploader) hurried(st *dbState, targets []limitedTarget) bool {
	return st.hurry.Load() > 0 || (len(targets) > 0 && len(u.flush) > 0 && &targets[0] == &u.flush[0])
}

// uploadUnit uploads the chunks of unit in dir that were not uploaded
// recently, verified against their fingerprints first, in one pack when
// there are several, and deletes their files.
//
// A file found gone when it is read is not deleted at the end: the
// snapshot that staged it may have failed and dropped it, and the next
// one staged it again meanwhile, for a manifest that needs it; nothing
// uploaded it.
func (u *Uploader) uploadUnit(ctx context.Context, st *dbState, dir spool.Chunks, unit []manifest.Fingerprint, targets []limitedTarget) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var chunks []store.PackedChunk
	var reused []manifest.Fingerprint // recently put in a pack
	var reusedRefs []manifest.PackRef
	var stored []manifest.Fingerprint // in the store: their files go
	for _, fp := range unit {
		if ref, ok := u.recentlyUploaded(fp); ok {
			stored = append(stored, fp)
			if ref.ID != (manifest.Fingerprint{}) {
				reused, reusedRefs = append(reused, fp), append(reusedRefs, ref)
			}
			continue
		}
		data, err := dir.Read(fp)
		if errors.Is(err, fs.ErrNotExist) {
			continue // moved on to ready/, or no longer referenced
		}
		if err != nil {
			return fmt.Errorf("upload: read spool chunk %s: %w", fp, err)
		}
		if manifest.Sum(data) != fp {
			return fmt.Errorf("%w: spool chunk %s of %s does not match its fingerprint", ErrSpoolCorrupt, fp, st.sp)
		}
		chunks = append(chunks, store.PackedChunk{FP: fp, Data: data})
	}
	if st.hurry.Load() > 0 {
		targets = u.flush
	}
	if len(reused) > 0 {
		if err := u.place(ctx, st, reused, reusedRefs, dir.Read, targets); err != nil {
			return err
		}
	}
	switch len(chunks) {
	case 0:
	case 1:
		if err := u.putChunk(ctx, st, chunks[0].FP, chunks[0].Data, targets); err != nil {
			return err
		}
	default:
		if err := u.putPack(ctx, st, chunks, targets); err != nil {
			return err
		}
	}
	for _, c := range chunks {
		stored = append(stored, c.FP)
	}
	for _, fp := range stored {
		if err := dir.Remove(fp); err != nil {
			return err
		}
	}
	return nil
}

func (u *Uploader) putChunk(ctx context.Context, st *dbState, fp manifest.Fingerprint, data []byte, targets []limitedTarget) error {
	if err := u.putChunkTo(ctx, st, fp, data, targets); err != nil {
		return err
	}
	st.mu.Lock()
	st.status.Chunks++
	st.mu.Unlock()
	return nil
}

// putChunkTo uploads one chunk as an object of its own to every target,
// counting the calls in st's status, and remembers it.
func (u *Uploader) putChunkTo(ctx context.Context, st *dbState, fp manifest.Fingerprint, data []byte, targets []limitedTarget) error {
	for _, t := range targets {
		err := t.lim.PutChunk(ctx, fp, data)
		st.countCall()
		if err != nil {
			if t.Cache {
				u.log.Debug("upload: cache put failed", logKeyTarget, t.Name, logKeyErr, err)
				continue
			}
			return err
		}
	}
	u.remember([]manifest.Fingerprint{fp}, nil)
	return nil
}

// putPack uploads chunks as one pack to every store target, and one by
// one to caches, then records where they are.
func (u *Uploader) putPack(ctx context.Context, st *dbState, chunks []store.PackedChunk, targets []limitedTarget) error {
	refs, err := u.putPackTo(ctx, st, chunks, targets)
	if err != nil {
		return err
	}
	fps := make([]manifest.Fingerprint, len(chunks))
	for i, c := range chunks {
		fps[i] = c.FP
	}
	// Recorded before the spool files go: the manifest must say where
	// these chunks are, even after a restart.
	read := func(fp manifest.Fingerprint) ([]byte, error) {
		i := slices.IndexFunc(chunks, func(c store.PackedChunk) bool { return c.FP == fp })
		return chunks[i].Data, nil
	}
	if err := u.place(ctx, st, fps, refs, read, targets); err != nil {
		return err
	}
	st.mu.Lock()
	st.status.Chunks += int64(len(chunks))
	st.status.Packs++
	st.mu.Unlock()
	return nil
}

// putPackTo uploads chunks as one pack to every store target, and one by
// one to caches, counting the calls in st's status; it remembers them,
// and returns where each went.
func (u *Uploader) putPackTo(ctx context.Context, st *dbState, chunks []store.PackedChunk, targets []limitedTarget) ([]manifest.PackRef, error) {
	blob, id, refs := store.EncodePack(chunks)
	for _, t := range targets {
		if t.Cache {
			for _, c := range chunks {
				if err := t.lim.PutChunk(ctx, c.FP, c.Data); err != nil {
					u.log.Debug("upload: cache put failed", logKeyTarget, t.Name, logKeyErr, err)
					break
				}
			}
			continue
		}
		err := t.lim.PutPack(ctx, id, blob)
		st.countCall()
		if err != nil {
			return nil, err
		}
	}
	fps := make([]manifest.Fingerprint, len(chunks))
	for i, c := range chunks {
		fps[i] = c.FP
	}
	u.remember(fps, refs)
	return refs, nil
}

// remember notes chunks just uploaded, in packs refs (nil: one object
// each).
func (u *Uploader) remember(fps []manifest.Fingerprint, refs []manifest.PackRef) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.recent)+len(fps) > recentMemory {
		clear(u.recent) // crude but bounded; costs only re-uploads
	}
	now := u.opts.Now()
	for i, fp := range fps {
		r := recentUpload{at: now}
		if refs != nil {
			r.ref = refs[i]
		}
		u.recent[fp] = r
	}
}

// recentlyUploaded reports whether fp was uploaded within RecentTTL, and
// where it went.
func (u *Uploader) recentlyUploaded(fp manifest.Fingerprint) (manifest.PackRef, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	r, ok := u.recent[fp]
	return r.ref, ok && u.opts.Now().Sub(r.at) < u.opts.RecentTTL
}
