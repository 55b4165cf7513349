package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"syscall"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
)

// A baseMemo keeps the base of the last format v2 manifest a replica
// decoded, for the heads that name it: bases are immutable, so one found
// under its ID is the one a head names. Its fingerprint list may lie in
// a file (filemem.go), which it keeps mapped.
type baseMemo struct {
	mu   sync.Mutex
	id   manifest.Fingerprint
	base *manifest.Manifest // nil when empty
}

func (b *baseMemo) get(id manifest.Fingerprint) *manifest.Manifest {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.base != nil && b.id == id {
		return b.base
	}
	return nil
}

func (b *baseMemo) set(id manifest.Fingerprint, base *manifest.Manifest) {
	b.mu.Lock()
	b.id, b.base = id, base
	b.mu.Unlock()
}

// tempDir is where the reader puts large manifests (filemem.go): the
// chunk cache's directory, or the system's temporary directory.
func (r *Reader) tempDir() string {
	if r.cache != nil {
		return r.cache.Dir()
	}
	return os.TempDir()
}

// loadManifest fetches and decodes the newest manifest under key from
// the first of the remote stores that has it, as store.FetchManifestMemo
// does, but with a large fingerprint list in file-backed memory
// (filemem.go). It returns the manifest, the checksum of its encoding
// and the index of the store it came from. Stores that fail to give the
// manifest make it fail only if none has it; a manifest that does not
// decode fails it.
func (r *Reader) loadManifest(ctx context.Context, key string, memo *baseMemo) (*manifest.Manifest, manifest.Fingerprint, int, error) {
	var errs []error
	for i, s := range r.remote {
		bufs := &manifestBufs{dir: r.tempDir()}
		raw, err := readManifestBlob(ctx, s, key, bufs)
		if err != nil {
			bufs.done()
			errs = append(errs, err)
			continue
		}
		sum := checksum(raw)
		m, err := decodeManifest(ctx, s, raw, bufs, memo)
		bufs.done()
		if err != nil {
			return nil, sum, -1, fmt.Errorf("store: manifest %s in %s: %w", key, s, err)
		}
		return m, sum, i, nil
	}
	if len(errs) == 0 {
		return nil, manifest.Fingerprint{}, -1, fmt.Errorf("store: manifest %s: no store to read from", key)
	}
	return nil, manifest.Fingerprint{}, -1, errors.Join(errs...)
}

// readManifestBlob reads the manifest under key from s and decompresses
// it, both into bufs.
func readManifestBlob(ctx context.Context, s store.Store, key string, bufs *manifestBufs) ([]byte, error) {
	blob, err := store.ReadManifestBlob(ctx, s, key, bufs.alloc)
	if err != nil {
		return nil, err
	}
	raw, err := store.DecodeManifestBlobInto(blob, bufs.alloc)
	if err != nil {
		return nil, fmt.Errorf("store: manifest %s in %s: %w", key, s, err)
	}
	if len(raw) < manifest.FingerprintSize {
		return nil, fmt.Errorf("store: manifest %s in %s: %d bytes: %w", key, s, len(raw), manifest.ErrTruncated)
	}
	return raw, nil
}

// decodeManifest decodes raw, an encoded manifest of format v1 or v2
// from s, lying in bufs, as store.DecodeManifest does: for v2 it takes
// the base from memo, or reads it from s into bufs, and applies the head
// into a buffer of bufs. The result's fingerprint list lies in a buffer
// of bufs, handed over to it.
func decodeManifest(ctx context.Context, s store.Store, raw []byte, bufs *manifestBufs, memo *baseMemo) (*manifest.Manifest, error) {
	lists := &manifestBufs{dir: bufs.dir} // the result's lists but those in raw
	defer lists.done()
	v, err := manifest.FormatVersion(raw)
	if err != nil || v != 2 {
		m, err := manifest.DecodeInPlace(raw, lists.lists())
		if err != nil {
			return nil, err
		}
		keep(bufs, m, raw)
		keepAll(lists, m)
		return m, nil
	}
	h, err := manifest.DecodeHead(raw)
	if err != nil {
		return nil, err
	}
	base := memo.get(h.BaseID)
	if base == nil {
		baseBufs := &manifestBufs{dir: bufs.dir}
		defer baseBufs.done()
		blob, err := store.ReadBase(ctx, s, h.BaseID, h.BaseLen, baseBufs.alloc)
		if err != nil {
			return nil, fmt.Errorf("store: base %s (%s): %w", h.BaseID, store.BaseKey(h.BaseID), err)
		}
		if base, err = h.DecodeBaseInPlace(blob, baseBufs.lists()); err != nil {
			return nil, fmt.Errorf("store: base %s (%s) in %s: %w", h.BaseID, store.BaseKey(h.BaseID), s, err)
		}
		keepAll(baseBufs, base)
		memo.set(h.BaseID, base)
	}
	m, err := h.ApplyInto(base, lists.lists())
	if err != nil {
		return nil, fmt.Errorf("store: base %s (%s) in %s: %w", h.BaseID, store.BaseKey(h.BaseID), s, err)
	}
	keepAll(lists, m)
	return m, nil
}

// readManifestFile reads and decodes a manifest file, as saved by
// "vfsctl manifest" (possibly still zstd-compressed, as stored), of
// format v1, into bufs (see decodeManifest). It returns the manifest and
// the checksum of its encoding.
func readManifestFile(p string, bufs *manifestBufs) (*manifest.Manifest, manifest.Fingerprint, error) {
	// O_NONBLOCK: opening a FIFO would otherwise wait for a writer
	// before the file type can be checked.
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, manifest.Fingerprint{}, fmt.Errorf("snapshot: manifest file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, manifest.Fingerprint{}, fmt.Errorf("snapshot: manifest file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, manifest.Fingerprint{}, fmt.Errorf("snapshot: manifest file %s is not a regular file", p)
	}
	if st.Size() > maxManifestFile {
		return nil, manifest.Fingerprint{}, fmt.Errorf("snapshot: manifest file %s is %d bytes, more than %d", p, st.Size(), maxManifestFile)
	}
	b, err := bufs.alloc(int(st.Size()))
	if err != nil {
		return nil, manifest.Fingerprint{}, fmt.Errorf("snapshot: manifest file %s: %w", p, err)
	}
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, manifest.Fingerprint{}, fmt.Errorf("snapshot: manifest file: %w", err)
	}
	raw, err := store.DecodeManifestBlobInto(b, bufs.alloc)
	if err != nil {
		return nil, manifest.Fingerprint{}, fmt.Errorf("snapshot: manifest file %s: %w", p, err)
	}
	lists := &manifestBufs{dir: bufs.dir}
	defer lists.done()
	m, err := manifest.DecodeInPlace(raw, lists.lists())
	if err != nil {
		return nil, manifest.Fingerprint{}, fmt.Errorf("snapshot: manifest file %s: %w", p, err)
	}
	keep(bufs, m, raw)
	keepAll(lists, m)
	return m, checksum(raw), nil
}

// retire notes that a replica let go of m: if its fingerprint list may
// lie in a file, a garbage collection runs soon, whose cleanups unmap
// the files of the manifests nothing uses any more (filemem.go). A
// collection that is under way when retire is called may have found m
// still in use: another follows it.
func (r *Reader) retire(m *manifest.Manifest) {
	if m == nil || len(m.Chunks)*manifest.FingerprintSize < fileMemMin {
		return
	}
	if r.gcWanted.Swap(true) {
		return // a collection is about to start
	}
	r.goBG(func() {
		for r.gcWanted.Swap(false) {
			runtime.GC()
		}
	})
}
