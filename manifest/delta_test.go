package manifest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/boule-vfs/boule/internal/memtest"
)

// deltaPair returns a base manifest and its encoding, and a later
// manifest of the same database derived from it by edit.
func deltaPair(t testing.TB, size int64, edit func(m *Manifest)) (base, next *Manifest, baseBlob []byte) {
	t.Helper()
	base = packedManifest()
	if size != base.Size {
		base = newManifest(size, 0)
	}
	blob, _, bm := mustBase(t, base)
	next = newManifest(base.Size, 0)
	next.Chunks = append([]Fingerprint(nil), base.Chunks...)
	next.Packs = base.Packs
	next.ChangeCounter++
	if edit != nil {
		edit(next)
	}
	return bm, next, blob
}

// mustHead encodes next as a head over base.
func mustHead(t testing.TB, next, base *Manifest, blob []byte) []byte {
	t.Helper()
	h, err := NewHead(next, base, Sum(blob), len(blob))
	if err != nil {
		t.Fatalf("NewHead()=%v", err)
	}
	b, err := h.MarshalBinary()
	if err != nil {
		t.Fatalf("Head.MarshalBinary()=%v", err)
	}
	return b
}

func TestHeadRoundTrip(t *testing.T) {
	fp := func(b byte) Fingerprint { return Fingerprint{b, 31: b} }
	tests := []struct {
		name      string
		size      int64
		edit      func(m *Manifest)
		overrides int
	}{
		{"unchanged", 0, nil, 0},
		{"one chunk changed", 0, func(m *Manifest) { m.Chunks[3] = fp(3) }, 1},
		{"packed chunk moved to its own object", 0, func(m *Manifest) {
			m.Packs = []Pack{{ID: m.Packs[0].ID, Members: m.Packs[0].Members[:2]}, m.Packs[1]}
		}, 1},
		{"grown", 0, func(m *Manifest) {
			m.Size += 2 * ChunkSize
			m.Chunks[5] = fp(5)
			m.Chunks = append(m.Chunks, fp(6), fp(7))
			m.Packs = []Pack{m.Packs[0], {ID: Fingerprint{0xf1}, Members: []PackMember{{5, 0, 9}, {7, 9, 9}}}}
		}, 3},
		{"shrunk", 0, func(m *Manifest) {
			m.Size = 2*ChunkSize + 10
			m.Chunks = m.Chunks[:3]
			m.Chunks[2] = fp(2)
			m.Packs = []Pack{{ID: m.Packs[0].ID, Members: m.Packs[0].Members[:1]}}
		}, 1},
		{"emptied", 0, func(m *Manifest) {
			*m = *newManifest(0)
		}, 0},
		{"chunk 0 inline again", 20 * ChunkSize, func(m *Manifest) { m.Chunks[19] = fp(19) }, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			size := tt.size
			if size == 0 {
				size = packedManifest().Size
			}
			base, next, blob := deltaPair(t, size, tt.edit)
			enc := mustHead(t, next, base, blob)
			h, err := DecodeHead(enc)
			if err != nil {
				t.Fatalf("DecodeHead()=%v", err)
			}
			if len(h.Overrides) != tt.overrides {
				t.Errorf("len(Overrides)=%d, want %d", len(h.Overrides), tt.overrides)
			}
			got, err := DecodeV2(enc, blob)
			if err != nil {
				t.Fatalf("DecodeV2()=%v", err)
			}
			sameManifest(t, got, next)
			// In place and in an Alloc's memory, the same manifest.
			var a Alloc
			var chunks []Fingerprint
			var packs []Pack
			a.Chunks = func(n int) ([]Fingerprint, error) { chunks = make([]Fingerprint, n); return chunks, nil }
			a.Packs = func(p, m int) ([]Pack, []PackMember, error) {
				packs = make([]Pack, p)
				return packs, make([]PackMember, m), nil
			}
			bm, err := h.DecodeBaseInPlace(blob, &a)
			if err != nil {
				t.Fatalf("DecodeBaseInPlace()=%v", err)
			}
			if len(bm.Chunks) > 0 && &bm.Chunks[0][0] != &blob[bytes.Index(blob, bm.Chunks[0][:])] {
				t.Errorf("DecodeBaseInPlace(): Chunks do not lie in the base's bytes")
			}
			inPlace, err := h.ApplyInto(bm, &a)
			if err != nil {
				t.Fatalf("ApplyInto()=%v", err)
			}
			sameManifest(t, inPlace, next)
			if len(next.Chunks) > 0 && &inPlace.Chunks[0] != &chunks[0] {
				t.Errorf("ApplyInto(): Chunks not in the Alloc's memory")
			}
			if len(next.Packs) > 0 && &inPlace.Packs[0] != &packs[0] {
				t.Errorf("ApplyInto(): Packs not in the Alloc's memory")
			}
			// The v1 encoding of what a head stands for is the v1
			// encoding of the manifest it was made from.
			if a, b := mustMarshal(t, got), mustMarshal(t, next); string(a) != string(b) {
				t.Errorf("v1 encoding of the applied head differs from the original's")
			}
			if _, err := Decode(enc); !errors.Is(err, ErrVersion) {
				t.Errorf("Decode(head)=%v, want ErrVersion", err)
			}
		})
	}
}

