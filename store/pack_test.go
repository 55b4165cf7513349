package store

import (
	"testing"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store/internal/fixture"
)

// FuzzDecodePackMember feeds DecodePackMember hostile packs and member
// references, as a damaged or malicious store or manifest would: it must
// never panic, every failure must wrap ErrCorrupt, and what it returns
// must hash to the fingerprint asked for.
func FuzzDecodePackMember(f *testing.F) {
	chunks := []PackedChunk{
		{Data: fixture.Compressible(3000)},
		{Data: fixture.RandomBytes(5, 700)},
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
		checkChunkDecode(t, "DecodePackMember", len(pack), fp, func() ([]byte, error) { return DecodePackMember(pack, ref, fp) })
	})
}
