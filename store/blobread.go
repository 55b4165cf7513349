package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/klauspost/compress/zstd"

	"github.com/boule-vfs/boule/manifest"
)

// A BlobReader is the capability of a store that reads manifests and
// manifest bases, as stored, into memory its caller provides, such as a
// read replica's file-backed buffers (package snapshot), rather than
// into the Go heap: a base of a 1 TiB database is 512 MiB of
// fingerprints.
type BlobReader interface {
	// ReadManifestBlob reads the latest manifest under key, as stored
	// (possibly compressed: see DecodeManifestBlobInto), into the buffer
	// alloc returns for its size, at most MaxManifestDecoded, and
	// returns that buffer. It returns ErrNotFound if there is none.
	// alloc is called at most once per attempt, before any byte is
	// read; when the call fails after alloc returned, the caller still
	// owns the buffer.
	ReadManifestBlob(ctx context.Context, key string, alloc func(size int) ([]byte, error)) ([]byte, error)

	// ReadBase reads base id into alloc's buffer, as ReadManifestBlob
	// reads a manifest, reading no more than size bytes (as GetBase).
	ReadBase(ctx context.Context, id manifest.Fingerprint, size int64, alloc func(size int) ([]byte, error)) ([]byte, error)
}

// ReadManifestBlob reads the latest manifest under key from s into
// alloc's buffer (see BlobReader): as stored if s is a BlobReader, alone
// or behind a Limited, and otherwise through GetManifest (decompressed)
// and a copy. Pass the result to DecodeManifestBlobInto.
func ReadManifestBlob(ctx context.Context, s Store, key string, alloc func(size int) ([]byte, error)) ([]byte, error) {
	if br, ok := s.(BlobReader); ok {
		return br.ReadManifestBlob(ctx, key, alloc)
	}
	b, err := s.GetManifest(ctx, key)
	if err != nil {
		return nil, err
	}
	return copyInto(b, alloc)
}

// ReadBase reads base id from s into alloc's buffer (see BlobReader):
// in place if s is a BlobReader, alone or behind a Limited, and
// otherwise through GetBase and a copy.
func ReadBase(ctx context.Context, s Store, id manifest.Fingerprint, size int64, alloc func(size int) ([]byte, error)) ([]byte, error) {
	if br, ok := s.(BlobReader); ok {
		return br.ReadBase(ctx, id, size, alloc)
	}
	b, err := s.GetBase(ctx, id, size)
	if err != nil {
		return nil, err
	}
	return copyInto(b, alloc)
}

func copyInto(b []byte, alloc func(size int) ([]byte, error)) ([]byte, error) {
	buf, err := alloc(len(b))
	if err != nil {
		return nil, err
	}
	if len(buf) < len(b) {
		return nil, fmt.Errorf("store: a buffer of %d bytes for %d", len(buf), len(b))
	}
	return buf[:copy(buf, b)], nil
}

// A zstd manifest frame that declares more than declareTrust bytes, and
// more than declareRatio times its own size, is decoded once to count its
// bytes before DecodeManifestBlobInto allocates for them: fingerprints
// hardly compress, so only a manifest of many identical chunks (a sparse
// database) or a crafted one declares that much.
const (
	declareTrust = 1 << 20
	declareRatio = 64
)

// DecodeManifestBlobInto is DecodeManifestBlob, decompressing into the
// buffer alloc returns for the decoded size (plus a block's slack for a
// frame that declares its size), rather than into the Go heap, and with
// the same limits. A blob that is not compressed is returned as is.
// alloc is called at most once; when the call fails after alloc
// returned, the caller still owns the buffer.
func DecodeManifestBlobInto(blob []byte, alloc func(size int) ([]byte, error)) ([]byte, error) {
	if !hasZstdMagic(blob) {
		return blob, nil
	}
	limit := manifestDecodeLimit
	h, err := manifestFrameHeader(blob, limit)
	if err != nil {
		return nil, err
	}
	if h.HasFCS {
		// As DecodeManifestBlob: in memory, into the declared size plus
		// a block, which the decoder never grows.
		size := int(h.FrameContentSize)
		if int64(size) > declareTrust && int64(size)/declareRatio > int64(len(blob)) {
			// A frame that declares far more than its bytes usually
			// hold: alloc may take disk for all of it (a file-backed
			// buffer), so count what it holds first, in bounded memory.
			// A manifest of a sparse database decodes this fast; a
			// hostile one of a few bytes declaring 2 GiB is refused
			// without taking any.
			n, err := decodeStream(blob, nil, limit)
			if err != nil {
				return nil, err
			}
			if n < int64(size) {
				return nil, fmt.Errorf("zstd manifest blob of %d bytes declares %d bytes and holds %d: %w", len(blob), size, n, ErrCorrupt)
			}
		}
		buf, err := alloc(size + zstdMaxBlock + zstdOverAlloc)
		if err != nil {
			return nil, err
		}
		out, err := manifestDecoder.DecodeAll(blob, buf[:0])
		switch {
		case err == nil && len(out) <= size && (len(out) == 0 || &out[0] == &buf[0]):
			return out, nil
		case err == nil:
			return nil, fmt.Errorf("zstd manifest blob of %d bytes expands beyond the %d bytes it declares: %w", len(blob), size, ErrCorrupt)
		case !errors.Is(err, zstd.ErrDecoderSizeExceeded):
			return nil, fmt.Errorf("zstd manifest blob of %d bytes: %v: %w", len(blob), err, ErrCorrupt)
		}
		// More frames follow the first than it declares: decode them
		// into the same buffer if they fit.
		n, err := decodeStream(blob, nil, int64(len(buf)))
		if err != nil {
			return nil, err
		}
		if _, err := decodeStream(blob, buf[:n], n); err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
	n, err := decodeStream(blob, nil, limit)
	if err != nil {
		return nil, err
	}
	buf, err := alloc(int(n))
	if err != nil {
		return nil, err
	}
	if int64(len(buf)) < n {
		return nil, fmt.Errorf("store: a buffer of %d bytes for a manifest of %d", len(buf), n)
	}
	if _, err := decodeStream(blob, buf[:n], n); err != nil {
		return nil, err
	}
	return buf[:n], nil
}
