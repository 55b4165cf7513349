package manifest

import "fmt"

// An Alloc provides the memory in which a decoder keeps the lists of a
// manifest that grow with its chunk count, such as mapped files that the
// kernel may page out (package snapshot keeps a replica's there), rather
// than the Go heap. A nil Alloc, or a nil function, allocates in the Go
// heap. Each function must return slices of exactly the lengths asked.
type Alloc struct {
	// Chunks returns room for n fingerprints (Head.ApplyInto).
	Chunks func(n int) ([]Fingerprint, error)
	// Packs returns room for a pack table of packs packs holding members
	// members in all. When the packs lie outside the Go heap, the
	// members must too: the garbage collector does not see the Members
	// of packs it does not scan.
	Packs func(packs, members int) ([]Pack, []PackMember, error)
	// Index returns room for a PackIndex of n chunks
	// (Manifest.PackIndexIn).
	Index func(n int) ([]uint32, error)
}

func (a *Alloc) chunks(n int) ([]Fingerprint, error) {
	if a == nil || a.Chunks == nil {
		return make([]Fingerprint, n), nil
	}
	c, err := a.Chunks(n)
	if err == nil && len(c) != n {
		err = fmt.Errorf("manifest: room for %d fingerprints, not the %d asked", len(c), n)
	}
	return c, err
}

func (a *Alloc) packs(packs, members int) ([]Pack, []PackMember, error) {
	if a == nil || a.Packs == nil {
		return make([]Pack, packs), make([]PackMember, members), nil
	}
	p, m, err := a.Packs(packs, members)
	if err == nil && (len(p) != packs || len(m) != members) {
		err = fmt.Errorf("manifest: room for %d packs and %d members, not the %d and %d asked", len(p), len(m), packs, members)
	}
	return p, m, err
}

func (a *Alloc) index(n int) ([]uint32, error) {
	if a == nil || a.Index == nil {
		return make([]uint32, n), nil
	}
	x, err := a.Index(n)
	if err == nil && len(x) != n {
		err = fmt.Errorf("manifest: room for an index of %d chunks, not the %d asked", len(x), n)
	}
	return x, err
}
