package manifest

import (
	"bytes"
	"errors"
	"testing"
)

// packedManifest returns a manifest of 6 chunks, chunk 0 inline, chunks
// 1, 2 and 4 in one pack, chunk 5 alone in another, chunk 3 unpacked.
func packedManifest() *Manifest {
	m := newManifest(5*ChunkSize+77, 0)
	m.Packs = []Pack{
		{ID: Fingerprint{0x10, 31: 1}, Members: []PackMember{{1, 0, 900}, {2, 900, 65546}, {4, 66446, 12}}},
		{ID: Fingerprint{0xf0}, Members: []PackMember{{5, 0, 88}}},
	}
	return m
}

func TestPacksRoundTrip(t *testing.T) {
	m := packedManifest()
	enc := mustMarshal(t, m)
	if enc[11] != FlagPacks {
		t.Errorf("flags byte %#x, want %#x", enc[11], FlagPacks)
	}
	got, err := Decode(enc)
	if err != nil {
		t.Fatal(err)
	}
	sameManifest(t, got, m)
	refs := got.PackRefs()
	want := map[uint32]PackRef{
		1: {m.Packs[0].ID, 0, 900}, 2: {m.Packs[0].ID, 900, 65546}, 4: {m.Packs[0].ID, 66446, 12},
		5: {m.Packs[1].ID, 0, 88},
	}
	if len(refs) != len(want) {
		t.Fatalf("PackRefs = %v, want %v", refs, want)
	}
	for k, v := range want {
		if refs[k] != v {
			t.Errorf("PackRefs[%d] = %+v, want %+v", k, refs[k], v)
		}
	}
	// Without packs, the encoding is the same as before packs existed.
	m.Packs = nil
	plain := mustMarshal(t, m)
	if plain[11] != 0 || len(plain) != len(enc)-4-2*packHeader-4*packMemberSize {
		t.Errorf("unpacked encoding: flags %#x, %d bytes", plain[11], len(plain))
	}
	if got.PackRefs() == nil || m.PackRefs() != nil {
		t.Error("PackRefs: want nil exactly without packs")
	}
}

func TestPacksValidate(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(m *Manifest)
	}{
		{"IDs out of order", func(m *Manifest) { m.Packs[0], m.Packs[1] = m.Packs[1], m.Packs[0] }},
		{"duplicate ID", func(m *Manifest) { m.Packs[1].ID = m.Packs[0].ID }},
		{"no members", func(m *Manifest) { m.Packs[1].Members = nil }},
		{"index out of range", func(m *Manifest) { m.Packs[1].Members[0].Index = 6 }},
		{"indices not increasing", func(m *Manifest) { m.Packs[0].Members[1].Index = 1 }},
		{"inline chunk packed", func(m *Manifest) { m.Packs[0].Members[0].Index = 0 }},
		{"chunk in two packs", func(m *Manifest) { m.Packs[1].Members[0].Index = 4 }},
		{"empty blob", func(m *Manifest) { m.Packs[1].Members[0].Length = 0 }},
		{"blob past the limit", func(m *Manifest) { m.Packs[1].Members[0].Offset = MaxPackSize - 10 }},
		// A pack no writer makes: a reader would fetch 64 MiB for a chunk.
		{"blob at the end of a 64 MiB pack", func(m *Manifest) { m.Packs[1].Members[0].Offset = 64<<20 - 100 }},
		{"offset overflow", func(m *Manifest) { m.Packs[1].Members[0].Offset = 0xffffffff }},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := packedManifest()
			c.edit(m)
			if err := m.Validate(); !errors.Is(err, ErrInvalid) {
				t.Errorf("Validate = %v, want ErrInvalid", err)
			}
			if _, err := m.MarshalBinary(); !errors.Is(err, ErrInvalid) {
				t.Errorf("MarshalBinary = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestPacksDecodeRejects(t *testing.T) {
	enc := mustMarshal(t, packedManifest())
	plain := mustMarshal(t, newManifest(5*ChunkSize+77, 0))
	tableAt := len(plain) - checksumSize
	for _, c := range []struct {
		name string
		in   []byte
		want error
	}{
		{"flag without table", patch(plain, func(b []byte) []byte { b[11] = FlagPacks; return b }), ErrTruncated},
		{"table without flag", patch(enc, func(b []byte) []byte { b[11] = 0; return b }), ErrInvalid},
		{"zero packs", patch(plain, func(b []byte) []byte { b[11] = FlagPacks; return append(b, 0, 0, 0, 0) }), ErrInvalid},
		{"more packs than chunks", patch(enc, func(b []byte) []byte { b[tableAt+3] = 7; return b }), ErrInvalid},
		{"pack count past the end", patch(enc, func(b []byte) []byte { b[tableAt+3] = 3; return b }), ErrTruncated},
		{"member count 0", patch(enc, func(b []byte) []byte { b[tableAt+4+32+3] = 0; return b }), ErrInvalid},
		{"more members than chunks", patch(enc, func(b []byte) []byte { b[tableAt+4+32+3] = 7; return b }), ErrInvalid},
		{"member count past the end", patch(enc, func(b []byte) []byte { b[tableAt+4+32+3] = 5; return b }), ErrTruncated},
		{"cut member", patch(enc, func(b []byte) []byte { return b[:len(b)-1] }), ErrTruncated},
		{"trailing byte", patch(enc, func(b []byte) []byte { return append(b, 0) }), ErrInvalid},
		{"member is inline chunk", patch(enc, func(b []byte) []byte { b[tableAt+4+36+3] = 0; return b }), ErrInvalid},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, err := Decode(c.in)
			if !errors.Is(err, c.want) || m != nil {
				t.Errorf("Decode = %v, %v; want %v", m, err, c.want)
			}
		})
	}
	if bytes.Equal(enc, plain) {
		t.Fatal("packed and plain encodings are equal")
	}
}

// TestPackIndex: PackIndex answers as PackRefs's map does, for every
// chunk, with and without packs.
func TestPackIndex(t *testing.T) {
	for _, c := range []struct {
		name string
		m    *Manifest
	}{
		{"packed", packedManifest()},
		{"no packs", newManifest(5*ChunkSize+77, 0)},
		{"empty", newManifest(0)},
	} {
		t.Run(c.name, func(t *testing.T) {
			refs, x := c.m.PackRefs(), c.m.PackIndex()
			for i := -1; i <= len(c.m.Chunks); i++ {
				want, wantOK := refs[uint32(i)]
				if i < 0 {
					want, wantOK = PackRef{}, false
				}
				got, ok := x.Ref(i)
				if got != want || ok != wantOK {
					t.Errorf("Ref(%d)=%+v, %v, want %+v, %v", i, got, ok, want, wantOK)
				}
				k, ok := x.Pack(i)
				if ok != wantOK || ok && c.m.Packs[k].ID != want.ID {
					t.Errorf("Pack(%d)=%d, %v, want the pack of %+v, %v", i, k, ok, want, wantOK)
				}
			}
		})
	}
}
