package spool

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/boule-vfs/boule/internal/fsutil"
	"github.com/boule-vfs/boule/manifest"
)

// A segment is one file holding the chunks a snapshot stages, back to
// back, followed by an index and a trailer (doc/FORMAT.md, "Segments").
// It is written whole in tmp/, made read-only, then hard-linked under
// each of its chunks' names (chunks/<fp>), and its temp name removed: a
// snapshot that stages n chunks allocates one inode, not n. A chunk name
// is released (uploaded, superseded) by unlinking it, as a chunk file
// was; the segment's bytes go with its last name.
//
// Before segments, each name was a file of its own holding the chunk's
// bytes alone; readChunk reads both, so a spool left by an earlier
// version is read as it is.

// segMagic ends every segment file.
var segMagic = [8]byte{'B', 'O', 'U', 'L', 'E', 'S', 'E', 'G'}

const (
	segVersion    = 1
	segTrailerLen = 16                               // count (4), version (4), magic (8)
	segEntryLen   = manifest.FingerprintSize + 8 + 4 // fingerprint, offset, length
	segMaxChunks  = 256                              // chunks per segment: 16 MiB at most
)

type segEntry struct {
	fp  manifest.Fingerprint
	off int64
	n   uint32
}

// segment is a segment file being written in tmp/.
type segment struct {
	path  string
	f     *os.File
	size  int64
	index []segEntry
	fault func(op, path string) error
}

// createSegment creates a segment file in the directory tmp; fault is the
// spool's filesystem seam (nil for none).
func createSegment(tmp string, fault func(op, path string) error) (*segment, error) {
	if fault == nil {
		fault = func(string, string) error { return nil }
	}
	p := filepath.Join(tmp, uniqueName()+segSuffix)
	if err := fault("create", p); err != nil {
		return nil, fmt.Errorf("spool: create %s: %w", p, err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("spool: create %s: %w", p, pathless(err))
	}
	return &segment{path: p, f: f, fault: fault}, nil
}

// IsSegmentTemp reports whether p names a segment being written, in a
// database's tmp/: for tests that stop a writer at the steps of one
// (Options.Fault sees the paths).
func IsSegmentTemp(p string) bool {
	return strings.HasSuffix(p, segSuffix) && filepath.Base(filepath.Dir(p)) == tmpDir
}

// full reports whether the segment holds as many chunks as one may.
func (s *segment) full() bool { return len(s.index) >= segMaxChunks }

// add appends chunk fp, whose bytes are b.
func (s *segment) add(fp manifest.Fingerprint, b []byte) error {
	if len(b) > manifest.ChunkSize {
		return fmt.Errorf("spool: segment %s: chunk %s of %d bytes", s.path, fp, len(b))
	}
	if err := s.fault("write", s.path); err != nil {
		return fmt.Errorf("spool: write %s: %w", s.path, err)
	}
	if _, err := s.f.Write(b); err != nil {
		return fmt.Errorf("spool: write %s: %w", s.path, pathless(err))
	}
	s.index = append(s.index, segEntry{fp: fp, off: s.size, n: uint32(len(b))})
	s.size += int64(len(b))
	return nil
}

// seal writes the index and the trailer, gives the file perm, and closes
// it. The segment is then ready to be linked.
func (s *segment) seal(perm fs.FileMode) error {
	b := make([]byte, 0, len(s.index)*segEntryLen+segTrailerLen)
	for _, e := range s.index {
		b = append(b, e.fp[:]...)
		b = binary.BigEndian.AppendUint64(b, uint64(e.off))
		b = binary.BigEndian.AppendUint32(b, e.n)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(s.index)))
	b = binary.BigEndian.AppendUint32(b, segVersion)
	b = append(b, segMagic[:]...)
	err := s.fault("write", s.path)
	if err == nil {
		_, err = s.f.Write(b)
	}
	if err == nil {
		err = s.f.Chmod(perm)
	}
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	s.f = nil
	if err != nil {
		return fmt.Errorf("spool: write %s: %w", s.path, pathless(err))
	}
	return nil
}

