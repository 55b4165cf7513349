package storetest

import (
	"testing"

	"github.com/boule-vfs/boule/store/internal/fixture"
)

// Compressible returns n bytes that look like a SQLite page: mostly zeros
// with some structure, so that zstd shrinks them.
func Compressible(n int) []byte { return fixture.Compressible(n) }

// RandomBytes returns n incompressible bytes, the same for the same seed.
func RandomBytes(seed uint64, n int) []byte { return fixture.RandomBytes(seed, n) }

// Manifest returns the encoding of a valid manifest of host and path with
// n chunks of zeros and the given change counter, which makes manifests of
// the same database differ.
func Manifest(t testing.TB, host, path string, n int, counter uint32) []byte {
	t.Helper()
	return fixture.Manifest(t, host, path, n, counter)
}
