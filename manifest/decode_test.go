package manifest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/boule-vfs/boule/internal/memtest"
)

// Offsets in the encoding of newManifest(...) with its default strings.
const (
	offHostname = headerSize // 2-byte length, then the bytes
)

// offChunkCount returns the offset of the chunk count field of enc.
func offChunkCount(enc []byte) int {
	off := headerSize
	for range 3 {
		off += 2 + int(binary.BigEndian.Uint16(enc[off:]))
	}
	return off
}

// offInline returns the offset of the inline chunk count field of enc.
func offInline(enc []byte) int {
	off := offChunkCount(enc)
	return off + 4 + FingerprintSize*int(binary.BigEndian.Uint32(enc[off:]))
}

func TestDecodeRejects(t *testing.T) {
	base := mustMarshal(t, newManifest(2*ChunkSize+100, 0, 2))
	pathOff := offHostname + 2 + len("db1.example.com") + 2 // first byte of the source path
	hostOff := offHostname + 2
	inl := offInline(base)
	entry1 := inl + 4                                // chunk 0's entry
	entry2 := entry1 + inlineEntryHeader + ChunkSize // chunk 2's entry
	putU32 := func(off int, v uint32) func([]byte) []byte {
		return func(b []byte) []byte { binary.BigEndian.PutUint32(b[off:], v); return b }
	}
	putU64 := func(off int, v uint64) func([]byte) []byte {
		return func(b []byte) []byte { binary.BigEndian.PutUint64(b[off:], v); return b }
	}
	setByte := func(off int, v byte) func([]byte) []byte {
		return func(b []byte) []byte { b[off] = v; return b }
	}

	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"too short", base[:minEncodedSize-1], ErrTruncated},
		{"bad magic", append([]byte("BOULEMG\x00"), base[8:]...), ErrMagic},
		{"bad magic fixed checksum", patch(base, setByte(0, 'b')), ErrMagic},
		{"version 2", patch(base, func(b []byte) []byte { b[9] = 2; return b }), ErrVersion},
		{"version 0", patch(base, func(b []byte) []byte { b[9] = 0; return b }), ErrVersion},
		{"unknown flag", patch(base, func(b []byte) []byte { b[11] = 2; return b }), ErrFlags},
		{"high flag", patch(base, func(b []byte) []byte { b[10] = 0x80; return b }), ErrFlags},
		{"bad checksum", append(bytes.Clone(base[:len(base)-1]), base[len(base)-1]^1), ErrChecksum},
		{"trailing byte after checksum", append(bytes.Clone(base), 0), ErrChecksum},
		{"trailing byte before checksum", patch(base, func(b []byte) []byte { return append(b, 0) }), ErrInvalid},
		{"chunk size 4096", patch(base, putU32(12, 4096)), ErrInvalid},
		{"size > MaxSize", patch(base, putU64(16, MaxSize+1)), ErrInvalid},
		{"negative size", patch(base, putU64(16, 1<<63)), ErrInvalid},
		{"size with fewer chunks", patch(base, putU64(16, ChunkSize)), ErrInvalid},
		{"page size 1000", patch(base, putU32(24, 1000)), ErrInvalid},
		{"ctime ns 1e9", patch(base, putU32(56, 1e9)), ErrInvalid},
		{"ctime ns max", patch(base, putU32(56, 0xffffffff)), ErrInvalid},
		{"empty hostname", patch(base, func(b []byte) []byte {
			return append(append(b[:offHostname:offHostname], 0, 0), b[hostOff+len("db1.example.com"):]...)
		}), ErrInvalid},
		{"hostname length past end", patch(base, func(b []byte) []byte {
			return append(b[:offHostname:offHostname], 0xff, 0xff, 'a')
		}), ErrTruncated},
		{"hostname with slash", patch(base, setByte(hostOff+3, '/')), ErrInvalid},
		{"hostname not UTF-8", patch(base, setByte(hostOff, 0xff)), ErrInvalid},
		{"relative path", patch(base, setByte(pathOff, 'v')), ErrInvalid},
		{"NUL in path", patch(base, setByte(pathOff+4, 0)), ErrInvalid},
		{"chunk count mismatch", patch(base, putU32(offChunkCount(base), 4)), ErrInvalid},
		{"chunk count huge", patch(base, putU32(offChunkCount(base), 0xffffffff)), ErrInvalid},
		{"inline count > chunk count", patch(base, putU32(inl, 4)), ErrInvalid},
		{"inline count claims more", patch(base, putU32(inl, 3)), ErrTruncated},
		{"inline count too small", patch(base, putU32(inl, 1)), ErrInvalid},
		{"inline mismatch", patch(base, func(b []byte) []byte { b[entry1+inlineEntryHeader+10] ^= 1; return b }), ErrInlineMismatch},
		{"inline index out of order", patch(base, func(b []byte) []byte {
			// Swap the two entries.
			e1 := bytes.Clone(b[entry1:entry2])
			e2 := bytes.Clone(b[entry2:])
			return append(append(b[:entry1:entry1], e2...), e1...)
		}), ErrInvalid},
		{"inline index duplicate", patch(base, func(b []byte) []byte {
			e1 := bytes.Clone(b[entry1:entry2])
			return append(append(b[:entry1:entry1], e1...), e1...)
		}), ErrInvalid},
		{"inline index out of range", patch(base, putU32(entry2, 3)), ErrInvalid},
		{"inline index points elsewhere", patch(base, putU32(entry1, 1)), ErrInlineMismatch},
		{"inline length wrong", patch(base, putU32(entry2+4, 99)), ErrInvalid},
		{"inline length huge", patch(base, putU32(entry2+4, 0xffffffff)), ErrInvalid},
		{"inline data truncated", patch(base, func(b []byte) []byte { return b[:len(b)-1] }), ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Decode(tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Decode = %v, want %v", err, tt.want)
			}
			if m != nil {
				t.Errorf("Decode returned a manifest with error %v", err)
			}
		})
	}
}

