package replicate

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
	// maxManifestDecoded is the most bytes a manifest blob may expand to.
	maxManifestDecoded = 1 << 31
	// maxManifestWindow bounds the history buffer the manifest decoder
	// allocates, whatever a frame header claims. Boule's encoder never
	// uses more than 8 MiB.
	maxManifestWindow = 64 << 20
	// maxChunkWindow bounds the window a chunk frame may declare. The
	// window is not allocated when decoding in memory, so this is loose
	// enough for frames written by other zstd encoders.
	maxChunkWindow = 8 << 20
	// maxChunkBlob is the largest stored chunk blob a store reads: a raw
	// chunk, or a zstd frame that is not larger than one plus framing.
	maxChunkBlob = manifest.ChunkSize + 1024
)

// manifestDecodeLimit is maxManifestDecoded, lowered by tests.
var manifestDecodeLimit int64 = maxManifestDecoded

// Encoders and decoders. EncodeAll and DecodeAll are safe for concurrent
// use; streaming manifest decoders are pooled.
var (
	chunkEncoder = mustEncoder(zstd.SpeedDefault)
	fastEncoder  = mustEncoder(zstd.SpeedFastest)

	chunkDecoder = mustDecoder(
		zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderMaxMemory(maxChunkWindow),
		zstd.WithDecodeAllCapLimit(true),
	)

	manifestDecoders = sync.Pool{New: func() any {
		return mustDecoder(
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxMemory(maxManifestDecoded),
			zstd.WithDecoderMaxWindow(maxManifestWindow),
		)
	}}
)

func mustEncoder(level zstd.EncoderLevel) *zstd.Encoder {
	e, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(level),
		zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderCRC(false), // BLAKE3 fingerprints and manifest checksums cover integrity
	)
	if err != nil {
		panic("replicate: zstd encoder: " + err.Error())
	}
	return e
}

func mustDecoder(opts ...zstd.DOption) *zstd.Decoder {
	d, err := zstd.NewReader(nil, opts...)
	if err != nil {
		panic("replicate: zstd decoder: " + err.Error())
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
	z := e.EncodeAll(raw, make([]byte, 0, len(raw)))
	if len(z) < len(raw) {
		return z
	}
	return raw
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
	var zerr error
	if hasZstdMagic(blob) {
		out, err := chunkDecoder.DecodeAll(blob, make([]byte, 0, manifest.ChunkSize))
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
// Decompression is capped at 2 GiB of output, and the decoder's window at
// 64 MiB, whatever the frame claims; memory grows only with the bytes
// actually produced. The manifest's own checksum is the integrity check:
// pass the result to manifest.Decode.
func DecodeManifestBlob(blob []byte) ([]byte, error) {
	if !hasZstdMagic(blob) {
		return blob, nil
	}
	d := manifestDecoders.Get().(*zstd.Decoder)
	defer func() {
		_ = d.Reset(nil)
		manifestDecoders.Put(d)
	}()
	if err := d.Reset(bytes.NewReader(blob)); err != nil {
		return nil, fmt.Errorf("zstd manifest blob of %d bytes: %v: %w", len(blob), err, ErrCorrupt)
	}
	var buf bytes.Buffer
	buf.Grow(min(4*len(blob), 1<<20))
	limit := manifestDecodeLimit
	n, err := io.Copy(&buf, io.LimitReader(d, limit+1))
	if err != nil {
		return nil, fmt.Errorf("zstd manifest blob of %d bytes: %v: %w", len(blob), err, ErrCorrupt)
	}
	if n > limit {
		return nil, fmt.Errorf("zstd manifest blob of %d bytes expands beyond %d bytes: %w", len(blob), limit, ErrCorrupt)
	}
	return buf.Bytes(), nil
}
