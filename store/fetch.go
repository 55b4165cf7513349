package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/boule-vfs/boule/manifest"
)

// FetchManifest reads and decodes the newest manifest under key from the
// first of stores that has it. Stores that fail with anything but
// ErrNotFound make it fail only if no store has the manifest.
func FetchManifest(ctx context.Context, stores []Store, key string) (*manifest.Manifest, []byte, error) {
	m, b, _, err := FetchManifestFrom(ctx, stores, key)
	return m, b, err
}

// FetchManifestFrom is FetchManifest, and also returns the index in
// stores of the store that answered.
func FetchManifestFrom(ctx context.Context, stores []Store, key string) (*manifest.Manifest, []byte, int, error) {
	return FetchManifestMemo(ctx, stores, key, nil)
}

// FetchManifestMemo is FetchManifestFrom, keeping in memo (unless nil)
// the base of a format v2 manifest for the next call, which fetches it
// again only if the head names another.
func FetchManifestMemo(ctx context.Context, stores []Store, key string, memo *BaseMemo) (*manifest.Manifest, []byte, int, error) {
	var errs []error
	for i, s := range stores {
		b, err := s.GetManifest(ctx, key)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m, err := DecodeManifest(ctx, s, b, memo)
		if err != nil {
			return nil, nil, -1, fmt.Errorf("store: manifest %s in %s: %w", key, s, err)
		}
		return m, b, i, nil
	}
	if len(errs) == 0 {
		return nil, nil, -1, fmt.Errorf("store: manifest %s: no store to read from", key)
	}
	return nil, nil, -1, errors.Join(errs...)
}

// A BaseMemo keeps the last manifest base decoded, for readers that
// fetch the same database's manifest again and again (replicas). Bases
// are immutable, so one found under its ID is the one a head names. The
// zero value is empty and ready to use; it is safe for concurrent use.
type BaseMemo struct {
	mu   sync.Mutex
	id   manifest.Fingerprint
	base *manifest.Manifest // nil when empty
}

// DecodeManifest decodes b, an encoded manifest of format v1 or v2. For
// v2 it fetches the base the head names from s (the store b came from,
// which holds the base whenever it holds the head), or takes it from
// memo (unless nil), checks it and applies the head. A base missing or
// not matching its head is an error naming it.
func DecodeManifest(ctx context.Context, s Store, b []byte, memo *BaseMemo) (*manifest.Manifest, error) {
	v, err := manifest.FormatVersion(b)
	if err != nil || v != 2 {
		return manifest.Decode(b)
	}
	h, err := manifest.DecodeHead(b)
	if err != nil {
		return nil, err
	}
	var base *manifest.Manifest
	if memo != nil {
		memo.mu.Lock()
		if memo.base != nil && memo.id == h.BaseID {
			base = memo.base
		}
		memo.mu.Unlock()
	}
	if base == nil {
		blob, err := s.GetBase(ctx, h.BaseID, h.BaseLen)
		if err != nil {
			return nil, fmt.Errorf("store: base %s (%s): %w", h.BaseID, BaseKey(h.BaseID), err)
		}
		if base, err = h.DecodeBase(blob); err != nil {
			return nil, fmt.Errorf("store: base %s (%s) in %s: %w", h.BaseID, BaseKey(h.BaseID), s, err)
		}
		if memo != nil {
			memo.mu.Lock()
			memo.id, memo.base = h.BaseID, base
			memo.mu.Unlock()
		}
	}
	m, err := h.Apply(base)
	if err != nil {
		return nil, fmt.Errorf("store: base %s (%s) in %s: %w", h.BaseID, BaseKey(h.BaseID), s, err)
	}
	return m, nil
}

// FetchChunk returns chunk i of m, from the manifest itself when inline,
// else from the first store that has it, verified against its
// fingerprint. A chunk that m places in a pack is looked for in caches
// (which hold chunks) and then in the pack, which is fetched whole.
func FetchChunk(ctx context.Context, stores []Store, m *manifest.Manifest, i int) ([]byte, error) {
	var refs map[uint32]manifest.PackRef
	if ref, ok := packRefOf(m, i); ok {
		refs = map[uint32]manifest.PackRef{uint32(i): ref}
	}
	return FetchChunkRefs(ctx, stores, m, refs, i, nil)
}

// packRefOf finds where chunk i of m is packed, without building the
// whole table that PackRefs returns: FetchChunk is called chunk by chunk.
func packRefOf(m *manifest.Manifest, i int) (manifest.PackRef, bool) {
	for _, p := range m.Packs {
		k, found := slices.BinarySearchFunc(p.Members, uint32(i), func(mb manifest.PackMember, t uint32) int {
			return cmp.Compare(mb.Index, t)
		})
		if found {
			mb := p.Members[k]
			return manifest.PackRef{ID: p.ID, Offset: mb.Offset, Length: mb.Length}, true
		}
	}
	return manifest.PackRef{}, false
}

// PackMemo keeps the pack fetched last, for sequential readers.
type PackMemo struct {
	id   manifest.Fingerprint
	data []byte
}

// FetchChunkRefs is FetchChunk with m's pack table already indexed
// (refs, from m.PackRefs) and, when last is not nil, the pack fetched last
// kept for the next call.
func FetchChunkRefs(ctx context.Context, stores []Store, m *manifest.Manifest, refs map[uint32]manifest.PackRef, i int, last *PackMemo) ([]byte, error) {
	if data, ok := m.Inline[uint32(i)]; ok {
		return data, nil
	}
	fp := m.Chunks[i]
	want := manifest.ChunkLen(m.Size, i)
	ref, packed := refs[uint32(i)]
	var errs []error
	check := func(data []byte, where string) bool {
		if len(data) != want {
			errs = append(errs, fmt.Errorf("store: chunk %d (%s) in %s: %d bytes, want %d: %w", i, fp, where, len(data), want, ErrCorrupt))
			return false
		}
		return true
	}
	for _, s := range stores {
		if packed && !IsCache(s) {
			continue
		}
		data, err := s.GetChunk(ctx, fp)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if check(data, s.String()) {
			return data, nil
		}
	}
	if packed {
		var pack []byte
		if last != nil && last.id == ref.ID {
			pack = last.data
		} else {
			p, err := FetchPack(ctx, stores, ref.ID)
			if err != nil {
				return nil, fmt.Errorf("store: chunk %d of %s: %w", i, m.SourcePath, err)
			}
			pack = p
			if last != nil {
				last.id, last.data = ref.ID, p
			}
		}
		data, err := DecodePackMember(pack, ref, fp)
		if err == nil && check(data, "pack "+ref.ID.String()) {
			return data, nil
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return nil, fmt.Errorf("store: chunk %d of %s: %w", i, m.SourcePath, errors.Join(errs...))
}
