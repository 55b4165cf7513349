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

// TestFakeObjects: for each kind of object, a Fake finds nothing before a
// put, returns a copy of what was put, counts touches, and records every
// call.
func TestFakeObjects(t *testing.T) {
	ctx := context.Background()
	data := RandomBytes(1, 300)
	fp := manifest.Sum(data)
	key := MustKey(t, "h", "/fake.db")
	m := Manifest(t, "h", "/fake.db", 0, 1) // no chunks to put first
	for _, tc := range []struct {
		name     string
		want     []byte
		put      func(s *Fake) error
		get      func(s *Fake) ([]byte, error)
		touch    func(s *Fake) error // nil: none
		ops      []string            // the calls the test makes
		notFound string              // the message of a get of nothing
	}{
		{"chunk", data,
			func(s *Fake) error { return s.PutChunk(ctx, fp, data) },
			func(s *Fake) ([]byte, error) { return s.GetChunk(ctx, fp) },
			func(s *Fake) error { return s.TouchChunk(ctx, fp) },
			[]string{OpGetChunk, OpTouchChunk, OpPutChunk, OpGetChunk, OpGetChunk, OpTouchChunk},
			"store: fake get chunk " + fp.String() + " from fake: not found"},
		{"pack", data,
			func(s *Fake) error { return s.PutPack(ctx, fp, data) },
			func(s *Fake) ([]byte, error) { return s.GetPack(ctx, fp) },
			func(s *Fake) error { return s.TouchPack(ctx, fp) },
			[]string{OpGetPack, OpTouchPack, OpPutPack, OpGetPack, OpGetPack, OpTouchPack},
			"store: fake get pack " + fp.String() + " from fake: not found"},
		{"manifest", m,
			func(s *Fake) error { return s.PutManifest(ctx, key, m) },
			func(s *Fake) ([]byte, error) { return s.GetManifest(ctx, key) },
			nil,
			[]string{OpGetManifest, OpPutManifest, OpGetManifest, OpGetManifest},
			"store: fake get manifest " + key + " from fake: not found"},
		{"manifest version", m,
			func(s *Fake) error { return s.PutManifest(ctx, key, m) },
			func(s *Fake) ([]byte, error) { return s.GetManifestVersion(ctx, key, "latest") },
			nil,
			[]string{OpGetVersion, OpPutManifest, OpGetVersion, OpGetVersion},
			"store: fake get manifest version " + key + " from fake: not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewFake("fake")
			if _, err := tc.get(s); !errors.Is(err, store.ErrNotFound) || err.Error() != tc.notFound {
				t.Fatalf("get before the put=%v, want %q", err, tc.notFound)
			}
			if tc.touch != nil {
				if err := tc.touch(s); !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("touch before the put=%v, want ErrNotFound", err)
				}
			}
			if err := tc.put(s); err != nil {
				t.Fatalf("put=%v", err)
			}
			got, err := tc.get(s)
			if err != nil || !bytes.Equal(got, tc.want) {
				t.Fatalf("get=%d bytes, %v, want the %d put", len(got), err, len(tc.want))
			}
			got[0] ^= 1
			if again, _ := tc.get(s); !bytes.Equal(again, tc.want) {
				t.Error("changing what get returned changed what the store holds")
			}
			if tc.touch != nil {
				if err := tc.touch(s); err != nil || s.TouchCount(fp) != 1 {
					t.Errorf("touch=%v, TouchCount=%d, want nil, 1", err, s.TouchCount(fp))
				}
			}
			var ops []string
			for _, c := range s.CallLog() {
				ops = append(ops, c.Op)
			}
			if !slices.Equal(ops, tc.ops) {
				t.Errorf("CallLog()=%q, want %q", ops, tc.ops)
			}
			s.CheckIntegrity(t)
		})
	}
}

// TestFakeVersions: a Fake keeps one version of a manifest, "latest".
func TestFakeVersions(t *testing.T) {
	ctx := context.Background()
	s := NewFake("fake")
	key := MustKey(t, "h", "/v.db")
	if _, err := s.ManifestVersions(ctx, key); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("ManifestVersions() of nothing=%v, want ErrNotFound", err)
	}
	if err := s.PutManifest(ctx, key, Manifest(t, "h", "/v.db", 1, 1)); err != nil {
		t.Fatal(err)
	}
	vs, err := s.ManifestVersions(ctx, key)
	if err != nil || len(vs) != 1 || vs[0].ID != "latest" || !vs[0].IsLatest {
		t.Fatalf("ManifestVersions()=%+v, %v, want the latest only", vs, err)
	}
	if _, err := s.GetManifestVersion(ctx, key, "1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetManifestVersion(1)=%v, want ErrNotFound", err)
	}
	list, err := s.ListManifests(ctx, key[:len(key)-2])
	if err != nil || !slices.Equal(InfoKeys(list), []string{key}) {
		t.Errorf("ListManifests()=%q, %v, want %q", InfoKeys(list), err, key)
	}
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
