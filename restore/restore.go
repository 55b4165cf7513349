package restore

import (
	"context"
	"encoding/binary"
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
// each, every one verified against its fingerprint. Identical chunks
// within the window of chunks in flight are fetched once, and so are
// those that keep repeating (a few recent ones are kept; see hotChunks).
//
// Beyond m itself, what it holds is bounded whatever the database size:
// the window of segments in flight, the packs later segments still need
// (restorePackMemory), the repeated chunks it keeps, and, for a manifest
// with packs, m's PackIndex (four bytes a chunk). It allocates nothing
// per chunk but what the stores return for it.
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
	// which is fetched once. The feeder cuts them one at a time, in file
	// order, from the pack index, and hands each to the workers and to
	// the writer in a slot; there are window slots, reused: fetching runs
	// at most that far ahead of writing, so memory stays near window
	// segments (4 MiB each at most, with the default packs) whatever the
	// database size.
	window := conc + 4
	free := make(chan *slot, window)
	for range window {
		free <- &slot{data: make([][]byte, maxSegment), done: make(chan struct{}, 1)}
	}
	ordered := make(chan *slot, window)
	work := make(chan *slot)
	x := m.PackIndex()
	dedup := newChunkDedup(m, x)
	shared := newPackShare(restorePackMemory)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range work {
				if s.seg.pack >= 0 {
					s.err = fetchSegment(ctx, stores, m, x, s.seg, shared, s.data[:s.seg.n])
				} else {
					s.data[0], s.err = store.FetchChunkRefs(ctx, stores, m, nil, s.seg.first, nil)
				}
				s.done <- struct{}{} // never blocks: a slot is fetched once at a time
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(work)
		defer close(ordered)
		cut := segmenter{m: m, x: x}
		for {
			seg, ok := cut.next()
			if !ok {
				return
			}
			var s *slot
			select {
			case s = <-free: // waits while the writer is window segments behind
			case <-ctx.Done():
				return
			}
			s.seg, s.dup, s.entry, s.err = seg, false, nil, nil
			fetch := true
			switch {
			case seg.pack >= 0:
				shared.add(seg.pack, seg.last)
			case m.Inline[uint32(seg.first)] != nil:
				fetch = false
			default:
				s.entry, s.dup = dedup.claim(m.Chunks[seg.first])
				fetch = !s.dup
			}
			s.fetch = fetch
			select {
			case ordered <- s:
			case <-ctx.Done():
				return
			}
			if !fetch {
				continue
			}
			select {
			case work <- s:
			case <-ctx.Done():
				return
			}
		}
	}()

	var written int64
	write := func(d []byte) error {
		if _, err := w.Write(d); err != nil {
			return fmt.Errorf("restore: write: %w", err)
		}
		written += int64(len(d))
		return nil
	}
	for s := range ordered {
		if s.fetch {
			select {
			case <-s.done:
			case <-ctx.Done():
				return ctx.Err()
			}
			if s.err != nil {
				return s.err
			}
		}
		switch {
		case s.seg.pack >= 0:
			for k, d := range s.data[:s.seg.n] {
				if err := write(d); err != nil {
					return err
				}
				s.data[k] = nil
			}
		case s.entry == nil: // inline
			if err := write(m.Inline[uint32(s.seg.first)]); err != nil {
				return err
			}
		default:
			d := s.data[0]
			if s.dup {
				d = dedup.bytes(s.entry)
			}
			if err := write(d); err != nil {
				return err
			}
			dedup.release(s.entry, d, s.dup)
			s.data[0] = nil
		}
		s.entry = nil
		free <- s // never blocks: there are window slots
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

// A slot carries a segment from the feeder to a worker and to the
// writer, and is reused for another once written.
type slot struct {
	seg   segment
	fetch bool      // handed to a worker; done says when it is fetched
	dup   bool      // a repeat: its bytes are entry's
	entry *dupEntry // for a chunk in no pack and not inline
	data  [][]byte  // the segment's chunks; maxSegment long
	err   error
	done  chan struct{} // fetched; one slot of buffer
}

// A segment is chunks first to first+n-1 of a manifest: one chunk, or a
// run of chunks in one pack.
type segment struct {
	first, n int
	pack     int  // index in the manifest's Packs, or -1 for none
	last     bool // the last segment that reads from pack
}

// maxSegment bounds the chunks of a segment.
const maxSegment = 64

// segmenter cuts a manifest's chunks into segments, in file order, one
// at a time.
type segmenter struct {
	m     *manifest.Manifest
	x     *manifest.PackIndex // m's
	next0 int                 // the first chunk of the next segment
}

// next returns the next segment, and false after the last.
func (c *segmenter) next() (segment, bool) {
	n := len(c.m.Chunks)
	i := c.next0
	if i >= n {
		return segment{}, false
	}
	k, packed := c.x.Pack(i)
	j := i + 1
	if packed {
		for j < n && j-i < maxSegment {
			if k2, ok := c.x.Pack(j); !ok || k2 != k {
				break
			}
			j++
		}
	}
	c.next0 = j
	seg := segment{first: i, n: j - i, pack: -1}
	if packed {
		mb := c.m.Packs[k].Members
		seg.pack, seg.last = k, int(mb[len(mb)-1].Index) < j
	}
	return seg, true
}

// fetchSegment gets the pack of a packed segment through shared and
// puts its chunks in out, each verified; a chunk the pack does not yield
// is looked for chunk by chunk, caches first.
func fetchSegment(ctx context.Context, stores []store.Store, m *manifest.Manifest, x *manifest.PackIndex, seg segment, shared *packShare, out [][]byte) error {
	id := m.Packs[seg.pack].ID
	pack, perr := shared.get(ctx, seg.pack, func() ([]byte, error) { return store.FetchPack(ctx, stores, id) })
	defer shared.done(seg.pack)
	for k := range out {
		i := seg.first + k
		ref, _ := x.Ref(i)
		if perr == nil {
			d, err := store.DecodePackMember(pack, ref, m.Chunks[i])
			if err == nil && len(d) == manifest.ChunkLen(m.Size, i) {
				out[k] = d
				continue
			}
		}
		d, err := store.FetchChunkRefs(ctx, stores, m, map[uint32]manifest.PackRef{uint32(i): ref}, i, nil)
		if err != nil {
			return err
		}
		out[k] = d
	}
	return nil
}

// restorePackMemory bounds the packs a restore keeps for the segments
// still to come.
const restorePackMemory = 128 << 20

// shareEntryCost is what a kept pack counts for beyond its bytes, so that
// restorePackMemory bounds the entries of tiny packs too.
const shareEntryCost = 256

// packShare fetches a pack once for all the segments that read from it:
// a pack whose chunks were replaced here and there since it was uploaded
// is cut into several segments. It keeps a pack until its last segment is
// done, within a memory bound; past it, a later segment fetches again. It
// has entries only for the packs of the segments in flight and the packs
// it keeps, by index in the manifest's Packs.
type packShare struct {
	mu      sync.Mutex
	entries map[int]*shareEntry
	kept    int
	limit   int
}

type shareEntry struct {
	pending int     // segments handed out and not done
	final   bool    // the pack's last segment has been handed out
	f       *flight // nil until fetched, or again once let go
	kept    bool    // f's bytes count in packShare.kept
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

func newPackShare(limit int) *packShare {
	return &packShare{entries: map[int]*shareEntry{}, limit: limit}
}

// add notes, in file order, that a segment reading pack k is handed out,
// and whether it is the pack's last.
func (p *packShare) add(k int, last bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.entries[k]
	if e == nil {
		e = &shareEntry{}
		p.entries[k] = e
	}
	e.pending++
	e.final = e.final || last
}

// get returns pack k, fetched by fetch unless it is kept or on its way.
func (p *packShare) get(ctx context.Context, k int, fetch func() ([]byte, error)) ([]byte, error) {
	p.mu.Lock()
	e := p.entries[k]
	if f := e.f; f != nil {
		p.mu.Unlock()
		return f.wait(ctx)
	}
	f := newFlight()
	e.f = f
	p.mu.Unlock()
	f.data, f.err = fetch()
	p.mu.Lock()
	more := !e.final || e.pending > 1 // segments still to read from it
	if cost := len(f.data) + shareEntryCost; f.err == nil && more && e.f == f && p.kept+cost <= p.limit {
		e.kept = true
		p.kept += cost
	}
	p.mu.Unlock()
	close(f.done)
	return f.data, f.err
}

// done notes that a segment of pack k has its chunks. The pack is let go
// after its last segment, at once if it is not kept or failed; a later
// segment then fetches it again.
func (p *packShare) done(k int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.entries[k]
	e.pending--
	if f := e.f; f != nil {
		select {
		case <-f.done:
		default:
			return // on its way for another segment
		}
		if e.kept && f.err == nil && (e.pending > 0 || !e.final) {
			return
		}
		if e.kept {
			p.kept -= len(f.data) + shareEntryCost
		}
		e.f, e.kept = nil, false
	}
	if e.pending == 0 {
		delete(p.entries, k)
	}
}

// hotChunks is how many chunks that repeat a restore keeps the bytes of
// once no segment in flight reads them, so that a chunk that keeps coming
// back (zeroed pages, say) is fetched once rather than once per window it
// appears in.
const hotChunks = 16

// maxRepeatBits bounds the bits of each of the two bit sets that tell
// the fingerprints that repeat: 1 MiB each.
const maxRepeatBits = 1 << 23

// chunkDedup fetches each fingerprint once while it is in the window, and
// keeps the bytes of the hotChunks repeating ones used last. The feeder
// claims a fingerprint for each chunk in no pack, in file order; the
// writer releases it once the chunk is written, in the same order, so
// the first claim of a fingerprint is written, with the bytes the others
// read, before them.
//
// Which fingerprints repeat, it tells from two bit sets of a bounded
// size, filled in a pass over the manifest: a fingerprint's bit in once,
// then, seen again, in twice. Many distinct chunks share a bit: a chunk
// taken for a repeating one is only kept for nothing, a while.
type chunkDedup struct {
	mu    sync.Mutex
	table map[manifest.Fingerprint]*dupEntry // in the window, or hot
	free  []*dupEntry
	hot   int // idle entries kept for their bytes
	tick  uint64
	twice []uint64 // the bits of the fingerprints seen twice or more
	mask  uint32   // of a fingerprint's bit number
}

type dupEntry struct {
	fp       manifest.Fingerprint
	data     []byte // once the first claim is written
	refs     int    // claims not yet released
	repeated bool   // claimed twice or more, or may be
	used     uint64 // tick of the last release
}

// newChunkDedup returns the chunkDedup of m's chunks in no pack and not
// inline.
func newChunkDedup(m *manifest.Manifest, x *manifest.PackIndex) *chunkDedup {
	bits := 64
	for bits < 4*len(m.Chunks) && bits < maxRepeatBits {
		bits *= 2
	}
	d := &chunkDedup{table: map[manifest.Fingerprint]*dupEntry{}, twice: make([]uint64, bits/64), mask: uint32(bits - 1)}
	once := make([]uint64, bits/64)
	for i := range m.Chunks {
		if _, packed := x.Pack(i); packed {
			continue
		}
		if _, inline := m.Inline[uint32(i)]; inline {
			continue
		}
		b := d.bit(m.Chunks[i])
		w, bit := b/64, uint64(1)<<(b%64)
		if once[w]&bit != 0 {
			d.twice[w] |= bit
		}
		once[w] |= bit
	}
	return d
}

// bit returns fp's bit number in the bit sets.
func (d *chunkDedup) bit(fp manifest.Fingerprint) uint32 {
	return binary.LittleEndian.Uint32(fp[:4]) & d.mask
}

// repeats reports whether fp may be the fingerprint of several chunks.
func (d *chunkDedup) repeats(fp manifest.Fingerprint) bool {
	b := d.bit(fp)
	return d.twice[b/64]&(1<<(b%64)) != 0
}

// claim returns the entry of fp and whether it had one already: then the
// chunk is not fetched, but written with the entry's bytes.
func (d *chunkDedup) claim(fp manifest.Fingerprint) (*dupEntry, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.table[fp]; ok {
		if e.refs == 0 {
			d.hot--
		}
		e.refs++
		e.repeated = true
		return e, true
	}
	var e *dupEntry
	if n := len(d.free); n > 0 {
		e, d.free = d.free[n-1], d.free[:n-1]
	} else {
		e = new(dupEntry)
	}
	*e = dupEntry{fp: fp, refs: 1, repeated: d.repeats(fp)}
	d.table[fp] = e
	return e, false
}

// bytes returns the bytes of e's chunk, written already.
func (d *chunkDedup) bytes(e *dupEntry) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return e.data
}

// release notes that a claim of e is written, with data. An entry no
// claim holds is forgotten, unless it repeated: then it is kept, with the
// hotChunks-1 others used last.
func (d *chunkDedup) release(e *dupEntry, data []byte, dup bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !dup {
		e.data = data
	}
	d.tick++
	e.used = d.tick
	e.refs--
	if e.refs > 0 {
		return
	}
	if !e.repeated {
		d.drop(e)
		return
	}
	d.hot++
	for d.hot > hotChunks {
		var lru *dupEntry
		for _, c := range d.table {
			if c.refs == 0 && (lru == nil || c.used < lru.used) {
				lru = c
			}
		}
		d.drop(lru)
		d.hot--
	}
}

func (d *chunkDedup) drop(e *dupEntry) {
	delete(d.table, e.fp)
	*e = dupEntry{}
	d.free = append(d.free, e)
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
	return WriteFile(path, opts, func(w io.Writer) error {
		return Write(ctx, stores, m, w, opts)
	})
}

// WriteFile writes the file at path as File writes a restored database,
// with the same checks, permission bits and atomic rename, write giving
// its contents: opts.Replace and opts.Perm count, the other options do
// not. It is for the other files that are written where a database may
// be, such as a manifest saved to a file, which must not replace a
// database in use either.
func WriteFile(path string, opts Options, write func(w io.Writer) error) error {
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
	if errors.Is(err, fs.ErrNotExist) {
		// Not the temp file's name, which means nothing to the caller.
		return fmt.Errorf("restore: %s: directory %s does not exist", path, filepath.Clean(dir))
	}
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
	if err := write(newWritebackWriter(tmp)); err != nil {
		return fmt.Errorf("restore: %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("restore: %s: sync: %w", path, err)
	}
	// Again: the write took a while, and something may have appeared.
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
	x := m.PackIndex()
	refs := map[uint32]manifest.PackRef{} // chunk i's, if packed
	var last store.PackMemo
	for i := range m.Chunks {
		clear(refs)
		if ref, ok := x.Ref(i); ok {
			refs[uint32(i)] = ref
		}
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
