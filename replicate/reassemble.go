package replicate

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/boule-vfs/boule/manifest"
)

// FetchManifest reads and decodes the newest manifest under key from the
// first of stores that has it. Stores that fail with anything but
// ErrNotFound make it fail only if no store has the manifest.
func FetchManifest(ctx context.Context, stores []Store, key string) (*manifest.Manifest, []byte, error) {
	var errs []error
	for _, s := range stores {
		b, err := s.GetManifest(ctx, key)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m, err := manifest.Decode(b)
		if err != nil {
			return nil, nil, fmt.Errorf("replicate: manifest %s in %s: %w", key, s, err)
		}
		return m, b, nil
	}
	if len(errs) == 0 {
		return nil, nil, fmt.Errorf("replicate: manifest %s: no store to read from", key)
	}
	return nil, nil, errors.Join(errs...)
}

// FetchChunk returns chunk i of m, from the manifest itself when inline,
// else from the first store that has it, verified against its fingerprint.
func FetchChunk(ctx context.Context, stores []Store, m *manifest.Manifest, i int) ([]byte, error) {
	if data, ok := m.Inline[uint32(i)]; ok {
		return data, nil
	}
	fp := m.Chunks[i]
	want := manifest.ChunkLen(m.Size, i)
	var errs []error
	for _, s := range stores {
		data, err := s.GetChunk(ctx, fp)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if len(data) != want {
			errs = append(errs, fmt.Errorf("replicate: chunk %d (%s) in %s: %d bytes, want %d", i, fp, s, len(data), want))
			continue
		}
		return data, nil
	}
	return nil, fmt.Errorf("replicate: chunk %d of %s: %w", i, m.SourcePath, errors.Join(errs...))
}

// Reassemble writes the database that m describes to w, chunk by chunk,
// each verified against its fingerprint.
func Reassemble(ctx context.Context, stores []Store, m *manifest.Manifest, w io.Writer) error {
	for i := range m.Chunks {
		data, err := FetchChunk(ctx, stores, m, i)
		if err != nil {
			return err
		}
		if _, err := w.Write(data); err != nil {
			return err
		}
	}
	return nil
}
