package manifest

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
)

// Format v2: a manifest as a head plus a base. doc/FORMAT.md, "Format v2:
// heads and bases", specifies it byte by byte.
//
// A base is a format v1 manifest without inline chunks, stored once under
// its BLAKE3-256 (see store.BaseKey) and never changed. A head carries
// what v1 carries except the fingerprint list: the header and strings,
// the inline chunks, the base's ID, length and chunk count, the chunks
// whose fingerprint or place differs from the base's (the overrides), and
// the pack table of the overridden chunks. Applying a head to its base
// gives the same [Manifest] a v1 encoding gives, so that a writer uploads
// the full fingerprint list only when it writes a new base.

const (
	formatVersion2 = 2

	baseRefSize  = FingerprintSize + 8 + 4 // base ID, length, chunk count
	overrideSize = 4 + FingerprintSize     // chunk index, fingerprint

	// minHeadSize is the smallest possible head: the fixed header, three
	// empty strings, the base reference, the override and inline counts
	// and the checksum.
	minHeadSize = headerSize + 3*2 + baseRefSize + 4 + 4 + checksumSize
)

// An Override replaces the fingerprint (and the place: see [Head]) of
// chunk Index of a head's base.
type Override struct {
	Index uint32
	FP    Fingerprint
}

// A Head is a decoded format v2 manifest: everything but the chunks it
// shares with its base.
type Head struct {
	// M holds the header fields, strings, inline chunks and the pack table
	// of the overridden chunks. M.Chunks is nil.
	M Manifest
	// BaseID is the BLAKE3-256 of the base's encoding, BaseLen its length
	// in bytes and BaseChunks its number of chunks.
	BaseID     Fingerprint
	BaseLen    int64
	BaseChunks int
	// Overrides lists the chunks that differ from the base, by strictly
	// increasing index, all below NumChunks(M.Size). Every chunk at or past
	// BaseChunks is overridden.
	Overrides []Override
}

// FormatVersion returns the format version of an encoded manifest (1 or 2
// for the ones this package reads), reading only the magic and the
// version field.
func FormatVersion(b []byte) (int, error) {
	if len(b) < 10 {
		return 0, fmt.Errorf("manifest: %d bytes, need at least 10: %w", len(b), ErrTruncated)
	}
	if string(b[:len(magic)]) != magic {
		return 0, ErrMagic
	}
	return int(binary.BigEndian.Uint16(b[8:])), nil
}

// MaxBaseChunks returns the most chunks the base of a head for a database
// of n chunks may have. Writers start a new base once the database has
// shrunk by an eighth (or the base outgrew it by one), so that a base of
// a database's size costs a reader what the database declares, never
// what a crafted head says of a base far larger.
func MaxBaseChunks(n int) int { return 2*n + 64 }

// MaxBaseLen returns the longest encoding a base of n chunks can have:
// the longest v1 manifest with n fingerprints, no inline chunks and a
// pack table with every chunk in a pack of its own. Readers fetch no more
// than this.
func MaxBaseLen(n int) int64 {
	return int64(headerSize+3*2+maxHostname+maxSourcePath+maxGenerator+4+4+4+checksumSize) +
		int64(n)*(FingerprintSize+packHeader+packMemberSize)
}

// NewBase returns the encoding of the base of m, m without its inline
// chunks, and its ID. A chunk inline in m is listed by fingerprint in
// the base, as if stored alone: heads applied to the base carry it
// inline again.
func NewBase(m *Manifest) ([]byte, Fingerprint, error) {
	b := *m
	b.Inline = nil
	enc, err := b.MarshalBinary()
	if err != nil {
		return nil, Fingerprint{}, err
	}
	return enc, Sum(enc), nil
}

// NewHead returns the head that, applied to base (whose encoding has ID
// id and length baseLen), gives m. A chunk is overridden when it is past
// the base's end or its fingerprint differs from the base's, or, unless
// it is inline in m, when it is in a pack in one and not in the same
// place in the other.
func NewHead(m, base *Manifest, id Fingerprint, baseLen int) (*Head, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	h := &Head{M: *m, BaseID: id, BaseLen: int64(baseLen), BaseChunks: len(base.Chunks)}
	h.M.Chunks, h.M.Packs = nil, nil
	refs, baseRefs := m.PackRefs(), base.PackRefs()
	over := map[uint32]bool{}
	for i, fp := range m.Chunks {
		idx := uint32(i)
		_, inline := m.Inline[idx]
		differs := i >= len(base.Chunks) || base.Chunks[i] != fp
		if !differs && !inline {
			r, ok := refs[idx]
			br, bok := baseRefs[idx]
			differs = ok != bok || r != br
		}
		if differs {
			h.Overrides = append(h.Overrides, Override{Index: idx, FP: fp})
			over[idx] = true
		}
	}
	for _, p := range m.Packs {
		var ms []PackMember
		for _, mb := range p.Members {
			if over[mb.Index] {
				ms = append(ms, mb)
			}
		}
		if len(ms) > 0 {
			h.M.Packs = append(h.M.Packs, Pack{ID: p.ID, Members: ms})
		}
	}
	return h, nil
}

