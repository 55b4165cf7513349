package snapshot

import (
	"bytes"
	"context"
	"os"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/dir"
)

// manifestMapped reports whether p lies in a mapping of one of the
// reader's manifest files (filemem.go), as /proc/self/maps lists them.
func manifestMapped(t *testing.T, p unsafe.Pointer) bool {
	t.Helper()
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Skipf("no /proc/self/maps: %v", err)
	}
	for _, l := range strings.Split(string(maps), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 || !strings.Contains(l, ".boule-manifest-") {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		a, err1 := strconv.ParseUint(lo, 16, 64)
		b, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 == nil && err2 == nil && uint64(uintptr(p)) >= a && uint64(uintptr(p)) < b {
			return true
		}
	}
	return false
}

// TestManifestInFile fetches format v1 and v2 manifests larger than
// fileMemMin from a directory store: their fingerprint lists (and the
// base's) must lie in mapped files, equal to what was stored, and the
// mapping of one that nothing uses any more must go after a collection.
func TestManifestInFile(t *testing.T) {
	defer func(old int) { fileMemMin = old }(fileMemMin)
	fileMemMin = 4096
	ctx := context.Background()
	s, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const n = 3000 // 96,000 bytes of fingerprints
	m, enc, baseEnc, baseID, base := packedManifest(t, "/big.db", n)
	grown := *m
	grown.Size += 10 * manifest.ChunkSize
	grown.Chunks = append(append([]manifest.Fingerprint(nil), m.Chunks...), make([]manifest.Fingerprint, 10)...)
	grown.Chunks[7] = manifest.Sum([]byte("changed"))
	grown.Packs = append(slices.Clone(m.Packs), manifest.Pack{ID: manifest.Fingerprint{0xff}, Members: []manifest.PackMember{{Index: n, Offset: 0, Length: 100}}})
	head := storedHead(t, s, &grown, base, baseID, baseEnc)
	r := NewReader(Options{Remote: []store.Store{s}})
	t.Cleanup(r.Close)

	for _, c := range []struct {
		name string
		enc  []byte
		want *manifest.Manifest
	}{
		{"v1", enc, m},
		{"v2", head, &grown},
	} {
		t.Run(c.name, func(t *testing.T) {
			key, err := store.ManifestKey("h", "/"+c.name+".db")
			if err != nil {
				t.Fatal(err)
			}
			if err := s.PutManifest(ctx, key, c.enc); err != nil {
				t.Fatal(err)
			}
			var memo baseMemo
			got, sum, from, err := r.loadManifest(ctx, key, &memo)
			if err != nil || from != 0 {
				t.Fatalf("loadManifest()=%v, from %d, want the manifest from store 0", err, from)
			}
			if sum != manifest.Fingerprint(c.enc[len(c.enc)-manifest.FingerprintSize:]) {
				t.Errorf("loadManifest() checksum %s, want the encoding's", sum)
			}
			if len(got.Chunks) != len(c.want.Chunks) || !bytes.Equal(fpBytes(got.Chunks), fpBytes(c.want.Chunks)) {
				t.Fatalf("loadManifest() has %d fingerprints, not the %d stored", len(got.Chunks), len(c.want.Chunks))
			}
			p := unsafe.Pointer(&got.Chunks[0])
			if !manifestMapped(t, p) {
				t.Fatalf("loadManifest(): the fingerprint list at %p is not in a manifest file's mapping", p)
			}
			if b := memo.get(baseID); c.name == "v2" && (b == nil || !manifestMapped(t, unsafe.Pointer(&b.Chunks[0]))) {
				t.Errorf("loadManifest(): the base is not kept in a manifest file's mapping")
			}
			if !reflect.DeepEqual(got.Packs, c.want.Packs) {
				t.Fatalf("loadManifest() has %d packs, not the %d stored", len(got.Packs), len(c.want.Packs))
			}
			if !manifestMapped(t, unsafe.Pointer(&got.Packs[0])) || !manifestMapped(t, unsafe.Pointer(&got.Packs[0].Members[0])) {
				t.Errorf("loadManifest(): the pack table is not in a manifest file's mapping")
			}
			// The pack index too, once a snapshot builds it.
			ib := &manifestBufs{dir: t.TempDir()}
			defer ib.done()
			x, err := got.PackIndexIn(ib.lists())
			if err != nil {
				t.Fatal(err)
			}
			if ref, ok := x.Ref(n - 1); !ok || ref.ID != c.want.Packs[len(m.Packs)-1].ID {
				t.Errorf("PackIndexIn().Ref(%d)=%v, %v, want the last pack", n-1, ref, ok)
			}
			got, x = nil, nil
			memo.set(manifest.Fingerprint{}, nil)
			// The cleanups run after a collection, in their own goroutine.
			deadline := time.Now().Add(10 * time.Second)
			for manifestMapped(t, p) {
				if time.Now().After(deadline) {
					t.Fatalf("the list at %p is still mapped once its manifest is garbage", p)
				}
				runtime.GC()
				runtime.Gosched()
			}
		})
	}
}