func TestDecodeErrorNamesField(t *testing.T) {
	base := mustMarshal(t, newManifest(100))
	pathOff := offHostname + 2 + len("db1.example.com") + 2
	_, err := Decode(patch(base, func(b []byte) []byte { b[pathOff+3] = 0; return b }))
	const want = "manifest: source path: contains NUL: manifest: invalid"
	if err == nil || err.Error() != want {
		t.Errorf("Decode = %v, want %q", err, want)
	}
}

// TestDecodeTruncated decodes every proper prefix of a valid manifest, both
// as is and with a checksum fixed up so that the field parser sees it.
func TestDecodeTruncated(t *testing.T) {
	for _, m := range []*Manifest{newManifest(0), newManifest(3*ChunkSize+7, 3)} {
		enc := mustMarshal(t, m)
		for i := range len(enc) {
			if got, err := Decode(enc[:i]); err == nil || got != nil {
				t.Fatalf("Decode(prefix of %d/%d bytes) = %v, %v; want an error", i, len(enc), got, err)
			}
		}
		body := enc[:len(enc)-checksumSize]
		for i := range len(body) {
			in := withChecksum(bytes.Clone(body[:i]))
			got, err := Decode(in)
			if err == nil || got != nil {
				t.Fatalf("Decode(body prefix of %d/%d bytes + checksum) = %v, %v; want an error", i, len(body), got, err)
			}
			if len(in) >= minEncodedSize && !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrInvalid) {
				t.Fatalf("Decode(body prefix of %d bytes + checksum) = %v, want ErrTruncated or ErrInvalid", i, err)
			}
		}
	}
}

// TestDecodeBitFlips flips every bit of a small manifest in turn: each
// must be rejected, as a checksum error past the first 12 bytes.
func TestDecodeBitFlips(t *testing.T) {
	enc := mustMarshal(t, newManifest(300, 0))
	for i := range enc {
		for bit := range 8 {
			in := bytes.Clone(enc)
			in[i] ^= 1 << bit
			got, err := Decode(in)
			if err == nil || got != nil {
				t.Fatalf("flip byte %d bit %d: Decode = %v, %v; want an error", i, bit, got, err)
			}
			var want error
			switch {
			case i < 8:
				want = ErrMagic
			case i < 10:
				want = ErrVersion
			case i == 11 && bit == 0:
				want = ErrChecksum // FlagPacks: known, so the checksum decides
			case i < 12:
				want = ErrFlags
			default:
				want = ErrChecksum
			}
			if !errors.Is(err, want) {
				t.Fatalf("flip byte %d bit %d: Decode = %v, want %v", i, bit, err, want)
			}
		}
	}
}

// manyPacks returns a valid manifest of n chunks (n a multiple of 64),
// all of them in packs of 64.
func manyPacks(n int) *Manifest {
	m := newManifest(int64(n) * ChunkSize)
	for k := range n / 64 {
		p := Pack{ID: Fingerprint{byte(k >> 16), byte(k >> 8), byte(k)}}
		for j := range 64 {
			p.Members = append(p.Members, PackMember{Index: uint32(64*k + j), Offset: uint32(1000 * j), Length: 1000})
		}
		m.Packs = append(m.Packs, p)
	}
	return m
}

// TestDecodeAllocs: decoding allocates about the size of its input, never
// more than twice it plus a little, and nothing per chunk beyond the
// decoded fields; a count that the input cannot hold is refused before
// anything is allocated for it.
func TestDecodeAllocs(t *testing.T) {
	big := mustMarshal(t, newManifest(1<<18*ChunkSize, 0))
	packed := mustMarshal(t, manyPacks(1<<16))
	for _, c := range []struct {
		name    string
		in      []byte
		wantErr bool
		bound   uint64
	}{
		// 2^18 chunks, one inline: 8 MiB of fingerprints.
		{"16 GiB database", big, false, uint64(len(big)) + 64<<10},
		// 2^16 chunks in 1024 packs: 2 MiB of fingerprints, 768 KiB
		// of members.
		{"4 GiB database in packs", packed, false, uint64(len(packed))*9/8 + 64<<10},
		// The chunk count matches a 4 TiB size, but the input holds
		// the fingerprints of 2^18 chunks only.
		{"claims 2^26 chunks", patch(big, func(b []byte) []byte {
			binary.BigEndian.PutUint64(b[16:], MaxSize)
			binary.BigEndian.PutUint32(b[offChunkCount(b):], 1<<26)
			return b
		}), true, 64 << 10},
		{"claims 2^26 packs", patch(packed, func(b []byte) []byte {
			off := len(b) - (1<<16*packMemberSize + 1024*packHeader) - 4
			binary.BigEndian.PutUint32(b[off:], 1<<26)
			return b
		}), true, uint64(len(packed)) + 64<<10},
	} {
		t.Run(c.name, func(t *testing.T) {
			var err error
			n := memtest.Least(3, func() { _, err = Decode(c.in) })
			if (err != nil) != c.wantErr {
				t.Fatalf("Decode()=%v, want error %v", err, c.wantErr)
			}
			if n > c.bound {
				t.Errorf("Decode() of %d bytes allocated %d, want at most %d", len(c.in), n, c.bound)
			}
		})
	}
}
