package spool

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/boule-vfs/boule/internal/fsutil"
	"github.com/boule-vfs/boule/manifest"
)

// The staged manifest of a large database is written as a format v2 head
// over a base (doc/FORMAT.md, "Manifest v2"), as the uploader puts it in
// the store, so that a snapshot writes to the spool bytes that follow what
// it changed, not the database's size: at 4 GiB a whole manifest is 2 MiB,
// and a persister that stages ten snapshots a second would write 20 MiB a
// second of fingerprints that did not change. The base is a file beside
// the manifest, named by its ID; a handed-over snapshot links both.

// headMinChunks is the smallest database, in chunks, whose staged manifest
// is a head: below it the whole fingerprint list is under 64 KiB, no more
// than the inline chunk 0 every manifest carries. The package's tests
// lower it, so that their small databases take both paths.
var headMinChunks = 2048

// baseState is the base the staged head is written over, and what
// changed since it was written.
type baseState struct {
	id     manifest.Fingerprint
	length int64
	chunks int
	// over holds the chunks staged since the base was written (a chunk
	// changed back to the base's content stays, harmlessly, overridden).
	over map[uint32]struct{}
	// written counts the bytes of overrides the heads over this base have
	// written: once they add up to the base's length, a new base costs
	// less than the heads to come (the rule of doc/FORMAT.md, "When
	// writers write v2").
	written int64
}

// needsBase reports whether a head over bs for a database of n chunks
// should rather go over a new base.
func (bs *baseState) needsBase(n int) bool {
	return bs == nil ||
		len(bs.over) > n/8 || // the head would be an eighth of the base
		bs.written >= bs.length || // the heads cost the base already
		n < bs.chunks-bs.chunks/8 // shrank: the base holds dead weight
}

func baseName(id manifest.Fingerprint) string { return basePrefix + id.String() }

// writeManifest makes m the staged manifest, as a whole manifest or as a
// head over bs (or over a new base, returned, when bs is nil or spent). It
// returns the identity of the written file and the base state to keep, nil
// for a whole manifest.
func (d *DB) writeManifest(m *manifest.Manifest, bs *baseState, mode fs.FileMode) (fileID, *baseState, error) {
	var b []byte
	var err error
	n := len(m.Chunks)
	if n < headMinChunks {
		bs = nil
		b, err = m.MarshalBinary()
	} else {
		if bs.needsBase(n) {
			if bs, err = d.writeBase(m, mode); err != nil {
				return fileID{}, nil, err
			}
		}
		b, err = newHead(m, bs).MarshalBinary()
	}
	if err != nil {
		return fileID{}, nil, fmt.Errorf("spool: encode manifest of %s: %w", d.path, err)
	}
	p := d.StagingManifestPath()
	if err := d.writeFile(p, b, fileMode(mode)); err != nil {
		return fileID{}, nil, err
	}
	d.stats.ManifestBytes += int64(len(b))
	if bs != nil {
		bs.written += int64(len(bs.over)) * (4 + manifest.FingerprintSize)
	}
	keep := ""
	if bs != nil {
		keep = baseName(bs.id)
	}
	if keep != d.baseKept {
		d.removeBases(keep)
	}
	st, err := os.Stat(p)
	if err != nil {
		return fileID{}, nil, fmt.Errorf("spool: stat %s: %w", p, err)
	}
	return identity(st), bs, nil
}

// writeBase writes the base of m into staging/.
func (d *DB) writeBase(m *manifest.Manifest, mode fs.FileMode) (*baseState, error) {
	enc, id, err := manifest.NewBase(m)
	if err != nil {
		return nil, fmt.Errorf("spool: encode manifest base of %s: %w", d.path, err)
	}
	// Content-addressed: a base already there (another process wrote the
	// same) is the same bytes.
	if _, err := d.publishFile(filepath.Join(d.dir, stagingDir, baseName(id)), enc, fileMode(mode), false); err != nil {
		return nil, err
	}
	d.stats.ManifestBytes += int64(len(enc))
	return &baseState{id: id, length: int64(len(enc)), chunks: len(m.Chunks), over: map[uint32]struct{}{}}, nil
}

