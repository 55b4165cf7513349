package snapshot

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/boule-vfs/boule/manifest"
)

// Manifests in file-backed memory.
//
// A manifest lists 32 bytes of fingerprint per 64 KiB chunk: 512 MiB for
// a 1 TiB database, which a replica keeps as long as a connection reads
// its snapshot. In the Go heap that is anonymous memory, which the
// kernel can only swap: a replica of a few hundred GiB would take more
// than the reader's memory limit on its own. Large manifests are
// therefore read, decompressed and applied to their bases in fileMem
// buffers, unlinked temporary files mapped MAP_SHARED (in the chunk
// cache's directory, or the system's temporary directory without a
// cache), and decoded in place (manifest.DecodeInPlace,
// manifest.Head.ApplyInto), with the pack table and the pack index in
// such files too (manifestBufs.lists): the lists are page cache that the
// kernel writes back and evicts as it likes, and the C side reads the
// fingerprints through a pointer, as before, without calling Go.
//
// The space is taken at once (fallocate, or zeros written where the
// file system has no fallocate): a disk too small for a manifest fails
// its fetch with ENOSPC, rather than a read of a mapped page with
// SIGBUS later. A mapping is freed when the manifest it backs is
// garbage (runtime.AddCleanup on the manifest): a fingerprint list is
// used through its manifest, by snapshots, the replica's last manifest
// and the base memo, and through the C view of a snapshot, which lives
// no longer than the snapshot's last reference. So that the files of
// the manifests a replica replaced do not wait for the next collection
// on their disk, retiring one asks for a collection (Reader.retire).

// fileMemMin is the smallest buffer put in a file; smaller ones stay in
// the Go heap, where a manifest of up to 32768 chunks (2 GiB of
// database) costs no temporary file per fetch.
var fileMemMin = 1 << 20

// fileMem is a buffer in an unlinked temporary file, mapped shared.
type fileMem struct {
	b     []byte
	freed atomic.Bool
}

// newFileMem returns a buffer of size bytes in a new unlinked file in
// dir, its space allocated.
func newFileMem(dir string, size int) (*fileMem, error) {
	if size <= 0 {
		return &fileMem{}, nil
	}
	f, err := os.CreateTemp(dir, ".boule-manifest-*")
	if err != nil {
		return nil, fmt.Errorf("snapshot: a temporary file for a manifest of %d bytes: %w", size, err)
	}
	defer f.Close()
	if err := os.Remove(f.Name()); err != nil {
		return nil, fmt.Errorf("snapshot: unlink %s: %w", f.Name(), err)
	}
	if err := allocate(f, int64(size)); err != nil {
		if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EFBIG) || errors.Is(err, syscall.EDQUOT) {
			return nil, fmt.Errorf("snapshot: no room for a manifest of %d MiB in %s (the replica keeps its fingerprint list there; free space or set the chunk cache elsewhere): %w",
				size>>20, dir, err)
		}
		return nil, fmt.Errorf("snapshot: allocate %d bytes for a manifest in %s: %w", size, dir, err)
	}
	b, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("snapshot: map %d bytes of a manifest in %s: %w", size, dir, err)
	}
	return &fileMem{b: b}, nil
}

// allocateZeros makes f size bytes long by writing zeros, which
// allocates its blocks where fallocate is not supported.
func allocateZeros(f *os.File, size int64) error {
	zeros := make([]byte, min(size, 1<<20))
	for off := int64(0); off < size; {
		n, err := f.WriteAt(zeros[:min(int64(len(zeros)), size-off)], off)
		if err != nil {
			return err
		}
		off += int64(n)
	}
	return nil
}

// seal makes the buffer read-only: nothing writes a decoded manifest.
func (m *fileMem) seal() {
	if len(m.b) > 0 {
		_ = syscall.Mprotect(m.b, syscall.PROT_READ)
	}
}

// free unmaps the buffer; the file goes with it. Only the buffer's
// owner calls it, once nothing can read the buffer.
func (m *fileMem) free() {
	if len(m.b) > 0 && !m.freed.Swap(true) {
		_ = syscall.Munmap(m.b)
	}
}

