package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/boule-vfs/boule/internal/bigmanifest"
	"github.com/boule-vfs/boule/internal/memtest"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store/internal/fixture"
)

func TestEncodeCompressibleChunk(t *testing.T) {
	for _, data := range [][]byte{make([]byte, manifest.ChunkSize), fixture.Compressible(manifest.ChunkSize), fixture.Compressible(1000)} {
		blob := EncodeBlob(data)
		if !bytes.HasPrefix(blob, zstdMagic) || len(blob) >= len(data) {
			t.Fatalf("%d compressible bytes encoded to %d bytes, magic %v", len(data), len(blob), bytes.HasPrefix(blob, zstdMagic))
		}
		got, err := DecodeChunk(manifest.Sum(data), blob)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("DecodeChunk: %v", err)
		}
	}
}

func TestEncodeRandomChunkStaysRaw(t *testing.T) {
	data := fixture.RandomBytes(1, manifest.ChunkSize)
	blob := EncodeBlob(data)
	if &blob[0] != &data[0] || len(blob) != len(data) {
		t.Fatalf("incompressible chunk was not stored raw (%d bytes)", len(blob))
	}
	got, err := DecodeChunk(manifest.Sum(data), blob)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("DecodeChunk: %v", err)
	}
	if got := EncodeBlob(nil); len(got) != 0 {
		t.Fatalf("EncodeBlob(nil) = %d bytes", len(got))
	}
	if got, err := DecodeChunk(manifest.Sum(nil), nil); err != nil || len(got) != 0 {
		t.Fatalf("DecodeChunk of the empty chunk: %v", err)
	}
}

func TestRawChunkWithZstdMagic(t *testing.T) {
	// A raw chunk that happens to start like a zstd frame, and so is
	// tried as one first.
	data := append(append([]byte(nil), zstdMagic...), fixture.RandomBytes(2, 4000)...)
	blob := EncodeBlob(data)
	if !bytes.Equal(blob, data) {
		t.Fatal("expected the chunk to be stored raw")
	}
	got, err := DecodeChunk(manifest.Sum(data), blob)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("DecodeChunk: %v", err)
	}
	// Even a raw chunk that is itself a valid zstd frame decodes to
	// itself when that is what its fingerprint says.
	frame := EncodeBlob(make([]byte, 5000))
	got, err = DecodeChunk(manifest.Sum(frame), frame)
	if err != nil || !bytes.Equal(got, frame) {
		t.Fatalf("DecodeChunk of a raw frame-looking chunk: %v", err)
	}
}

func TestFlippedBitIsCorrupt(t *testing.T) {
	for name, data := range map[string][]byte{
		"zstd": fixture.Compressible(manifest.ChunkSize),
		"raw":  fixture.RandomBytes(3, manifest.ChunkSize),
	} {
		blob := bytes.Clone(EncodeBlob(data))
		fp := manifest.Sum(data)
		for _, bit := range []int{0, 7, 8*len(blob)/2 + 3, 8*len(blob) - 1} {
			bad := bytes.Clone(blob)
			bad[bit/8] ^= 1 << (bit % 8)
			if _, err := DecodeChunk(fp, bad); !errors.Is(err, ErrCorrupt) {
				t.Errorf("%s: flipping bit %d: err %v, want ErrCorrupt", name, bit, err)
			}
		}
		if _, err := DecodeChunk(fp, blob[:len(blob)-1]); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: truncated blob: err %v, want ErrCorrupt", name, err)
		}
		if _, err := DecodeChunk(manifest.Sum([]byte("other")), blob); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: wrong fingerprint: err %v, want ErrCorrupt", name, err)
		}
	}
}

// bomb returns a small zstd frame that expands to n zero bytes.
func bomb(t testing.TB, n int) []byte {
	e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithWindowSize(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	return e.EncodeAll(make([]byte, n), nil)
}

// rleFrame hand-builds a frame of RLE blocks claiming fcs bytes of
// content and holding blocks of 128 KiB each.
func rleFrame(fcs uint64, blocks int) []byte {
	b := append([]byte(nil), zstdMagic...)
	// Frame header descriptor: FCS field of 8 bytes, single segment.
	b = append(b, 0xE0)
	b = binary.LittleEndian.AppendUint64(b, fcs)
	for i := range blocks {
		// Block header: last bit, type RLE (1), size 128 KiB.
		h := uint32(1<<1) | uint32(128<<10)<<3
		if i == blocks-1 {
			h |= 1
		}
		b = append(b, byte(h), byte(h>>8), byte(h>>16), 0)
	}
	return b
}

func TestZstdBombChunk(t *testing.T) {
	for name, blob := range map[string][]byte{
		"8MiB of zeros":    bomb(t, 8<<20),
		"64KiB+1 of zeros": bomb(t, manifest.ChunkSize+1),
		"claims 1 TiB":     rleFrame(1<<40, 8),
		"claims 64 KiB":    rleFrame(manifest.ChunkSize, 64), // lies: holds 8 MiB
	} {
		var err error
		n := memtest.Least(3, func() { _, err = DecodeChunk(manifest.ZeroChunk, blob) })
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s (%d bytes): err %v, want ErrCorrupt", name, len(blob), err)
		}
		if n > 1<<20 {
			t.Errorf("%s: decoding allocated %d bytes, want < 1 MiB", name, n)
		}
	}
}