func TestFormatVersion(t *testing.T) {
	base, next, blob := deltaPair(t, packedManifest().Size, nil)
	for _, c := range []struct {
		name string
		b    []byte
		want int
	}{
		{"v1", mustMarshal(t, next), 1},
		{"v2", mustHead(t, next, base, blob), 2},
	} {
		if got, err := FormatVersion(c.b); err != nil || got != c.want {
			t.Errorf("FormatVersion(%s)=%d, %v, want %d", c.name, got, err, c.want)
		}
	}
	if _, err := FormatVersion([]byte("BOULEMF")); !errors.Is(err, ErrTruncated) {
		t.Errorf("FormatVersion(short)=%v, want ErrTruncated", err)
	}
}

// headField patches a head: edit changes its body (without checksum)
// and a fresh checksum is appended.
func patchHead(enc []byte, edit func(body []byte) []byte) []byte { return patch(enc, edit) }

// headOffsets returns the offsets, in the head enc, of the base
// reference and of the override count.
func headOffsets(enc []byte) (baseRef, overrides int) {
	off := headerSize
	for range 3 {
		off += 2 + int(binary.BigEndian.Uint16(enc[off:]))
	}
	return off, off + baseRefSize
}

func TestHeadHostile(t *testing.T) {
	base, next, blob := deltaPair(t, packedManifest().Size, func(m *Manifest) {
		m.Chunks[2], m.Chunks[4] = Fingerprint{2}, Fingerprint{4}
		m.Packs = []Pack{{ID: m.Packs[0].ID, Members: m.Packs[0].Members[:1]}, m.Packs[1],
			{ID: Fingerprint{0xf1}, Members: []PackMember{{2, 0, 9}}}}
	})
	enc := mustHead(t, next, base, blob)
	ref, ov := headOffsets(enc)
	be := binary.BigEndian
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"override index beyond size", patchHead(enc, func(b []byte) []byte {
			be.PutUint32(b[ov+4+overrideSize:], 6)
			return b
		}), ErrInvalid},
		{"duplicate override indexes", patchHead(enc, func(b []byte) []byte {
			be.PutUint32(b[ov+4+overrideSize:], 2)
			return b
		}), ErrInvalid},
		{"override count beyond the chunks", patchHead(enc, func(b []byte) []byte {
			be.PutUint32(b[ov:], 7)
			return b
		}), ErrInvalid},
		{"huge size over a small base", patchHead(enc, func(b []byte) []byte {
			be.PutUint64(b[16:], MaxSize)
			return b
		}), ErrInvalid},
		{"base chunk count beyond its length", patchHead(enc, func(b []byte) []byte {
			be.PutUint32(b[ref+40:], 1<<26)
			return b
		}), ErrInvalid},
		{"base length beyond any base of its chunks", patchHead(enc, func(b []byte) []byte {
			be.PutUint64(b[ref+32:], 1<<40)
			return b
		}), ErrInvalid},
		{"pack member not overridden", patchHead(enc, func(b []byte) []byte {
			// The head's pack lists chunk 2; make the overrides 3 and 4.
			be.PutUint32(b[ov+4:], 3)
			return b
		}), ErrInvalid},
		{"checksum", append(append([]byte(nil), enc[:len(enc)-1]...), enc[len(enc)-1]^1), ErrChecksum},
		{"truncated", enc[:minHeadSize-1], ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeV2(tt.in, blob)
			if !errors.Is(err, tt.want) {
				t.Errorf("DecodeV2()=%v, want %v", err, tt.want)
			}
		})
	}
}

