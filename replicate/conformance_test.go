package replicate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boule-vfs/boule/manifest"
)

// harness adapts one Store implementation to the conformance suite.
type harness struct {
	store Store
	// tamper overwrites the stored object of the chunk fp with blob,
	// behind the store's back.
	tamper func(t *testing.T, fp manifest.Fingerprint, blob []byte)
	// enableVersions turns on manifest versioning, if the store needs it.
	enableVersions func(t *testing.T)
	// chunkModTime returns the stored chunk's modification time, and
	// backdate (if set) moves it into the past.
	chunkModTime func(t *testing.T, fp manifest.Fingerprint) time.Time
	backdate     func(t *testing.T, fp manifest.Fingerprint, when time.Time)
	// secret must not appear in any error message or in String.
	secret string
}

// runConformance runs the behaviour every Store must share.
func runConformance(t *testing.T, h harness) {
	ctx := context.Background()
	s := h.store
	check := func(t *testing.T, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		if h.secret != "" && strings.Contains(fmt.Sprint(err), h.secret) {
			t.Fatalf("error leaks the secret: %v", err)
		}
	}
	wantKind := func(t *testing.T, err, kind error) {
		t.Helper()
		if !errors.Is(err, kind) {
			t.Fatalf("err = %v, want %v", err, kind)
		}
		if !strings.HasPrefix(err.Error(), "replicate: ") {
			t.Errorf("message %q does not start with \"replicate: \"", err)
		}
		if h.secret != "" && strings.Contains(err.Error(), h.secret) {
			t.Fatalf("error leaks the secret: %v", err)
		}
		if IsRetryable(err) {
			t.Errorf("%v is retryable", err)
		}
	}

	t.Run("String", func(t *testing.T) {
		if s.String() == "" || (h.secret != "" && strings.Contains(s.String(), h.secret)) {
			t.Fatalf("String() = %q", s.String())
		}
	})

	t.Run("ChunkRoundTrip", func(t *testing.T) {
		for _, data := range [][]byte{
			make([]byte, manifest.ChunkSize),
			compressible(manifest.ChunkSize),
			randomBytes(10, manifest.ChunkSize),
			randomBytes(11, 1234),
			append(append([]byte(nil), zstdMagic...), randomBytes(12, 100)...),
		} {
			fp := manifest.Sum(data)
			check(t, s.PutChunk(ctx, fp, data))
			check(t, s.PutChunk(ctx, fp, data)) // idempotent
			got, err := s.GetChunk(ctx, fp)
			check(t, err)
			if !bytes.Equal(got, data) {
				t.Fatalf("GetChunk returned %d different bytes", len(got))
			}
		}
	})

	t.Run("ChunkMissing", func(t *testing.T) {
		_, err := s.GetChunk(ctx, manifest.Sum([]byte("never stored")))
		wantKind(t, err, ErrNotFound)
		err = s.TouchChunk(ctx, manifest.Sum([]byte("never stored")))
		wantKind(t, err, ErrNotFound)
	})

	t.Run("ChunkTampered", func(t *testing.T) {
		data := compressible(5000)
		fp := manifest.Sum(data)
		check(t, s.PutChunk(ctx, fp, data))
		blob := bytes.Clone(EncodeBlob(data))
		blob[len(blob)-3] ^= 0x40
		h.tamper(t, fp, blob)
		_, err := s.GetChunk(ctx, fp)
		wantKind(t, err, ErrCorrupt)
		// Another chunk's bytes under this key are corrupt too.
		h.tamper(t, fp, randomBytes(13, 5000))
		_, err = s.GetChunk(ctx, fp)
		wantKind(t, err, ErrCorrupt)
		// Putting it again heals it.
		check(t, s.PutChunk(ctx, fp, data))
		got, err := s.GetChunk(ctx, fp)
		check(t, err)
		if !bytes.Equal(got, data) {
			t.Fatal("chunk not healed")
		}
	})

	t.Run("Touch", func(t *testing.T) {
		data := randomBytes(14, 3000)
		fp := manifest.Sum(data)
		check(t, s.PutChunk(ctx, fp, data))
		if h.backdate != nil {
			h.backdate(t, fp, time.Now().Add(-48*time.Hour))
		}
		before := h.chunkModTime(t, fp)
		check(t, s.TouchChunk(ctx, fp))
		after := h.chunkModTime(t, fp)
		if after.Before(before) {
			t.Errorf("touch moved the modification time back from %v to %v", before, after)
		}
		if h.backdate != nil && time.Since(after) > time.Hour {
			t.Errorf("touch left the modification time at %v", after)
		}
		got, err := s.GetChunk(ctx, fp)
		check(t, err)
		if !bytes.Equal(got, data) {
			t.Fatal("touch changed the chunk")
		}
	})

	t.Run("Packs", func(t *testing.T) {
		chunks := []PackedChunk{
			{Data: compressible(manifest.ChunkSize)},
			{Data: randomBytes(15, manifest.ChunkSize)},
			{Data: randomBytes(16, 777)},
		}
		for i := range chunks {
			chunks[i].FP = manifest.Sum(chunks[i].Data)
		}
		blob, id, refs := EncodePack(chunks)
		if id != manifest.Sum(blob) {
			t.Fatal("pack ID is not the hash of its bytes")
		}
		check(t, s.PutPack(ctx, id, blob))
		check(t, s.PutPack(ctx, id, blob)) // idempotent
		got, err := s.GetPack(ctx, id)
		check(t, err)
		if !bytes.Equal(got, blob) {
			t.Fatalf("GetPack returned %d different bytes", len(got))
		}
		for i, c := range chunks {
			data, err := DecodePackMember(got, refs[i], c.FP)
			check(t, err)
			if !bytes.Equal(data, c.Data) {
				t.Fatalf("member %d differs", i)
			}
		}
		// A member is never found as a chunk object of its own.
		_, err = s.GetChunk(ctx, chunks[1].FP)
		wantKind(t, err, ErrNotFound)
		check(t, s.TouchPack(ctx, id))
		_, err = s.GetPack(ctx, manifest.Sum([]byte("no such pack")))
		wantKind(t, err, ErrNotFound)
		err = s.TouchPack(ctx, manifest.Sum([]byte("no such pack")))
		wantKind(t, err, ErrNotFound)
		// A member whose bytes changed, or that is named wrongly, is corrupt.
		bad := bytes.Clone(got)
		bad[refs[1].Offset+100] ^= 1
		_, err = DecodePackMember(bad, refs[1], chunks[1].FP)
		wantKind(t, err, ErrCorrupt)
		_, err = DecodePackMember(got, refs[1], chunks[2].FP)
		wantKind(t, err, ErrCorrupt)
		_, err = DecodePackMember(got[:len(got)-1], refs[2], chunks[2].FP)
		wantKind(t, err, ErrCorrupt)
	})

	hostA, hostB := "alpha.example", "beta.example"
	keyA1 := mustKey(t, hostA, "/srv/one.db")
	keyA2 := mustKey(t, hostA, "/srv/two with space.db")
	keyB := mustKey(t, hostB, "/srv/one.db")
	// A host whose name extends hostA's, to check prefixes end at '/'.
	keyA3 := mustKey(t, hostA+"x", "/srv/one.db")

	t.Run("ManifestRoundTrip", func(t *testing.T) {
		m := testManifest(t, hostA, "/srv/one.db", 40, 1)
		check(t, s.PutManifest(ctx, keyA1, m))
		got, err := s.GetManifest(ctx, keyA1)
		check(t, err)
		if !bytes.Equal(got, m) {
			t.Fatal("GetManifest returned different bytes")
		}
		if _, err := manifest.Decode(got); err != nil {
			t.Fatal(err)
		}
		_, err = s.GetManifest(ctx, mustKey(t, hostA, "/never/stored.db"))
		wantKind(t, err, ErrNotFound)
	})

	t.Run("ManifestBadKey", func(t *testing.T) {
		for _, key := range []string{"", "../../etc/passwd", "a/b/c", "nohash/x"} {
			err := s.PutManifest(ctx, key, []byte("x"))
			wantKind(t, err, ErrPermanent)
			_, err = s.GetManifest(ctx, key)
			wantKind(t, err, ErrPermanent)
		}
	})

	t.Run("ListManifests", func(t *testing.T) {
		for i, k := range []string{keyA1, keyA2, keyB, keyA3} {
			check(t, s.PutManifest(ctx, k, testManifest(t, "h", "/p", i+1, 2)))
		}
		pa, _ := HostPrefix(hostA)
		list, err := s.ListManifests(ctx, pa)
		check(t, err)
		want := []string{keyA1, keyA2}
		slices.Sort(want)
		if got := infoKeys(list); !slices.Equal(got, want) {
			t.Fatalf("ListManifests(%q) = %q, want %q", pa, got, want)
		}
		for _, mi := range list {
			if mi.Size <= 0 || mi.LastModified.IsZero() || time.Since(mi.LastModified) > time.Hour {
				t.Errorf("bad info %+v", mi)
			}
		}
		all, err := s.ListManifests(ctx, "")
		check(t, err)
		for _, k := range []string{keyA1, keyA2, keyB, keyA3} {
			if !slices.Contains(infoKeys(all), k) {
				t.Errorf("ListManifests(\"\") lacks %q", k)
			}
		}
		if !slices.IsSorted(infoKeys(all)) {
			t.Errorf("ListManifests not sorted: %q", infoKeys(all))
		}
		// A prefix ending inside a component.
		part, err := s.ListManifests(ctx, keyA1[:len(keyA1)-3])
		check(t, err)
		if got := infoKeys(part); !slices.Equal(got, []string{keyA1}) {
			t.Errorf("partial prefix: %q", got)
		}
		none, err := s.ListManifests(ctx, "ffff-nobody/")
		check(t, err)
		if len(none) != 0 {
			t.Errorf("unknown host: %q", infoKeys(none))
		}
	})

	t.Run("Versions", func(t *testing.T) {
		if h.enableVersions != nil {
			h.enableVersions(t)
		}
		key := mustKey(t, hostB, "/versioned.db")
		var puts [][]byte
		for i := range 3 {
			m := testManifest(t, hostB, "/versioned.db", 3, uint32(100+i))
			puts = append(puts, m)
			check(t, s.PutManifest(ctx, key, m))
		}
		vs, err := s.ManifestVersions(ctx, key)
		check(t, err)
		if len(vs) != 3 {
			t.Fatalf("%d versions, want 3: %+v", len(vs), vs)
		}
		if !vs[0].IsLatest || vs[1].IsLatest || vs[2].IsLatest {
			t.Errorf("IsLatest flags wrong: %+v", vs)
		}
		for i := 1; i < len(vs); i++ {
			if vs[i].LastModified.After(vs[i-1].LastModified) {
				t.Errorf("versions not newest first: %+v", vs)
			}
			if vs[i].ID == vs[i-1].ID {
				t.Errorf("duplicate version IDs: %+v", vs)
			}
		}
		for i, v := range vs {
			got, err := s.GetManifestVersion(ctx, key, v.ID)
			check(t, err)
			if want := puts[len(puts)-1-i]; !bytes.Equal(got, want) {
				t.Errorf("version %d (%s) holds the wrong bytes", i, v.ID)
			}
		}
		latest, err := s.GetManifest(ctx, key)
		check(t, err)
		if !bytes.Equal(latest, puts[2]) {
			t.Error("GetManifest is not the newest version")
		}
		_, err = s.ManifestVersions(ctx, mustKey(t, hostB, "/never/versioned.db"))
		wantKind(t, err, ErrNotFound)
		// Versions of one key do not include a key it prefixes.
		longer := mustKey(t, hostB, "/versioned.db2")
		check(t, s.PutManifest(ctx, longer, puts[0]))
		vs, err = s.ManifestVersions(ctx, key)
		check(t, err)
		if len(vs) != 3 {
			t.Errorf("%d versions after putting a longer key, want 3", len(vs))
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		data := compressible(7000)
		fp := manifest.Sum(data)
		key := mustKey(t, "concurrent", "/c.db")
		m := testManifest(t, "concurrent", "/c.db", 2, 1)
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := s.PutChunk(ctx, fp, data); err != nil {
					t.Error(err)
				}
				if err := s.PutManifest(ctx, key, m); err != nil {
					t.Error(err)
				}
				if got, err := s.GetChunk(ctx, fp); err != nil || !bytes.Equal(got, data) {
					t.Errorf("GetChunk: %v", err)
				}
			}()
		}
		wg.Wait()
		got, err := s.GetManifest(ctx, key)
		check(t, err)
		if !bytes.Equal(got, m) {
			t.Fatal("manifest damaged by concurrent puts")
		}
	})

	t.Run("Canceled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := s.GetChunk(cctx, manifest.ZeroChunk)
		if !errors.Is(err, context.Canceled) || IsRetryable(err) {
			t.Fatalf("canceled GetChunk: %v", err)
		}
	})
}

func mustKey(t testing.TB, host, path string) string {
	t.Helper()
	k, err := ManifestKey(host, path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func infoKeys(l []ManifestInfo) []string {
	out := make([]string, len(l))
	for i, mi := range l {
		out[i] = mi.Key
	}
	return out
}
