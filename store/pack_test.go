package store

import (
	"errors"
	"testing"

	"github.com/boule-vfs/boule/internal/memtest"
	"github.com/boule-vfs/boule/manifest"
)

// FuzzDecodePackMember feeds DecodePackMember hostile packs and member
// references, as a damaged or malicious store or manifest would: it must
// never panic, every failure must wrap ErrCorrupt, and what it returns
// must hash to the fingerprint asked for.
func FuzzDecodePackMember(f *testing.F) {
	chunks := []PackedChunk{
		{Data: compressible(3000)},
		{Data: randomBytes(5, 700)},
		{Data: make([]byte, manifest.ChunkSize)},
	}
	for i := range chunks {
		chunks[i].FP = manifest.Sum(chunks[i].Data)
	}
	blob, _, refs := EncodePack(chunks)
	for i, r := range refs {
		f.Add(blob, r.Offset, r.Length, uint8(i))
	}
	f.Add(blob, refs[1].Offset, refs[1].Length+1, uint8(1))             // overlaps the next member
	f.Add(blob, refs[2].Offset, refs[2].Length, uint8(0))               // another chunk's fingerprint
	f.Add(blob[:len(blob)-1], refs[2].Offset, refs[2].Length, uint8(2)) // truncated pack
	f.Add(blob, ^uint32(0), ^uint32(0), uint8(0))                       // offset+length overflows 32 bits
	f.Add([]byte{}, uint32(0), uint32(0), uint8(0))
	f.Fuzz(func(t *testing.T, pack []byte, off, length uint32, which uint8) {
		// Ask for one of the seed chunks, or for whatever the referenced
		// bytes hash to as raw data, so that success stays reachable.
		var fp manifest.Fingerprint
		if int(which) < len(chunks) {
			fp = chunks[which].FP
		} else if end := uint64(off) + uint64(length); end <= uint64(len(pack)) {
			fp = manifest.Sum(pack[off:end])
		}
		ref := manifest.PackRef{ID: manifest.Sum(pack), Offset: off, Length: length}
		var out []byte
		var err error
		if n, ok := memtest.AtMost(maxChunkDecodeAlloc, func() { out, err = DecodePackMember(pack, ref, fp) }); !ok {
			t.Fatalf("DecodePackMember of %d bytes allocated %d, want at most %d", len(pack), n, maxChunkDecodeAlloc)
		}
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if manifest.Sum(out) != fp {
			t.Fatal("decoded member does not hash to its fingerprint")
		}
		if len(out) > manifest.ChunkSize {
			t.Fatalf("decoded %d bytes, more than a chunk", len(out))
		}
	})
}
