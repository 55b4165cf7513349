package upload

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/boule-vfs/boule/internal/fsutil"
	"github.com/boule-vfs/boule/manifest"
)

// The uploader puts the chunks of a snapshot into packs (PackChunks
// chunks per object, in file order) and writes, in the manifest it
// uploads, where each packed chunk is. A later snapshot that keeps a
// chunk keeps its place, found in one of:
//
//   - the database's placements: chunks this uploader packed that no
//     uploaded manifest lists yet, kept in memory and in the spool file
//     packedFile, so that a restart between a pack upload and its
//     manifest's upload forgets nothing (the chunk's spool file is gone
//     by then);
//   - the last uploaded manifest (the spool's uploaded file), which
//     carries its pack table.
//
// A chunk in neither is stored as an object of its own.

// packedFile is the spool file of a database's placements: records of
// packRecordSize bytes, a chunk fingerprint, a pack ID, and the blob's
// offset and length, big-endian.
const (
	packedFile     = "packed"
	packRecordSize = 2*manifest.FingerprintSize + 8
)

// loadPlacements reads a database's placements file; a missing file is
// an empty one, and a torn last record (a crash mid-append) is ignored.
func loadPlacements(dir string) (map[manifest.Fingerprint]manifest.PackRef, error) {
	b, err := fsutil.ReadFile(filepath.Join(dir, packedFile))
	if errors.Is(err, fs.ErrNotExist) {
		return map[manifest.Fingerprint]manifest.PackRef{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("upload: read placements: %w", err)
	}
	out := make(map[manifest.Fingerprint]manifest.PackRef, len(b)/packRecordSize)
	for ; len(b) >= packRecordSize; b = b[packRecordSize:] {
		var fp manifest.Fingerprint
		var ref manifest.PackRef
		copy(fp[:], b)
		copy(ref.ID[:], b[manifest.FingerprintSize:])
		ref.Offset = binary.BigEndian.Uint32(b[2*manifest.FingerprintSize:])
		ref.Length = binary.BigEndian.Uint32(b[2*manifest.FingerprintSize+4:])
		out[fp] = ref
	}
	return out, nil
}

func appendPlacement(b []byte, fp manifest.Fingerprint, ref manifest.PackRef) []byte {
	b = append(b, fp[:]...)
	b = append(b, ref.ID[:]...)
	b = binary.BigEndian.AppendUint32(b, ref.Offset)
	return binary.BigEndian.AppendUint32(b, ref.Length)
}

// recordPlacements adds placements to st, in memory and in its file.
func (st *dbState) recordPlacements(fps []manifest.Fingerprint, refs []manifest.PackRef) error {
	var b []byte
	for i := range fps {
		b = appendPlacement(b, fps[i], refs[i])
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.placed == nil {
		st.placed = map[manifest.Fingerprint]manifest.PackRef{}
	}
	for i := range fps {
		st.placed[fps[i]] = refs[i]
	}
	f, err := os.OpenFile(filepath.Join(st.dir, packedFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("upload: record placements: %w", err)
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("upload: record placements: %w", err)
	}
	return nil
}

// forgetPlacements drops the placements that m, now uploaded, carries,
// and rewrites the file with the others (usually none).
func (st *dbState) forgetPlacements(m *manifest.Manifest) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.placed) == 0 {
		return nil
	}
	refs := m.PackRefs()
	for idx, ref := range refs {
		if r, ok := st.placed[m.Chunks[idx]]; ok && r == ref {
			delete(st.placed, m.Chunks[idx])
		}
	}
	p := filepath.Join(st.dir, packedFile)
	if len(st.placed) == 0 {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("upload: remove placements: %w", err)
		}
		return nil
	}
	var b []byte
	for fp, ref := range st.placed {
		b = appendPlacement(b, fp, ref)
	}
	return writeFileAtomic(p, b)
}

// withPacks returns m with the pack table that says where its chunks are:
// placed holds this uploader's placements, prev is the last uploaded
// manifest (nil if none).
func withPacks(m *manifest.Manifest, placed map[manifest.Fingerprint]manifest.PackRef, prev *manifest.Manifest) *manifest.Manifest {
	var prevRefs map[manifest.Fingerprint]manifest.PackRef
	if prev != nil {
		pr := prev.PackRefs()
		prevRefs = make(map[manifest.Fingerprint]manifest.PackRef, len(pr))
		for idx, ref := range pr {
			prevRefs[prev.Chunks[idx]] = ref
		}
	}
	byID := map[manifest.Fingerprint][]manifest.PackMember{}
	for i, fp := range m.Chunks {
		if _, inline := m.Inline[uint32(i)]; inline {
			continue
		}
		ref, ok := placed[fp]
		if !ok {
			ref, ok = prevRefs[fp]
		}
		if ok {
			byID[ref.ID] = append(byID[ref.ID], manifest.PackMember{Index: uint32(i), Offset: ref.Offset, Length: ref.Length})
		}
	}
	out := *m
	out.Packs = nil
	for id, members := range byID {
		out.Packs = append(out.Packs, manifest.Pack{ID: id, Members: members})
	}
	slices.SortFunc(out.Packs, func(a, b manifest.Pack) int { return slices.Compare(a.ID[:], b.ID[:]) })
	return &out
}

// spoolSum returns the SHA-256 of a manifest as the spool wrote it: the
// bytes, or for a manifest the uploader gave a pack table, the encoding
// of the same manifest without it.
func spoolSum(b []byte) [32]byte {
	if len(b) > 11 && b[11]&manifest.FlagPacks != 0 {
		if m, err := manifest.Decode(b); err == nil {
			m.Packs = nil
			if plain, err := m.MarshalBinary(); err == nil {
				return sha256.Sum256(plain)
			}
		}
	}
	return sha256.Sum256(b)
}

// SpoolPlaces returns where the chunks of the database whose spool
// directory is dir went in packs, as far as the spool knows: its
// placements, then the last uploaded manifest's pack table. A chunk not
// in the result was stored as an object of its own. The placements are
// read first: the uploader records the uploaded manifest before it drops
// the placements that manifest lists.
func SpoolPlaces(dir string) (map[manifest.Fingerprint]manifest.PackRef, error) {
	places, err := loadPlacements(dir)
	if err != nil {
		return nil, err
	}
	b, err := fsutil.ReadFile(filepath.Join(dir, uploadedManifestFile))
	if errors.Is(err, fs.ErrNotExist) {
		return places, nil
	}
	if err != nil {
		return nil, fmt.Errorf("upload: read the last uploaded manifest: %w", err)
	}
	m, err := manifest.Decode(b)
	if err != nil {
		return nil, fmt.Errorf("upload: the last uploaded manifest: %w", err)
	}
	for idx, ref := range m.PackRefs() {
		if _, ok := places[m.Chunks[idx]]; !ok {
			places[m.Chunks[idx]] = ref
		}
	}
	return places, nil
}
