package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
)

// TestFakeBlobs: a Fake finds no chunk or pack before its put, returns a
// copy of what was put, counts touches, and records every call.
func TestFakeBlobs(t *testing.T) {
	ctx := context.Background()
	data := RandomBytes(1, 300)
	fp := manifest.Sum(data)
	for _, tc := range []struct {
		what                  string
		put                   func(*Fake, context.Context, manifest.Fingerprint, []byte) error
		get                   func(*Fake, context.Context, manifest.Fingerprint) ([]byte, error)
		touch                 func(*Fake, context.Context, manifest.Fingerprint) error
		opPut, opGet, opTouch string
	}{
		{"chunk", (*Fake).PutChunk, (*Fake).GetChunk, (*Fake).TouchChunk, OpPutChunk, OpGetChunk, OpTouchChunk},
		{"pack", (*Fake).PutPack, (*Fake).GetPack, (*Fake).TouchPack, OpPutPack, OpGetPack, OpTouchPack},
	} {
		t.Run(tc.what, func(t *testing.T) {
			s := NewFake("fake")
			want := "store: fake get " + tc.what + " " + fp.String() + " from fake: not found"
			if _, err := tc.get(s, ctx, fp); !errors.Is(err, store.ErrNotFound) || err.Error() != want {
				t.Fatalf("get before the put=%v, want %q", err, want)
			}
			if err := tc.touch(s, ctx, fp); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("touch before the put=%v, want ErrNotFound", err)
			}
			if err := tc.put(s, ctx, fp, data); err != nil {
				t.Fatalf("put=%v", err)
			}
			wantCopy(t, func() ([]byte, error) { return tc.get(s, ctx, fp) }, data)
			if err := tc.touch(s, ctx, fp); err != nil || s.TouchCount(fp) != 1 {
				t.Errorf("touch=%v, TouchCount=%d, want nil, 1", err, s.TouchCount(fp))
			}
			wantOps := []string{tc.opGet, tc.opTouch, tc.opPut, tc.opGet, tc.opGet, tc.opTouch}
			if ops := callOps(s); !slices.Equal(ops, wantOps) {
				t.Errorf("CallLog()=%q, want %q", ops, wantOps)
			}
			s.CheckIntegrity(t)
		})
	}
}

// wantCopy fails t unless get returns want, twice, the second time
// unchanged by a change to what the first returned.
func wantCopy(t *testing.T, get func() ([]byte, error), want []byte) {
	t.Helper()
	got, err := get()
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("get=%d bytes, %v, want the %d put", len(got), err, len(want))
	}
	got[0] ^= 1
	if again, _ := get(); !bytes.Equal(again, want) {
		t.Error("changing what get returned changed what the store holds")
	}
}

// callOps returns the operations of the calls made to s, in order.
func callOps(s *Fake) []string {
	var ops []string
	for _, c := range s.CallLog() {
		ops = append(ops, c.Op)
	}
	return ops
}

// TestFakeManifests: a Fake finds no manifest before its put, returns a
// copy of what was put, and keeps one version of it, "latest".
func TestFakeManifests(t *testing.T) {
	ctx := context.Background()
	s := NewFake("fake")
	key := MustKey(t, "h", "/v.db")
	m := Manifest(t, "h", "/v.db", 0, 1) // no chunks to put first
	want := "store: fake get manifest " + key + " from fake: not found"
	if _, err := s.GetManifest(ctx, key); !errors.Is(err, store.ErrNotFound) || err.Error() != want {
		t.Fatalf("GetManifest() of nothing=%v, want %q", err, want)
	}
	if _, err := s.ManifestVersions(ctx, key); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("ManifestVersions() of nothing=%v, want ErrNotFound", err)
	}
	if err := s.PutManifest(ctx, key, m); err != nil {
		t.Fatal(err)
	}
	wantCopy(t, func() ([]byte, error) { return s.GetManifest(ctx, key) }, m)
	vs, err := s.ManifestVersions(ctx, key)
	if err != nil || len(vs) != 1 || vs[0].ID != "latest" || !vs[0].IsLatest {
		t.Fatalf("ManifestVersions()=%+v, %v, want the latest only", vs, err)
	}
	wantCopy(t, func() ([]byte, error) { return s.GetManifestVersion(ctx, key, "latest") }, m)
	if _, err := s.GetManifestVersion(ctx, key, "1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetManifestVersion(1)=%v, want ErrNotFound", err)
	}
	list, err := s.ListManifests(ctx, key[:len(key)-2])
	if err != nil || !slices.Equal(InfoKeys(list), []string{key}) {
		t.Errorf("ListManifests()=%q, %v, want %q", InfoKeys(list), err, key)
	}
	wantOps := []string{OpGetManifest, OpVersions, OpPutManifest, OpGetManifest, OpGetManifest, OpVersions,
		OpGetVersion, OpGetVersion, OpGetVersion, OpList}
	if ops := callOps(s); !slices.Equal(ops, wantOps) {
		t.Errorf("CallLog()=%q, want %q", ops, wantOps)
	}
	s.CheckIntegrity(t)
}

// recorder is a testing.TB that records what it is told is wrong.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Helper() {}

