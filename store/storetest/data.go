package storetest

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/boule-vfs/boule/manifest"
)

// Compressible returns n bytes that look like a SQLite page: mostly zeros
// with some structure, so that zstd shrinks them.
func Compressible(n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 97 {
		b[i] = byte(i / 97)
	}
	return b
}

// RandomBytes returns n incompressible bytes, the same for the same seed.
func RandomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// Manifest returns the encoding of a valid manifest of host and path with
// n chunks of zeros and the given change counter, which makes manifests of
// the same database differ.
func Manifest(t testing.TB, host, path string, n int, counter uint32) []byte {
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
