package replicate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/boule-vfs/boule/manifest"
)

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// compressible returns a chunk that looks like a SQLite page: mostly
// zeros with some structure.
func compressible(n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 97 {
		b[i] = byte(i / 97)
	}
	return b
}

func TestEncodeCompressibleChunk(t *testing.T) {
	for _, data := range [][]byte{make([]byte, manifest.ChunkSize), compressible(manifest.ChunkSize), compressible(1000)} {
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
	data := randomBytes(1, manifest.ChunkSize)
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
	data := append(append([]byte(nil), zstdMagic...), randomBytes(2, 4000)...)
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
		"zstd": compressible(manifest.ChunkSize),
		"raw":  randomBytes(3, manifest.ChunkSize),
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

// allocated returns the bytes allocated while running f.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

func TestZstdBombChunk(t *testing.T) {
	for name, blob := range map[string][]byte{
		"8MiB of zeros":    bomb(t, 8<<20),
		"64KiB+1 of zeros": bomb(t, manifest.ChunkSize+1),
		"claims 1 TiB":     rleFrame(1<<40, 8),
		"claims 64 KiB":    rleFrame(manifest.ChunkSize, 64), // lies: holds 8 MiB
	} {
		var err error
		n := allocated(func() { _, err = DecodeChunk(manifest.ZeroChunk, blob) })
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
	raw := testManifest(t, "h", "/db", 100, 1)
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

func TestManifestBlobBomb(t *testing.T) {
	old := manifestDecodeLimit
	manifestDecodeLimit = 1 << 20
	t.Cleanup(func() { manifestDecodeLimit = old })

	var err error
	blob := bomb(t, 8<<20)
	n := allocated(func() { _, err = DecodeManifestBlob(blob) })
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("bomb: %v, want ErrCorrupt", err)
	}
	if n > 16<<20 {
		t.Errorf("decoding a bomb allocated %d bytes with a 1 MiB cap", n)
	}
	// A frame claiming a huge window is refused before allocating it.
	huge := rleFrame(1<<40, 1)
	n = allocated(func() { _, err = DecodeManifestBlob(huge) })
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("huge window: %v, want ErrCorrupt", err)
	}
	if n > 4<<20 {
		t.Errorf("decoding a huge-window frame allocated %d bytes", n)
	}
}

func TestCodecConcurrent(t *testing.T) {
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				data := compressible(1000 + 500*g + i)
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

func FuzzDecodeChunk(f *testing.F) {
	f.Add(EncodeBlob(make([]byte, manifest.ChunkSize)), false)
	f.Add(EncodeBlob(compressible(3000)), false)
	f.Add(randomBytes(4, 200), true)
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
		out, err := DecodeChunk(fp, blob)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if manifest.Sum(out) != fp {
			t.Fatal("decoded chunk does not hash to its fingerprint")
		}
		if len(out) > manifest.ChunkSize {
			t.Fatalf("decoded %d bytes, more than a chunk", len(out))
		}
	})
}
