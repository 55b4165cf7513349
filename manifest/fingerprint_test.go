package manifest

import (
	"errors"
	"strings"
	"testing"
)

func TestSumKnownVector(t *testing.T) {
	// BLAKE3-256 of the empty input, from the BLAKE3 specification's test
	// vectors: pins the hash function, not only our use of it.
	const empty = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
	if got := Sum(nil).String(); got != empty {
		t.Errorf("Sum(nil) = %s, want %s", got, empty)
	}
}

func TestZeroChunk(t *testing.T) {
	if got := Sum(make([]byte, ChunkSize)); got != ZeroChunk {
		t.Errorf("ZeroChunk = %s, want %s", ZeroChunk, got)
	}
	if ZeroChunk == (Fingerprint{}) {
		t.Error("ZeroChunk is all zero bytes")
	}
	if Sum(make([]byte, ChunkSize-1)) == ZeroChunk {
		t.Error("ZeroChunk equals the hash of a shorter zero chunk")
	}
}

func TestFingerprintStringParse(t *testing.T) {
	for _, data := range [][]byte{nil, []byte("x"), make([]byte, ChunkSize)} {
		f := Sum(data)
		s := f.String()
		if len(s) != 64 || strings.ToLower(s) != s {
			t.Errorf("String() = %q, want 64 lowercase hex digits", s)
		}
		g, err := ParseFingerprint(s)
		if err != nil || g != f {
			t.Errorf("ParseFingerprint(%q) = %s, %v; want %s", s, g, err, f)
		}
	}
	var f Fingerprint
	f[0], f[31] = 0x0a, 0xf0
	if got, want := f.String(), "0a"+strings.Repeat("0", 60)+"f0"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestParseFingerprintRejects(t *testing.T) {
	valid := Sum([]byte("boule")).String()
	tests := map[string]string{
		"empty":        "",
		"uppercase":    strings.ToUpper(valid),
		"one upper":    "A" + valid[1:],
		"short":        valid[:63],
		"long":         valid + "0",
		"double":       valid + valid,
		"non-hex":      "g" + valid[1:],
		"non-hex last": valid[:63] + "z",
		"space":        " " + valid[1:],
		"prefix 0x":    "0x" + valid[2:],
		"non-ASCII":    "é" + valid[2:],
	}
	for name, s := range tests {
		t.Run(name, func(t *testing.T) {
			f, err := ParseFingerprint(s)
			if !errors.Is(err, ErrFingerprint) {
				t.Errorf("ParseFingerprint(%q) = %v, want ErrFingerprint", s, err)
			}
			if f != (Fingerprint{}) {
				t.Errorf("ParseFingerprint(%q) returned nonzero %s on error", s, f)
			}
		})
	}
}
