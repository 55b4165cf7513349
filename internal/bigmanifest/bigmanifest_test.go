package bigmanifest

import (
	"bytes"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
)

// TestDecodes: what Spec writes is a manifest that manifest.Decode
// accepts, as described, compressed or not.
func TestDecodes(t *testing.T) {
	first := make([]byte, manifest.ChunkSize)
	copy(first, "SQLite format 3\x00")
	for _, c := range []struct {
		name string
		spec Spec
	}{
		{"empty", Spec{}},
		{"one short chunk", Spec{Size: 100}},
		{"zeros", Spec{Size: 5*manifest.ChunkSize + 7}},
		{"first inline", Spec{Size: 40 * manifest.ChunkSize, First: first, Hostname: "x", SourcePath: "/a/b.db"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var raw bytes.Buffer
			n, err := c.spec.WriteTo(&raw)
			if err != nil || n != int64(raw.Len()) || n != c.spec.EncodedLen() {
				t.Fatalf("WriteTo()=%d, %v; wrote %d, EncodedLen %d", n, err, raw.Len(), c.spec.EncodedLen())
			}
			m, err := manifest.Decode(raw.Bytes())
			if err != nil {
				t.Fatalf("Decode()=%v", err)
			}
			if m.Size != c.spec.Size || len(m.Chunks) != manifest.NumChunks(c.spec.Size) {
				t.Fatalf("Decode() size %d with %d chunks, want %d", m.Size, len(m.Chunks), c.spec.Size)
			}
			for i := 1; i < len(m.Chunks); i++ {
				if want := manifest.Sum(make([]byte, manifest.ChunkLen(m.Size, i))); m.Chunks[i] != want {
					t.Fatalf("chunk %d: %s, want the zero chunk's %s", i, m.Chunks[i], want)
				}
			}
			if c.spec.First != nil && !bytes.Equal(m.Inline[0], c.spec.First) {
				t.Fatalf("inline chunk 0 differs")
			}
			for _, declare := range []bool{true, false} {
				var z bytes.Buffer
				if err := c.spec.Zstd(&z, declare); err != nil {
					t.Fatalf("Zstd(%v)=%v", declare, err)
				}
				got, err := store.DecodeManifestBlob(z.Bytes())
				if err != nil || !bytes.Equal(got, raw.Bytes()) {
					t.Fatalf("DecodeManifestBlob(Zstd(%v)): %v, equal %v", declare, err, bytes.Equal(got, raw.Bytes()))
				}
			}
		})
	}
}

// TestDeclareSize: a frame given a size header decodes as before when the
// size is true, and is refused when it is not.
func TestDeclareSize(t *testing.T) {
	spec := Spec{Size: 1 << 34} // 8 MiB of fingerprints: more than a block
	var z, raw bytes.Buffer
	if err := spec.Zstd(&z, false); err != nil {
		t.Fatal(err)
	}
	if _, err := spec.WriteTo(&raw); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		size uint64
		ok   bool
	}{
		{"true", uint64(raw.Len()), true},
		{"one byte short", uint64(raw.Len()) - 1, false},
		{"one byte over", uint64(raw.Len()) + 1, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			frame, err := DeclareSize(z.Bytes(), c.size)
			if err != nil {
				t.Fatal(err)
			}
			var h zstd.Header
			if err := h.Decode(frame); err != nil || !h.HasFCS || h.FrameContentSize != c.size {
				t.Fatalf("header: %v, declares %v %d, want %d", err, h.HasFCS, h.FrameContentSize, c.size)
			}
			got, err := store.DecodeManifestBlob(frame)
			if ok := err == nil && bytes.Equal(got, raw.Bytes()); ok != c.ok {
				t.Fatalf("DecodeManifestBlob()=%v, decoded as before %v, want %v", err, ok, c.ok)
			}
		})
	}
	if _, err := DeclareSize(frameOf(t, spec), 1); err == nil {
		t.Fatal("DeclareSize of a frame that declares its size: no error")
	}
}

func frameOf(t *testing.T, s Spec) []byte {
	t.Helper()
	var z bytes.Buffer
	if err := s.Zstd(&z, true); err != nil {
		t.Fatal(err)
	}
	return z.Bytes()
}
