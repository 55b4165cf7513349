package store

import (
	"bytes"
	"crypto/rand"
	"testing"
	"time"

	"github.com/boule-vfs/boule/internal/memtest"
	"github.com/boule-vfs/boule/manifest"
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
