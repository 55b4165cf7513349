package replicate

import (
	"testing"
	"time"

	"github.com/boule-vfs/boule/manifest"
)

// testManifest returns the encoding of a valid manifest of host and path
// with n chunks of zeros and the given change counter, which makes
// manifests of the same database differ.
func testManifest(t testing.TB, host, path string, n int, counter uint32) []byte {
	t.Helper()
	m := &manifest.Manifest{
		Hostname:      host,
		SourcePath:    path,
		Generator:     "boule test",
		Size:          int64(n) * manifest.ChunkSize,
		PageSize:      4096,
		ChangeCounter: counter,
		Created:       time.Unix(1700000000, int64(counter)).UTC(),
		SourceCtime:   time.Unix(1700000000, 0).UTC(),
		Chunks:        make([]manifest.Fingerprint, n),
	}
	for i := range m.Chunks {
		m.Chunks[i] = manifest.ZeroChunk
	}
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
