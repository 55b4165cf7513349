package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/boule-vfs/boule/internal/fsutil"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
)

// DefaultRestoreConcurrency is the number of chunks Restore fetches at once.
const DefaultConcurrency = 16

// RestoreOptions tune Restore.
type Options struct {
	// Concurrency bounds the chunks fetched at once; zero means
	// DefaultRestoreConcurrency.
	Concurrency int
	// Progress, if set, is called after each chunk is written with the
	// bytes written so far and the total. Calls are sequential.
	Progress func(done, total int64)
	// Replace lets RestoreFile replace a file at its output path; without
	// it, RestoreFile fails with ErrOutputExists. It never replaces a
	// database in use (see RestoreFile).
	Replace bool
	// Perm is the permission bits of the file RestoreFile creates, less
	// the umask; zero means 0600. A manifest records no mode: give the
	// source database's bits when they are known.
	Perm fs.FileMode
}

// Restore writes the database that m describes to w, in order, fetching up
// to opts.Concurrency chunks at once from the first of stores that has
// each, every one verified against its fingerprint. Identical chunks are
// fetched once.
func Write(ctx context.Context, stores []store.Store, m *manifest.Manifest, w io.Writer, opts Options) error {
	conc := opts.Concurrency
	if conc <= 0 {
		conc = DefaultConcurrency
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
						return store.FetchChunkRefs(ctx, stores, m, refs, s.seg.first, nil)
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
				return fmt.Errorf("restore: write: %w", err)
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
		return fmt.Errorf("restore: wrote %d bytes, manifest says %d", written, m.Size)
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
func fetchSegment(ctx context.Context, stores []store.Store, m *manifest.Manifest, refs map[uint32]manifest.PackRef, seg segment, shared *packShare) ([][]byte, error) {
	id := refs[uint32(seg.first)].ID
	pack, perr := shared.get(ctx, id, func() ([]byte, error) { return store.FetchPack(ctx, stores, id) })
	defer shared.done(id)
	out := make([][]byte, seg.n)
	for k := range out {
		i := seg.first + k
		if perr == nil {
			d, err := store.DecodePackMember(pack, refs[uint32(i)], m.Chunks[i])
			if err == nil && len(d) == manifest.ChunkLen(m.Size, i) {
				out[k] = d
				continue
			}
		}
		d, err := store.FetchChunkRefs(ctx, stores, m, refs, i, nil)
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
	left int     // segments still to read from the pack
	f    *flight // nil until fetched, or again once let go
	kept bool    // f's bytes count in packShare.kept
}

// flight is a fetch that other readers of the same bytes wait for: data
// and err are set before done is closed.
type flight struct {
	done chan struct{}
	data []byte
	err  error
}

func newFlight() *flight { return &flight{done: make(chan struct{})} }

// wait returns the fetch's result once it is in, or the context's error
// if that ends first.
func (f *flight) wait(ctx context.Context) ([]byte, error) {
	select {
	case <-f.done:
		return f.data, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
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
		return f.wait(ctx)
	}
	f := newFlight()
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
	*flight
}

func newChunkDedup() *chunkDedup { return &chunkDedup{m: map[manifest.Fingerprint]*dedupEntry{}} }

func (d *chunkDedup) fetch(ctx context.Context, fp manifest.Fingerprint, f func() ([]byte, error)) ([]byte, error) {
	d.mu.Lock()
	e, ok := d.m[fp]
	if ok {
		e.users++
		d.mu.Unlock()
		return e.wait(ctx)
	}
	e = &dedupEntry{users: 1, flight: newFlight()}
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
var ErrNotRegularFile = errors.New("restore: output is not a regular file")

// FileKind names the type of a file mode for messages: "a named pipe
// (FIFO)", "a character device", "a regular file".
func FileKind(mode fs.FileMode) string { return fsutil.FileKind(mode) }

// checkReplaceable returns an error wrapping ErrNotRegularFile when path
// exists and is not a regular file; it does not follow a symbolic link.
func checkReplaceable(path string) error {
	st, err := fsutil.Irregular(path)
	if err != nil {
		return fmt.Errorf("restore: %s: %w", path, err)
	}
	if st != nil {
		return fmt.Errorf("%w: %s is %s; refusing to replace it", ErrNotRegularFile, path, FileKind(st.Mode()))
	}
	return nil
}

// ErrOutputExists is returned by RestoreFile when a file is at the output
// path and RestoreOptions.Replace is not set.
var ErrOutputExists = errors.New("restore: output file exists")

// ErrInUse is returned by RestoreFile when a process has the database at
// the output path open or holds a SQLite lock on it: replacing the file
// under it would lose what it writes next.
var ErrInUse = errors.New("restore: output database is in use")

// restoreTempSuffix ends the names of RestoreFile's temp files:
// ".NAME.DIGITS.boule-restore", next to NAME.
const restoreTempSuffix = ".boule-restore"

// isRestoreTemp reports whether name is a temp file of a restore to base.
func isRestoreTemp(name, base string) bool {
	digits, ok := strings.CutPrefix(name, "."+base+".")
	if !ok {
		return false
	}
	digits, ok = strings.CutSuffix(digits, restoreTempSuffix)
	if !ok || digits == "" {
		return false
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return false
		}
	}
	return true
}

// removeStaleTemps removes the temp files that killed restores to base
// left in dir: those no running restore holds locked.
func removeStaleTemps(dir, base string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !isRestoreTemp(e.Name(), base) || !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		f, err := os.OpenFile(p, sweepOpenFlags, 0)
		if err != nil {
			continue
		}
		if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
			if locked, err := lockTemp(f); err == nil && locked {
				// Still the file locked, not a new one under its name.
				if cur, err := os.Lstat(p); err == nil && os.SameFile(cur, st) {
					_ = os.Remove(p)
				}
			}
		}
		f.Close()
	}
}

// createRestoreTemp creates a new temp file for a restore to path with
// permission bits perm (less the umask), locked for as long as it stays
// open.
func createRestoreTemp(path string, perm fs.FileMode) (*os.File, error) {
	dir, base := filepath.Split(path)
	for range 100 {
		name := filepath.Join(dir, "."+base+"."+strconv.FormatUint(uint64(rand.Uint32()), 10)+restoreTempSuffix)
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, perm)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		locked, err := lockTemp(f)
		if err != nil {
			// A file system without flock: the sweeps of other
			// restores cannot lock either, and remove nothing.
			return f, nil
		}
		if locked {
			// Another restore's sweep may have taken it for a leftover
			// between its creation and the lock, and removed it.
			st, serr := f.Stat()
			cur, lerr := os.Lstat(name)
			if serr == nil && lerr == nil && os.SameFile(st, cur) {
				return f, nil
			}
		}
		f.Close()
	}
	return nil, errors.New("could not create a temp file")
}

