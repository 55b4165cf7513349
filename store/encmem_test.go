package store

import (
	"bytes"
	"crypto/rand"
	"testing"
	"time"

	"github.com/boule-vfs/boule/internal/memtest"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store/internal/fixture"
)

// TestManifestEncoderMemory bounds what the manifest encoder keeps once it
// has encoded manifests: every process replicating a database has one. The
// manifest of a small database with its inline chunk is a little over
// 64 KiB; that of a 1 GiB database, 512 KiB of fingerprints.
func TestManifestEncoderMemory(t *testing.T) {
	for _, c := range []struct {
		name   string
		chunks int
		bound  uint64 // bytes allocated by the first encoding, beyond its output
	}{
		{"256 KiB database", 4, 1 << 20},
		{"1 GiB database", 16 << 10, 3 << 20},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := &manifest.Manifest{
				Hostname: "h", SourcePath: "/db", Generator: "boule test",
				Size: int64(c.chunks) * manifest.ChunkSize, PageSize: 4096, ChangeCounter: 1,
				Created: time.Unix(1700000000, 0).UTC(), SourceCtime: time.Unix(1700000000, 0).UTC(),
				Chunks: make([]manifest.Fingerprint, c.chunks),
				Inline: map[uint32][]byte{0: make([]byte, manifest.ChunkSize)},
			}
			rand.Read(m.Inline[0][100 : manifest.ChunkSize/2]) // half of it compresses
			for i := 1; i < c.chunks; i++ {
				rand.Read(m.Chunks[i][:])
			}
			m.Chunks[0] = manifest.Sum(m.Inline[0])
			raw, err := m.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			enc := newManifestEncoder()
			var blob []byte
			n := memtest.Allocated(func() { blob = encodeWith(enc, raw) })
			t.Logf("%d bytes encoded to %d, %d bytes allocated", len(raw), len(blob), n)
			if len(blob) >= len(raw) {
				t.Errorf("encodeWith() of %d bytes gave %d, want fewer", len(raw), len(blob))
			}
			if got, err := DecodeManifestBlob(blob); err != nil || !bytes.Equal(got, raw) {
				t.Fatalf("DecodeManifestBlob()=%v, or not the encoding", err)
			}
			if extra := n - uint64(cap(blob)); extra > c.bound {
				t.Errorf("the first encodeWith() of a %d-byte manifest allocated %d bytes beyond its output, want at most %d", len(raw), extra, c.bound)
			}
		})
	}
}

// TestEncodePackMemory: a pack is the blobs EncodeBlob makes, one after
// the other; encoding it allocates little more than the chunks' size and
// the pack's, whether they compress or not, and the pack keeps no more
// room than it needs: uploads keep several in flight.
func TestEncodePackMemory(t *testing.T) {
	for _, c := range []struct {
		name string
		data func(i int) []byte
	}{
		{"random", func(i int) []byte { return fixture.RandomBytes(uint64(i), manifest.ChunkSize) }},
		{"compressible", func(i int) []byte { return fixture.Compressible(manifest.ChunkSize - i) }},
		{"mixed", func(i int) []byte {
			if i%2 == 0 {
				return fixture.RandomBytes(uint64(i), 100+i)
			}
			return make([]byte, manifest.ChunkSize)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			chunks := make([]PackedChunk, PackChunks)
			var want []byte
			raw := 0
			for i := range chunks {
				chunks[i].Data = c.data(i)
				chunks[i].FP = manifest.Sum(chunks[i].Data)
				want = append(want, EncodeBlob(chunks[i].Data)...)
				raw += len(chunks[i].Data)
			}
			var blob []byte
			var refs []manifest.PackRef
			n := memtest.Least(3, func() { blob, _, refs = EncodePack(chunks) })
			if !bytes.Equal(blob, want) {
				t.Fatalf("EncodePack() gave %d bytes, want the %d bytes of the chunks' blobs", len(blob), len(want))
			}
			for i, r := range refs {
				if got, err := DecodePackMember(blob, r, chunks[i].FP); err != nil || !bytes.Equal(got, chunks[i].Data) {
					t.Fatalf("DecodePackMember() of chunk %d=%v, or not its bytes", i, err)
				}
			}
			t.Logf("%d raw bytes, a pack of %d: %d bytes allocated", raw, len(blob), n)
			if bound := uint64(raw + len(blob) + 16<<10); n > bound {
				t.Errorf("EncodePack() of %d raw bytes allocated %d bytes, want at most %d", raw, n, bound)
			}
			if cap(blob) > 2*len(blob) {
				t.Errorf("EncodePack() gave a pack of %d bytes in %d, want at most twice its size", len(blob), cap(blob))
			}
		})
	}
}

// TestEncodeBlobMemory: encoding a chunk allocates its blob's room once,
// even when the frame would outgrow the chunk (it does not compress).
func TestEncodeBlobMemory(t *testing.T) {
	for _, c := range []struct {
		name string
		raw  []byte
	}{
		{"random", fixture.RandomBytes(1, manifest.ChunkSize)},
		{"compressible", fixture.Compressible(manifest.ChunkSize)},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := memtest.Least(3, func() { EncodeBlob(c.raw) })
			if bound := uint64(len(c.raw) + 12<<10); n > bound { // a page of slack, rounded
				t.Errorf("EncodeBlob() of %d bytes allocated %d bytes, want at most %d", len(c.raw), n, bound)
			}
		})
	}
}
