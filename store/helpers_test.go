package store

import (
	"testing"
	"time"

	"github.com/boule-vfs/boule/manifest"
)

// testManifest returns the encoding of a valid manifest with n chunks of
// zeros (storetest.Manifest, which this package's own tests cannot import).
func testManifest(t testing.TB, host, path string, n int, counter uint32) []byte {
	t.Helper()
	m := &manifest.Manifest{Hostname: host, SourcePath: path, Size: int64(n) * manifest.ChunkSize,
		ChangeCounter: counter, Created: time.Unix(1700000000, int64(counter)).UTC(), Chunks: make([]manifest.Fingerprint, n)}
	for i := range m.Chunks {
		m.Chunks[i] = manifest.ZeroChunk
	}
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