func TestHeadWrongBase(t *testing.T) {
	base, next, blob := deltaPair(t, packedManifest().Size, nil)
	enc := mustHead(t, next, base, blob)
	other := newManifest(packedManifest().Size+ChunkSize, 0)
	otherBlob, _, err := NewBase(other)
	if err != nil {
		t.Fatal(err)
	}
	flipped := append([]byte(nil), blob...)
	flipped[100] ^= 1
	elsewhere := *base
	elsewhere.SourcePath = "/elsewhere.db"
	elsewhereBlob := mustMarshal(t, &elsewhere)
	tests := []struct {
		name string
		head []byte
		base []byte
	}{
		{"another base", enc, otherBlob},
		{"a flipped byte", enc, flipped},
		{"one byte short", enc, blob[:len(blob)-1]},
		{"base of another database", mustHead(t, next, &elsewhere, elsewhereBlob), elsewhereBlob},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeV2(tt.head, tt.base)
			if !errors.Is(err, ErrBase) {
				t.Errorf("DecodeV2()=%v, want ErrBase", err)
			}
		})
	}
	t.Run("base with inline chunks", func(t *testing.T) {
		h, err := NewHead(next, base, Sum(blob), len(blob))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.Apply(packedManifest()); !errors.Is(err, ErrBase) {
			t.Errorf("Apply()=%v, want ErrBase", err)
		}
	})
	t.Run("base of another size", func(t *testing.T) {
		h, err := NewHead(next, base, Sum(blob), len(blob))
		if err != nil {
			t.Fatal(err)
		}
		om, err := Decode(otherBlob)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.Apply(om); !errors.Is(err, ErrBase) {
			t.Errorf("Apply()=%v, want ErrBase", err)
		}
	})
}

// TestHeadMemoryBound: what DecodeHead and Apply allocate is bounded by
// the bytes of the head and the base, whatever the head claims.
func TestHeadMemoryBound(t *testing.T) {
	base, next, blob := deltaPair(t, 40*ChunkSize, func(m *Manifest) { m.Chunks[7] = Fingerprint{7} })
	enc := mustHead(t, next, base, blob)
	ref, _ := headOffsets(enc)
	claims := map[string][]byte{
		"honest": enc,
		"4 TiB over a small base": patchHead(enc, func(b []byte) []byte {
			binary.BigEndian.PutUint64(b[16:], MaxSize)
			return b
		}),
		"2^26 base chunks": patchHead(enc, func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[ref+40:], 1<<26)
			binary.BigEndian.PutUint64(b[ref+32:], uint64(MaxBaseLen(1<<26)))
			binary.BigEndian.PutUint64(b[16:], MaxSize)
			return b
		}),
	}
	for name, in := range claims {
		t.Run(name, func(t *testing.T) {
			bound := 4*uint64(len(in)+len(blob)) + 64<<10
			if n, ok := memtest.AtMost(bound, func() { _, _ = DecodeV2(in, blob) }); !ok {
				t.Errorf("DecodeV2 of %d+%d bytes allocated %d, want at most %d", len(in), len(blob), n, bound)
			}
		})
	}
}

// goldenHeadSum is the BLAKE3-256 of the head of goldenManifest, with
// chunk 1 changed, over the base of goldenManifest. If it changes, the
// v2 wire format changed.
const goldenHeadSum = "5d2862d7f412238ee56fb3785b1c5e9490abf647b1c69e4c207313fc2c4a19ff"

func TestGoldenHead(t *testing.T) {
	g := goldenManifest()
	blob, id, base := mustBase(t, g)
	next := goldenManifest()
	next.Chunks[1] = Fingerprint{0xaa, 31: 0xbb}
	enc := mustHead(t, next, base, blob)
	checkGolden(t, "head", enc, goldenHeadSum, 68+2+15+2+20+2+11+32+8+4+4+36+4+8+4096+32)
	be := binary.BigEndian
	checkFields(t, []field{
		{"version @8", uint64(be.Uint16(enc[8:])), 2},
		{"flags @10", uint64(be.Uint16(enc[10:])), 0},
		{"db size @16", be.Uint64(enc[16:]), 2*65536 + 4096},
		{"base length @152", be.Uint64(enc[152:]), uint64(len(blob))},
		{"base chunk count @160", uint64(be.Uint32(enc[160:])), 3},
		{"override count @164", uint64(be.Uint32(enc[164:])), 1},
		{"override index @168", uint64(be.Uint32(enc[168:])), 1},
		{"inline count @204", uint64(be.Uint32(enc[204:])), 1},
		{"inline index @208", uint64(be.Uint32(enc[208:])), 2},
		{"inline length @212", uint64(be.Uint32(enc[212:])), 4096},
	})
	if Fingerprint(enc[120:152]) != id {
		t.Errorf("base ID @120 = %x, want %s", enc[120:152], id)
	}
	if Fingerprint(enc[172:204]) != next.Chunks[1] {
		t.Errorf("override fingerprint @172 = %x, want %s", enc[172:204], next.Chunks[1])
	}
	// The base is the v1 encoding of the manifest without inline chunks.
	g.Inline = nil
	if string(blob) != string(mustMarshal(t, g)) {
		t.Errorf("base is not the v1 encoding of the manifest without inline chunks")
	}
}

