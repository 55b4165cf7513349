package manifest

import (
	"fmt"
)

// FlagPacks is the flag bit that marks a manifest with a pack table: some
// of its chunks are stored inside pack objects rather than one object
// each. See doc/FORMAT.md.
const FlagPacks = 1

// MaxPackSize bounds the size of a pack object in bytes.
const MaxPackSize = 64 << 20

// A Pack is one object of the store holding the encoded blobs of several
// chunks end to end. Its ID names the object (the BLAKE3-256 of its
// bytes); the manifest lists, for each chunk that the snapshot reads from
// the pack, where its blob lies.
type Pack struct {
	ID      Fingerprint
	Members []PackMember // by strictly increasing Index
}

// A PackMember locates the encoded blob of chunk Index inside a pack:
// Length bytes at Offset. The blob decodes to the chunk's bytes, which
// hash to the chunk's fingerprint; readers check that, as for any chunk.
type PackMember struct {
	Index  uint32
	Offset uint32
	Length uint32
}

// A PackRef says where a packed chunk is: in pack ID, Length bytes at
// Offset.
type PackRef struct {
	ID     Fingerprint
	Offset uint32
	Length uint32
}

// PackRefs returns, for each packed chunk index, where its blob is. It
// returns nil for a manifest without packs.
func (m *Manifest) PackRefs() map[uint32]PackRef {
	if len(m.Packs) == 0 {
		return nil
	}
	out := make(map[uint32]PackRef)
	for _, p := range m.Packs {
		for _, mb := range p.Members {
			out[mb.Index] = PackRef{ID: p.ID, Offset: mb.Offset, Length: mb.Length}
		}
	}
	return out
}

// validatePacks checks the pack table: packs by strictly increasing ID,
// each with at least one member, by strictly increasing chunk
// index, every member a chunk of the manifest that is not inline and in
// no other pack, and every blob non-empty and inside MaxPackSize.
func (m *Manifest) validatePacks() error {
	n := len(m.Chunks)
	seen := make(map[uint32]bool)
	for k, p := range m.Packs {
		field := fmt.Sprintf("pack %s", p.ID)
		if k > 0 && string(p.ID[:]) <= string(m.Packs[k-1].ID[:]) {
			return invalidf(field, "pack IDs not strictly increasing")
		}
		if len(p.Members) == 0 {
			return invalidf(field, "no members")
		}
		for j, mb := range p.Members {
			mfield := fmt.Sprintf("%s member %d", field, mb.Index)
			if uint64(mb.Index) >= uint64(n) {
				return invalidf(mfield, "chunk index out of range [0, %d)", n)
			}
			if j > 0 && mb.Index <= p.Members[j-1].Index {
				return invalidf(mfield, "chunk index not strictly increasing")
			}
			if _, inline := m.Inline[mb.Index]; inline {
				return invalidf(mfield, "chunk is inline")
			}
			if seen[mb.Index] {
				return invalidf(mfield, "chunk is in another pack too")
			}
			seen[mb.Index] = true
			if mb.Length == 0 || uint64(mb.Offset)+uint64(mb.Length) > MaxPackSize {
				return invalidf(mfield, "blob at %d+%d outside (0, %d]", mb.Offset, mb.Length, MaxPackSize)
			}
		}
	}
	return nil
}
