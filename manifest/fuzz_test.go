package manifest

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/boule-vfs/boule/internal/memtest"
)

// fuzzSeeds returns small valid encodings. They are kept small on purpose:
// the fuzzing engine minimizes every input that finds new coverage, which
// takes long for inputs of more than a few hundred bytes.
func fuzzSeeds(t testing.TB) [][]byte {
	uni := newManifest(ChunkSize + 1)
	uni.SourcePath = "/données/日本.db"
	uni.Hostname = "h"
	uni.Generator = ""
	return [][]byte{
		mustMarshal(t, newManifest(0)),
		mustMarshal(t, newManifest(20, 0)),
		mustMarshal(t, newManifest(ChunkSize+10, 1)),
		mustMarshal(t, uni),
		mustMarshal(t, packedManifest()),
	}
}

// checkRoundTrip asserts the properties shared by the fuzz targets:
// Decode allocates at most twice its input, plus a little, whatever the
// input claims; and whatever it accepts re-encodes to exactly the same
// bytes, which decode to an equal manifest.
func checkRoundTrip(t *testing.T, in []byte) {
	var m *Manifest
	var err error
	bound := 2*uint64(len(in)) + 64<<10
	if n, ok := memtest.AtMost(bound, func() { m, err = Decode(in) }); !ok {
		t.Fatalf("Decode of %d bytes allocated %d, want at most %d", len(in), n, bound)
	}
	// In place, the same answer.
	if mi, erri := DecodeInPlace(in, nil); (err == nil) != (erri == nil) || (err == nil && !reflect.DeepEqual(mi, m)) {
		t.Fatalf("DecodeInPlace()=%v, Decode()=%v, or their manifests differ", erri, err)
	}
	if err != nil {
		if m != nil {
			t.Fatalf("Decode returned a manifest with error %v", err)
		}
		return
	}
	if err := m.Validate(); err != nil {
		t.Fatalf("Decode accepted a manifest that fails Validate: %v", err)
	}
	enc, err := m.MarshalBinary()
	if err != nil {
		t.Fatalf("MarshalBinary of a decoded manifest: %v", err)
	}
	if !bytes.Equal(enc, in) {
		t.Fatalf("re-encoding differs from the accepted input:\n in  %x\n out %x", in, enc)
	}
	m2, err := Decode(enc)
	if err != nil {
		t.Fatalf("Decode of re-encoding: %v", err)
	}
	if !reflect.DeepEqual(m, m2) {
		t.Fatalf("round trip changed the manifest:\n%+v\n%+v", m, m2)
	}
}

func FuzzDecode(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		checkRoundTrip(t, in)
	})
}

// FuzzDecodeBody fuzzes the bytes after the magic, version and flags, and
// appends a correct checksum, so that mutations reach the field parser
// instead of failing the checksum.
func FuzzDecodeBody(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s[12 : len(s)-checksumSize])
	}
	f.Fuzz(func(t *testing.T, rest []byte) {
		in := make([]byte, 0, 12+len(rest)+checksumSize)
		in = append(in, magic...)
		in = append(in, 0, formatVersion, 0, 0)
		in = append(in, rest...)
		checkRoundTrip(t, withChecksum(in))
	})
}