// newHead returns the head over bs that gives m: every chunk staged since
// the base, every chunk past the base's end, and the inline chunks.
func newHead(m *manifest.Manifest, bs *baseState) *manifest.Head {
	n := len(m.Chunks)
	idx := make([]uint32, 0, len(bs.over)+inlineChunks+max(n-bs.chunks, 0))
	for i := range bs.over {
		if int(i) < n {
			idx = append(idx, i)
		}
	}
	for i := range min(inlineChunks, n) {
		if _, ok := bs.over[uint32(i)]; !ok {
			idx = append(idx, uint32(i))
		}
	}
	for i := bs.chunks; i < n; i++ {
		if _, ok := bs.over[uint32(i)]; !ok && i >= inlineChunks {
			idx = append(idx, uint32(i))
		}
	}
	slices.Sort(idx)
	h := &manifest.Head{M: *m, BaseID: bs.id, BaseLen: bs.length, BaseChunks: bs.chunks}
	h.M.Chunks, h.M.Packs = nil, nil
	h.Overrides = make([]manifest.Override, len(idx))
	for k, i := range idx {
		h.Overrides[k] = manifest.Override{Index: i, FP: m.Chunks[i]}
	}
	return h
}

// removeBases deletes the base files in staging/ other than keep, which
// the staged manifest now uses ("" when it is whole).
func (d *DB) removeBases(keep string) {
	if removeBaseFiles(filepath.Join(d.dir, stagingDir), keep) == nil {
		d.baseKept = keep
	}
}

// removeBaseFiles deletes the base files in dir other than keep ("" for
// all: for those who delete the manifest that used them).
func removeBaseFiles(dir, keep string) error {
	entries, err := fsutil.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("spool: list %s: %w", dir, err)
	}
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), basePrefix) && e.Name() != keep {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("spool: remove %s: %w", filepath.Join(dir, e.Name()), pathless(err)))
			}
		}
	}
	return errors.Join(errs...)
}

// errBaseGone is returned by decodeStaged when the base a head names is
// not beside it: replaced by a newer snapshot since the head was read.
var errBaseGone = errors.New("spool: manifest base gone")

// decodeStaged decodes b, a manifest read from dir: a whole manifest, or a
// head whose base is read from dir. For a head it also returns the base
// state, which lists the head's overrides as changed since the base.
func decodeStaged(dir string, b []byte) (*manifest.Manifest, *baseState, error) {
	v, err := manifest.FormatVersion(b)
	if err != nil || v != 2 {
		m, err := manifest.Decode(b)
		return m, nil, err
	}
	h, err := manifest.DecodeHead(b)
	if err != nil {
		return nil, nil, err
	}
	p := filepath.Join(dir, baseName(h.BaseID))
	// The head bounds the base's length, and the base is read no further.
	enc, err := fsutil.ReadFileMax(p, h.BaseLen)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("%w: %s", errBaseGone, p)
	}
	if err != nil {
		return nil, nil, err
	}
	base, err := h.DecodeBase(enc)
	if err != nil {
		return nil, nil, err
	}
	m, err := h.Apply(base)
	if err != nil {
		return nil, nil, err
	}
	bs := &baseState{id: h.BaseID, length: h.BaseLen, chunks: h.BaseChunks, over: make(map[uint32]struct{}, len(h.Overrides))}
	for _, o := range h.Overrides {
		bs.over[o.Index] = struct{}{}
	}
	bs.written = int64(len(h.Overrides)) * (4 + manifest.FingerprintSize)
	return m, bs, nil
}

// headerOf returns the header fields and strings of the snapshot encoded
// in b (whole or head), reading no base: its fingerprints may be missing.
func headerOf(b []byte) (m manifest.Manifest, err error) {
	if v, err := manifest.FormatVersion(b); err == nil && v == 2 {
		h, err := manifest.DecodeHead(b)
		if err != nil {
			return manifest.Manifest{}, err
		}
		return h.M, nil
	}
	mm, err := manifest.Decode(b)
	if err != nil {
		return manifest.Manifest{}, err
	}
	return *mm, nil
}
