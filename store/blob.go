package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/boule-vfs/boule/manifest"
)

// zstdMagic starts every zstd frame.
var zstdMagic = []byte{0x28, 0xB5, 0x2F, 0xFD}

// Limits on decoded blobs.
const (
	// MaxManifestDecoded is the most bytes a manifest blob may expand to.
	MaxManifestDecoded = 1 << 31
	// maxManifestWindow bounds the history buffer the manifest decoder
	// allocates, whatever a frame header claims. Boule's encoder never
	// uses more than 8 MiB.
	maxManifestWindow = 64 << 20
	// maxChunkWindow bounds the window a chunk frame may declare. The
	// window is not allocated when decoding in memory, so this is loose
	// enough for frames written by other zstd encoders.
	maxChunkWindow = 8 << 20
	// MaxChunkBlob is the largest stored chunk blob a store reads: a raw
	// chunk, or a zstd frame that is not larger than one plus framing.
	MaxChunkBlob = manifest.ChunkSize + 1024
)

// manifestDecodeLimit is MaxManifestDecoded, lowered by tests.
var manifestDecodeLimit int64 = MaxManifestDecoded

// Encoders and decoders. EncodeAll and DecodeAll are safe for concurrent
// use; streaming manifest decoders, for the frames that do not declare
// their size, are pooled.
var (
	chunkEncoder = mustEncoder(zstd.SpeedDefault, 0)
	fastEncoder  = newManifestEncoder()

	chunkDecoder = mustDecoder(
		zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderMaxMemory(maxChunkWindow),
		zstd.WithDecodeAllCapLimit(true),
	)

	// manifestDecoder decodes in memory the frames that declare their
	// size, into a buffer of that size: it allocates no window.
	manifestDecoder = mustDecoder(
		zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderMaxMemory(MaxManifestDecoded),
		zstd.WithDecoderMaxWindow(maxManifestWindow),
		zstd.WithDecodeAllCapLimit(true),
	)

	manifestDecoders = sync.Pool{New: func() any {
		return mustDecoder(
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxMemory(MaxManifestDecoded),
			zstd.WithDecoderMaxWindow(maxManifestWindow),
		)
	}}
)

// manifestWindow is the window of the manifest encoder. Its default at
// the fastest level, 4 MiB, cost every process a history buffer of 8 MiB
// as soon as it encoded a manifest of more than 64 KiB (one with a single
// inline chunk will do); this one costs none up to 128 KiB, 2 MiB above.
// A manifest is mostly fingerprints, whose only repeats (zero chunks)
// are near one another.
const manifestWindow = 1 << 20

func newManifestEncoder() *zstd.Encoder { return mustEncoder(zstd.SpeedFastest, manifestWindow) }

// mustEncoder returns an encoder at level; window, if not zero, sets the
// window size.
func mustEncoder(level zstd.EncoderLevel, window int) *zstd.Encoder {
	var opts []zstd.EOption
	if window > 0 {
		// Before the level, which would otherwise set it, and the block
		// size with it.
		opts = append(opts, zstd.WithWindowSize(window))
	}
	e, err := zstd.NewWriter(nil, append(opts,
		zstd.WithEncoderLevel(level),
		zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderCRC(false), // BLAKE3 fingerprints and manifest checksums cover integrity
	)...)
	if err != nil {
		panic("store: zstd encoder: " + err.Error())
	}
	return e
}

func mustDecoder(opts ...zstd.DOption) *zstd.Decoder {
	d, err := zstd.NewReader(nil, opts...)
	if err != nil {
		panic("store: zstd decoder: " + err.Error())
	}
	return d
}

// EncodeBlob returns the stored form of a chunk: a zstd frame at the
// default level if that is strictly smaller than raw, otherwise raw
// itself (not a copy).
func EncodeBlob(raw []byte) []byte {
	return encodeWith(chunkEncoder, raw)
}

