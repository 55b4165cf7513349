package manifest

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"time"
	"unsafe"
)

// Wire format v1 constants; see doc/FORMAT.md.
const (
	magic         = "BOULEMF\x00"
	formatVersion = 1

	headerSize   = 68 // fixed part, up to and including the created field
	checksumSize = 32
	// minEncodedSize is the smallest possible encoding: the fixed header,
	// three empty strings, the two counts and the checksum.
	minEncodedSize = headerSize + 3*2 + 4 + 4 + checksumSize

	inlineEntryHeader = 8  // chunk index and length
	packHeader        = 36 // pack ID and member count
	packMemberSize    = 12 // chunk index, offset and length
)

// MarshalBinary validates m (see [Manifest.Validate]) and returns its
// format v1 encoding. It implements encoding.BinaryMarshaler.
func (m *Manifest) MarshalBinary() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	keys := slices.Sorted(maps.Keys(m.Inline))
	size := headerSize + 2 + len(m.Hostname) + 2 + len(m.SourcePath) + 2 + len(m.Generator) +
		4 + len(m.Chunks)*FingerprintSize + 4 + checksumSize
	for _, k := range keys {
		size += inlineEntryHeader + len(m.Inline[k])
	}
	var flags uint16
	if len(m.Packs) > 0 {
		flags |= FlagPacks
		size += 4
		for _, p := range m.Packs {
			size += packHeader + len(p.Members)*packMemberSize
		}
	}

	b := make([]byte, 0, size)
	b = appendHeader(b, m, formatVersion, flags)
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Chunks)))
	for i := range m.Chunks {
		b = append(b, m.Chunks[i][:]...)
	}
	b = appendTail(b, m, keys, flags)
	sum := Sum(b)
	b = append(b, sum[:]...)
	return b, nil
}

// Decode parses a format v1 manifest. It checks the magic, version and
// flags, then the trailing checksum, and only then parses the rest, so a
// corrupted manifest is reported as ErrChecksum. The result satisfies
// [Manifest.Validate]; it shares no memory with b.
//
// Decode never panics, and it allocates no more than a small multiple of
// len(b) whatever the input claims.
func Decode(b []byte) (*Manifest, error) {
	return decode(b, false, nil)
}

// DecodeInPlace is [Decode], but the result's Chunks is not a copy: it
// lies in b, which must not change, nor be unmapped or reused, while the
// manifest or its Chunks is in use; and its pack table lies in memory
// from a (see [Alloc]). The rest of the result (strings, inline chunks)
// shares no memory with b. It allocates no more than Decode does, less
// the fingerprint list and the pack table: a reader that maps b and a's
// memory from files keeps them, 32 bytes per chunk and 12 per packed
// chunk, in memory the kernel may page out (package snapshot).
func DecodeInPlace(b []byte, a *Alloc) (*Manifest, error) {
	return decode(b, true, a)
}

