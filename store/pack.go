package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/boule-vfs/boule/manifest"
)

// Packs: several chunks in one object of the chunk bucket, so that a
// restore or a cold scan makes one GET per pack instead of one per 64 KiB
// chunk. doc/FORMAT.md specifies them.

// PackChunks is the most chunks the uploader puts in one pack: 4 MiB of
// raw chunks. Larger objects are served faster (minio on loopback here,
// BenchmarkObjectSize: 115 MB/s with one chunk per object, 520 MB/s with
// 16, 720 MB/s with 32), and S3 charges per request; but a read replica
// fetches a whole pack for any chunk of it. doc/BENCHMARKS.md compares
// 32 and 64 on the 1 GiB restore, cold scan and first query.
const PackChunks = 64

// A pack of PackChunks stored blobs, each at most a chunk (blob.go),
// is within what readers accept.
var _ [manifest.MaxPackSize - PackChunks*manifest.ChunkSize]struct{}

// PackKey returns the key of pack id in the chunk bucket: "packs/", its
// first two hex digits, '/', and all 64.
func PackKey(id manifest.Fingerprint) string {
	h := id.String()
	return "packs/" + h[:2] + "/" + h
}

// BaseKey returns the key of manifest base id in the chunk bucket:
// "bases/", its first two hex digits, '/', and all 64.
func BaseKey(id manifest.Fingerprint) string {
	h := id.String()
	return "bases/" + h[:2] + "/" + h
}

// A PackedChunk is a chunk to put in a pack.
type PackedChunk struct {
	FP   manifest.Fingerprint // the chunk's fingerprint
	Data []byte               // raw bytes, hashing to FP
}

// EncodePack returns the bytes of a pack holding chunks, in order, each
// encoded as EncodeBlob would store it alone; its ID (BLAKE3-256 of those
// bytes); and where each chunk's blob lies in it.
//
// The pack is allocated once, at its largest size, and each blob encoded
// in place: a pack of 4 MiB allocated some 12 MiB when it grew by
// appending blobs encoded apart, with several uploads in flight.
func EncodePack(chunks []PackedChunk) (blob []byte, id manifest.Fingerprint, refs []manifest.PackRef) {
	refs = make([]manifest.PackRef, len(chunks))
	size := 0
	for _, c := range chunks {
		size += len(c.Data) + blobSlack
	}
	blob = make([]byte, 0, size)
	for i, c := range chunks {
		off := len(blob)
		blob = appendBlob(chunkEncoder, blob, c.Data)
		refs[i].Offset, refs[i].Length = uint32(off), uint32(len(blob)-off)
	}
	if len(blob) < cap(blob)/2 {
		// Chunks that compressed well: the pack does not keep the room
		// it did not need while it goes up.
		blob = bytes.Clone(blob)
	}
	id = manifest.Sum(blob)
	for i := range refs {
		refs[i].ID = id
	}
	return blob, id, refs
}

// DecodePackMember returns the raw bytes of chunk fp from pack, the bytes
// of the pack object that ref names, verified against fp: an error
// wrapping ErrCorrupt if the blob is out of the pack's bounds or does not
// decode to bytes that hash to fp.
func DecodePackMember(pack []byte, ref manifest.PackRef, fp manifest.Fingerprint) ([]byte, error) {
	return DecodePackMemberInto(nil, pack, ref, fp)
}

// DecodePackMemberInto is DecodePackMember, decompressing a compressed
// member into dst when dst has room for a chunk (cap(dst) is at least
// manifest.ChunkSize) rather than into a new buffer. The bytes returned
// lie in dst, or, for a member stored raw, in pack.
func DecodePackMemberInto(dst, pack []byte, ref manifest.PackRef, fp manifest.Fingerprint) ([]byte, error) {
	end := uint64(ref.Offset) + uint64(ref.Length)
	if end > uint64(len(pack)) {
		return nil, fmt.Errorf("store: pack %s: chunk %s at %d+%d is past the pack's %d bytes: %w",
			ref.ID, fp, ref.Offset, ref.Length, len(pack), ErrCorrupt)
	}
	data, err := decodeChunkInto(dst, fp, pack[ref.Offset:end])
	if err != nil {
		return nil, fmt.Errorf("store: pack %s: chunk %s: %w", ref.ID, fp, err)
	}
	return data, nil
}