// EncodeManifestBlob returns the stored form of an encoded manifest: a
// zstd frame at the fastest level if that is strictly smaller than raw,
// otherwise raw itself.
func EncodeManifestBlob(raw []byte) []byte {
	return encodeWith(fastEncoder, raw)
}

func encodeWith(e *zstd.Encoder, raw []byte) []byte {
	if len(raw) == 0 {
		return raw
	}
	z := e.EncodeAll(raw, make([]byte, 0, len(raw)+blobSlack))
	if len(z) < len(raw) {
		return z
	}
	return raw
}

// blobSlack is room enough, beyond a chunk's own size, for the zstd frame
// of a chunk that does not compress (a frame header and raw blocks' headers,
// some 20 bytes for a chunk), which appendBlob writes before it finds so.
const blobSlack = 64

// appendBlob appends to dst what encodeWith(e, raw) returns. With
// len(raw)+blobSlack bytes free in dst, it allocates nothing.
func appendBlob(e *zstd.Encoder, dst, raw []byte) []byte {
	n := len(dst)
	z := e.EncodeAll(raw, dst)
	if len(z)-n < len(raw) {
		return z
	}
	return append(z[:n], raw...)
}

// hasZstdMagic reports whether blob starts like a zstd frame.
func hasZstdMagic(blob []byte) bool {
	return bytes.HasPrefix(blob, zstdMagic)
}

// DecodeChunk returns the raw bytes of a chunk stored as blob under
// fingerprint fp. A blob that starts with the zstd magic is decompressed,
// never to more than manifest.ChunkSize bytes, and the result must hash
// to fp; if it does not (or does not decompress) but blob itself hashes
// to fp, blob is a raw chunk that happens to start with the magic and is
// returned as is. Anything else is reported as an error wrapping
// ErrCorrupt. On success the result always hashes to fp.
func DecodeChunk(fp manifest.Fingerprint, blob []byte) ([]byte, error) {
	return decodeChunkInto(nil, fp, blob)
}

// decodeChunkInto is DecodeChunk, decompressing into dst if its capacity
// is at least manifest.ChunkSize, and into a new buffer otherwise.
func decodeChunkInto(dst []byte, fp manifest.Fingerprint, blob []byte) ([]byte, error) {
	var zerr error
	if hasZstdMagic(blob) {
		if cap(dst) < manifest.ChunkSize {
			dst = make([]byte, 0, manifest.ChunkSize)
		}
		out, err := chunkDecoder.DecodeAll(blob, dst[:0])
		if err == nil && len(out) <= manifest.ChunkSize && manifest.Sum(out) == fp {
			return out, nil
		}
		zerr = err
		if zerr == nil {
			zerr = errors.New("decompressed bytes do not match the fingerprint")
		}
	}
	if len(blob) <= manifest.ChunkSize && manifest.Sum(blob) == fp {
		return blob, nil
	}
	if zerr != nil {
		return nil, fmt.Errorf("zstd blob of %d bytes: %v: %w", len(blob), zerr, ErrCorrupt)
	}
	return nil, fmt.Errorf("raw blob of %d bytes does not match the fingerprint: %w", len(blob), ErrCorrupt)
}

