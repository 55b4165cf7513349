package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
)

// Harness adapts one store.Store implementation to the conformance suite.
type Harness struct {
	// Store is the store under test. Run stores chunks, packs and
	// manifests in it, under keys of its own.
	Store store.Store
	// Tamper overwrites the stored object of the chunk fp with blob,
	// behind the store's back.
	Tamper func(t *testing.T, fp manifest.Fingerprint, blob []byte)
	// EnableVersions turns on manifest versioning, if the store needs
	// it; nil if it keeps versions anyway.
	EnableVersions func(t *testing.T)
	// ChunkModTime returns the stored chunk's modification time.
	ChunkModTime func(t *testing.T, fp manifest.Fingerprint) time.Time
	// Backdate, if set, moves the stored chunk's modification time back
	// to when.
	Backdate func(t *testing.T, fp manifest.Fingerprint, when time.Time)
	// Secret must not appear in any error message or in String.
	Secret string
	// ChunksOnly marks a store that holds chunks and nothing else, a
	// store.Cache: it must refuse packs and manifests (ErrPermanent),
	// find none (ErrNotFound) and list none.
	ChunksOnly bool
}

// FileHarness returns a Harness for s, a store that keeps each chunk in
// a file of its own, at path(fp), which the harness changes behind the
// store's back. Stored files are read-only: Tamper replaces them.
func FileHarness(s store.Store, path func(manifest.Fingerprint) string) Harness {
	return Harness{
		Store: s,
		Tamper: func(t *testing.T, fp manifest.Fingerprint, blob []byte) {
			t.Helper()
			p := path(fp)
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, blob, 0o600); err != nil {
				t.Fatal(err)
			}
		},
		ChunkModTime: func(t *testing.T, fp manifest.Fingerprint) time.Time {
			t.Helper()
			fi, err := os.Stat(path(fp))
			if err != nil {
				t.Fatal(err)
			}
			return fi.ModTime()
		},
		Backdate: func(t *testing.T, fp manifest.Fingerprint, when time.Time) {
			t.Helper()
			if err := os.Chtimes(path(fp), when, when); err != nil {
				t.Fatal(err)
			}
		},
	}
}

// RunLimited runs the suite on h.Store behind store.Limited, with a rate
// limiter that never waits and backoffs that do not sleep: the wrapper
// must change nothing that the suite sees.
func RunLimited(t *testing.T, h Harness) {
	h.Store = store.NewLimited(h.Store, rate.NewLimiter(rate.Inf, 1), store.RetryOptions{Clock: &SleepClock{}})
	Run(t, h)
}