// decode is Decode, or DecodeInPlace if inPlace is set, with the pack
// table in a's memory.
func decode(b []byte, inPlace bool, a *Alloc) (*Manifest, error) {
	m := new(Manifest)
	r, flags, err := openFrame(b, m, minEncodedSize, formatVersion, "")
	if err != nil {
		return nil, err
	}

	nc, ok := r.u32()
	if !ok {
		return nil, truncated("chunk count")
	}
	n := NumChunks(m.Size)
	if uint64(nc) != uint64(n) {
		return nil, invalidf("chunk count", "%d for size %d, want %d", nc, m.Size, n)
	}
	// Check the input holds all n fingerprints before allocating for them.
	if uint64(r.remaining()) < uint64(n)*FingerprintSize {
		return nil, truncated("chunk fingerprints")
	}
	switch {
	case n > 0 && inPlace:
		// A Fingerprint is an array of bytes: aligned anywhere.
		list := r.bytes(n * FingerprintSize)
		m.Chunks = unsafe.Slice((*Fingerprint)(unsafe.Pointer(&list[0])), n)
	case n > 0:
		m.Chunks = make([]Fingerprint, n)
		for i := range m.Chunks {
			copy(m.Chunks[i][:], r.bytes(FingerprintSize))
		}
	}

	if err := r.tail(m, n, flags, a); err != nil {
		return nil, err
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}

// openFrame checks that b, an encoding of format version want (of a
// manifest of the kind named, such as "head", if not v1), has at least
// minLen bytes and a sound frame (checkFrame), and reads its header into m
// (decodeHeader). It returns a reader of what follows the header, and the
// flags.
func openFrame(b []byte, m *Manifest, minLen int, want uint16, kind string) (reader, uint16, error) {
	of, version := "", "version"
	if kind != "" {
		of, version = kind+" of ", kind+" version"
	}
	if len(b) < minLen {
		return reader{}, 0, fmt.Errorf("manifest: %s%d bytes, need at least %d: %w", of, len(b), minLen, ErrTruncated)
	}
	body, flags, err := checkFrame(b, want, version)
	if err != nil {
		return reader{}, 0, err
	}
	r, err := decodeHeader(m, body)
	return r, flags, err
}

// checkFrame checks what comes before the header's fields and after
// them in b, an encoded manifest at least headerSize+checksumSize bytes
// long: the magic, the format version (want; what names it in errors), the
// flags and the trailing checksum. It returns b without its checksum,
// and the flags.
func checkFrame(b []byte, want uint16, what string) ([]byte, uint16, error) {
	if string(b[:len(magic)]) != magic {
		return nil, 0, ErrMagic
	}
	if v := binary.BigEndian.Uint16(b[8:]); v != want {
		return nil, 0, fmt.Errorf("manifest: %s %d: %w", what, v, ErrVersion)
	}
	flags := binary.BigEndian.Uint16(b[10:])
	if flags&^FlagPacks != 0 {
		return nil, 0, fmt.Errorf("manifest: flags %#04x: %w", flags, ErrFlags)
	}
	body := b[:len(b)-checksumSize]
	if Sum(body) != Fingerprint(b[len(body):]) {
		return nil, 0, ErrChecksum
	}
	return body, flags, nil
}

// decodeHeader reads the fixed header and the strings of body, a v1 or v2
// manifest without its checksum, at least minEncodedSize bytes long, into
// m, and returns a reader of the rest.
func decodeHeader(m *Manifest, body []byte) (reader, error) {
	// The fixed header lies within minEncodedSize, so it can be read at
	// fixed offsets without further bounds checks.
	if cs := binary.BigEndian.Uint32(body[12:]); cs != ChunkSize {
		return reader{}, invalidf("chunk size", "%d, format v1 requires %d", cs, ChunkSize)
	}
	size := binary.BigEndian.Uint64(body[16:])
	if size > MaxSize {
		return reader{}, invalidf("size", "%d exceeds %d", size, uint64(MaxSize))
	}
	m.Size = int64(size)
	m.PageSize = binary.BigEndian.Uint32(body[24:])
	m.ChangeCounter = binary.BigEndian.Uint32(body[28:])
	copy(m.VersionID[:], body[32:48])
	ctimeSec := int64(binary.BigEndian.Uint64(body[48:]))
	ctimeNsec := binary.BigEndian.Uint32(body[56:])
	if ctimeNsec >= 1e9 {
		return reader{}, invalidf("source ctime", "nanoseconds %d out of range [0, 1e9)", ctimeNsec)
	}
	m.SourceCtime = time.Unix(ctimeSec, int64(ctimeNsec)).UTC()
	m.Created = time.Unix(0, int64(binary.BigEndian.Uint64(body[60:]))).UTC()

	r := reader{buf: body[headerSize:]}
	var err error
	if m.Hostname, err = r.str("hostname"); err != nil {
		return reader{}, err
	}
	if m.SourcePath, err = r.str("source path"); err != nil {
		return reader{}, err
	}
	if m.Generator, err = r.str("generator"); err != nil {
		return reader{}, err
	}
	return r, nil
}

// tail reads what follows the chunk list in a manifest m of n chunks with
// the given flags: its inline chunks, then its pack table when it has
// one. Nothing may follow them but the checksum.
func (r *reader) tail(m *Manifest, n int, flags uint16, a *Alloc) error {
	var err error
	if m.Inline, err = r.inline(m.Size, n); err != nil {
		return err
	}
	if flags&FlagPacks != 0 {
		if m.Packs, err = r.packs(n, a); err != nil {
			return err
		}
	}
	if r.remaining() != 0 {
		return invalidf("trailer", "%d unexpected bytes before the checksum", r.remaining())
	}
	return nil
}

// inline reads the inline chunks of a manifest of size bytes and n
// chunks.
func (r *reader) inline(size int64, n int) (map[uint32][]byte, error) {
	var out map[uint32][]byte
	k, ok := r.u32()
	if !ok {
		return nil, truncated("inline chunk count")
	}
	if uint64(k) > uint64(n) {
		return nil, invalidf("inline chunk count", "%d exceeds chunk count %d", k, n)
	}
	if uint64(r.remaining()) < uint64(k)*inlineEntryHeader {
		return nil, truncated("inline chunks")
	}
	if k > 0 {
		out = make(map[uint32][]byte, k)
	}
	var last uint32
	for j := uint32(0); j < k; j++ {
		idx, ok1 := r.u32()
		length, ok2 := r.u32()
		if !ok1 || !ok2 {
			return nil, truncated("inline chunk header")
		}
		if uint64(idx) >= uint64(n) {
			return nil, invalidf(inlineField(idx), "index out of range [0, %d)", n)
		}
		if j > 0 && idx <= last {
			return nil, invalidf(inlineField(idx), "index not strictly increasing (follows %d)", last)
		}
		last = idx
		if want := ChunkLen(size, int(idx)); uint64(length) != uint64(want) {
			return nil, invalidf(inlineField(idx), "length %d, want %d", length, want)
		}
		if uint64(r.remaining()) < uint64(length) {
			return nil, truncated(inlineField(idx))
		}
		out[idx] = append([]byte(nil), r.bytes(int(length))...)
	}
	return out, nil
}

// inlineField names inline chunk idx in errors. It is formatted only for
// an error, so that decoding allocates nothing per chunk beyond the
// chunk's own bytes.
func inlineField(idx uint32) string { return fmt.Sprintf("inline chunk %d", idx) }

// packs reads the pack table of a manifest with n chunks into a's
// memory. Members are checked by Validate; here only counts and bounds.
func (r *reader) packs(n int, a *Alloc) ([]Pack, error) {
	q, ok := r.u32()
	if !ok {
		return nil, truncated("pack count")
	}
	if q == 0 {
		return nil, invalidf("pack count", "0 with the packs flag set")
	}
	if uint64(q) > uint64(n) {
		return nil, invalidf("pack count", "%d exceeds chunk count %d", q, n)
	}
	if uint64(r.remaining()) < uint64(q)*(packHeader+packMemberSize) {
		return nil, truncated("packs")
	}
	// Count the members first, checking the bounds: they are allocated
	// at once, with the packs.
	c := *r
	total := 0
	for range q {
		if c.remaining() < packHeader {
			return nil, truncated("pack header")
		}
		id := Fingerprint(c.bytes(FingerprintSize))
		nm, _ := c.u32()
		if nm == 0 || uint64(nm) > uint64(n) {
			return nil, invalidf(fmt.Sprintf("pack %s", id), "%d members, want 1 to %d", nm, n)
		}
		if uint64(c.remaining()) < uint64(nm)*packMemberSize {
			return nil, truncated(fmt.Sprintf("pack %s members", id))
		}
		c.bytes(int(nm) * packMemberSize)
		total += int(nm)
	}
	packs, members, err := a.packs(int(q), total)
	if err != nil {
		return nil, err
	}
	for k := range packs {
		copy(packs[k].ID[:], r.bytes(FingerprintSize))
		nm, _ := r.u32()
		packs[k].Members, members = members[:nm:nm], members[nm:]
		for j := range packs[k].Members {
			idx, _ := r.u32()
			off, _ := r.u32()
			length, _ := r.u32()
			packs[k].Members[j] = PackMember{Index: idx, Offset: off, Length: length}
		}
	}
	return packs, nil
}

// reader consumes big-endian fields from the variable part of a manifest.
// Callers check remaining before calling bytes.
type reader struct {
	buf []byte
}

func (r *reader) remaining() int { return len(r.buf) }

// bytes returns the next n bytes; n must not exceed r.remaining().
func (r *reader) bytes(n int) []byte {
	p := r.buf[:n:n]
	r.buf = r.buf[n:]
	return p
}

func (r *reader) u16() (uint16, bool) {
	if len(r.buf) < 2 {
		return 0, false
	}
	return binary.BigEndian.Uint16(r.bytes(2)), true
}

func (r *reader) u32() (uint32, bool) {
	if len(r.buf) < 4 {
		return 0, false
	}
	return binary.BigEndian.Uint32(r.bytes(4)), true
}

// str reads a string with a 2-byte length prefix.
func (r *reader) str(field string) (string, error) {
	n, ok := r.u16()
	if !ok {
		return "", truncated(field + " length")
	}
	if int(n) > r.remaining() {
		return "", truncated(field)
	}
	return string(r.bytes(int(n))), nil
}

// appendHeader appends the fields that open every manifest and head
// (doc/FORMAT.md): magic, version, flags, chunk size, then m's header
// fields and strings.
func appendHeader(b []byte, m *Manifest, version, flags uint16) []byte {
	b = append(b, magic...)
	b = binary.BigEndian.AppendUint16(b, version)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint32(b, ChunkSize)
	b = binary.BigEndian.AppendUint64(b, uint64(m.Size))
	b = binary.BigEndian.AppendUint32(b, m.PageSize)
	b = binary.BigEndian.AppendUint32(b, m.ChangeCounter)
	b = append(b, m.VersionID[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(m.SourceCtime.Unix()))
	b = binary.BigEndian.AppendUint32(b, uint32(m.SourceCtime.Nanosecond()))
	b = binary.BigEndian.AppendUint64(b, uint64(m.Created.UnixNano()))
	for _, s := range [...]string{m.Hostname, m.SourcePath, m.Generator} {
		b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
		b = append(b, s...)
	}
	return b
}

// appendTail appends the inline chunks (keys, in order) and, with
// FlagPacks, the pack table: what follows the chunk list of a manifest
// and the overrides of a head.
func appendTail(b []byte, m *Manifest, keys []uint32, flags uint16) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(keys)))
	for _, k := range keys {
		data := m.Inline[k]
		b = binary.BigEndian.AppendUint32(b, k)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		b = append(b, data...)
	}
	if flags&FlagPacks != 0 {
		b = binary.BigEndian.AppendUint32(b, uint32(len(m.Packs)))
		for _, p := range m.Packs {
			b = append(b, p.ID[:]...)
			b = binary.BigEndian.AppendUint32(b, uint32(len(p.Members)))
			for _, mb := range p.Members {
				b = binary.BigEndian.AppendUint32(b, mb.Index)
				b = binary.BigEndian.AppendUint32(b, mb.Offset)
				b = binary.BigEndian.AppendUint32(b, mb.Length)
			}
		}
	}
	return b
}