// checkJournals refuses to restore over a database with a journal, WAL or
// shm file next to it.
func checkJournals(path string) error {
	for _, suffix := range []string{"-journal", "-wal", "-shm"} {
		if _, err := os.Lstat(path + suffix); err == nil {
			return fmt.Errorf("restore: %s: %s exists and SQLite would apply it to the restored database; "+
				"with no process using the database, open and close it once with sqlite3 (which checkpoints a log into the file and deletes it), "+
				"or move it away if it is not the database's", path, path+suffix)
		}
	}
	return nil
}

// checkInUse returns an error wrapping ErrInUse when a process has the
// file at path open (as far as /proc shows) or holds a SQLite lock on it.
func checkInUse(path string) error {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("restore: %s: %w", path, err)
	}
	// Openers first: when this process has the file open, opening and
	// closing it here would drop its SQLite locks.
	if pids := openersOf(st); len(pids) > 0 {
		return fmt.Errorf("%w: %s is open in process %s; replacing it would lose what it writes next; stop it first",
			ErrInUse, path, joinInts(pids))
	}
	pid, held, err := sqliteLockHolder(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("restore: %s: %w", path, err)
	}
	if held {
		who := "a process"
		if pid > 0 {
			who = "process " + strconv.Itoa(pid)
		}
		return fmt.Errorf("%w: %s holds a SQLite lock on %s; replacing it would lose what it writes next; stop it first",
			ErrInUse, who, path)
	}
	return nil
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

// checkOutput checks what is at path before RestoreFile writes, and again
// before it renames the restored file there.
func checkOutput(path string, replace bool) error {
	if err := checkReplaceable(path); err != nil {
		return err
	}
	if _, err := os.Lstat(path); err == nil && !replace {
		return fmt.Errorf("%w: %s; refusing to replace it", ErrOutputExists, path)
	}
	if err := checkJournals(path); err != nil {
		return err
	}
	return checkInUse(path)
}

