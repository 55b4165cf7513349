package snapshot

import (
	"bytes"
	"context"
	"os"
	"runtime"
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
	m := &manifest.Manifest{Hostname: "h", SourcePath: "/big.db", Size: n * manifest.ChunkSize,
		Created: time.Unix(1e9, 0).UTC(), SourceCtime: time.Unix(1e9, 0).UTC()}
	m.Chunks = make([]manifest.Fingerprint, n)
	for i := range m.Chunks {
		m.Chunks[i] = manifest.Sum([]byte(strconv.Itoa(i)))
	}
	enc, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	baseEnc, baseID, err := manifest.NewBase(m)
	if err != nil {
		t.Fatal(err)
	}
	base, err := manifest.Decode(baseEnc)
	if err != nil {
		t.Fatal(err)
	}
	grown := *m
	grown.Size += 10 * manifest.ChunkSize
	grown.Chunks = append(append([]manifest.Fingerprint(nil), m.Chunks...), make([]manifest.Fingerprint, 10)...)
	grown.Chunks[7] = manifest.Sum([]byte("changed"))
	h, err := manifest.NewHead(&grown, base, baseID, len(baseEnc))
	if err != nil {
		t.Fatal(err)
	}
	head, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutBase(ctx, baseID, baseEnc); err != nil {
		t.Fatal(err)
	}
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
			got = nil
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

func fpBytes(fps []manifest.Fingerprint) []byte {
	if len(fps) == 0 {
		return nil
	}
	return unsafe.Slice(&fps[0][0], len(fps)*manifest.FingerprintSize)
}
