package store_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/storetest"
)

// deltaManifest returns a manifest of 40 chunks, a base of it and a head
// over that base for the same manifest with chunk 5 changed.
func deltaManifest(t *testing.T) (m *manifest.Manifest, baseBlob []byte, id manifest.Fingerprint, head []byte) {
	t.Helper()
	m = &manifest.Manifest{Hostname: "h", SourcePath: "/d.db", Size: 40 * manifest.ChunkSize, PageSize: 4096,
		Created: time.Unix(1700000000, 0).UTC(), SourceCtime: time.Unix(1700000000, 0).UTC()}
	for i := range 40 {
		m.Chunks = append(m.Chunks, manifest.Fingerprint{byte(i), 31: 1})
	}
	baseBlob, id, err := manifest.NewBase(m)
	if err != nil {
		t.Fatal(err)
	}
	base, err := manifest.Decode(baseBlob)
	if err != nil {
		t.Fatal(err)
	}
	next := *m
	next.Chunks = append([]manifest.Fingerprint(nil), m.Chunks...)
	next.Chunks[5] = manifest.Fingerprint{0xee}
	h, err := manifest.NewHead(&next, base, id, len(baseBlob))
	if err != nil {
		t.Fatal(err)
	}
	if head, err = h.MarshalBinary(); err != nil {
		t.Fatal(err)
	}
	return &next, baseBlob, id, head
}

// TestFetchManifestV2: FetchManifest reads v1 and v2 manifests; a v2
// manifest whose base is missing or corrupt fails with an error naming
// the base.
func TestFetchManifestV2(t *testing.T) {
	ctx := context.Background()
	want, baseBlob, id, head := deltaManifest(t)
	v1, err := want.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		stored  []byte
		base    func(f *storetest.Fake)
		wantErr error
	}{
		{"v1", v1, nil, nil},
		{"v2", head, func(f *storetest.Fake) { _ = f.PutBase(ctx, id, baseBlob) }, nil},
		{"v2, base missing", head, nil, store.ErrNotFound},
		{"v2, base corrupt", head, func(f *storetest.Fake) {
			_ = f.PutBase(ctx, id, baseBlob)
			f.FlipBaseByte(id, 200)
		}, manifest.ErrBase},
		{"v2, base longer than the head says", head, func(f *storetest.Fake) {
			_ = f.PutBase(ctx, id, append(bytes.Clone(baseBlob), 0))
		}, store.ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := storetest.NewFake("s3")
			if tt.base != nil {
				tt.base(f)
			}
			_ = f.PutManifest(ctx, "k", tt.stored)
			got, _, err := store.FetchManifest(ctx, []store.Store{f}, "k")
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), id.String()) {
					t.Fatalf("FetchManifest()=%v, want %v naming base %s", err, tt.wantErr, id)
				}
				return
			}
			if err != nil {
				t.Fatalf("FetchManifest()=%v", err)
			}
			if gb, _ := got.MarshalBinary(); !bytes.Equal(gb, v1) {
				t.Errorf("FetchManifest() read another manifest")
			}
		})
	}
}

// TestBaseMemo: a memo spares the second fetch of a base.
func TestBaseMemo(t *testing.T) {
	ctx := context.Background()
	_, baseBlob, id, head := deltaManifest(t)
	f := storetest.NewFake("s3")
	_ = f.PutBase(ctx, id, baseBlob)
	_ = f.PutManifest(ctx, "k", head)
	var memo store.BaseMemo
	for range 3 {
		if _, _, _, err := store.FetchManifestMemo(ctx, []store.Store{f}, "k", &memo); err != nil {
			t.Fatal(err)
		}
	}
	if n := storetest.CountOps(f.CallLog(), storetest.OpGetBase); n != 1 {
		t.Errorf("%d base fetches for 3 manifest fetches, want 1", n)
	}
}