// FetchPack returns the bytes of pack id from the first store that has
// it. Caches never hold packs and are skipped.
func FetchPack(ctx context.Context, stores []Store, id manifest.Fingerprint) ([]byte, error) {
	var errs []error
	for _, s := range stores {
		if IsCache(s) {
			continue
		}
		b, err := s.GetPack(ctx, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return b, nil
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("store: pack %s: no store to read it from", id)
	}
	return nil, fmt.Errorf("store: pack %s: %w", id, errors.Join(errs...))
}

// A PackReader is the capability of a store that reads a pack into memory
// its caller provides, such as a read replica's buffers outside the Go
// heap, rather than into a new allocation as GetPack does.
type PackReader interface {
	// ReadPack reads pack id, as stored, into the buffer alloc returns
	// for its size (at most manifest.MaxPackSize), and returns that
	// buffer, holding the pack. alloc is called at most once per
	// attempt, before any byte is read; when ReadPack fails after alloc
	// returned, the caller still owns the buffer.
	ReadPack(ctx context.Context, id manifest.Fingerprint, alloc func(size int) ([]byte, error)) ([]byte, error)
}

// ReadPack reads pack id from s into alloc's buffer (see PackReader): in
// place if s is a PackReader, alone or behind a Limited, and otherwise
// through GetPack and a copy.
func ReadPack(ctx context.Context, s Store, id manifest.Fingerprint, alloc func(size int) ([]byte, error)) ([]byte, error) {
	if pr, ok := s.(PackReader); ok {
		return pr.ReadPack(ctx, id, alloc)
	}
	b, err := s.GetPack(ctx, id)
	if err != nil {
		return nil, err
	}
	if len(b) > manifest.MaxPackSize {
		return nil, fmt.Errorf("store: pack %s of %d bytes, more than the %d a pack may have: %w", id, len(b), manifest.MaxPackSize, ErrCorrupt)
	}
	buf, err := alloc(len(b))
	if err != nil {
		return nil, err
	}
	return buf[:copy(buf, b)], nil
}

// A PackRangeReader is the capability of a store that reads part of a
// pack, such as one member's blob: a read replica whose memory limit
// leaves no room to keep a whole pack reads only the member it needs
// rather than the whole pack for each chunk (an S3 ranged GET, a pread).
type PackRangeReader interface {
	// ReadPackRange reads the length bytes at off in pack id, as
	// stored, into dst if its capacity is at least length (a new buffer
	// otherwise), and returns them. A range that ends past the pack's
	// end is an error wrapping ErrCorrupt; a missing pack, ErrNotFound.
	ReadPackRange(ctx context.Context, id manifest.Fingerprint, off, length int, dst []byte) ([]byte, error)
}

// ReadPackRange reads the length bytes at off in pack id from s (see
// PackRangeReader): only those if s is a PackRangeReader, alone or
// behind a Limited, and otherwise through GetPack, the whole pack, and
// a copy. Caches never hold packs: they return ErrNotFound.
func ReadPackRange(ctx context.Context, s Store, id manifest.Fingerprint, off, length int, dst []byte) ([]byte, error) {
	if off < 0 || length <= 0 || off+length > manifest.MaxPackSize {
		return nil, fmt.Errorf("store: pack %s: range %d+%d outside (0, %d]: %w", id, off, length, manifest.MaxPackSize, ErrCorrupt)
	}
	if pr, ok := s.(PackRangeReader); ok {
		return pr.ReadPackRange(ctx, id, off, length, dst)
	}
	b, err := s.GetPack(ctx, id)
	if err != nil {
		return nil, err
	}
	return PackRange(b, id, off, length, dst)
}

// PackRange copies the length bytes at off in pack, the bytes of pack
// id, into dst as ReadPackRange does; a range past the pack's end is an
// error wrapping ErrCorrupt.
func PackRange(pack []byte, id manifest.Fingerprint, off, length int, dst []byte) ([]byte, error) {
	if off < 0 || length < 0 || off+length > len(pack) {
		return nil, fmt.Errorf("store: pack %s: range %d+%d past its %d bytes: %w", id, off, length, len(pack), ErrCorrupt)
	}
	if cap(dst) < length {
		dst = make([]byte, length)
	}
	return dst[:copy(dst[:length], pack[off:off+length])], nil
}
