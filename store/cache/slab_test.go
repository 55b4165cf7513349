package cache

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/boule-vfs/boule/internal/fsutil"
	"github.com/boule-vfs/boule/internal/testfs"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
)

// writeSlab seals a slab of pack holding the chunks of seeds (of n bytes
// each), and returns their bytes and fingerprints.
func writeSlab(t *testing.T, ctx context.Context, c *Store, pack manifest.Fingerprint, n int, seeds ...uint64) ([][]byte, []manifest.Fingerprint) {
	t.Helper()
	w, err := c.NewSlab(ctx, pack)
	if err != nil {
		t.Fatalf("NewSlab()=%v", err)
	}
	var datas [][]byte
	var fps []manifest.Fingerprint
	for _, s := range seeds {
		data, fp := cacheChunk(s, n)
		if _, err := w.Add(fp, data); err != nil {
			t.Fatalf("Add()=%v", err)
		}
		datas, fps = append(datas, data), append(fps, fp)
	}
	fi, err := w.Seal()
	if err != nil || fi == nil {
		t.Fatalf("Seal()=%v, %v, want the file's status", fi, err)
	}
	return datas, fps
}

// readPacked reads chunk fp from pack's slab, as a reader would.
func readPacked(t *testing.T, c *Store, pack, fp manifest.Fingerprint) ([]byte, bool, error) {
	t.Helper()
	f, _, off, n, mappable, err := c.OpenPacked(pack, fp)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("ReadAt(%d)=%v", off, err)
	}
	if off%int64(os.Getpagesize()) != 0 {
		t.Errorf("chunk at %d, not on a page boundary: it cannot be mapped alone", off)
	}
	return b, mappable, nil
}

func TestSlabRoundTrip(t *testing.T) {
	ctx := context.Background()
	c := newTestCache(t, 4, 1000)
	pack := manifest.Sum([]byte("pack"))
	datas, fps := writeSlab(t, ctx, c, pack, manifest.ChunkSize, 1, 2, 3)
	// A short last chunk, as a database's last chunk may be.
	short, shortFP := cacheChunk(4, 1000)
	w, err := c.NewSlab(ctx, pack)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Add(shortFP, short); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Seal(); err != nil { // merges the first slab's chunks
		t.Fatal(err)
	}
	datas, fps = append(datas, short), append(fps, shortFP)
	for k, fp := range fps {
		got, mappable, err := readPacked(t, c, pack, fp)
		if err != nil || !bytes.Equal(got, datas[k]) || !mappable {
			t.Errorf("chunk %d: %d bytes, mappable %v, %v; want its %d bytes, mappable", k, len(got), mappable, err, len(datas[k]))
		}
		if !c.HasPacked(pack, fp) {
			t.Errorf("HasPacked(chunk %d)=false, want true", k)
		}
	}
	_, other := cacheChunk(99, 100)
	if _, _, err := readPacked(t, c, pack, other); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("OpenPacked(a chunk not in the slab)=%v, want fs.ErrNotExist", err)
	}
	if c.HasPacked(manifest.Sum([]byte("another pack")), fps[0]) {
		t.Error("HasPacked(another pack)=true, want false")
	}
	if n := countFiles(t, c.Dir()); n != 1 {
		t.Errorf("the cache holds %d files, want the one slab", n)
	}
}