// RestoreFile restores m to the file at path atomically: it writes a temp
// file in the same directory, syncs it, and renames it to path, so that a
// failed restore never leaves a partial file at path. It first removes the
// temp files that killed restores to path left behind.
//
// The file's permission bits are opts.Perm, or 0600, less the umask; when
// it replaces a file, also less what that file's bits do not grant.
//
// It refuses, with ErrOutputExists, a file already at path unless
// opts.Replace is set. Even then it refuses to restore over a database
// that has a journal, WAL or shm file next to it (SQLite would apply them
// to the restored file), and, with ErrInUse, one that a process has open
// or holds a SQLite lock on. It refuses, with ErrNotRegularFile, to
// replace anything but a regular file. It makes these checks before it
// starts and again just before the rename; what it refuses, it leaves
// untouched.
func File(ctx context.Context, stores []store.Store, m *manifest.Manifest, path string, opts Options) error {
	dir, base := filepath.Split(path)
	removeStaleTemps(filepath.Clean(dir), base)
	if err := checkOutput(path, opts.Replace); err != nil {
		return err
	}
	perm := opts.Perm.Perm() & 0o666
	if opts.Perm == 0 {
		perm = 0o600
	}
	if st, err := os.Lstat(path); err == nil {
		perm &= st.Mode().Perm()
	}
	tmp, err := createRestoreTemp(path, perm)
	if err != nil {
		return fmt.Errorf("restore: %s: %w", path, err)
	}
	// The temp file stays open, hence locked against the sweep of
	// another restore, until it is renamed or removed.
	defer tmp.Close()
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp.Name())
		}
	}()
	if err := Write(ctx, stores, m, newWritebackWriter(tmp), opts); err != nil {
		return fmt.Errorf("restore: %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("restore: %s: sync: %w", path, err)
	}
	// Again: the restore took a while, and something may have appeared.
	if err := checkOutput(path, opts.Replace); err != nil {
		return err
	}
	rename := renameNoReplace
	if opts.Replace {
		rename = os.Rename
	}
	if err := rename(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %s appeared during the restore; refusing to replace it", ErrOutputExists, path)
		}
		return fmt.Errorf("restore: %s: %w", path, err)
	}
	ok = true
	if d, err := os.Open(filepath.Clean(dir)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// ErrNoVersion is returned by ManifestAt when no version of the manifest
// is old enough.
var ErrNoVersion = errors.New("restore: no manifest version at or before that time")

// ManifestAt returns the version of the manifest under key that was the
// newest at time at: the newest version stored at or before it, from the
// first store that keeps versions of key, or the newest version of all
// when at is at or after the time that version's manifest was created.
//
// Versions are taken in the store's order, newest first, never sorted by
// time: a version with a time in the future (a dir store's version named
// by a writer whose clock ran ahead) never hides the newer ones.
//
// It returns the decoded manifest and its encoding, as FetchManifest does.
func ManifestAt(ctx context.Context, stores []store.Store, key string, at time.Time) (*manifest.Manifest, []byte, store.Version, error) {
	var errs []error
	for _, s := range stores {
		vs, err := s.ManifestVersions(ctx, key)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for i, v := range vs { // newest first
			stored := !v.LastModified.After(at)
			if !stored && i > 0 {
				continue
			}
			b, err := s.GetManifestVersion(ctx, key, v.ID)
			if err != nil {
				return nil, nil, v, err
			}
			m, err := store.DecodeManifest(ctx, s, b, nil)
			if err != nil {
				return nil, nil, v, fmt.Errorf("restore: manifest %s version %s in %s: %w", key, v.ID, s, err)
			}
			if !stored {
				// The newest version, stored after at: it is the one
				// when it was created at or before at (the upload took a
				// while, or the store's clock is ahead of the writer's).
				if !m.Created.After(at) {
					return m, b, v, nil
				}
				continue
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
		return nil, nil, store.Version{}, fmt.Errorf("restore: manifest %s: no store to read from", key)
	}
	return nil, nil, store.Version{}, errors.Join(errs...)
}

// Reassemble writes the database that m describes to w, chunk by chunk,
// each verified against its fingerprint.
func Reassemble(ctx context.Context, stores []store.Store, m *manifest.Manifest, w io.Writer) error {
	refs := m.PackRefs()
	var last store.PackMemo
	for i := range m.Chunks {
		data, err := store.FetchChunkRefs(ctx, stores, m, refs, i, &last)
		if err != nil {
			return err
		}
		if _, err := w.Write(data); err != nil {
			return err
		}
	}
	return nil
}