// MarshalBinary returns the format v2 encoding of h. It checks what
// can be checked without the base.
func (h *Head) MarshalBinary() ([]byte, error) {
	if err := h.check(); err != nil {
		return nil, err
	}
	m := &h.M
	keys := slices.Sorted(maps.Keys(m.Inline))
	var flags uint16
	if len(m.Packs) > 0 {
		flags |= FlagPacks
	}
	b := make([]byte, 0, minHeadSize+len(m.Hostname)+len(m.SourcePath)+len(m.Generator)+len(h.Overrides)*overrideSize)
	b = appendHeader(b, m, formatVersion2, flags)
	b = append(b, h.BaseID[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(h.BaseLen))
	b = binary.BigEndian.AppendUint32(b, uint32(h.BaseChunks))
	b = binary.BigEndian.AppendUint32(b, uint32(len(h.Overrides)))
	for _, o := range h.Overrides {
		b = binary.BigEndian.AppendUint32(b, o.Index)
		b = append(b, o.FP[:]...)
	}
	b = appendTail(b, m, keys, flags)
	sum := Sum(b)
	return append(b, sum[:]...), nil
}

// check verifies the invariants of a head that hold without its base,
// returning an error wrapping ErrInvalid that names the field.
func (h *Head) check() error {
	m := &h.M
	n := NumChunks(m.Size)
	if h.BaseChunks < 0 || h.BaseChunks > NumChunks(MaxSize) {
		return invalidf("base chunk count", "%d out of range", h.BaseChunks)
	}
	if h.BaseChunks > MaxBaseChunks(n) {
		return invalidf("base chunk count", "%d for a database of %d chunks exceeds %d", h.BaseChunks, n, MaxBaseChunks(n))
	}
	if h.BaseLen < minEncodedSize+int64(h.BaseChunks)*FingerprintSize || h.BaseLen > MaxBaseLen(h.BaseChunks) {
		return invalidf("base length", "%d for %d chunks, want %d to %d", h.BaseLen, h.BaseChunks,
			minEncodedSize+int64(h.BaseChunks)*FingerprintSize, MaxBaseLen(h.BaseChunks))
	}
	past := 0 // overrides at or past the base's end
	for k, o := range h.Overrides {
		if uint64(o.Index) >= uint64(n) {
			return invalidf(overrideField(o.Index), "index out of range [0, %d)", n)
		}
		if k > 0 && o.Index <= h.Overrides[k-1].Index {
			return invalidf(overrideField(o.Index), "index not strictly increasing (follows %d)", h.Overrides[k-1].Index)
		}
		if int(o.Index) >= h.BaseChunks {
			past++
		}
	}
	if n > h.BaseChunks && past != n-h.BaseChunks {
		return invalidf("overrides", "%d of the %d chunks past the base's %d are overridden", past, n-h.BaseChunks, h.BaseChunks)
	}
	// The pack table lists overridden chunks only.
	for _, p := range m.Packs {
		for _, mb := range p.Members {
			if _, ok := slices.BinarySearchFunc(h.Overrides, mb.Index, cmpOverride); !ok {
				return invalidf(memberField(p.ID, mb.Index), "chunk not overridden")
			}
		}
	}
	return nil
}

func cmpOverride(o Override, idx uint32) int { return cmp.Compare(o.Index, idx) }

// overrideField names override idx in errors.
func overrideField(idx uint32) string { return fmt.Sprintf("override of chunk %d", idx) }

// DecodeHead parses a format v2 manifest. As [Decode], it checks the
// magic, version, flags and checksum first, never panics, and allocates
// no more than a small multiple of len(b) whatever the input claims. The
// result is checked as far as it can be without the base; [Head.Apply]
// checks the rest.
func DecodeHead(b []byte) (*Head, error) {
	h := new(Head)
	m := &h.M
	r, flags, err := openFrame(b, m, minHeadSize, formatVersion2, "head")
	if err != nil {
		return nil, err
	}
	n := NumChunks(m.Size)

	if r.remaining() < baseRefSize {
		return nil, truncated("base reference")
	}
	copy(h.BaseID[:], r.bytes(FingerprintSize))
	bl := binary.BigEndian.Uint64(r.bytes(8))
	bc, _ := r.u32()
	if uint64(bc) > uint64(NumChunks(MaxSize)) {
		return nil, invalidf("base chunk count", "%d exceeds %d", bc, NumChunks(MaxSize))
	}
	if uint64(bc) > uint64(MaxBaseChunks(n)) {
		return nil, invalidf("base chunk count", "%d for a database of %d chunks exceeds %d", bc, n, MaxBaseChunks(n))
	}
	if bl > uint64(MaxBaseLen(int(bc))) {
		return nil, invalidf("base length", "%d exceeds %d for %d chunks", bl, MaxBaseLen(int(bc)), bc)
	}
	h.BaseLen, h.BaseChunks = int64(bl), int(bc)

	no, ok := r.u32()
	if !ok {
		return nil, truncated("override count")
	}
	if uint64(no) > uint64(n) {
		return nil, invalidf("override count", "%d exceeds chunk count %d", no, n)
	}
	// Every chunk past the base's end is overridden: a head cannot claim
	// more chunks than its base and its overrides hold, so what Apply
	// allocates is bounded by the bytes of both.
	if uint64(n) > uint64(bc)+uint64(no) {
		return nil, invalidf("overrides", "%d chunks, but the base has %d and %d are overridden", n, bc, no)
	}
	if uint64(r.remaining()) < uint64(no)*overrideSize {
		return nil, truncated("overrides")
	}
	if no > 0 {
		h.Overrides = make([]Override, no)
		for k := range h.Overrides {
			h.Overrides[k].Index, _ = r.u32()
			copy(h.Overrides[k].FP[:], r.bytes(FingerprintSize))
		}
	}
	if err := r.tail(m, n, flags, nil); err != nil {
		return nil, err
	}
	if err := h.check(); err != nil {
		return nil, err
	}
	return h, nil
}

// DecodeBase checks that base is the encoding h names (its length and
// BLAKE3-256), decodes it and checks it against h. Errors wrap ErrBase.
func (h *Head) DecodeBase(base []byte) (*Manifest, error) {
	return h.decodeBase(base, false, nil)
}

// DecodeBaseInPlace is [Head.DecodeBase], decoding with [DecodeInPlace]:
// the result's Chunks lies in base, its pack table in a's memory.
func (h *Head) DecodeBaseInPlace(base []byte, a *Alloc) (*Manifest, error) {
	return h.decodeBase(base, true, a)
}

func (h *Head) decodeBase(base []byte, inPlace bool, a *Alloc) (*Manifest, error) {
	if int64(len(base)) != h.BaseLen {
		return nil, fmt.Errorf("manifest: base %s: %d bytes, the head says %d: %w", h.BaseID, len(base), h.BaseLen, ErrBase)
	}
	if Sum(base) != h.BaseID {
		return nil, fmt.Errorf("manifest: base %s: bytes do not hash to its ID: %w", h.BaseID, ErrBase)
	}
	bm, err := decode(base, inPlace, a)
	if err != nil {
		return nil, fmt.Errorf("manifest: base %s: %w: %w", h.BaseID, ErrBase, err)
	}
	return bm, nil
}

// Apply returns the manifest h describes, given its base, decoded (see
// [Head.DecodeBase]): the base's fingerprints, cut or extended to the
// head's size, with the overrides applied; the head's inline chunks; and
// the base's pack table for the chunks not overridden nor inline, merged
// with the head's. The result satisfies [Manifest.Validate] and shares no
// memory with h or base.
func (h *Head) Apply(base *Manifest) (*Manifest, error) {
	return h.ApplyInto(base, nil)
}

// ApplyInto is [Head.Apply], with the result's fingerprint list and pack
// table in memory from a (see [Alloc]). base may lie in memory that is
// read-only. Beyond what a provides, it allocates a bit per chunk, and
// what the head's own pack table takes.
func (h *Head) ApplyInto(base *Manifest, a *Alloc) (*Manifest, error) {
	if len(base.Chunks) != h.BaseChunks {
		return nil, fmt.Errorf("manifest: base %s: %d chunks, the head says %d: %w", h.BaseID, len(base.Chunks), h.BaseChunks, ErrBase)
	}
	if len(base.Inline) > 0 {
		return nil, fmt.Errorf("manifest: base %s: has inline chunks: %w", h.BaseID, ErrBase)
	}
	if base.Hostname != h.M.Hostname || base.SourcePath != h.M.SourcePath {
		return nil, fmt.Errorf("manifest: base %s describes %s:%s, the head %s:%s: %w",
			h.BaseID, base.Hostname, base.SourcePath, h.M.Hostname, h.M.SourcePath, ErrBase)
	}
	if err := h.check(); err != nil {
		return nil, err
	}
	m := h.M
	n := NumChunks(m.Size)
	if n > 0 {
		chunks, err := a.chunks(n)
		if err != nil {
			return nil, err
		}
		m.Chunks = chunks
		copy(m.Chunks, base.Chunks)
	}
	// Overridden or inline chunks do not take the base's place.
	own := make([]uint64, (n+63)/64)
	for _, o := range h.Overrides {
		m.Chunks[o.Index] = o.FP
		own[o.Index/64] |= 1 << (o.Index % 64)
	}
	for idx := range m.Inline {
		own[idx/64] |= 1 << (idx % 64)
	}
	packs, err := mergePacks(base.Packs, h.M.Packs, func(mb PackMember) bool {
		return int(mb.Index) < n && own[mb.Index/64]&(1<<(mb.Index%64)) == 0
	}, a)
	if err != nil {
		return nil, err
	}
	m.Packs = packs
	if len(h.M.Inline) > 0 {
		m.Inline = make(map[uint32][]byte, len(h.M.Inline))
		for k, v := range h.M.Inline {
			m.Inline[k] = append([]byte(nil), v...)
		}
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// DecodeV2 decodes head, a format v2 manifest, with base, the bytes of
// its base: [DecodeHead], [Head.DecodeBase] and [Head.Apply] in one.
func DecodeV2(head, base []byte) (*Manifest, error) {
	h, err := DecodeHead(head)
	if err != nil {
		return nil, err
	}
	bm, err := h.DecodeBase(base)
	if err != nil {
		return nil, err
	}
	return h.Apply(bm)
}

// mergePacks returns the pack table of base's packs, with only the
// members keep accepts, and of head's, by increasing ID, each pack's
// members by increasing index, in a's memory. base's packs are sorted
// (they passed Validate); head's need not be, nor have distinct IDs.
func mergePacks(base, head []Pack, keep func(PackMember) bool, a *Alloc) ([]Pack, error) {
	byID := func(p, q Pack) int { return bytes.Compare(p.ID[:], q.ID[:]) }
	byIndex := func(p, q PackMember) int { return cmp.Compare(p.Index, q.Index) }
	if !slices.IsSortedFunc(head, byID) {
		head = slices.Clone(head)
		slices.SortStableFunc(head, byID)
	}
	// Merge the head's packs of the same ID: the head is small.
	for k := 1; k < len(head); k++ {
		if head[k].ID == head[k-1].ID {
			head = slices.Clone(head)
			var out []Pack
			for _, p := range head {
				if len(out) > 0 && out[len(out)-1].ID == p.ID {
					out[len(out)-1].Members = append(slices.Clip(out[len(out)-1].Members), p.Members...)
					continue
				}
				out = append(out, p)
			}
			head = out
			break
		}
	}
	kept := func(p Pack) int {
		c := 0
		for _, mb := range p.Members {
			if keep(mb) {
				c++
			}
		}
		return c
	}
	// Two passes over the merge: count, then fill.
	each := func(f func(id Fingerprint, b *Pack, h *Pack)) {
		i, j := 0, 0
		for i < len(base) || j < len(head) {
			switch {
			case j == len(head) || (i < len(base) && bytes.Compare(base[i].ID[:], head[j].ID[:]) < 0):
				f(base[i].ID, &base[i], nil)
				i++
			case i == len(base) || bytes.Compare(base[i].ID[:], head[j].ID[:]) > 0:
				f(head[j].ID, nil, &head[j])
				j++
			default:
				f(base[i].ID, &base[i], &head[j])
				i++
				j++
			}
		}
	}
	np, nm := 0, 0
	each(func(_ Fingerprint, b, h *Pack) {
		c := 0
		if b != nil {
			c = kept(*b)
		}
		if h != nil {
			c += len(h.Members)
		}
		if c > 0 {
			np++
			nm += c
		}
	})
	if np == 0 {
		return nil, nil
	}
	packs, members, err := a.packs(np, nm)
	if err != nil {
		return nil, err
	}
	k := 0
	each(func(id Fingerprint, b, h *Pack) {
		ms := members[:0]
		if b != nil {
			for _, mb := range b.Members {
				if keep(mb) {
					ms = append(ms, mb)
				}
			}
		}
		if h != nil {
			ms = append(ms, h.Members...)
		}
		if len(ms) == 0 {
			return
		}
		if !slices.IsSortedFunc(ms, byIndex) {
			slices.SortFunc(ms, byIndex)
		}
		packs[k] = Pack{ID: id, Members: ms[:len(ms):len(ms)]}
		members = members[len(ms):]
		k++
	})
	return packs, nil
}
