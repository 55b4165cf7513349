package replicate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/boule-vfs/boule/internal/fsutil"
	"github.com/boule-vfs/boule/manifest"
)

// DefaultRestoreConcurrency is the number of chunks Restore fetches at once.
const DefaultRestoreConcurrency = 16

// RestoreOptions tune Restore.
type RestoreOptions struct {
	// Concurrency bounds the chunks fetched at once; zero means
	// DefaultRestoreConcurrency.
	Concurrency int
	// Progress, if set, is called after each chunk is written with the
	// bytes written so far and the total. Calls are sequential.
	Progress func(done, total int64)
}

// Restore writes the database that m describes to w, in order, fetching up
// to opts.Concurrency chunks at once from the first of stores that has
// each, every one verified against its fingerprint. Identical chunks are
// fetched once.
func Restore(ctx context.Context, stores []Store, m *manifest.Manifest, w io.Writer, opts RestoreOptions) error {
	conc := opts.Concurrency
	if conc <= 0 {
		conc = DefaultRestoreConcurrency
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	// Cancel first, then wait: an early return must stop the feeder and
	// the workers before it waits for them.
	defer func() {
		cancel()
		wg.Wait()
	}()

	// The work is in segments: a chunk, or a run of chunks from one pack,
	// which is fetched once. The feeder hands each segment to the workers
	// and, in file order, to the writer through a queue of conc+4 slots:
	// fetching runs at most that far ahead of writing, so memory stays
	// near conc+4 segments (4 MiB each at most, with the default packs)
	// whatever the database size.
	type slot struct {
		seg  segment
		data [][]byte
		err  error
		done chan struct{} // fetched
	}
	window := conc + 4
	ordered := make(chan *slot, window)
	work := make(chan *slot)
	dedup := newChunkDedup()
	refs := m.PackRefs()
	segs := segments(m, refs)
	shared := newPackShare(segs, refs, restorePackMemory)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range work {
				if s.seg.packed {
					s.data, s.err = fetchSegment(ctx, stores, m, refs, s.seg, shared)
				} else {
					var d []byte
					d, s.err = dedup.fetch(ctx, m.Chunks[s.seg.first], func() ([]byte, error) {
						return fetchChunk(ctx, stores, m, refs, s.seg.first, nil)
					})
					s.data = [][]byte{d}
				}
				close(s.done)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(work)
		defer close(ordered)
		for _, seg := range segs {
			s := &slot{seg: seg, done: make(chan struct{})}
			select {
			case ordered <- s: // blocks while the writer is window segments behind
			case <-ctx.Done():
				return
			}
			select {
			case work <- s:
			case <-ctx.Done():
				return
			}
		}
	}()

	var written int64
	for s := range ordered {
		select {
		case <-s.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if s.err != nil {
			return s.err
		}
		for _, d := range s.data {
			if _, err := w.Write(d); err != nil {
				return fmt.Errorf("replicate: restore: write: %w", err)
			}
			written += int64(len(d))
		}
		if !s.seg.packed {
			dedup.done(m.Chunks[s.seg.first])
		}
		s.data = nil
		if opts.Progress != nil {
			opts.Progress(written, m.Size)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if written != m.Size {
		return fmt.Errorf("replicate: restore: wrote %d bytes, manifest says %d", written, m.Size)
	}
	return nil
}

// A segment is chunks first to first+n-1 of a manifest: one chunk, or a
// run of chunks in one pack.
type segment struct {
	first, n int
	packed   bool
}

// maxSegment bounds the chunks of a segment.
const maxSegment = 64

// segments cuts m's chunks into segments, in file order.
func segments(m *manifest.Manifest, refs map[uint32]manifest.PackRef) []segment {
	var out []segment
	for i := 0; i < len(m.Chunks); {
		ref, packed := refs[uint32(i)]
		j := i + 1
		if packed {
			for j < len(m.Chunks) && j-i < maxSegment {
				if r, ok := refs[uint32(j)]; !ok || r.ID != ref.ID {
					break
				}
				j++
			}
		}
		out = append(out, segment{first: i, n: j - i, packed: packed})
		i = j
	}
	return out
}

// fetchSegment gets the pack of a packed segment through shared and
// returns its chunks, each verified; a chunk the pack does not yield is
// looked for chunk by chunk, caches first.
func fetchSegment(ctx context.Context, stores []Store, m *manifest.Manifest, refs map[uint32]manifest.PackRef, seg segment, shared *packShare) ([][]byte, error) {
	id := refs[uint32(seg.first)].ID
	pack, perr := shared.get(ctx, id, func() ([]byte, error) { return FetchPack(ctx, stores, id) })
	defer shared.done(id)
	out := make([][]byte, seg.n)
	for k := range out {
		i := seg.first + k
		if perr == nil {
			d, err := DecodePackMember(pack, refs[uint32(i)], m.Chunks[i])
			if err == nil && len(d) == manifest.ChunkLen(m.Size, i) {
				out[k] = d
				continue
			}
		}
		d, err := fetchChunk(ctx, stores, m, refs, i, nil)
		if err != nil {
			return nil, err
		}
		out[k] = d
	}
	return out, nil
}

// restorePackMemory bounds the packs a restore keeps for the segments
// still to come.
const restorePackMemory = 128 << 20

// packShare fetches a pack once for all the segments that read from it:
// a pack whose chunks were replaced here and there since it was uploaded
// is cut into several segments. It keeps a pack until its last segment is
// done, within a memory bound; past it, a later segment fetches again.
type packShare struct {
	mu      sync.Mutex
	entries map[manifest.Fingerprint]*shareEntry
	kept    int
	limit   int
}

type shareEntry struct {
	left int          // segments still to read from the pack
	f    *shareFlight // nil until fetched, or again once let go
	kept bool         // f's bytes count in packShare.kept
}

type shareFlight struct {
	done chan struct{}
	data []byte
	err  error
}

func newPackShare(segs []segment, refs map[uint32]manifest.PackRef, limit int) *packShare {
	p := &packShare{entries: map[manifest.Fingerprint]*shareEntry{}, limit: limit}
	for _, s := range segs {
		if !s.packed {
			continue
		}
		id := refs[uint32(s.first)].ID
		e := p.entries[id]
		if e == nil {
			e = &shareEntry{}
			p.entries[id] = e
		}
		e.left++
	}
	return p
}

// get returns pack id, fetched by fetch unless it is kept or on its way.
func (p *packShare) get(ctx context.Context, id manifest.Fingerprint, fetch func() ([]byte, error)) ([]byte, error) {
	p.mu.Lock()
	e := p.entries[id]
	if f := e.f; f != nil {
		p.mu.Unlock()
		select {
		case <-f.done:
			return f.data, f.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f := &shareFlight{done: make(chan struct{})}
	e.f = f
	p.mu.Unlock()
	f.data, f.err = fetch()
	p.mu.Lock()
	if f.err == nil && e.left > 1 && e.f == f && p.kept+len(f.data) <= p.limit {
		e.kept = true
		p.kept += len(f.data)
	}
	p.mu.Unlock()
	close(f.done)
	return f.data, f.err
}

// done notes that a segment of pack id has its chunks. The pack is let
// go after its last segment, at once if it is not kept or failed; a later
// segment then fetches it again.
func (p *packShare) done(id manifest.Fingerprint) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.entries[id]
	e.left--
	f := e.f
	if f == nil {
		return
	}
	select {
	case <-f.done:
	default:
		return // on its way for another segment
	}
	if e.left > 0 && e.kept && f.err == nil {
		return
	}
	if e.kept {
		p.kept -= len(f.data)
	}
	e.f, e.kept = nil, false
}

// chunkDedup fetches each fingerprint once while it is in the window.
type chunkDedup struct {
	mu sync.Mutex
	m  map[manifest.Fingerprint]*dedupEntry
}

type dedupEntry struct {
	users int
	done  chan struct{}
	data  []byte
	err   error
}

func newChunkDedup() *chunkDedup { return &chunkDedup{m: map[manifest.Fingerprint]*dedupEntry{}} }

func (d *chunkDedup) fetch(ctx context.Context, fp manifest.Fingerprint, f func() ([]byte, error)) ([]byte, error) {
	d.mu.Lock()
	e, ok := d.m[fp]
	if ok {
		e.users++
		d.mu.Unlock()
		select {
		case <-e.done:
			return e.data, e.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	e = &dedupEntry{users: 1, done: make(chan struct{})}
	d.m[fp] = e
	d.mu.Unlock()
	e.data, e.err = f()
	close(e.done)
	return e.data, e.err
}

// done forgets fp once every chunk that shares it has been written.
func (d *chunkDedup) done(fp manifest.Fingerprint) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.m[fp]; ok {
		e.users--
		if e.users <= 0 {
			delete(d.m, fp)
		}
	}
}

// ErrNotRegularFile is returned by RestoreFile when something other than a
// regular file is at the output path: a directory, a named pipe, a device,
// a socket or a symbolic link, which renaming the restored file over it
// would replace (as root, over /dev/null).
var ErrNotRegularFile = errors.New("replicate: output is not a regular file")

// FileKind names the type of a file mode for messages: "a named pipe
// (FIFO)", "a character device", "a regular file".
func FileKind(mode fs.FileMode) string { return fsutil.FileKind(mode) }

// checkReplaceable returns an error wrapping ErrNotRegularFile when path
// exists and is not a regular file; it does not follow a symbolic link.
func checkReplaceable(path string) error {
	st, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("replicate: restore %s: %w", path, err)
	case !st.Mode().IsRegular():
		return fmt.Errorf("%w: %s is %s; refusing to replace it", ErrNotRegularFile, path, FileKind(st.Mode()))
	}
	return nil
}

// RestoreFile restores m to the file at path atomically: it writes a temp
// file in the same directory, syncs it, and renames it over path, so that
// a failed restore never leaves a partial file at path.
//
// It refuses to restore over a database that has a journal, WAL or shm
// file next to it: SQLite would apply them to the restored file. It
// refuses, with ErrNotRegularFile, to replace anything at path but a
// regular file, and leaves it untouched.
func RestoreFile(ctx context.Context, stores []Store, m *manifest.Manifest, path string, opts RestoreOptions) error {
	if err := checkReplaceable(path); err != nil {
		return err
	}
	for _, suffix := range []string{"-journal", "-wal", "-shm"} {
		if _, err := os.Lstat(path + suffix); err == nil {
			return fmt.Errorf("replicate: restore %s: %s exists and SQLite would apply it to the restored database; move it away first", path, path+suffix)
		}
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.boule-restore")
	if err != nil {
		return fmt.Errorf("replicate: restore %s: %w", path, err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := Restore(ctx, stores, m, newWritebackWriter(tmp, m.Size), opts); err != nil {
		return fmt.Errorf("replicate: restore %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("replicate: restore %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("replicate: restore %s: sync: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("replicate: restore %s: %w", path, err)
	}
	// Again: the restore took a while, and something may have appeared.
	if err := checkReplaceable(path); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replicate: restore %s: %w", path, err)
	}
	ok = true
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// ErrNoVersion is returned by ManifestAt when no version of the manifest
// is old enough.
var ErrNoVersion = errors.New("replicate: no manifest version at or before that time")

// ManifestAt returns the version of the manifest under key that was the
// newest at time at: the newest version stored at or before it, from the
// first store that keeps versions of key.
//
// It returns the decoded manifest and its encoding, as FetchManifest does.
func ManifestAt(ctx context.Context, stores []Store, key string, at time.Time) (*manifest.Manifest, []byte, Version, error) {
	var errs []error
	for _, s := range stores {
		vs, err := s.ManifestVersions(ctx, key)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, v := range vs { // newest first
			if v.LastModified.After(at) {
				continue
			}
			b, err := s.GetManifestVersion(ctx, key, v.ID)
			if err != nil {
				return nil, nil, v, err
			}
			m, err := manifest.Decode(b)
			if err != nil {
				return nil, nil, v, fmt.Errorf("replicate: manifest %s version %s in %s: %w", key, v.ID, s, err)
			}
			// Some stores (S3's listings among them) give times to the
			// second: a version stored later within at's second looks
			// stored before at. One created after at was stored after it.
			if v.LastModified.Nanosecond() == 0 && at.Sub(v.LastModified) < time.Second && m.Created.After(at) {
				continue
			}
			return m, b, v, nil
		}
		oldest := "none"
		if len(vs) > 0 {
			oldest = vs[len(vs)-1].LastModified.UTC().Format(time.RFC3339Nano)
		}
		// Another store may keep a longer history.
		errs = append(errs, fmt.Errorf("%w: %s in %s at %s (oldest kept: %s)", ErrNoVersion, key, s, at.UTC().Format(time.RFC3339Nano), oldest))
	}
	if len(errs) == 0 {
		return nil, nil, Version{}, fmt.Errorf("replicate: manifest %s: no store to read from", key)
	}
	return nil, nil, Version{}, errors.Join(errs...)
}