func TestManifestBlob(t *testing.T) {
	// An encoded manifest with repeated fingerprints compresses.
	raw := fixture.Manifest(t, "h", "/db", 100, 1)
	blob := EncodeManifestBlob(raw)
	if !bytes.HasPrefix(blob, zstdMagic) || len(blob) >= len(raw) {
		t.Fatalf("manifest of %d bytes encoded to %d", len(raw), len(blob))
	}
	got, err := DecodeManifestBlob(blob)
	if err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("DecodeManifestBlob: %v", err)
	}
	if _, err := manifest.Decode(got); err != nil {
		t.Fatal(err)
	}
	// Raw manifests pass through.
	got, err = DecodeManifestBlob(raw)
	if err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("raw DecodeManifestBlob: %v", err)
	}
	// Damage in a compressed manifest is caught by the frame or by the
	// manifest's checksum.
	bad := bytes.Clone(blob)
	bad[len(bad)/2] ^= 0x10
	if got, err := DecodeManifestBlob(bad); err == nil {
		if _, err := manifest.Decode(got); err == nil {
			t.Fatal("damaged manifest blob accepted")
		}
	} else if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged manifest blob: %v, want ErrCorrupt", err)
	}
}

// TestManifestBlobBomb: small blobs that expand past the limit are
// refused, a frame that declares so before anything is allocated for its
// content, one that does not within the memory of its window.
func TestManifestBlobBomb(t *testing.T) {
	old := manifestDecodeLimit
	manifestDecodeLimit = 1 << 20
	t.Cleanup(func() { manifestDecodeLimit = old })

	for _, c := range []struct {
		name  string
		blob  []byte
		bound uint64
	}{
		{"declares 8 MiB", bomb(t, 8<<20), 64 << 10},
		{"declares nothing, holds 8 MiB", streamed(t, make([]byte, 8<<20), 1<<20), 4 << 20},
		// The frame claims a 1 TiB window: refused before allocating it.
		{"declares 1 TiB", rleFrame(1<<40, 1), 64 << 10},
	} {
		t.Run(c.name, func(t *testing.T) {
			var err error
			n := memtest.Least(3, func() { _, err = DecodeManifestBlob(c.blob) })
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("DecodeManifestBlob()=%v, want ErrCorrupt", err)
			}
			if n > c.bound {
				t.Errorf("DecodeManifestBlob() allocated %d bytes, want at most %d", n, c.bound)
			}
		})
	}
}

// streamed returns data as one zstd frame that does not declare its
// size, as a streaming encoder with a window of window bytes writes it.
func streamed(t testing.TB, data []byte, window int) []byte {
	t.Helper()
	var b bytes.Buffer
	e, err := zstd.NewWriter(&b, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithWindowSize(window))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestManifestBlobAllocs: a manifest blob of a few kilobytes that
// decodes to 32 MiB (a 64 GiB database of zero chunks) allocates those
// 32 MiB once, plus a block, or plus the frame's window when the frame
// does not declare its size; and one that declares more than the limit is
// refused before anything is allocated for it.
func TestManifestBlobAllocs(t *testing.T) {
	spec := bigmanifest.Spec{Size: 64 << 30}
	size := uint64(spec.EncodedLen())
	var raw bytes.Buffer
	if _, err := spec.WriteTo(&raw); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		declare bool
		limit   int64
		bound   uint64 // beyond the frame's window
	}{
		{"declares its size", true, MaxManifestDecoded, size + 1<<20},
		{"declares nothing", false, MaxManifestDecoded, size + 1<<20},
		{"declares one byte too many", true, int64(size) - 1, 64 << 10},
		{"declares nothing, one byte too many", false, int64(size) - 1, 1 << 20},
	} {
		t.Run(c.name, func(t *testing.T) {
			old := manifestDecodeLimit
			manifestDecodeLimit = c.limit
			t.Cleanup(func() { manifestDecodeLimit = old })
			var z bytes.Buffer
			if err := spec.Zstd(&z, c.declare); err != nil {
				t.Fatal(err)
			}
			var h zstd.Header
			if err := h.Decode(z.Bytes()); err != nil || h.HasFCS != c.declare {
				t.Fatalf("frame header: %v, declares size %v, want %v", err, h.HasFCS, c.declare)
			}
			var got []byte
			var err error
			n := memtest.Least(3, func() { got, err = DecodeManifestBlob(z.Bytes()) })
			if c.limit < int64(size) {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("DecodeManifestBlob()=%v, want ErrCorrupt", err)
				}
			} else if err != nil || !bytes.Equal(got, raw.Bytes()) {
				t.Fatalf("DecodeManifestBlob()=%v, or not the encoding", err)
			}
			bound := c.bound
			if !c.declare {
				bound += h.WindowSize
			}
			if n > bound {
				t.Errorf("DecodeManifestBlob() of %d bytes decoding to %d allocated %d bytes, want at most %d", z.Len(), size, n, bound)
			}
		})
	}
}