// Run runs the behaviour every store.Store must share: the round trips of
// chunks, packs and manifests, tampered chunks found corrupt, touches,
// listings and versions of manifests, concurrent puts, errors of the
// right kinds that start with "store: " and never leak h.Secret.
func Run(t *testing.T, h Harness) {
	ctx := context.Background()
	s := h.Store
	check := func(t *testing.T, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		if h.Secret != "" && strings.Contains(fmt.Sprint(err), h.Secret) {
			t.Fatalf("error leaks the secret: %v", err)
		}
	}
	wantKind := func(t *testing.T, err, kind error) {
		t.Helper()
		if !errors.Is(err, kind) {
			t.Fatalf("err = %v, want %v", err, kind)
		}
		if !strings.HasPrefix(err.Error(), "store: ") {
			t.Errorf("message %q does not start with \"store: \"", err)
		}
		if h.Secret != "" && strings.Contains(err.Error(), h.Secret) {
			t.Fatalf("error leaks the secret: %v", err)
		}
		if store.IsRetryable(err) {
			t.Errorf("%v is retryable", err)
		}
	}

	t.Run("String", func(t *testing.T) {
		if s.String() == "" || (h.Secret != "" && strings.Contains(s.String(), h.Secret)) {
			t.Fatalf("String() = %q", s.String())
		}
	})

	// roundTrip puts want twice (puts are idempotent) and gets it back.
	roundTrip := func(t *testing.T, what string, put func() error, get func() ([]byte, error), want []byte) []byte {
		t.Helper()
		check(t, put())
		check(t, put())
		got, err := get()
		check(t, err)
		if !bytes.Equal(got, want) {
			t.Fatalf("Get%s() returned %d different bytes", what, len(got))
		}
		return got
	}

	t.Run("ChunkRoundTrip", func(t *testing.T) {
		for _, data := range [][]byte{
			make([]byte, manifest.ChunkSize),
			Compressible(manifest.ChunkSize),
			RandomBytes(10, manifest.ChunkSize),
			RandomBytes(11, 1234),
			append(append([]byte(nil), []byte{0x28, 0xB5, 0x2F, 0xFD}...), RandomBytes(12, 100)...),
		} {
			fp := manifest.Sum(data)
			roundTrip(t, "Chunk", func() error { return s.PutChunk(ctx, fp, data) },
				func() ([]byte, error) { return s.GetChunk(ctx, fp) }, data)
		}
	})

	t.Run("ChunkMissing", func(t *testing.T) {
		_, err := s.GetChunk(ctx, manifest.Sum([]byte("never stored")))
		wantKind(t, err, store.ErrNotFound)
		err = s.TouchChunk(ctx, manifest.Sum([]byte("never stored")))
		wantKind(t, err, store.ErrNotFound)
	})

	t.Run("ChunkTampered", func(t *testing.T) {
		data := Compressible(5000)
		fp := manifest.Sum(data)
		check(t, s.PutChunk(ctx, fp, data))
		blob := bytes.Clone(store.EncodeBlob(data))
		blob[len(blob)-3] ^= 0x40
		h.Tamper(t, fp, blob)
		_, err := s.GetChunk(ctx, fp)
		wantKind(t, err, store.ErrCorrupt)
		// Another chunk's bytes under this key are corrupt too.
		h.Tamper(t, fp, RandomBytes(13, 5000))
		_, err = s.GetChunk(ctx, fp)
		wantKind(t, err, store.ErrCorrupt)
		// Putting it again heals it.
		check(t, s.PutChunk(ctx, fp, data))
		got, err := s.GetChunk(ctx, fp)
		check(t, err)
		if !bytes.Equal(got, data) {
			t.Fatal("chunk not healed")
		}
	})

	t.Run("Touch", func(t *testing.T) {
		data := RandomBytes(14, 3000)
		fp := manifest.Sum(data)
		check(t, s.PutChunk(ctx, fp, data))
		if h.Backdate != nil {
			h.Backdate(t, fp, time.Now().Add(-48*time.Hour))
		}
		before := h.ChunkModTime(t, fp)
		check(t, s.TouchChunk(ctx, fp))
		after := h.ChunkModTime(t, fp)
		if after.Before(before) {
			t.Errorf("touch moved the modification time back from %v to %v", before, after)
		}
		if h.Backdate != nil && time.Since(after) > time.Hour {
			t.Errorf("touch left the modification time at %v", after)
		}
		got, err := s.GetChunk(ctx, fp)
		check(t, err)
		if !bytes.Equal(got, data) {
			t.Fatal("touch changed the chunk")
		}
	})

	if h.ChunksOnly {
		t.Run("ChunksOnly", func(t *testing.T) {
			if !store.IsCache(s) {
				t.Errorf("store.IsCache(%s)=false, want true: readers would ask it for packs", s)
			}
			data := RandomBytes(17, 900)
			blob, id, _ := store.EncodePack([]store.PackedChunk{{FP: manifest.Sum(data), Data: data}})
			wantKind(t, s.PutPack(ctx, id, blob), store.ErrPermanent)
			_, err := s.GetPack(ctx, id)
			wantKind(t, err, store.ErrNotFound)
			wantKind(t, s.TouchPack(ctx, id), store.ErrNotFound)
			key := MustKey(t, "alpha.example", "/srv/one.db")
			wantKind(t, s.PutManifest(ctx, key, Manifest(t, "alpha.example", "/srv/one.db", 1, 1)), store.ErrPermanent)
			_, err = s.GetManifest(ctx, key)
			wantKind(t, err, store.ErrNotFound)
			_, err = s.GetManifestVersion(ctx, key, "")
			wantKind(t, err, store.ErrNotFound)
			list, err := s.ListManifests(ctx, "")
			check(t, err)
			if len(list) != 0 {
				t.Errorf("ListManifests(\"\")=%q, want nothing", InfoKeys(list))
			}
			// No versions: none listed, or ErrNotFound.
			vs, err := s.ManifestVersions(ctx, key)
			if err != nil {
				wantKind(t, err, store.ErrNotFound)
			}
			if len(vs) != 0 {
				t.Errorf("ManifestVersions()=%+v, want none", vs)
			}
		})
	} else {
		t.Run("Packs", func(t *testing.T) {
			chunks := []store.PackedChunk{
				{Data: Compressible(manifest.ChunkSize)},
				{Data: RandomBytes(15, manifest.ChunkSize)},
				{Data: RandomBytes(16, 777)},
			}
			for i := range chunks {
				chunks[i].FP = manifest.Sum(chunks[i].Data)
			}
			blob, id, refs := store.EncodePack(chunks)
			if id != manifest.Sum(blob) {
				t.Fatal("pack ID is not the hash of its bytes")
			}
			got := roundTrip(t, "Pack", func() error { return s.PutPack(ctx, id, blob) },
				func() ([]byte, error) { return s.GetPack(ctx, id) }, blob)
			for i, c := range chunks {
				data, err := store.DecodePackMember(got, refs[i], c.FP)
				check(t, err)
				if !bytes.Equal(data, c.Data) {
					t.Fatalf("member %d differs", i)
				}
			}
			// ReadPack reads the same bytes into the caller's buffer, of
			// the pack's size, whether s is a PackReader or not; a
			// missing pack is ErrNotFound, and allocates nothing.
			allocs := 0
			alloc := func(size int) ([]byte, error) {
				allocs++
				return make([]byte, size, size+7), nil
			}
			read, err := store.ReadPack(ctx, s, id, alloc)
			check(t, err)
			if !bytes.Equal(read, blob) || allocs != 1 {
				t.Fatalf("ReadPack()=%d bytes in %d buffers, want the %d bytes of the pack in 1", len(read), allocs, len(blob))
			}
			allocs = 0
			_, err = store.ReadPack(ctx, s, manifest.Sum([]byte("no such pack")), alloc)
			wantKind(t, err, store.ErrNotFound)
			if allocs != 0 {
				t.Errorf("ReadPack() of a missing pack asked for %d buffers, want 0", allocs)
			}
			// ReadPackRange reads one member's bytes, whether s is a
			// PackRangeReader or not, into the caller's buffer when it
			// has room; a range past the pack's end is ErrCorrupt, a
			// missing pack ErrNotFound.
			for i, c := range chunks {
				dst := make([]byte, 0, refs[i].Length)
				part, err := store.ReadPackRange(ctx, s, id, int(refs[i].Offset), int(refs[i].Length), dst)
				check(t, err)
				if !bytes.Equal(part, blob[refs[i].Offset:refs[i].Offset+refs[i].Length]) || &part[0] != &dst[:1][0] {
					t.Fatalf("ReadPackRange(member %d)=%d bytes, want the member's %d in the buffer given", i, len(part), refs[i].Length)
				}
				whole := manifest.PackRef{ID: id, Length: refs[i].Length}
				if data, err := store.DecodePackMember(part, whole, c.FP); err != nil || !bytes.Equal(data, c.Data) {
					t.Fatalf("member %d read by range: %v, or its bytes differ", i, err)
				}
			}
			part, err := store.ReadPackRange(ctx, s, id, len(blob)-3, 2, nil)
			check(t, err)
			if !bytes.Equal(part, blob[len(blob)-3:len(blob)-1]) {
				t.Fatalf("ReadPackRange(near the end)=%x, want %x", part, blob[len(blob)-3:len(blob)-1])
			}
			_, err = store.ReadPackRange(ctx, s, id, len(blob)-3, 4, nil)
			wantKind(t, err, store.ErrCorrupt)
			_, err = store.ReadPackRange(ctx, s, id, len(blob)+10, 4, nil)
			wantKind(t, err, store.ErrCorrupt)
			_, err = store.ReadPackRange(ctx, s, manifest.Sum([]byte("no such pack")), 0, 4, nil)
			wantKind(t, err, store.ErrNotFound)
			// A member is never found as a chunk object of its own.
			_, err = s.GetChunk(ctx, chunks[1].FP)
			wantKind(t, err, store.ErrNotFound)
			check(t, s.TouchPack(ctx, id))
			_, err = s.GetPack(ctx, manifest.Sum([]byte("no such pack")))
			wantKind(t, err, store.ErrNotFound)
			err = s.TouchPack(ctx, manifest.Sum([]byte("no such pack")))
			wantKind(t, err, store.ErrNotFound)
			// A member whose bytes changed, or that is named wrongly, is corrupt.
			bad := bytes.Clone(got)
			bad[refs[1].Offset+100] ^= 1
			_, err = store.DecodePackMember(bad, refs[1], chunks[1].FP)
			wantKind(t, err, store.ErrCorrupt)
			_, err = store.DecodePackMember(got, refs[1], chunks[2].FP)
			wantKind(t, err, store.ErrCorrupt)
			_, err = store.DecodePackMember(got[:len(got)-1], refs[2], chunks[2].FP)
			wantKind(t, err, store.ErrCorrupt)
		})

		hostA, hostB := "alpha.example", "beta.example"
		keyA1 := MustKey(t, hostA, "/srv/one.db")
		keyA2 := MustKey(t, hostA, "/srv/two with space.db")
		keyB := MustKey(t, hostB, "/srv/one.db")
		// A host whose name extends hostA's, to check prefixes end at '/'.
		keyA3 := MustKey(t, hostA+"x", "/srv/one.db")

		t.Run("ManifestRoundTrip", func(t *testing.T) {
			m := Manifest(t, hostA, "/srv/one.db", 40, 1)
			check(t, s.PutManifest(ctx, keyA1, m))
			got, err := s.GetManifest(ctx, keyA1)
			check(t, err)
			if !bytes.Equal(got, m) {
				t.Fatal("GetManifest returned different bytes")
			}
			if _, err := manifest.Decode(got); err != nil {
				t.Fatal(err)
			}
			_, err = s.GetManifest(ctx, MustKey(t, hostA, "/never/stored.db"))
			wantKind(t, err, store.ErrNotFound)
		})

		t.Run("ManifestBadKey", func(t *testing.T) {
			for _, key := range []string{"", "../../etc/passwd", "a/b/c", "nohash/x"} {
				err := s.PutManifest(ctx, key, []byte("x"))
				wantKind(t, err, store.ErrPermanent)
				_, err = s.GetManifest(ctx, key)
				wantKind(t, err, store.ErrPermanent)
			}
		})

		t.Run("ListManifests", func(t *testing.T) {
			for i, k := range []string{keyA1, keyA2, keyB, keyA3} {
				check(t, s.PutManifest(ctx, k, Manifest(t, "h", "/p", i+1, 2)))
			}
			pa, _ := store.HostPrefix(hostA)
			list, err := s.ListManifests(ctx, pa)
			check(t, err)
			want := []string{keyA1, keyA2}
			slices.Sort(want)
			if got := InfoKeys(list); !slices.Equal(got, want) {
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
				if !slices.Contains(InfoKeys(all), k) {
					t.Errorf("ListManifests(\"\") lacks %q", k)
				}
			}
			if !slices.IsSorted(InfoKeys(all)) {
				t.Errorf("ListManifests not sorted: %q", InfoKeys(all))
			}
			// A prefix ending inside a component.
			part, err := s.ListManifests(ctx, keyA1[:len(keyA1)-3])
			check(t, err)
			if got := InfoKeys(part); !slices.Equal(got, []string{keyA1}) {
				t.Errorf("partial prefix: %q", got)
			}
			none, err := s.ListManifests(ctx, "ffff-nobody/")
			check(t, err)
			if len(none) != 0 {
				t.Errorf("unknown host: %q", InfoKeys(none))
			}
		})

		t.Run("Versions", func(t *testing.T) {
			if h.EnableVersions != nil {
				h.EnableVersions(t)
			}
			key := MustKey(t, hostB, "/versioned.db")
			var puts [][]byte
			for i := range 3 {
				m := Manifest(t, hostB, "/versioned.db", 3, uint32(100+i))
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
			_, err = s.ManifestVersions(ctx, MustKey(t, hostB, "/never/versioned.db"))
			wantKind(t, err, store.ErrNotFound)
			// Versions of one key do not include a key it prefixes.
			longer := MustKey(t, hostB, "/versioned.db2")
			check(t, s.PutManifest(ctx, longer, puts[0]))
			vs, err = s.ManifestVersions(ctx, key)
			check(t, err)
			if len(vs) != 3 {
				t.Errorf("%d versions after putting a longer key, want 3", len(vs))
			}
		})
	}

	t.Run("Concurrent", func(t *testing.T) {
		data := Compressible(7000)
		fp := manifest.Sum(data)
		key := MustKey(t, "concurrent", "/c.db")
		m := Manifest(t, "concurrent", "/c.db", 2, 1)
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := s.PutChunk(ctx, fp, data); err != nil {
					t.Error(err)
				}
				if !h.ChunksOnly {
					if err := s.PutManifest(ctx, key, m); err != nil {
						t.Error(err)
					}
				}
				if got, err := s.GetChunk(ctx, fp); err != nil || !bytes.Equal(got, data) {
					t.Errorf("GetChunk: %v", err)
				}
			}()
		}
		wg.Wait()
		if h.ChunksOnly {
			return
		}
		got, err := s.GetManifest(ctx, key)
		check(t, err)
		if !bytes.Equal(got, m) {
			t.Fatal("manifest damaged by concurrent puts")
		}
	})

	if c, ok := s.(store.Conditional); ok && !h.ChunksOnly {
		t.Run("Conditional", func(t *testing.T) {
			if !c.ConditionalPuts() {
				_, err := c.PutManifestIf(ctx, MustKey(t, "cond", "/no.db"), Manifest(t, "cond", "/no.db", 1, 1), "")
				wantKind(t, err, store.ErrUnsupported)
				return
			}
			RunConditional(t, c, wantKind)
		})
	}

	t.Run("Canceled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := s.GetChunk(cctx, manifest.ZeroChunk)
		if !errors.Is(err, context.Canceled) || store.IsRetryable(err) {
			t.Fatalf("canceled GetChunk: %v", err)
		}
	})
}

