package manifest

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxSize is the largest database size a manifest can describe: 4 TiB,
// that is at most 2^26 chunks.
const MaxSize = 1 << 42

// Limits on the manifest's strings, in bytes.
const (
	maxHostname   = 255
	maxSourcePath = 4096
	maxGenerator  = 255
)

// Bounds of the instants representable as int64 Unix nanoseconds.
var (
	minUnixNano = time.Unix(0, math.MinInt64)
	maxUnixNano = time.Unix(0, math.MaxInt64)
)

// Manifest describes one snapshot of a database file.
//
// Decode returns times in UTC, and nil Chunks, Inline and Packs when they
// are empty.
type Manifest struct {
	// Hostname is the name of the host the database lives on: 1 to 255
	// bytes of valid UTF-8, with no NUL and no '/'.
	Hostname string

	// SourcePath is the absolute path of the database file on that host:
	// 1 to 4096 bytes of valid UTF-8 starting with '/', with no NUL.
	SourcePath string

	// Generator names the software that wrote the snapshot, such as
	// "boule 0.1.0": 0 to 255 bytes of valid UTF-8, with no NUL.
	Generator string

	// Size is the size of the database file in bytes, 0 ≤ Size ≤ MaxSize.
	Size int64

	// PageSize is the database page size as read from the SQLite header,
	// with 65536 stored as 65536 (not as SQLite's encoding, 1). It is 0
	// (unknown, for instance for an empty file) or a power of two from 512
	// to 65536.
	PageSize uint32

	// ChangeCounter is the file change counter at offset 24 of the SQLite
	// header.
	ChangeCounter uint32

	// VersionID is an opaque identifier of this version of the database,
	// chosen by the writer.
	VersionID [16]byte

	// SourceCtime is the change time of the source file, kept to the
	// nanosecond.
	SourceCtime time.Time

	// Created is when the snapshot was taken. It is stored as int64 Unix
	// nanoseconds, so it must lie between the years 1677 and 2262.
	Created time.Time

	// Chunks lists the fingerprints of the file's chunks in file order;
	// len(Chunks) == NumChunks(Size).
	Chunks []Fingerprint

	// Inline optionally carries some chunks' bytes inside the manifest,
	// keyed by chunk index. Each value must be exactly ChunkLen(Size, index)
	// bytes long and hash to Chunks[index].
	Inline map[uint32][]byte
	// Packs optionally lists pack objects and the chunks stored in them,
	// by strictly increasing ID. Chunks in no pack are stored one object
	// each. See [Pack].
	Packs []Pack
}

// NumChunks returns the number of chunks a file of size bytes is cut into:
// size divided by ChunkSize, rounded up. It returns 0 for size ≤ 0.
func NumChunks(size int64) int {
	if size <= 0 {
		return 0
	}
	n := size / ChunkSize
	if size%ChunkSize != 0 {
		n++
	}
	return int(n)
}

// ChunkLen returns the length in bytes of chunk i of a file of size bytes:
// ChunkSize for every chunk but the last, which holds the remainder. It
// returns 0 when i is not a chunk index, i < 0 or i ≥ NumChunks(size).
func ChunkLen(size int64, i int) int {
	if i < 0 || i >= NumChunks(size) {
		return 0
	}
	if rest := size - int64(i)*ChunkSize; rest < ChunkSize {
		return int(rest)
	}
	return ChunkSize
}

// ChunkOffset returns the offset in the database file of the first byte of
// chunk i, i*ChunkSize. It does not check that i is a chunk index of m.
func (m *Manifest) ChunkOffset(i int) int64 {
	return int64(i) * ChunkSize
}

// Validate reports whether m satisfies every invariant of the format,
// returning an error that wraps ErrInvalid (or ErrInlineMismatch when an
// inline chunk does not hash to its fingerprint) and names the field.
// It hashes every inline chunk.
func (m *Manifest) Validate() error {
	if m == nil {
		return fmt.Errorf("manifest: nil manifest: %w", ErrInvalid)
	}
	if err := checkString("hostname", m.Hostname, 1, maxHostname); err != nil {
		return err
	}
	if strings.IndexByte(m.Hostname, '/') >= 0 {
		return invalidf("hostname", "contains '/'")
	}
	if err := checkString("source path", m.SourcePath, 1, maxSourcePath); err != nil {
		return err
	}
	if m.SourcePath[0] != '/' {
		return invalidf("source path", "not absolute")
	}
	if err := checkString("generator", m.Generator, 0, maxGenerator); err != nil {
		return err
	}
	if m.Size < 0 || m.Size > MaxSize {
		return invalidf("size", "%d out of range [0, %d]", m.Size, int64(MaxSize))
	}
	if !validPageSize(m.PageSize) {
		return invalidf("page size", "%d is neither 0 nor a power of two from 512 to 65536", m.PageSize)
	}
	if m.Created.Before(minUnixNano) || m.Created.After(maxUnixNano) {
		return invalidf("created", "%v not representable as int64 Unix nanoseconds", m.Created)
	}
	n := NumChunks(m.Size)
	if len(m.Chunks) != n {
		return invalidf("chunks", "%d fingerprints for size %d, want %d", len(m.Chunks), m.Size, n)
	}
	for _, idx := range slices.Sorted(maps.Keys(m.Inline)) {
		data := m.Inline[idx]
		if uint64(idx) >= uint64(n) {
			return invalidf(fmt.Sprintf("inline chunk %d", idx), "index out of range [0, %d)", n)
		}
		if want := ChunkLen(m.Size, int(idx)); len(data) != want {
			return invalidf(fmt.Sprintf("inline chunk %d", idx), "length %d, want %d", len(data), want)
		}
		if Sum(data) != m.Chunks[idx] {
			return fmt.Errorf("manifest: inline chunk %d: %w", idx, ErrInlineMismatch)
		}
	}
	return m.validatePacks()
}

// checkString checks the rules shared by the manifest's strings.
func checkString(field, s string, minLen, maxLen int) error {
	if len(s) < minLen || len(s) > maxLen {
		return invalidf(field, "length %d out of range [%d, %d]", len(s), minLen, maxLen)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return invalidf(field, "contains NUL")
	}
	if !utf8.ValidString(s) {
		return invalidf(field, "not valid UTF-8")
	}
	return nil
}

// validPageSize reports whether p is 0 or a power of two from 512 to 65536.
func validPageSize(p uint32) bool {
	return p == 0 || (p >= 512 && p <= 65536 && p&(p-1) == 0)
}