func TestCodecConcurrent(t *testing.T) {
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				data := fixture.Compressible(1000 + 500*g + i)
				fp := manifest.Sum(data)
				got, err := DecodeChunk(fp, EncodeBlob(data))
				if err != nil || !bytes.Equal(got, data) {
					t.Errorf("chunk round trip: %v", err)
					return
				}
				mb, err := DecodeManifestBlob(EncodeManifestBlob(data))
				if err != nil || !bytes.Equal(mb, data) {
					t.Errorf("manifest round trip: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// maxChunkDecodeAlloc bounds what decoding one chunk blob may allocate,
// whatever it claims: the chunk, and the first use of one of the zstd
// decoder's block buffers.
const maxChunkDecodeAlloc = 2*manifest.ChunkSize + 256<<10

func FuzzDecodeChunk(f *testing.F) {
	f.Add(EncodeBlob(make([]byte, manifest.ChunkSize)), false)
	f.Add(EncodeBlob(fixture.Compressible(3000)), false)
	f.Add(fixture.RandomBytes(4, 200), true)
	f.Add(append(append([]byte(nil), zstdMagic...), 1, 2, 3), true)
	f.Add(bomb(f, manifest.ChunkSize+1), false)
	f.Add(rleFrame(1<<40, 2), false)
	f.Add([]byte{}, true)
	ref, err := zstd.NewReader(nil, zstd.WithDecoderMaxMemory(1<<20), zstd.WithDecoderConcurrency(1))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, blob []byte, raw bool) {
		// Pick a fingerprint that makes success possible: that of the
		// blob itself, or of what a reference decoder makes of it.
		fp := manifest.Sum(blob)
		if !raw {
			if d, err := ref.DecodeAll(blob, nil); err == nil {
				fp = manifest.Sum(d)
			}
		}
		checkChunkDecode(t, "DecodeChunk", len(blob), fp, func() ([]byte, error) { return DecodeChunk(fp, blob) })
	})
}

// checkChunkDecode fails t unless decode, which decodes n hostile bytes
// into the chunk fp, allocates at most maxChunkDecodeAlloc, fails only
// with ErrCorrupt, and returns at most a chunk's bytes that hash to fp.
func checkChunkDecode(t *testing.T, name string, n int, fp manifest.Fingerprint, decode func() ([]byte, error)) {
	t.Helper()
	var out []byte
	var err error
	if a, ok := memtest.AtMost(maxChunkDecodeAlloc, func() { out, err = decode() }); !ok {
		t.Fatalf("%s of %d bytes allocated %d, want at most %d", name, n, a, maxChunkDecodeAlloc)
	}
	if err != nil {
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s()=%v, want an error wrapping ErrCorrupt", name, err)
		}
		return
	}
	if manifest.Sum(out) != fp {
		t.Fatalf("%s() returned bytes that do not hash to the fingerprint", name)
	}
	if len(out) > manifest.ChunkSize {
		t.Fatalf("%s() returned %d bytes, more than a chunk", name, len(out))
	}
}

// FuzzDecodeManifestBlob feeds DecodeManifestBlob hostile blobs, with the
// limit lowered to 1 MiB: it must never panic, fail only with ErrCorrupt,
// return at most the limit, and allocate no more than twice the limit
// plus the largest window, whatever the blob claims.
func FuzzDecodeManifestBlob(f *testing.F) {
	old := manifestDecodeLimit
	manifestDecodeLimit = 1 << 20
	f.Cleanup(func() { manifestDecodeLimit = old })
	f.Add(EncodeManifestBlob(fixture.Manifest(f, "h", "/db", 100, 1)))
	f.Add(streamed(f, fixture.Compressible(5000), 1<<10))
	f.Add(bomb(f, 2<<20))
	f.Add(streamed(f, make([]byte, 2<<20), 1<<10))
	f.Add(rleFrame(1<<40, 2))
	f.Add(rleFrame(1000, 1)) // declares less than it holds
	f.Add(append(bomb(f, 1000), bomb(f, 1000)...))
	f.Add([]byte("BOULEMF\x00"))
	f.Fuzz(func(t *testing.T, blob []byte) {
		var out []byte
		var err error
		// A frame that declares its size, and the streaming decoder's
		// window for those that do not or have several frames.
		const bound = 2*(1<<20) + maxManifestWindow + 1<<20
		if n, ok := memtest.AtMost(bound, func() { out, err = DecodeManifestBlob(blob) }); !ok {
			t.Fatalf("DecodeManifestBlob of %d bytes allocated %d, want at most %d", len(blob), n, bound)
		}
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("error %v does not wrap ErrCorrupt", err)
		}
		if len(out) > 1<<20 {
			t.Fatalf("decoded %d bytes, more than the limit", len(out))
		}
	})
}
