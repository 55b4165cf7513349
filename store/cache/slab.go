package cache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/boule-vfs/boule/internal/fsutil"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/internal/localfs"
)

// A slab is one cache file holding the chunks of one pack that a reader
// fetched (doc/FORMAT.md, "Chunk cache"): chunk k raw at k*SlabSlot, then
// an index of their fingerprints and lengths, then a footer. A cold scan
// of a 1 GiB replica wrote 16,384 files of one chunk each; creating a
// file costs 50 to 200 µs on ext4 without a journal, which skips the
// inodes deleted in the last minutes at each creation, and that was the
// largest cost of the scan. A slab is one creation per pack, 64 chunks.
//
// It lives under <dir>/<shard>/<key>.slab, where the shard is the pack
// ID's as Path computes a chunk's, and key is the first 8 bytes of the
// pack ID in hex (SlabKey): the VFS's C code rebuilds the path from that
// number. Two packs with the same key share the name; the index says
// which chunks the file holds, and a chunk not in it is a miss.
const (
	// SlabSlot is the space each chunk of a slab takes: a chunk at
	// most, so that every chunk starts on a page boundary and can be
	// mapped alone.
	SlabSlot = manifest.ChunkSize
	// MaxSlabChunks is the most chunks a slab holds: twice a pack of
	// the uploader's (store.PackChunks).
	MaxSlabChunks = 2 * store.PackChunks

	slabEntry  = manifest.FingerprintSize + 4 // fingerprint, length (LE)
	slabFooter = 16                           // magic, count (LE), version (LE)
	slabMagic  = "BOULESLB"
	slabVer    = 1
	slabSuffix = ".slab"
)

// slabSize is the size of a slab of n chunks.
func slabSize(n int) int64 {
	return int64(n)*SlabSlot + int64(n)*slabEntry + slabFooter
}

// SlabKey is the number that names pack's slab: its first 8 bytes, big
// endian.
func SlabKey(pack manifest.Fingerprint) uint64 { return binary.BigEndian.Uint64(pack[:8]) }

// SlabPath is where the slab of pack lives, if it is there.
func (c *Store) SlabPath(pack manifest.Fingerprint) string {
	return c.slabPath(c.shard(pack), SlabKey(pack))
}

func (c *Store) slabPath(shard int, key uint64) string {
	// Built by hand: a cold scan looks up a slab for every chunk, and
	// fmt and filepath.Join were a twentieth of its lookups' time.
	b := make([]byte, 0, len(c.dir)+1+3+1+16+len(slabSuffix))
	b = appendShard(append(b, strings.TrimSuffix(c.dir, "/")...), shard)
	var h [16]byte
	const digits = "0123456789abcdef"
	for k := range h {
		h[k] = digits[(key>>(60-4*k))&15]
	}
	b = append(b, h[:]...)
	b = append(b, slabSuffix...)
	return string(b)
}

// appendShard appends "/<shard as 3 digits at least>/" to b.
func appendShard(b []byte, shard int) []byte {
	b = append(b, '/')
	if shard < 100 {
		b = append(b, '0')
	}
	if shard < 10 {
		b = append(b, '0')
	}
	b = strconv.AppendInt(b, int64(shard), 10)
	return append(b, '/')
}

// slabIndex is a slab's index: its chunks' fingerprints and lengths, by
// slot.
type slabIndex struct {
	fps  []manifest.Fingerprint
	lens []uint32
}

func (x *slabIndex) find(fp manifest.Fingerprint) (slot int, ok bool) {
	for k, f := range x.fps {
		if f == fp {
			return k, true
		}
	}
	return 0, false
}