// TestSlabPermissions: a slab is as readable as a chunk's file would be
// (at most as the source database), and not mappable when others could
// change it.
func TestSlabPermissions(t *testing.T) {
	pack := manifest.Sum([]byte("perm"))
	for _, tc := range []struct {
		name     string
		src      fs.FileMode
		file     fs.FileMode
		spoil    func(t *testing.T, c *Store, p string)
		mappable bool
		err      error
	}{
		{"0644 source", 0o644, 0o444, nil, true, nil},
		{"source not given", 0, 0o400, nil, true, nil},
		{"with a write bit", 0, 0o400, func(t *testing.T, _ *Store, p string) { chmodT(t, p, 0o600) }, false, nil},
		{"shard writable by others", 0, 0o400, func(t *testing.T, _ *Store, p string) { chmodT(t, filepath.Dir(p), 0o703) }, false, nil},
		{"named pipe", 0, 0o400, func(t *testing.T, _ *Store, p string) {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			testfs.Mkfifo(t, p)
		}, false, fsutil.ErrNotRegular},
		{"symbolic link", 0, 0o400, func(t *testing.T, _ *Store, p string) { linkInPlace(t, p) }, false, fsutil.ErrNotRegular},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCache(t, 2, 1000)
			ctx := context.Background()
			if tc.src != 0 {
				ctx = store.WithSourcePerm(ctx, tc.src)
			}
			var fps []manifest.Fingerprint
			testfs.WithUmask(0o022, func() { _, fps = writeSlab(t, ctx, c, pack, 3000, 7, 8) })
			p := c.SlabPath(pack)
			if fi, err := os.Lstat(p); err != nil || fi.Mode() != tc.file {
				t.Fatalf("slab mode %v, %v; want %v", fi.Mode(), err, tc.file)
			}
			if tc.spoil != nil {
				tc.spoil(t, c, p)
			}
			var mappable bool
			err := testfs.Promptly(t, p, func() error {
				_, m, err := readPacked(t, c, pack, fps[1])
				mappable = m
				return err
			})
			if !errors.Is(err, tc.err) || mappable != tc.mappable {
				t.Fatalf("OpenPacked()=%v, %v, want %v, %v", mappable, err, tc.mappable, tc.err)
			}
		})
	}
}

// TestSlabDamaged: a slab whose footer or size is wrong is reported
// corrupt, never read past.
func TestSlabDamaged(t *testing.T) {
	ctx := context.Background()
	pack := manifest.Sum([]byte("damaged"))
	for _, tc := range []struct {
		name  string
		spoil func(t *testing.T, p string)
	}{
		{"truncated", func(t *testing.T, p string) {
			chmodT(t, p, 0o600)
			if err := os.Truncate(p, SlabSlot+10); err != nil {
				t.Fatal(err)
			}
		}},
		{"extended", func(t *testing.T, p string) {
			chmodT(t, p, 0o600)
			fi := testfs.Must(os.Stat(p))
			if err := os.Truncate(p, fi.Size()+1); err != nil {
				t.Fatal(err)
			}
		}},
		{"bad magic", func(t *testing.T, p string) { overwriteFooter(t, p, 0, []byte("X")) }},
		{"count past the limit", func(t *testing.T, p string) { overwriteFooter(t, p, 8, []byte{0xff, 0xff, 0xff, 0x7f}) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCache(t, 1, 1000)
			_, fps := writeSlab(t, ctx, c, pack, 3000, 11, 12)
			tc.spoil(t, c.SlabPath(pack))
			if _, _, err := readPacked(t, c, pack, fps[0]); !errors.Is(err, store.ErrCorrupt) {
				t.Errorf("OpenPacked()=%v, want store.ErrCorrupt", err)
			}
		})
	}
}

// overwriteFooter writes b at off in the footer of the slab p.
func overwriteFooter(t *testing.T, p string, off int64, b []byte) {
	t.Helper()
	chmodT(t, p, 0o600)
	fi := testfs.Must(os.Stat(p))
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, fi.Size()-slabFooter+off); err != nil {
		t.Fatal(err)
	}
}

// TestSlabEviction: a slab counts for its chunks in the capacity, and the
// least recently used files go first, whole, until the shard is back
// within its share.
func TestSlabEviction(t *testing.T) {
	ctx := context.Background()
	c := newTestCache(t, 1, 100)
	var packs []manifest.Fingerprint
	var firsts []manifest.Fingerprint
	for k := range 4 {
		pack := manifest.Sum([]byte{byte(k)})
		seeds := make([]uint64, 40)
		for i := range seeds {
			seeds[i] = uint64(1000*k + i)
		}
		_, fps := writeSlab(t, ctx, c, pack, 100, seeds...)
		packs, firsts = append(packs, pack), append(firsts, fps[0])
		// Distinct modification times, oldest first.
		old := time.Now().Add(time.Duration(k-10) * time.Minute)
		if err := os.Chtimes(c.SlabPath(pack), old, old); err != nil {
			t.Fatal(err)
		}
		if w := shardWeight(t, c); w > 100 {
			t.Fatalf("after %d slabs of 40 chunks, the shard holds %d chunks, want at most 100", k+1, w)
		}
	}
	if c.HasPacked(packs[0], firsts[0]) || c.HasPacked(packs[1], firsts[1]) {
		t.Error("the two oldest slabs are still there")
	}
	if !c.HasPacked(packs[3], firsts[3]) {
		t.Error("the newest slab was evicted")
	}
	// A chunk's own file (as older versions wrote for every chunk)
	// counts for one, and goes by its age like a slab.
	data, fp := cacheChunk(5000, 100)
	if err := c.PutChunk(ctx, fp, data); err != nil {
		t.Fatal(err)
	}
	c.evict(0)
	if w := shardWeight(t, c); w != 81 {
		t.Errorf("shard holds %d chunks, want 81 (2 slabs of 40 and a chunk's file)", w)
	}
}

