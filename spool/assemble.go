package spool

import (
	"errors"
	"fmt"
	"io"
	"io/fs"

	"github.com/boule-vfs/boule/manifest"
)

// ErrChunkMissing is returned by [Assemble] when a chunk the manifest
// references is in none of the spool's directories.
var ErrChunkMissing = errors.New("spool: chunk missing")

// Assemble writes the database described by the staged manifest of the
// spool directory dbDir to w, taking each chunk from staging/, ready/ or
// consuming/ and verifying it against its fingerprint. It returns the
// manifest. Chunks the uploader has already uploaded and removed are not in
// the spool: this is for tests and tools that run without an uploader.
func Assemble(dbDir string, w io.Writer) (*manifest.Manifest, error) {
	d := OpenDir(dbDir)
	s, err := d.Staged()
	if err != nil {
		return nil, err
	}
	if s == nil {
		return nil, fmt.Errorf("spool: read manifest of %s: %w", dbDir, fs.ErrNotExist)
	}
	m := s.Manifest
	for i, fp := range m.Chunks {
		want := manifest.ChunkLen(m.Size, i)
		data, ok := m.Inline[uint32(i)]
		if !ok {
			data, err = d.FindChunk(fp)
			if err == nil {
				ok = true
			} else if !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("spool: read chunk %d: %w", i, err)
			}
		}
		if !ok && fp == manifest.ZeroChunk && want == manifest.ChunkSize {
			data, ok = make([]byte, want), true
		}
		if !ok {
			return nil, fmt.Errorf("%w: chunk %d (%s) of %s", ErrChunkMissing, i, fp, m.SourcePath)
		}
		if len(data) != want || manifest.Sum(data) != fp {
			return nil, fmt.Errorf("spool: chunk %d (%s) of %s does not match its fingerprint", i, fp, m.SourcePath)
		}
		if _, err := w.Write(data); err != nil {
			return nil, err
		}
	}
	return m, nil
}
