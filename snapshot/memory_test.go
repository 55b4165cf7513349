package snapshot

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/boule-vfs/boule/internal/memtest"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
)

// bigManifest returns a valid manifest of a database of n chunks of
// zeros; with packed, every chunk is in a pack of 64.
func bigManifest(n int, packed bool) *manifest.Manifest {
	m := &manifest.Manifest{
		Hostname:   "h",
		SourcePath: "/big.db",
		Size:       int64(n) * manifest.ChunkSize,
		PageSize:   4096,
		Created:    time.Unix(1700000000, 0).UTC(),
		Chunks:     make([]manifest.Fingerprint, n),
	}
	for i := range m.Chunks {
		m.Chunks[i] = manifest.ZeroChunk
	}
	for k := 0; packed && k < n/64; k++ {
		p := manifest.Pack{ID: manifest.Fingerprint{byte(k >> 16), byte(k >> 8), byte(k)}}
		for j := range 64 {
			p.Members = append(p.Members, manifest.PackMember{Index: uint32(64*k + j), Offset: uint32(100 * j), Length: 100})
		}
		m.Packs = append(m.Packs, p)
	}
	return m
}

// TestOpenAllocs: opening a replica of 2^20 chunks (a 64 GiB database)
// allocates its manifest's decoded bytes and decoded fields, and nothing
// per chunk besides (no table of mappings, no pack map, no prefetch work
// list) but the 4 bytes of the pack index when the prefetch starts. The
// manifest file is stored compressed, as vfsctl saves it.
func TestOpenAllocs(t *testing.T) {
	const n = 1 << 20
	for _, c := range []struct {
		name     string
		packed   bool
		prefetch int
	}{
		{"no prefetch", false, -1},
		{"prefetch", false, 0},
		{"packs, no prefetch", true, -1},
		{"packs, prefetch", true, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			raw, err := bigManifest(n, c.packed).MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "m")
			if err := os.WriteFile(path, store.EncodeManifestBlob(raw), 0o644); err != nil {
				t.Fatal(err)
			}
			// No store: the prefetch stops at its first chunk. A fresh
			// reader for each of three opens (a reader keeps what it
			// opened), and the least of the three: other tests'
			// goroutines allocate meanwhile too.
			var got uint64
			for i := range 3 {
				r := NewReader(Options{Prefetch: c.prefetch})
				var conn *Conn
				n := memtest.Allocated(func() { conn, err = r.Open(context.Background(), path) })
				if err != nil {
					r.Close()
					t.Fatalf("Open()=%v", err)
				}
				conn.Close()
				r.Close()
				if i == 0 || n < got {
					got = n
				}
			}
			// The decoded blob, then the decoded manifest: twice the
			// encoding; then the pack index.
			if bound := 2*uint64(len(raw)) + 4*n + 1<<20; got > bound {
				t.Errorf("Open() of a %d-byte manifest of %d chunks allocated %d bytes, want at most %d", len(raw), n, got, bound)
			}
		})
	}
}