// packedManifest returns a manifest of n chunks of source, chunks 1 on in
// packs of 64 listed by increasing ID, its encoding, and a base made of
// it (encoded, its ID, decoded).
func packedManifest(t *testing.T, source string, n int) (m *manifest.Manifest, enc, baseEnc []byte, baseID manifest.Fingerprint, base *manifest.Manifest) {
	t.Helper()
	m = &manifest.Manifest{Hostname: "h", SourcePath: source, Size: int64(n) * manifest.ChunkSize,
		Created: time.Unix(1e9, 0).UTC(), SourceCtime: time.Unix(1e9, 0).UTC()}
	m.Chunks = make([]manifest.Fingerprint, n)
	for i := range m.Chunks {
		m.Chunks[i] = manifest.Sum([]byte(strconv.Itoa(i)))
	}
	for first := 1; first < n; first += 64 {
		p := manifest.Pack{ID: manifest.Fingerprint{byte(first >> 16), byte(first >> 8), byte(first)}}
		for i := first; i < min(first+64, n); i++ {
			p.Members = append(p.Members, manifest.PackMember{Index: uint32(i), Offset: uint32(i-first) * 100, Length: 100})
		}
		m.Packs = append(m.Packs, p)
	}
	var err error
	if enc, err = m.MarshalBinary(); err != nil {
		t.Fatal(err)
	}
	if baseEnc, baseID, err = manifest.NewBase(m); err != nil {
		t.Fatal(err)
	}
	if base, err = manifest.Decode(baseEnc); err != nil {
		t.Fatal(err)
	}
	return m, enc, baseEnc, baseID, base
}

// storedHead returns the encoding of next as a format v2 head over base
// (baseEnc, whose ID is baseID), and puts the base in s.
func storedHead(t *testing.T, s store.Store, next, base *manifest.Manifest, baseID manifest.Fingerprint, baseEnc []byte) []byte {
	t.Helper()
	h, err := manifest.NewHead(next, base, baseID, len(baseEnc))
	if err != nil {
		t.Fatal(err)
	}
	head, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutBase(context.Background(), baseID, baseEnc); err != nil {
		t.Fatal(err)
	}
	return head
}

func fpBytes(fps []manifest.Fingerprint) []byte {
	if len(fps) == 0 {
		return nil
	}
	return unsafe.Slice(&fps[0][0], len(fps)*manifest.FingerprintSize)
}

// TestManifestHeapBound loads the manifest of a 64 GiB database (2^20
// chunks, every chunk but 0 in packs of 64: 32 MiB of fingerprints, 12
// MiB of pack members, 4 MiB of pack index) as v1 and as a v2 head over
// its base, and builds its pack index: what the Go heap allocates in all,
// transient or kept, must stay a small fraction of that (the lists go to
// files): 333 and 404 KiB. With the lists in the heap (fileMemMin past
// them), it allocated 95 MiB for v1 and 107 MiB for v2.
func TestManifestHeapBound(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a manifest of 2^20 chunks")
	}
	ctx := context.Background()
	s, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const n = 1 << 20
	m, enc, baseEnc, baseID, base := packedManifest(t, "/v1.db", n)
	next := *m
	next.SourcePath = "/v1.db"
	next.Chunks = slices.Clone(m.Chunks)
	next.Chunks[7] = manifest.Sum([]byte("changed"))
	head := storedHead(t, s, &next, base, baseID, baseEnc)
	base, baseEnc = nil, nil
	r := NewReader(Options{Remote: []store.Store{s}})
	t.Cleanup(r.Close)
	for _, c := range []struct {
		name string
		enc  []byte
	}{{"v1", enc}, {"v2", head}} {
		t.Run(c.name, func(t *testing.T) {
			key, err := store.ManifestKey("h", "/v1.db")
			if err != nil {
				t.Fatal(err)
			}
			if err := s.PutManifest(ctx, key, c.enc); err != nil {
				t.Fatal(err)
			}
			var memo baseMemo
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			got, _, _, err := r.loadManifest(ctx, key, &memo)
			if err != nil {
				t.Fatal(err)
			}
			bufs := &manifestBufs{dir: t.TempDir()}
			defer bufs.done()
			x, err := got.PackIndexIn(bufs.lists())
			if err != nil {
				t.Fatal(err)
			}
			runtime.ReadMemStats(&after)
			if ref, ok := x.Ref(n - 1); !ok || ref.ID != m.Packs[len(m.Packs)-1].ID || len(got.Chunks) != n {
				t.Fatalf("loaded %d chunks, Ref(%d)=%v, %v; want %d and the last pack", len(got.Chunks), n-1, ref, ok, n)
			}
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("%s: %d KiB allocated in the Go heap to load a manifest of %d chunks and index its packs", c.name, alloc>>10, n)
			if alloc > 4<<20 {
				t.Errorf("%s: %d KiB allocated in the Go heap, want at most 4 MiB", c.name, alloc>>10)
			}
			runtime.KeepAlive(memo.get(baseID))
		})
	}
}