func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// TestFakeCheckIntegrity: CheckIntegrity reports a chunk stored under a
// fingerprint its bytes do not have, and a manifest stored before one of
// its chunks, and nothing else.
func TestFakeCheckIntegrity(t *testing.T) {
	ctx := context.Background()
	data := RandomBytes(2, 100)
	key := MustKey(t, "h", "/i.db")
	m := Manifest(t, "h", "/i.db", 1, 7) // one chunk of zeros
	for _, tc := range []struct {
		name string
		do   func(s *Fake)
		want []string
	}{
		{"in order", func(s *Fake) {
			_ = s.PutChunk(ctx, manifest.ZeroChunk, make([]byte, manifest.ChunkSize))
			_ = s.PutManifest(ctx, key, m)
		}, nil},
		{"chunk under another fingerprint", func(s *Fake) {
			_ = s.PutChunk(ctx, manifest.ZeroChunk, data)
		}, []string{"stored with data that does not hash to it"}},
		{"pack under another ID", func(s *Fake) {
			_ = s.PutPack(ctx, manifest.ZeroChunk, data)
		}, []string{"chunk pack " + manifest.ZeroChunk.String()}},
		{"manifest before its chunk", func(s *Fake) {
			_ = s.PutManifest(ctx, key, m)
		}, []string{"manifest stored before its chunk: manifest 7 of " + key + ": chunk 0"}},
		{"undecodable manifest", func(s *Fake) {
			_ = s.PutManifest(ctx, key, []byte("not a manifest"))
		}, []string{"undecodable manifest put under " + key}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewFake("fake")
			tc.do(s)
			r := &recorder{TB: t}
			s.CheckIntegrity(r)
			if len(r.errs) != len(tc.want) {
				t.Fatalf("CheckIntegrity() reported %q, want %d reports", r.errs, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(r.errs[i], w) {
					t.Errorf("CheckIntegrity() reported %q, want it to say %q", r.errs[i], w)
				}
			}
		})
	}
}

// TestFakeFailOn: a call told to fail returns the error and changes
// nothing.
func TestFakeFailOn(t *testing.T) {
	ctx := context.Background()
	s := NewFake("fake")
	s.FailOn(OpPutChunk, nil, PermanentErr())
	data := RandomBytes(3, 100)
	if err := s.PutChunk(ctx, manifest.Sum(data), data); !errors.Is(err, store.ErrPermanent) {
		t.Fatalf("PutChunk()=%v, want ErrPermanent", err)
	}
	if s.HasChunk(manifest.Sum(data)) {
		t.Error("a failed put stored the chunk")
	}
	if n := CountOps(s.CallLog(), OpPutChunk); n != 1 {
		t.Errorf("CountOps(PutChunk)=%d, want 1", n)
	}
	s.ClearHooks()
	if err := s.PutChunk(ctx, manifest.Sum(data), data); err != nil || !s.HasChunk(manifest.Sum(data)) {
		t.Errorf("PutChunk() after ClearHooks=%v, want the chunk stored", err)
	}
}

// TestFakeConditional: a CondHonoured Fake passes the conditional part of
// the conformance suite; the other modes answer as the stores they stand
// for; a lost answer leaves the put done.
func TestFakeConditional(t *testing.T) {
	ctx := context.Background()
	wantKind := func(t *testing.T, err, kind error) {
		t.Helper()
		if !errors.Is(err, kind) || store.IsRetryable(err) {
			t.Fatalf("err=%v, want %v, not retryable", err, kind)
		}
	}
	t.Run("Honoured", func(t *testing.T) {
		s := NewFake("fake")
		s.SetConditional(CondHonoured)
		RunConditional(t, s, wantKind)
	})
	key := MustKey(t, "h", "/c.db")
	m1, m2 := Manifest(t, "h", "/c.db", 1, 1), Manifest(t, "h", "/c.db", 1, 2)
	for _, tc := range []struct {
		name    string
		mode    int
		claims  bool
		stale   error // what a put on a stale tag returns
		wantNow []byte
	}{
		{"None", CondNone, false, store.ErrUnsupported, m1},
		{"Refused", CondRefused, true, store.ErrUnsupported, m1},
		{"Ignored", CondIgnored, true, nil, m2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewFake("fake")
			s.SetConditional(tc.mode)
			if got := s.ConditionalPuts(); got != tc.claims {
				t.Errorf("ConditionalPuts()=%v, want %v", got, tc.claims)
			}
			if err := s.PutManifest(ctx, key, m1); err != nil {
				t.Fatal(err)
			}
			_, err := s.PutManifestIf(ctx, key, m2, `"stale"`)
			if tc.stale == nil && err != nil || tc.stale != nil && !errors.Is(err, tc.stale) {
				t.Fatalf("PutManifestIf(stale)=%v, want %v", err, tc.stale)
			}
			if got := s.ManifestAt(key); !bytes.Equal(got, tc.wantNow) {
				t.Errorf("stored %d bytes, want the %d of the manifest the put should leave", len(got), len(tc.wantNow))
			}
		})
	}
	t.Run("LoseAnswers", func(t *testing.T) {
		s := NewFake("fake")
		s.SetConditional(CondHonoured)
		s.LoseAnswers(OpPutManifestIf, 1)
		_, err := s.PutManifestIf(ctx, key, m1, "")
		if !store.IsRetryable(err) {
			t.Fatalf("PutManifestIf()=%v, want a retryable error", err)
		}
		// The retry finds the put landed.
		_, err = s.PutManifestIf(ctx, key, m1, "")
		wantKind(t, err, store.ErrPrecondition)
		if got, tag, err := s.GetManifestTag(ctx, key); err != nil || !bytes.Equal(got, m1) || tag == "" {
			t.Fatalf("GetManifestTag()=%d bytes, %q, %v, want the put manifest", len(got), tag, err)
		}
	})
}