// DecodeManifestBlob returns the encoded manifest stored as blob: blob
// decompressed if it starts with the zstd magic, blob itself otherwise.
// The manifest's own checksum is the integrity check: pass the result to
// manifest.Decode.
//
// Decompression produces at most 2 GiB, with a window of at most 64 MiB,
// whatever the frame claims, and allocates the decoded bytes once: a frame
// that declares its content size (Boule's always do) is refused at once if
// that is over the limit, and otherwise decoded into a buffer of that size
// plus one block; a blob that declares none, or holds more frames than the
// first declares, is decoded twice, first to count its bytes (refused past
// the limit) and then into a buffer of exactly that size.
func DecodeManifestBlob(blob []byte) ([]byte, error) {
	if !hasZstdMagic(blob) {
		return blob, nil
	}
	limit := manifestDecodeLimit
	h, err := manifestFrameHeader(blob, limit)
	if err != nil {
		return nil, err
	}
	if h.HasFCS {
		// A block adds at most zstdMaxBlock bytes, and the decoder stops
		// at the first block that ends past the declared size: the
		// buffer never grows.
		out, err := manifestDecoder.DecodeAll(blob, make([]byte, 0, int(h.FrameContentSize)+zstdMaxBlock+zstdOverAlloc))
		switch {
		case err == nil && int64(len(out)) <= limit:
			return out, nil
		case err == nil:
			return nil, fmt.Errorf("zstd manifest blob of %d bytes expands beyond %d bytes: %w", len(blob), limit, ErrCorrupt)
		case !errors.Is(err, zstd.ErrDecoderSizeExceeded):
			return nil, fmt.Errorf("zstd manifest blob of %d bytes: %v: %w", len(blob), err, ErrCorrupt)
		}
		// More frames follow the first than it declares: count them all.
	}
	n, err := decodeStream(blob, nil, limit)
	if err != nil {
		return nil, err
	}
	out := make([]byte, n)
	if _, err := decodeStream(blob, out, n); err != nil {
		return nil, err
	}
	return out, nil
}

// manifestFrameHeader returns the header of the first zstd frame of the
// manifest blob, refusing a frame that declares more than limit bytes.
func manifestFrameHeader(blob []byte, limit int64) (zstd.Header, error) {
	var h zstd.Header
	if err := h.Decode(blob); err != nil {
		return h, fmt.Errorf("zstd manifest blob of %d bytes: %v: %w", len(blob), err, ErrCorrupt)
	}
	if h.HasFCS && h.FrameContentSize > uint64(limit) {
		return h, fmt.Errorf("zstd manifest blob of %d bytes declares %d bytes, more than %d: %w",
			len(blob), h.FrameContentSize, limit, ErrCorrupt)
	}
	return h, nil
}

// Sizes of zstd blocks (RFC 8878).
const (
	zstdMaxBlock = 128 << 10 // the most bytes a block decodes to
	// zstdOverAlloc is the slack the decoder wants past a block's end.
	zstdOverAlloc = 16
)

// decodeStream decodes blob with a pooled streaming decoder, whose memory
// is bounded by the frame's window, not by its output. With out nil, it
// counts the decoded bytes, refusing more than limit; otherwise it fills
// out, which must then be exactly the decoded length, limit.
func decodeStream(blob, out []byte, limit int64) (int64, error) {
	d := manifestDecoders.Get().(*zstd.Decoder)
	defer func() {
		_ = d.Reset(nil)
		manifestDecoders.Put(d)
	}()
	if err := d.Reset(bytes.NewReader(blob)); err != nil {
		return 0, fmt.Errorf("zstd manifest blob of %d bytes: %v: %w", len(blob), err, ErrCorrupt)
	}
	if out == nil {
		n, err := io.Copy(io.Discard, io.LimitReader(d, limit+1))
		if err != nil {
			return 0, fmt.Errorf("zstd manifest blob of %d bytes: %v: %w", len(blob), err, ErrCorrupt)
		}
		if n > limit {
			return 0, fmt.Errorf("zstd manifest blob of %d bytes expands beyond %d bytes: %w", len(blob), limit, ErrCorrupt)
		}
		return n, nil
	}
	// The same bytes as the count found, and then their end.
	var extra [1]byte
	if _, err := io.ReadFull(d, out); err != nil {
		return 0, fmt.Errorf("zstd manifest blob of %d bytes: second pass: %v: %w", len(blob), err, ErrCorrupt)
	}
	if k, err := d.Read(extra[:]); k != 0 || err != io.EOF {
		return 0, fmt.Errorf("zstd manifest blob of %d bytes: second pass: more than the %d bytes counted: %w", len(blob), len(out), ErrCorrupt)
	}
	return int64(len(out)), nil
}
