package manifest

import (
	"cmp"
	"fmt"
	"slices"
)

// FlagPacks is the flag bit that marks a manifest with a pack table: some
// of its chunks are stored inside pack objects rather than one object
// each. See doc/FORMAT.md.
const FlagPacks = 1

// MaxPackSize bounds the size of a pack object in bytes: twice what a
// writer puts in one (64 chunks of at most 64 KiB each, store.PackChunks),
// so that a reader that fetches a whole pack for one chunk of it holds,
// and downloads, at most this much, whatever a manifest says.
const MaxPackSize = 8 << 20

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
//
// It allocates one bit per chunk, and only when there are packs.
func (m *Manifest) validatePacks() error {
	if len(m.Packs) == 0 {
		return nil
	}
	n := len(m.Chunks)
	seen := make([]uint64, (n+63)/64)
	for k, p := range m.Packs {
		if k > 0 && string(p.ID[:]) <= string(m.Packs[k-1].ID[:]) {
			return invalidf(packField(p.ID), "pack IDs not strictly increasing")
		}
		if len(p.Members) == 0 {
			return invalidf(packField(p.ID), "no members")
		}
		for j, mb := range p.Members {
			if uint64(mb.Index) >= uint64(n) {
				return invalidf(memberField(p.ID, mb.Index), "chunk index out of range [0, %d)", n)
			}
			if j > 0 && mb.Index <= p.Members[j-1].Index {
				return invalidf(memberField(p.ID, mb.Index), "chunk index not strictly increasing")
			}
			if _, inline := m.Inline[mb.Index]; inline {
				return invalidf(memberField(p.ID, mb.Index), "chunk is inline")
			}
			w, bit := mb.Index/64, uint64(1)<<(mb.Index%64)
			if seen[w]&bit != 0 {
				return invalidf(memberField(p.ID, mb.Index), "chunk is in another pack too")
			}
			seen[w] |= bit
			if mb.Length == 0 || uint64(mb.Offset)+uint64(mb.Length) > MaxPackSize {
				return invalidf(memberField(p.ID, mb.Index), "blob at %d+%d outside (0, %d]", mb.Offset, mb.Length, MaxPackSize)
			}
		}
	}
	return nil
}

// packField and memberField name a pack and a member in errors; they are
// formatted only for an error.
func packField(id Fingerprint) string { return fmt.Sprintf("pack %s", id) }

func memberField(id Fingerprint, idx uint32) string {
	return fmt.Sprintf("pack %s member %d", id, idx)
}

// A PackIndex finds the pack that holds a chunk in four bytes per chunk of
// a manifest with packs (none without), where the map PackRefs returns
// takes tens of bytes per packed chunk. Build it with
// [Manifest.PackIndex]; it is safe for concurrent use.
type PackIndex struct {
	m    *Manifest
	pack []uint32 // by chunk index: 1 + index in m.Packs of the chunk's pack, or 0
}

// PackIndex returns the index of m's pack table. m must satisfy
// [Manifest.Validate] (Decode's results do) and not change afterwards.
func (m *Manifest) PackIndex() *PackIndex {
	x, _ := m.PackIndexIn(nil) // fails only in an Alloc's memory
	return x
}

// PackIndexIn is [Manifest.PackIndex], with the index in memory from a
// (see [Alloc]).
func (m *Manifest) PackIndexIn(a *Alloc) (*PackIndex, error) {
	x := &PackIndex{m: m}
	if len(m.Packs) == 0 {
		return x, nil
	}
	pack, err := a.index(len(m.Chunks))
	if err != nil {
		return nil, err
	}
	x.pack = pack
	for k, p := range m.Packs {
		for _, mb := range p.Members {
			if int(mb.Index) < len(x.pack) {
				x.pack[mb.Index] = uint32(k + 1)
			}
		}
	}
	return x, nil
}

// Pack returns the index in the manifest's Packs of the pack holding
// chunk i, and false if no pack does.
func (x *PackIndex) Pack(i int) (int, bool) {
	if i < 0 || i >= len(x.pack) || x.pack[i] == 0 {
		return 0, false
	}
	return int(x.pack[i] - 1), true
}

// Ref returns where chunk i's blob is, as PackRefs()[i] would, and false
// if it is in no pack.
func (x *PackIndex) Ref(i int) (PackRef, bool) {
	k, ok := x.Pack(i)
	if !ok {
		return PackRef{}, false
	}
	p := &x.m.Packs[k]
	j, found := slices.BinarySearchFunc(p.Members, uint32(i), func(mb PackMember, idx uint32) int {
		return cmp.Compare(mb.Index, idx)
	})
	if !found {
		return PackRef{}, false
	}
	mb := p.Members[j]
	return PackRef{ID: p.ID, Offset: mb.Offset, Length: mb.Length}, true
}