// MustKey returns store.ManifestKey(host, path), failing t if it fails.
func MustKey(t testing.TB, host, path string) string {
	t.Helper()
	k, err := store.ManifestKey(host, path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// InfoKeys returns the keys of l, in order.
func InfoKeys(l []store.ManifestInfo) []string {
	out := make([]string, len(l))
	for i, mi := range l {
		out[i] = mi.Key
	}
	return out
}

// RunConditional runs the behaviour every store.Conditional that honours
// conditional puts must share: a put on a stale entity tag, or on none
// when a manifest is there, stores nothing and fails with
// ErrPrecondition; of concurrent puts on the same tag, exactly one
// lands. wantKind fails t unless an error is of the kind given (Run
// passes its own).
func RunConditional(t *testing.T, c store.Conditional, wantKind func(t *testing.T, err, kind error)) {
	ctx := context.Background()
	const host = "conditional"
	// must(t)(c.PutManifestIf(…)) returns the tag of a put that must
	// land.
	must := func(t *testing.T) func(string, error) string {
		return func(tag string, err error) string {
			t.Helper()
			if err != nil {
				t.Fatalf("PutManifestIf()=%v, want nil", err)
			}
			if tag == "" {
				t.Fatal("PutManifestIf() returned an empty entity tag")
			}
			return tag
		}
	}
	stored := func(t *testing.T, key string, want []byte, wantTag string) {
		t.Helper()
		got, tag, err := c.GetManifestTag(ctx, key)
		if err != nil {
			t.Fatalf("GetManifestTag()=%v, want nil", err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("GetManifestTag() returned %d other bytes, want the %d of the last put that landed", len(got), len(want))
		}
		if wantTag != "" && tag != wantTag {
			t.Fatalf("GetManifestTag() tag=%q, want %q", tag, wantTag)
		}
	}

	t.Run("Sequence", func(t *testing.T) {
		key := MustKey(t, host, "/seq.db")
		m1 := Manifest(t, host, "/seq.db", 3, 1)
		m2 := Manifest(t, host, "/seq.db", 3, 2)
		m3 := Manifest(t, host, "/seq.db", 3, 3)
		_, _, err := c.GetManifestTag(ctx, key)
		wantKind(t, err, store.ErrNotFound)

		tag1 := must(t)(c.PutManifestIf(ctx, key, m1, ""))
		stored(t, key, m1, tag1)
		// None expected, one there.
		_, err = c.PutManifestIf(ctx, key, m2, "")
		wantKind(t, err, store.ErrPrecondition)
		stored(t, key, m1, tag1)

		tag2 := must(t)(c.PutManifestIf(ctx, key, m2, tag1))
		if tag2 == tag1 {
			t.Fatalf("manifests of different bytes share the tag %q", tag1)
		}
		stored(t, key, m2, tag2)
		// A stale tag: a delayed put of an older manifest, say.
		_, err = c.PutManifestIf(ctx, key, m1, tag1)
		wantKind(t, err, store.ErrPrecondition)
		stored(t, key, m2, tag2)
		_, err = c.PutManifestIf(ctx, key, m3, `"not-a-tag"`)
		wantKind(t, err, store.ErrPrecondition)
		stored(t, key, m2, tag2)

		// Another writer, unconditionally: the tag moves on.
		if err := c.(store.Store).PutManifest(ctx, key, m3); err != nil {
			t.Fatalf("PutManifest()=%v", err)
		}
		_, err = c.PutManifestIf(ctx, key, m1, tag2)
		wantKind(t, err, store.ErrPrecondition)
		_, tag3, err := c.GetManifestTag(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		stored(t, key, m3, tag3)
		tag4 := must(t)(c.PutManifestIf(ctx, key, m1, tag3))
		stored(t, key, m1, tag4)
		if got, err := c.(store.Store).GetManifest(ctx, key); err != nil || !bytes.Equal(got, m1) {
			t.Fatalf("GetManifest()=%d bytes, %v, want the last put", len(got), err)
		}
	})

	t.Run("Race", func(t *testing.T) {
		key := MustKey(t, host, "/race.db")
		tag0 := must(t)(c.PutManifestIf(ctx, key, Manifest(t, host, "/race.db", 2, 1), ""))
		const n = 8
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			won  []int
			tags []string
		)
		ms := make([][]byte, n)
		for i := range ms {
			ms[i] = Manifest(t, host, "/race.db", 2, uint32(10+i))
		}
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tag, err := c.PutManifestIf(ctx, key, ms[i], tag0)
				switch {
				case err == nil:
					mu.Lock()
					won, tags = append(won, i), append(tags, tag)
					mu.Unlock()
				case !errors.Is(err, store.ErrPrecondition):
					t.Errorf("PutManifestIf() of writer %d=%v, want nil or ErrPrecondition", i, err)
				}
			}()
		}
		wg.Wait()
		if len(won) != 1 {
			t.Fatalf("%d of %d puts on the same tag landed (%v), want exactly 1", len(won), n, won)
		}
		stored(t, key, ms[won[0]], tags[0])
	})
}