// link publishes the sealed segment as the chunk name dst, by link(2),
// which leaves an existing dst alone (another process staged the same
// chunk: it is theirs) and reports created false.
func (s *segment) link(dst string) (created bool, err error) {
	if err := s.fault("link", dst); err != nil {
		return false, fmt.Errorf("spool: publish %s: %w", dst, err)
	}
	if err := os.Link(s.path, dst); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
		return false, fmt.Errorf("spool: publish %s: %w", dst, err)
	}
	return true, nil
}

// discard removes the segment's temp name: once it is linked, its chunk
// names keep it; before, nothing does, and it is gone.
func (s *segment) discard() {
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
	if s.fault("remove", s.path) == nil {
		_ = os.Remove(s.path)
	}
}

// writeSegments writes chunks into segments in tmp, and links each chunk
// fp as dir/<fp>; a name that exists already is left alone. It returns
// the fingerprints it linked.
func writeSegments(tmp, dir string, chunks map[manifest.Fingerprint][]byte, perm fs.FileMode, fault func(op, path string) error) ([]manifest.Fingerprint, error) {
	var linked []manifest.Fingerprint
	var s *segment
	defer func() {
		if s != nil {
			s.discard()
		}
	}()
	flush := func() error {
		if err := s.seal(perm); err != nil {
			return err
		}
		for _, e := range s.index {
			created, err := s.link(filepath.Join(dir, e.fp.String()))
			if err != nil {
				return err
			}
			if created {
				linked = append(linked, e.fp)
			}
		}
		s.discard()
		s = nil
		return nil
	}
	for fp, b := range chunks {
		if s == nil {
			var err error
			if s, err = createSegment(tmp, fault); err != nil {
				return linked, err
			}
		}
		if err := s.add(fp, b); err != nil {
			return linked, err
		}
		if s.full() {
			if err := flush(); err != nil {
				return linked, err
			}
		}
	}
	if s != nil {
		if err := flush(); err != nil {
			return linked, err
		}
	}
	return linked, nil
}

// readChunk returns the bytes of chunk fp from the file at p: a segment
// whose index lists fp, or a chunk file of an earlier version (the whole
// file). The caller verifies them against fp. A file that is neither (a
// segment that does not list fp) is an error wrapping ErrCorrupt.
func readChunk(p string, fp manifest.Fingerprint) ([]byte, error) {
	f, fi, err := fsutil.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size := fi.Size()
	b, found, err := readSegmentChunk(f, size, fp)
	if err != nil {
		return nil, fmt.Errorf("spool: read %s: %w", p, err)
	}
	if found {
		return b, nil
	}
	if size > manifest.ChunkSize {
		return nil, fmt.Errorf("%w: %s: a %d-byte file that holds no chunk %s", ErrCorrupt, p, size, fp)
	}
	// A chunk file of an earlier version.
	b = make([]byte, size)
	if _, err := f.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("spool: read %s: %w", p, err)
	}
	return b, nil
}

