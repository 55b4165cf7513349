package manifest

import (
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/zeebo/blake3"
)

// gibManifest describes a 1 GiB database: 16384 chunks.
func gibManifest() *Manifest {
	return newManifest(1 << 30)
}

func BenchmarkMarshal(b *testing.B) {
	m := gibManifest()
	b.SetBytes(int64(len(mustMarshal(b, m))))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.MarshalBinary(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	enc := mustMarshal(b, gibManifest())
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(enc); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFingerprint compares the candidate chunk hashes on one chunk of
// random bytes; it is why fingerprints are BLAKE3-256.
func BenchmarkFingerprint(b *testing.B) {
	chunk := make([]byte, ChunkSize)
	rand.Read(chunk)
	b.Run("SHA256", func(b *testing.B) {
		b.SetBytes(ChunkSize)
		for b.Loop() {
			_ = sha256.Sum256(chunk)
		}
	})
	b.Run("BLAKE3", func(b *testing.B) {
		b.SetBytes(ChunkSize)
		for b.Loop() {
			_ = blake3.Sum256(chunk)
		}
	})
}