// headSeedBase is the base the head fuzz target applies heads to.
func headSeedBase(t testing.TB) (*Manifest, []byte) {
	base, _, blob := deltaPair(t, packedManifest().Size, nil)
	return base, blob
}

// FuzzDecodeHead fuzzes heads applied to a fixed base: DecodeV2 never
// panics, allocates no more than a small multiple of its input and the
// base, and what it accepts is a valid manifest whose head re-encodes to
// the same bytes.
func FuzzDecodeHead(f *testing.F) {
	base, blob := headSeedBase(f)
	for _, edit := range []func(m *Manifest){
		nil,
		func(m *Manifest) { m.Chunks[3] = Fingerprint{3} },
		func(m *Manifest) {
			m.Size -= 2 * ChunkSize
			m.Chunks = m.Chunks[:4]
			m.Packs = []Pack{{ID: m.Packs[0].ID, Members: m.Packs[0].Members[:2]}}
		},
	} {
		_, next, _ := deltaPair(f, packedManifest().Size, edit)
		f.Add(mustHead(f, next, base, blob))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var m *Manifest
		var err error
		bound := 4*uint64(len(in)+len(blob)) + 64<<10
		if n, ok := memtest.AtMost(bound, func() { m, err = DecodeV2(in, blob) }); !ok {
			t.Fatalf("DecodeV2 of %d bytes allocated %d, want at most %d", len(in), n, bound)
		}
		if err != nil {
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("DecodeV2 accepted a manifest that fails Validate: %v", err)
		}
		h, err := DecodeHead(in)
		if err != nil {
			t.Fatal(err)
		}
		out, err := h.MarshalBinary()
		if err != nil {
			t.Fatalf("MarshalBinary of a decoded head: %v", err)
		}
		if string(out) != string(in) {
			t.Fatalf("re-encoding differs from the accepted input")
		}
		// In place, the same manifest.
		bm, err := h.DecodeBaseInPlace(blob, nil)
		if err != nil {
			t.Fatalf("DecodeBaseInPlace()=%v after DecodeV2 accepted the base", err)
		}
		if mi, err := h.ApplyInto(bm, nil); err != nil || !reflect.DeepEqual(mi, m) {
			t.Fatalf("ApplyInto()=%v, or a manifest other than DecodeV2's", err)
		}
	})
}

// TestHeadRefusesOversizedBase: a head may not declare a base far larger
// than its database, which a reader would fetch (up to the declared
// length) before it could check the base's hash: a 182-byte head of an
// empty database over a base of 2^26 chunks made readers load 5.4 GB.
func TestHeadRefusesOversizedBase(t *testing.T) {
	base, next, blob := deltaPair(t, 40*ChunkSize, func(m *Manifest) { m.Chunks[7] = Fingerprint{7} })
	enc := mustHead(t, next, base, blob)
	ref, _ := headOffsets(enc)
	n := NumChunks(next.Size)
	for _, m := range []int{MaxBaseChunks(n) + 1, 1 << 26} {
		in := patchHead(enc, func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[ref+40:], uint32(m))
			binary.BigEndian.PutUint64(b[ref+32:], uint64(MaxBaseLen(m)))
			return b
		})
		if _, err := DecodeHead(in); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "base chunk count") {
			t.Errorf("DecodeHead of a head of %d chunks over a base of %d=%v, want ErrInvalid naming the base chunk count", n, m, err)
		}
	}
	if _, err := DecodeHead(enc); err != nil {
		t.Fatalf("DecodeHead of the honest head=%v", err)
	}
}