// manifestBufs allocates the buffers a manifest fetch reads,
// decompresses and applies manifests into: from the Go heap up to
// fileMemMin, in files in dir above. It keeps the file-backed ones
// until the fetch hands them over (keep) or ends (done).
type manifestBufs struct {
	dir   string
	mu    sync.Mutex
	files []*fileMem
}

// alloc returns a buffer of size bytes.
func (a *manifestBufs) alloc(size int) ([]byte, error) {
	if size < fileMemMin {
		return make([]byte, size), nil
	}
	return a.file(size)
}

// file returns a buffer of size bytes in a file.
func (a *manifestBufs) file(size int) ([]byte, error) {
	m, err := newFileMem(a.dir, size)
	if errors.Is(err, fs.ErrNotExist) && a.dir != os.TempDir() {
		// A chunk cache not created yet.
		m, err = newFileMem(os.TempDir(), size)
	}
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.files = append(a.files, m)
	a.mu.Unlock()
	return m.b, nil
}

// lists returns the manifest.Alloc that puts a manifest's lists in a's
// buffers: in files from fileMemMin bytes, in the Go heap (typed, so that
// the collector sees the pointers of packs) below.
func (a *manifestBufs) lists() *manifest.Alloc {
	return &manifest.Alloc{
		Chunks: func(n int) ([]manifest.Fingerprint, error) {
			if n*manifest.FingerprintSize < fileMemMin {
				return make([]manifest.Fingerprint, n), nil
			}
			b, err := a.file(n * manifest.FingerprintSize)
			if err != nil {
				return nil, err
			}
			return unsafe.Slice((*manifest.Fingerprint)(unsafe.Pointer(&b[0])), n), nil
		},
		Packs: func(packs, members int) ([]manifest.Pack, []manifest.PackMember, error) {
			// The members, then the packs at an offset aligned for them:
			// both in the file, whose packs point at its members.
			mb := (members*int(unsafe.Sizeof(manifest.PackMember{})) + 7) &^ 7
			size := mb + packs*int(unsafe.Sizeof(manifest.Pack{}))
			if size < fileMemMin {
				return make([]manifest.Pack, packs), make([]manifest.PackMember, members), nil
			}
			b, err := a.file(size)
			if err != nil {
				return nil, nil, err
			}
			var ms []manifest.PackMember
			if members > 0 {
				ms = unsafe.Slice((*manifest.PackMember)(unsafe.Pointer(&b[0])), members)
			}
			return unsafe.Slice((*manifest.Pack)(unsafe.Pointer(&b[mb])), packs), ms, nil
		},
		Index: func(n int) ([]uint32, error) {
			if n*4 < fileMemMin {
				return make([]uint32, n), nil
			}
			b, err := a.file(n * 4)
			if err != nil {
				return nil, err
			}
			return unsafe.Slice((*uint32)(unsafe.Pointer(&b[0])), n), nil
		},
	}
}

// keep hands over the file-backed buffer b lies in, if any, to obj: it
// is sealed, and freed once obj is garbage. It reports whether b lies in
// a file (obj was decoded in place, or into it).
func keep[T any](a *manifestBufs, obj *T, b []byte) bool {
	if len(b) == 0 {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, f := range a.files {
		if len(f.b) > 0 && &f.b[0] == &b[0] {
			a.files = append(a.files[:k], a.files[k+1:]...)
			f.seal()
			runtime.AddCleanup(obj, func(f *fileMem) { f.free() }, f)
			return true
		}
	}
	return false
}

// keepAll hands over every file-backed buffer of a to obj, as keep does.
func keepAll[T any](a *manifestBufs, obj *T) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, f := range a.files {
		f.seal()
		runtime.AddCleanup(obj, func(f *fileMem) { f.free() }, f)
	}
	a.files = nil
}

// done frees the file-backed buffers not handed over.
func (a *manifestBufs) done() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, m := range a.files {
		m.free()
	}
	a.files = nil
}