// readSlabIndex reads the index of the slab f, named name, of size bytes.
// Its bytes are untrusted: it allocates no more than the index of
// MaxSlabChunks chunks takes, and only once the size agrees with the
// footer.
func readSlabIndex(f io.ReaderAt, name string, size int64) (*slabIndex, error) {
	if size < slabFooter {
		return nil, fmt.Errorf("slab %s: %d bytes: %w", name, size, store.ErrCorrupt)
	}
	var foot [slabFooter]byte
	if _, err := f.ReadAt(foot[:], size-slabFooter); err != nil {
		return nil, fmt.Errorf("slab %s: read footer: %w", name, err)
	}
	n := int(binary.LittleEndian.Uint32(foot[8:]))
	if string(foot[:8]) != slabMagic || binary.LittleEndian.Uint32(foot[12:]) != slabVer || n < 1 || n > MaxSlabChunks || slabSize(n) != size {
		return nil, fmt.Errorf("slab %s: bad footer or size: %w", name, store.ErrCorrupt)
	}
	raw := make([]byte, n*slabEntry)
	if _, err := f.ReadAt(raw, int64(n)*SlabSlot); err != nil {
		return nil, fmt.Errorf("slab %s: read index: %w", name, err)
	}
	x := &slabIndex{fps: make([]manifest.Fingerprint, n), lens: make([]uint32, n)}
	for k := range n {
		e := raw[k*slabEntry:]
		copy(x.fps[k][:], e[:manifest.FingerprintSize])
		x.lens[k] = binary.LittleEndian.Uint32(e[manifest.FingerprintSize:])
		if x.lens[k] == 0 || x.lens[k] > SlabSlot {
			return nil, fmt.Errorf("slab %s: chunk %d of %d bytes: %w", name, k, x.lens[k], store.ErrCorrupt)
		}
	}
	return x, nil
}

// slabIndexes remembers the indexes of the slabs read last, by device,
// inode and change time: a slab's 64 chunks, mapped one by one, cost one
// read of its index.
type slabIndexes struct {
	mu sync.Mutex
	m  map[slabID]*slabIndex
}

type slabID struct {
	dev, ino uint64
	ctime    int64
}

const slabIndexesMax = 256

func (s *slabIndexes) get(fi fs.FileInfo) (*slabIndex, slabID, bool) {
	id, ok := slabIDOf(fi)
	if !ok {
		return nil, id, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	x, ok := s.m[id]
	return x, id, ok
}

func (s *slabIndexes) put(id slabID, x *slabIndex) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[slabID]*slabIndex{}
	}
	if len(s.m) >= slabIndexesMax {
		for k := range s.m {
			delete(s.m, k)
			break
		}
	}
	s.m[id] = x
}

// OpenPacked opens the slab of pack and finds chunk fp in it: it returns
// the open file, its status, the chunk's offset and length in it, and
// whether the file may be mapped (as OpenChunk). A slab that is missing,
// or does not hold fp, wraps fs.ErrNotExist; anything but a regular file
// wraps fsutil.ErrNotRegular; a slab whose footer or index is damaged
// wraps store.ErrCorrupt. The caller verifies the chunk's bytes.
func (c *Store) OpenPacked(pack, fp manifest.Fingerprint) (f *os.File, fi fs.FileInfo, off int64, n int, mappable bool, err error) {
	p := c.SlabPath(pack)
	f, fi, err = fsutil.Open(p)
	if err != nil {
		return nil, nil, 0, 0, false, err
	}
	x, id, ok := c.indexes.get(fi)
	if !ok {
		if x, err = readSlabIndex(f, f.Name(), fi.Size()); err != nil {
			f.Close()
			return nil, nil, 0, 0, false, err
		}
		c.indexes.put(id, x)
	}
	slot, ok := x.find(fp)
	if !ok {
		f.Close()
		return nil, nil, 0, 0, false, fmt.Errorf("slab %s: chunk %s: %w", p, fp, fs.ErrNotExist)
	}
	mappable = fi.Mode().Perm()&0o222 == 0 && localfs.OwnedByMe(fi) && c.privateDirs(filepath.Dir(p))
	return f, fi, int64(slot) * SlabSlot, int(x.lens[slot]), mappable, nil
}

// HasSlab reports whether there is a regular file where pack's slab
// would be. It neither reads nor verifies it.
func (c *Store) HasSlab(pack manifest.Fingerprint) bool {
	fi, err := os.Lstat(c.SlabPath(pack))
	return err == nil && fi.Mode().IsRegular()
}

