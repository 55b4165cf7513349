package vfs

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
	"unsafe"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/snapshot"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/dir"
)

// TestViewPages: the C view of a snapshot finds each mapped chunk, on
// either side of the boundaries of its pages of chunk pointers, and asks
// Go for the others, whose pages need not exist.
func TestViewPages(t *testing.T) {
	tmpdir := t.TempDir()
	if err := os.Mkdir(filepath.Join(tmpdir, "store"), 0o755); err != nil {
		t.Fatal(err)
	}
	sto, err := dir.New(filepath.Join(tmpdir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, manifest.ChunkSize)
	if err := sto.PutChunk(context.Background(), manifest.ZeroChunk, zeros); err != nil {
		t.Fatal(err)
	}
	// Three pages and a bit of chunks of zeros.
	n := 3*viewPage + 5
	m := &manifest.Manifest{
		Hostname: "h", SourcePath: "/v.db", Size: int64(n) * manifest.ChunkSize,
		Created: time.Unix(1700000000, 0).UTC(), Chunks: make([]manifest.Fingerprint, n),
	}
	for i := range m.Chunks {
		m.Chunks[i] = manifest.ZeroChunk
	}
	raw, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(tmpdir, "m")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	r := snapshot.NewReader(snapshot.Options{Remote: []store.Store{sto}, Prefetch: -1})
	t.Cleanup(r.Close)
	c, err := r.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	s := c.Snapshot()
	v := viewFor(s)

	page := viewPage
	mapped := []int{0, page - 1, page, 3*page + 4}
	for _, i := range mapped {
		b, err := s.Chunk(context.Background(), i)
		if err != nil {
			t.Fatalf("Chunk(%d)=%v", i, err)
		}
		if got, want := v.mapped(i), uintptr(unsafe.Pointer(&b[0])); got != want {
			t.Errorf("view of chunk %d: %#x, want the mapping at %#x", i, got, want)
		}
	}
	for _, i := range []int{1, page - 2, page + 1, 2 * page, 3*page + 3} {
		if got := v.mapped(i); got != 0 {
			t.Errorf("view of unmapped chunk %d: %#x, want 0", i, got)
		}
	}
}