// readSegmentChunk reads chunk fp from f, of size bytes, when f is a
// segment that lists it. It reports found false, and no error, for a
// file that is not a segment or does not list fp.
func readSegmentChunk(f *os.File, size int64, fp manifest.Fingerprint) (b []byte, found bool, err error) {
	if size < segTrailerLen {
		return nil, false, nil
	}
	var tr [segTrailerLen]byte
	if _, err := f.ReadAt(tr[:], size-segTrailerLen); err != nil {
		return nil, false, err
	}
	if !bytes.Equal(tr[8:], segMagic[:]) || binary.BigEndian.Uint32(tr[4:]) != segVersion {
		return nil, false, nil
	}
	n := int64(binary.BigEndian.Uint32(tr[:4]))
	ilen := n * segEntryLen
	if n > segMaxChunks || ilen+segTrailerLen > size {
		return nil, false, nil
	}
	dataEnd := size - segTrailerLen - ilen
	index := make([]byte, ilen)
	if _, err := f.ReadAt(index, dataEnd); err != nil {
		return nil, false, err
	}
	for e := index; len(e) >= segEntryLen; e = e[segEntryLen:] {
		if !bytes.Equal(e[:manifest.FingerprintSize], fp[:]) {
			continue
		}
		off := binary.BigEndian.Uint64(e[manifest.FingerprintSize:])
		ln := int64(binary.BigEndian.Uint32(e[manifest.FingerprintSize+8:]))
		if ln > manifest.ChunkSize || off > uint64(dataEnd) || int64(off)+ln > dataEnd {
			return nil, false, nil
		}
		b := make([]byte, ln)
		if _, err := f.ReadAt(b, int64(off)); err != nil {
			return nil, false, err
		}
		return b, true, nil
	}
	return nil, false, nil
}

// unstage removes the staged chunk name, superseded or unreferenced. When
// its segment keeps other names, its bytes stay on disk: they count
// towards the next compaction.
func (d *DB) unstage(name string) {
	p := filepath.Join(d.StagingChunksDir(), name)
	if fi, err := os.Lstat(p); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
			d.pinned += min(fi.Size(), manifest.ChunkSize)
		}
	}
	_ = d.remove(p)
}

// compactAt is how many bytes of superseded chunks the segments of
// staging may keep: an eighth of the database, or the compaction floor
// for one under 32 MiB. Staging then stays within 1.125 times the
// database (plus 4 MiB) however long the uploader is stuck, and so does
// each snapshot handed over, which takes staging's segments as they are.
func (d *DB) compactAt(size int64) int64 {
	floor := d.s.opts.CompactFloor
	if floor <= 0 {
		floor = compactFloor
	}
	return max(size/8, floor)
}

// compactFloor is the default fewest bytes of superseded chunks that make
// a compaction worth it: below it, a small database that commits often
// would copy its staged chunks about every snapshot (the package's tests
// lower it, to see compactions of their small databases).
var compactFloor int64 = 4 << 20

// stagedFile is a file that chunk names link to (filesOf).
type stagedFile struct {
	path  string // one of its names
	names []manifest.Fingerprint
	dead  int64 // bytes of the chunks it holds that no staged name names
	size  int64
}

// filesOf lists the chunk names of the directory dir by the file each
// names: a segment has a name for each chunk it holds that is still
// staged, an earlier version's chunk file one. Names that are not
// fingerprints are passed over, and so are names gone meanwhile.
func filesOf(dir string) ([]*stagedFile, error) {
	entries, err := fsutil.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	byFile := make(map[fileKey]*stagedFile)
	var all []*stagedFile
	for _, e := range entries {
		fp, err := manifest.ParseFingerprint(e.Name())
		if err != nil {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil, fmt.Errorf("spool: %s: the system gives no inode numbers", dir)
		}
		k := fileKey{dev: uint64(st.Dev), ino: st.Ino}
		f := byFile[k]
		if f == nil {
			f = &stagedFile{path: filepath.Join(dir, e.Name()), size: fi.Size()}
			byFile[k] = f
			all = append(all, f)
		}
		f.names = append(f.names, fp)
	}
	return all, nil
}

