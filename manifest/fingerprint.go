package manifest

import (
	"encoding/hex"
	"fmt"

	"github.com/zeebo/blake3"
)

// ChunkSize is the size in bytes of every chunk but possibly the last.
const ChunkSize = 65536

// FingerprintSize is the size in bytes of a Fingerprint.
const FingerprintSize = 32

// Fingerprint identifies a chunk: the BLAKE3-256 hash of its bytes.
type Fingerprint [FingerprintSize]byte

// ZeroChunk is the fingerprint of a full chunk of zero bytes, Sum of
// ChunkSize zero bytes. It is computed when the package is initialized.
var ZeroChunk = Sum(make([]byte, ChunkSize))

// Sum returns the fingerprint of b: its BLAKE3-256 hash.
func Sum(b []byte) Fingerprint {
	return Fingerprint(blake3.Sum256(b))
}

// String returns f as 64 lowercase hexadecimal digits, the form used in
// object names.
func (f Fingerprint) String() string {
	return hex.EncodeToString(f[:])
}

// ParseFingerprint parses the form produced by [Fingerprint.String]. It is
// strict: s must be exactly 64 lowercase hexadecimal digits, otherwise the
// error wraps ErrFingerprint.
func ParseFingerprint(s string) (Fingerprint, error) {
	var f Fingerprint
	if len(s) != 2*FingerprintSize {
		return f, fmt.Errorf("manifest: fingerprint: length %d, want %d: %w", len(s), 2*FingerprintSize, ErrFingerprint)
	}
	for i := 0; i < len(f); i++ {
		hi, ok1 := lowerHex(s[2*i])
		lo, ok2 := lowerHex(s[2*i+1])
		if !ok1 || !ok2 {
			off := 2 * i
			if ok1 {
				off++
			}
			return Fingerprint{}, fmt.Errorf("manifest: fingerprint: not lowercase hex at offset %d: %w", off, ErrFingerprint)
		}
		f[i] = hi<<4 | lo
	}
	return f, nil
}

func lowerHex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}