// HasPacked reports whether pack's slab holds chunk fp. It does not
// verify the chunk: for a prefetch deciding what to fetch.
func (c *Store) HasPacked(pack, fp manifest.Fingerprint) bool {
	f, _, _, _, _, err := c.OpenPacked(pack, fp)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// TouchFile refreshes the times of the cache file at p (a chunk's or a
// slab's, as OpenChunk and OpenPacked opened it), so that eviction spares
// it.
func (c *Store) TouchFile(p string) error {
	now := time.Now()
	if err := os.Chtimes(p, now, now); err != nil {
		return c.fail("touch", p, nil, err)
	}
	return nil
}

// A SlabWriter writes the slab of a pack, chunk by chunk, to a temporary
// file in the slab's shard, and puts it in place when sealed. It is not
// safe for concurrent use.
type SlabWriter struct {
	c     *Store
	pack  manifest.Fingerprint
	shard int
	f     *os.File
	idx   slabIndex
	err   error
}

// SlabsFit reports whether a full slab fits a shard's share of the
// capacity. In a smaller cache a sealed slab would be evicted at once,
// whole: its chunks go in files of their own instead.
func (c *Store) SlabsFit() bool { return c.perShard >= MaxSlabChunks }

// ErrSlabFull is returned by SlabWriter.Add when the slab holds
// MaxSlabChunks chunks.
var ErrSlabFull = errors.New("cache: slab full")

// NewSlab starts the slab of pack: files created as PutChunk's are
// (modes from ctx's WithSourcePerm).
func (c *Store) NewSlab(ctx context.Context, pack manifest.Fingerprint) (*SlabWriter, error) {
	if err := ctx.Err(); err != nil {
		return nil, c.fail("new slab", pack.String(), nil, err)
	}
	s := c.shard(pack)
	sdir := c.shardDir(s)
	c.narrowShard(s, sdir)
	if err := os.MkdirAll(sdir, 0o700); err != nil {
		return nil, c.fail("new slab", pack.String(), nil, err)
	}
	f, err := fsutil.CreateTemp(sdir, tempPrefix, store.FilePerm(store.SourcePerm(ctx)))
	if err != nil {
		return nil, c.fail("new slab", pack.String(), nil, err)
	}
	return &SlabWriter{c: c, pack: pack, shard: s, f: f}, nil
}

// Len is how many chunks the slab holds so far.
func (w *SlabWriter) Len() int { return len(w.idx.fps) }

// Add writes chunk fp, data (which the caller verified), into the next
// slot, and returns the slot's offset. A chunk added already is not
// added again: its offset is returned.
func (w *SlabWriter) Add(fp manifest.Fingerprint, data []byte) (int64, error) {
	if w.err != nil {
		return 0, w.err
	}
	if k, ok := w.idx.find(fp); ok {
		return int64(k) * SlabSlot, nil
	}
	if len(w.idx.fps) >= MaxSlabChunks {
		return 0, ErrSlabFull
	}
	if len(data) == 0 || len(data) > SlabSlot {
		return 0, fmt.Errorf("cache: slab of pack %s: chunk %s of %d bytes", w.pack, fp, len(data))
	}
	off := int64(len(w.idx.fps)) * SlabSlot
	if _, err := w.f.WriteAt(data, off); err != nil {
		w.err = w.c.fail("write slab", w.pack.String(), nil, err)
		return 0, w.err
	}
	w.idx.fps = append(w.idx.fps, fp)
	w.idx.lens = append(w.idx.lens, uint32(len(data)))
	return off, nil
}

// Abort removes the slab being written.
func (w *SlabWriter) Abort() {
	if w.f != nil {
		name := w.f.Name()
		w.f.Close()
		os.Remove(name)
		w.f = nil
	}
}

// Seal completes the slab and renames it into place, over whatever slab
// of the same name is there: the chunks of that one that this one lacks
// and that this process can read are copied in first (verified), up to
// MaxSlabChunks, so that a pack written in two parts (the chunks a first
// query read, then the prefetch's) keeps both. It returns the status of
// the file in place, and the offset of every chunk added (by Add; the
// copied ones are not listed). An empty slab is removed; Seal then
// returns a nil FileInfo.
func (w *SlabWriter) Seal() (fs.FileInfo, error) {
	if w.f == nil {
		return nil, w.c.fail("seal slab", w.pack.String(), nil, errors.New("sealed or aborted already"))
	}
	if w.err != nil {
		w.Abort()
		return nil, w.err
	}
	if len(w.idx.fps) == 0 {
		w.Abort()
		return nil, nil
	}
	p := w.c.slabPath(w.shard, SlabKey(w.pack))
	w.merge(p)
	n := len(w.idx.fps)
	tail := make([]byte, n*slabEntry+slabFooter)
	for k := range n {
		e := tail[k*slabEntry:]
		copy(e, w.idx.fps[k][:])
		binary.LittleEndian.PutUint32(e[manifest.FingerprintSize:], w.idx.lens[k])
	}
	foot := tail[n*slabEntry:]
	copy(foot, slabMagic)
	binary.LittleEndian.PutUint32(foot[8:], uint32(n))
	binary.LittleEndian.PutUint32(foot[12:], slabVer)
	_, err := w.f.WriteAt(tail, int64(n)*SlabSlot)
	name := w.f.Name()
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	w.f = nil
	if err == nil {
		// Not synced: a slab that a crash damaged fails its footer
		// or its chunks' fingerprints, and is deleted and fetched
		// again.
		err = os.Rename(name, p)
	}
	if err != nil {
		os.Remove(name)
		return nil, w.c.fail("seal slab", w.pack.String(), nil, err)
	}
	w.c.noteAdded(w.shard, n)
	fi, err := os.Lstat(p)
	if err != nil || !fi.Mode().IsRegular() {
		return nil, nil // in place, but gone or replaced already
	}
	return fi, nil
}

// merge copies into the slab the chunks of the one at p that it lacks,
// read and verified, as room allows; a slab that cannot be read is left
// to be replaced.
func (w *SlabWriter) merge(p string) {
	f, fi, err := fsutil.Open(p)
	if err != nil {
		return
	}
	defer f.Close()
	x, err := readSlabIndex(f, f.Name(), fi.Size())
	if err != nil {
		return
	}
	buf := make([]byte, SlabSlot)
	for k, fp := range x.fps {
		if _, had := w.idx.find(fp); had || len(w.idx.fps) >= MaxSlabChunks {
			continue
		}
		b := buf[:x.lens[k]]
		if _, err := f.ReadAt(b, int64(k)*SlabSlot); err != nil && err != io.EOF {
			return
		}
		if manifest.Sum(b) != fp {
			continue
		}
		if _, err := w.Add(fp, b); err != nil {
			return
		}
	}
}

// slabWeight is how many chunks a cache file of size bytes counts for in
// the capacity: a chunk for a chunk's file, its chunks for a slab.
func slabWeight(name string, size int64) int {
	if filepath.Ext(name) != slabSuffix {
		return 1
	}
	return int(max(size/(SlabSlot+slabEntry), 1))
}

// slabIDOf is the device, inode and change time of fi.
func slabIDOf(fi fs.FileInfo) (slabID, bool) {
	st, ok := statOf(fi)
	if !ok {
		return slabID{}, false
	}
	return slabID{dev: st.dev, ino: st.ino, ctime: st.ctime}, true
}

// isSlabName reports whether name is a slab's file name.
func isSlabName(name string) bool {
	if filepath.Ext(name) != slabSuffix || len(name) != 16+len(slabSuffix) {
		return false
	}
	_, err := strconv.ParseUint(name[:16], 16, 64)
	return err == nil
}

type fileStat struct {
	dev, ino uint64
	ctime    int64
}

func statOf(fi fs.FileInfo) (fileStat, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileStat{}, false
	}
	ct := statCtim(st)
	return fileStat{dev: uint64(st.Dev), ino: st.Ino, ctime: ct.Nano()}, true
}