// segmentIndex reads the index of the segment at p; a file that is not a
// segment (an earlier version's chunk file) has none.
func segmentIndex(p string) ([]segEntry, error) {
	f, fi, err := fsutil.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size := fi.Size()
	if size < segTrailerLen {
		return nil, nil
	}
	var tr [segTrailerLen]byte
	if _, err := f.ReadAt(tr[:], size-segTrailerLen); err != nil {
		return nil, err
	}
	n := int64(binary.BigEndian.Uint32(tr[:4]))
	if !bytes.Equal(tr[8:], segMagic[:]) || binary.BigEndian.Uint32(tr[4:]) != segVersion ||
		n > segMaxChunks || n*segEntryLen+segTrailerLen > size {
		return nil, nil
	}
	index := make([]byte, n*segEntryLen)
	if _, err := f.ReadAt(index, size-segTrailerLen-int64(len(index))); err != nil {
		return nil, err
	}
	out := make([]segEntry, 0, n)
	for e := index; len(e) >= segEntryLen; e = e[segEntryLen:] {
		var x segEntry
		copy(x.fp[:], e)
		x.off = int64(binary.BigEndian.Uint64(e[manifest.FingerprintSize:]))
		x.n = binary.BigEndian.Uint32(e[manifest.FingerprintSize+8:])
		out = append(out, x)
	}
	return out, nil
}

// compactStaging frees the bytes of superseded chunks that segments of
// staging keep for the chunks still staged beside them: it copies the
// staged chunks of the segments that waste the most, until what the rest
// waste is within half of compactAt, into new segments, and renames a
// link to the new copy over each of their names. A name always names its
// chunk's bytes, in the old segment or the new one; the old segment goes
// with its last name. A name the uploader removed meanwhile (it uploaded
// the chunk) may come back, to be uploaded, or found uploaded, again.
// The spool lock is held.
func (d *DB) compactStaging(size int64) {
	dir := d.StagingChunksDir()
	all, err := filesOf(dir)
	if err != nil {
		return
	}
	var dead int64
	for _, f := range all {
		if f.size <= manifest.ChunkSize {
			continue // an earlier version's chunk file, or a segment of one small chunk
		}
		index, err := segmentIndex(f.path)
		if err != nil {
			continue
		}
		for _, e := range index {
			if !slices.Contains(f.names, e.fp) {
				f.dead += int64(e.n)
			}
		}
		dead += f.dead
	}
	// The most wasteful first: the fewest bytes copied per byte freed.
	slices.SortFunc(all, func(a, b *stagedFile) int {
		return cmp.Compare(b.dead*a.size, a.dead*b.size)
	})
	d.pinned = dead
	limit := d.compactAt(size) / 2
	var seg *segment
	defer func() {
		if seg != nil {
			seg.discard()
		}
	}()
	flush := func() error {
		s := seg
		seg = nil
		defer s.discard()
		if err := s.seal(fileMode(d.mode)); err != nil {
			return err
		}
		d.stats.Segments++
		for _, e := range s.index {
			tmp := filepath.Join(d.tmpDir(), uniqueName())
			if _, err := s.link(tmp); err != nil {
				return err
			}
			dst := filepath.Join(dir, e.fp.String())
			err := d.s.fault("rename", dst)
			if err == nil {
				err = replaceFile(tmp, dst)
			}
			if err != nil {
				_ = os.Remove(tmp)
				return fmt.Errorf("spool: publish %s: %w", dst, err)
			}
		}
		return nil
	}
	fail := func(err error) {
		d.s.log.Debug("spool: staging compaction skipped", logKeyDB, d.path, logKeyErr, err)
	}
	for _, f := range all {
		if d.pinned <= limit || f.dead == 0 {
			break
		}
		for _, fp := range f.names {
			b, err := readChunk(filepath.Join(dir, fp.String()), fp)
			if errors.Is(err, fs.ErrNotExist) {
				continue // uploaded and removed meanwhile
			}
			if err != nil || manifest.Sum(b) != fp {
				continue // left as it is, for the uploader to refuse
			}
			if seg == nil {
				if seg, err = createSegment(d.tmpDir(), d.s.fault); err != nil {
					fail(err)
					return
				}
			}
			if err := seg.add(fp, b); err != nil {
				fail(err)
				return
			}
			d.stats.BytesCompacted += int64(len(b))
			if seg.full() {
				if err := flush(); err != nil {
					fail(err)
					return
				}
			}
		}
		d.pinned -= f.dead
		d.stats.Compactions++
	}
	if seg != nil {
		if err := flush(); err != nil {
			fail(err)
		}
	}
}