// shardWeight is how many chunks the files of shard 0 hold.
func shardWeight(t *testing.T, c *Store) int {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(c.Dir(), "000"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		fi := testfs.Must(e.Info())
		n += slabWeight(e.Name(), fi.Size())
	}
	return n
}

// countFiles counts the regular files under dir.
func countFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSlabName: the name of a slab is what the VFS's C code rebuilds from
// the pack's key and the shard count (boule_snapshot.c, snap_open_chunk).
func TestSlabName(t *testing.T) {
	c := newTestCache(t, 16, 100)
	pack := manifest.Sum([]byte("name"))
	key := SlabKey(pack)
	want := filepath.Join(c.Dir(), fmt.Sprintf("%03d", int(key>>48)%16), fmt.Sprintf("%016x.slab", key))
	if got := c.SlabPath(pack); got != want {
		t.Errorf("SlabPath()=%s, want %s", got, want)
	}
	if !isSlabName(filepath.Base(want)) {
		t.Errorf("isSlabName(%s)=false", filepath.Base(want))
	}
}

// tailReader is a slab of size bytes that is zero but for its last
// bytes, tail.
type tailReader struct {
	tail []byte
	size int64
}

func (r tailReader) ReadAt(p []byte, off int64) (int, error) {
	start := r.size - int64(len(r.tail))
	for k := range p {
		o := off + int64(k)
		switch {
		case o >= r.size:
			return k, io.EOF
		case o >= start:
			p[k] = r.tail[o-start]
		default:
			p[k] = 0
		}
	}
	return len(p), nil
}

// FuzzSlabIndex: a slab's footer and index, which another process or user
// may have written, never make readSlabIndex panic, allocate more than a
// full index, or return an index that disagrees with the slab's size.
func FuzzSlabIndex(f *testing.F) {
	good := func(n int) []byte {
		tail := make([]byte, n*slabEntry+slabFooter)
		for k := range n {
			binary.LittleEndian.PutUint32(tail[k*slabEntry+manifest.FingerprintSize:], uint32(100+k))
		}
		copy(tail[n*slabEntry:], slabMagic)
		binary.LittleEndian.PutUint32(tail[n*slabEntry+8:], uint32(n))
		binary.LittleEndian.PutUint32(tail[n*slabEntry+12:], slabVer)
		return tail
	}
	f.Add(good(1), slabSize(1))
	f.Add(good(3), slabSize(3))
	f.Add(good(3), slabSize(3)+1)
	f.Add(good(MaxSlabChunks), slabSize(MaxSlabChunks))
	f.Add([]byte("BOULESLB\xff\xff\xff\xff\x01\x00\x00\x00"), int64(16))
	f.Fuzz(func(t *testing.T, tail []byte, size int64) {
		if size < 0 || size > slabSize(MaxSlabChunks+1) || int64(len(tail)) > size {
			return
		}
		x, err := readSlabIndex(tailReader{tail, size}, "fuzz", size)
		if err != nil {
			if !errors.Is(err, store.ErrCorrupt) && !errors.Is(err, io.EOF) {
				t.Fatalf("readSlabIndex()=%v, want ErrCorrupt", err)
			}
			return
		}
		n := len(x.fps)
		if n < 1 || n > MaxSlabChunks || len(x.lens) != n || slabSize(n) != size {
			t.Fatalf("readSlabIndex() gave %d chunks for a slab of %d bytes", n, size)
		}
		for k, l := range x.lens {
			if l == 0 || l > SlabSlot {
				t.Fatalf("chunk %d of %d bytes", k, l)
			}
		}
	})
}
