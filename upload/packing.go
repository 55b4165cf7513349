package upload

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"

	"github.com/boule-vfs/boule/internal/fsutil"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/spool"
)

// The uploader puts the chunks of a snapshot into packs (PackChunks
// chunks per object, in file order) and writes, in the manifest it
// uploads, where each packed chunk is. A later snapshot that keeps a
// chunk keeps its place, found in one of:
//
//   - the database's placements: chunks this uploader packed that no
//     uploaded manifest lists yet, kept in memory and in the spool
//     (spool.Dir.AddPlacements), so that a restart between a pack upload
//     and its manifest's upload forgets nothing (the chunk's spool file is
//     gone by then);
//   - the last uploaded manifest (spool.Dir.Uploaded), which carries its
//     pack table.
//
// A chunk in neither is stored as an object of its own.

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

// Places returns where the chunks of the database whose spool directory
// is dir went in packs, as far as the spool knows: its placements, then
// the last uploaded manifest's pack table. A chunk not in the result was
// stored as an object of its own. The placements are read first: the
// uploader records the uploaded manifest before it drops the placements
// that manifest lists.
func Places(dir string) (map[manifest.Fingerprint]manifest.PackRef, error) {
	sp := spool.OpenDir(dir)
	places, err := sp.Placements()
	if err != nil {
		return nil, err
	}
	m, err := sp.Uploaded()
	if err != nil || m == nil {
		return places, err
	}
	for idx, ref := range m.PackRefs() {
		if _, ok := places[m.Chunks[idx]]; !ok {
			places[m.Chunks[idx]] = ref
		}
	}
	return places, nil
}

// place records, before their spool files go, that the chunks fps went
// up in the packs refs. When the spool has no room even for that record,
// it uploads them again, each as an object of its own, which needs none:
// a full spool drains through its uploads, where waiting for room to
// record a placement would keep it full for good, uploading the same
// pack on every pass. read returns a chunk's spool file; a chunk whose
// file is gone was handed on or is no longer referenced, and needs
// neither.
func (u *Uploader) place(ctx context.Context, st *dbState, fps []manifest.Fingerprint, refs []manifest.PackRef, read func(manifest.Fingerprint) ([]byte, error), targets []limitedTarget) error {
	err := st.recordPlacements(fps, refs)
	if err == nil || !fsutil.NoSpace(err) {
		return err
	}
	u.log.Debug("upload: no room in the spool to record pack placements; uploading the chunks one by one", logKeyDB, st.source(), logKeyErr, err)
	for _, fp := range fps {
		data, err := read(fp)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("upload: read spool chunk %s: %w", fp, err)
		}
		if manifest.Sum(data) != fp {
			return fmt.Errorf("%w: spool chunk %s of %s does not match its fingerprint", ErrSpoolCorrupt, fp, st.sp)
		}
		if err := u.putChunk(ctx, st, fp, data, targets); err != nil {
			return err
		}
	}
	return nil
}
