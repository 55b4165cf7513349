package spool

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/boule-vfs/boule/internal/fsutil"
	"github.com/boule-vfs/boule/manifest"
)

// Dir is one database's spool directory, as the uploader and the tools
// see it: the staged snapshot, the snapshots handed over for upload, and
// the uploader's records of what the store holds. [DB] writes snapshots
// into it; every other package goes through Dir, so that the layout is
// spelled only in this package. A Dir is a path: it does no I/O until a
// method is called, and any number of Dirs may name one directory.
type Dir struct{ path string }

// OpenDir returns the spool directory at path, such as [DB.Dir] or a
// [DBDir] from [List]. It does no I/O.
func OpenDir(path string) Dir { return Dir{path: path} }

// Path is the directory's path.
func (d Dir) Path() string { return d.path }

// String is the directory's path.
func (d Dir) String() string { return d.path }

func (d Dir) join(elem ...string) string { return filepath.Join(append([]string{d.path}, elem...)...) }

// Exists reports whether the directory exists: the database was opened
// through boule in this boot and its spool was not deleted since.
func (d Dir) Exists() bool {
	_, err := os.Stat(d.path)
	return err == nil
}

// Source is the absolute path of the database the directory spools, as
// recorded in it, or "" when it is not recorded yet (a connection opened
// the database, no transaction snapshotted it).
func (d Dir) Source() string {
	b, err := fsutil.ReadFile(d.join(sourceFile))
	if err != nil {
		return ""
	}
	return string(b)
}

// Perm returns the permission bits of the database, as of its last
// snapshot, less the write bits: every file the uploader writes about it
// is no more readable (doc/FORMAT.md, "Permissions").
func (d Dir) Perm() fs.FileMode { return Perm(d.path) }

// A Snapshot is one state of the database as the spool holds it.
type Snapshot struct {
	// Manifest describes the state, without a pack table: where chunks
	// are packed is the uploader's business.
	Manifest *manifest.Manifest
	// ID identifies the state: equal IDs, equal snapshots.
	ID [32]byte
}

// snapshotID is the SHA-256 of a manifest as the spool wrote it: the
// bytes, or for a manifest the uploader gave a pack table, the encoding of
// the same manifest without it.
func snapshotID(b []byte) [32]byte {
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

// ManifestID is the [Snapshot.ID] of the snapshot encoded as b, with or
// without a pack table.
func ManifestID(b []byte) [32]byte { return snapshotID(b) }

// readSnapshot reads the manifest file p, and its base when it is a head;
// a missing file is (nil, nil). A head whose base went (a newer snapshot
// replaced both between the two reads) is read again.
func readSnapshot(p string) (*Snapshot, error) {
	for tries := 0; ; tries++ {
		b, err := fsutil.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("spool: read %s: %w", p, err)
		}
		m, _, err := decodeStaged(filepath.Dir(p), b)
		if errors.Is(err, errBaseGone) && tries < 3 {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, p, err)
		}
		m.Packs = nil
		return &Snapshot{Manifest: m, ID: snapshotID(b)}, nil
	}
}

// Staged returns the staged snapshot: the database as of its last
// snapshot. It returns nil and no error when nothing is staged (the
// spool is new, or was invalidated, or the database is in WAL mode).
func (d Dir) Staged() (*Snapshot, error) { return readSnapshot(d.join(stagingDir, manifestFile)) }

// StagedID returns the ID of the staged snapshot, and false when nothing
// readable is staged. It reads only the manifest's bytes.
func (d Dir) StagedID() ([32]byte, bool) {
	b, err := fsutil.ReadFile(d.join(stagingDir, manifestFile))
	if err != nil {
		return [32]byte{}, false
	}
	return snapshotID(b), true
}

// StagedChunks is the directory of the chunks staged for the staged
// snapshot and not handed over yet.
func (d Dir) StagedChunks() Chunks { return Chunks{dir: d.join(stagingDir, chunksDir)} }

// Chunks is a directory of chunk names: each chunk's fingerprint names a
// link to the segment file that holds it (segment.go), or, in a spool an
// earlier version left, a file of the chunk's bytes alone.
type Chunks struct{ dir string }

// List returns the fingerprints of the chunk files; a missing directory
// holds none.
func (c Chunks) List() ([]manifest.Fingerprint, error) {
	entries, err := fsutil.ReadDir(c.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("spool: list %s: %w", c.dir, err)
	}
	var out []manifest.Fingerprint
	for _, e := range entries {
		if fp, err := manifest.ParseFingerprint(e.Name()); err == nil {
			out = append(out, fp)
		}
	}
	return out, nil
}

// Read returns the bytes of chunk fp, as written; the caller verifies
// them. It returns an error wrapping fs.ErrNotExist when the chunk is
// gone (handed over, or uploaded and removed).
func (c Chunks) Read(fp manifest.Fingerprint) ([]byte, error) {
	return readChunk(filepath.Join(c.dir, fp.String()), fp)
}

// Remove deletes chunk fp's name: the segment that holds it goes with
// its last name. A chunk already gone is not an error.
func (c Chunks) Remove(fp manifest.Fingerprint) error {
	p := filepath.Join(c.dir, fp.String())
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("spool: remove %s: %w", p, err)
	}
	return nil
}

// Bytes returns the bytes of the chunks the directory names, as the
// earlier chunk files did: a chunk's length, whatever file holds it.
// Superseded chunks that a segment keeps for its other chunks, and its
// index, are not counted.
func (c Chunks) Bytes() int64 {
	files, err := filesOf(c.dir)
	if err != nil {
		return 0
	}
	var n int64
	named := map[manifest.Fingerprint]bool{}
	for _, f := range files {
		index, err := segmentIndex(f.path)
		if err != nil {
			continue // gone meanwhile
		}
		if index == nil { // an earlier version's chunk file
			n += f.size
			continue
		}
		clear(named)
		for _, fp := range f.names {
			named[fp] = true
		}
		for _, e := range index {
			if named[e.fp] {
				n += int64(e.n)
			}
		}
	}
	return n
}

// fileKey identifies a file (not a name) on the machine.
type fileKey struct {
	dev uint64
	ino uint64
}

// A Handover is a snapshot handed over to the uploader: published in
// ready/ by a snapshot, then taken into consuming/ by the uploader.
type Handover struct {
	// Name is unique to the snapshot: never reused in the directory.
	Name string
	dir  string
}

// Snapshot returns the handed-over snapshot; nil and no error if it is
// gone (uploaded and removed meanwhile).
func (h Handover) Snapshot() (*Snapshot, error) {
	return readSnapshot(filepath.Join(h.dir, manifestFile))
}

// Chunks is the directory of the snapshot's chunks not uploaded yet.
func (h Handover) Chunks() Chunks { return Chunks{dir: filepath.Join(h.dir, chunksDir)} }

// handovers lists the snapshots in state (readyDir or consumingDir).
func (d Dir) handovers(state string) ([]Handover, error) {
	dir := d.join(state)
	entries, err := fsutil.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("spool: list %s: %w", dir, err)
	}
	var out []Handover
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, Handover{Name: e.Name(), dir: filepath.Join(dir, e.Name())})
		}
	}
	return out, nil
}

// Ready lists the snapshots published in ready/, not yet taken.
func (d Dir) Ready() ([]Handover, error) { return d.handovers(readyDir) }

// Consuming lists the snapshots the uploader took into consuming/.
func (d Dir) Consuming() ([]Handover, error) { return d.handovers(consumingDir) }

// readyFree reports whether ready/ is empty: a snapshot may be published.
func (d Dir) readyFree() bool { return fsutil.DirEmpty(d.join(readyDir)) }

// Idle reports whether no snapshot waits in ready/ or consuming/.
func (d Dir) Idle() bool {
	return fsutil.DirEmpty(d.join(readyDir)) && fsutil.DirEmpty(d.join(consumingDir))
}

// TakeReady moves every snapshot in ready/ into consuming/, then removes
// ready/, so that the next snapshot can be published there at once: a
// publication renames a directory onto ready/, which fails on any
// existing directory, even an empty one.
func (d Dir) TakeReady() error {
	ready := d.join(readyDir)
	snaps, err := d.Ready()
	if err != nil {
		return err
	}
	if len(snaps) > 0 {
		consuming := d.join(consumingDir)
		if err := os.Mkdir(consuming, dirMode(d.Perm())); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("spool: create %s: %w", consuming, err)
		}
		for _, s := range snaps {
			if err := os.Rename(s.dir, filepath.Join(consuming, s.Name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("spool: take %s: %w", s.dir, err)
			}
		}
	}
	// Fails, harmlessly, when a snapshot was published meanwhile (a
	// publication never leaves ready/ empty) or ready/ is already gone.
	_ = os.Remove(ready)
	return nil
}

// RemoveConsumed deletes the snapshots in consuming/ named in names:
// uploaded, or older than one that was.
func (d Dir) RemoveConsumed(names []string) error {
	snaps, err := d.Consuming()
	if err != nil {
		return err
	}
	for _, s := range snaps {
		if !slices.Contains(names, s.Name) {
			continue
		}
		if err := os.RemoveAll(s.dir); err != nil {
			return fmt.Errorf("spool: remove %s: %w", s.dir, err)
		}
	}
	return nil
}

// NewestHandedOver returns the newest snapshot in ready/ or consuming/,
// by creation time, or nil: what to upload when nothing is staged (the
// database switched to WAL, or a crash lost the staged manifest).
// Snapshots that cannot be read are skipped.
func (d Dir) NewestHandedOver() (*Snapshot, error) {
	var all []Handover
	for _, state := range []string{consumingDir, readyDir} {
		hs, err := d.handovers(state)
		if err != nil {
			return nil, err
		}
		all = append(all, hs...)
	}
	return Newest(all), nil
}

// Newest returns the snapshot of hs whose manifest was created last (the
// first of those created at the same time), or nil. Snapshots that
// cannot be read are skipped.
func Newest(hs []Handover) *Snapshot {
	var newest *Snapshot
	for _, h := range hs {
		s, err := h.Snapshot()
		if err != nil || s == nil {
			continue
		}
		if newest == nil || s.Manifest.Created.After(newest.Manifest.Created) {
			newest = s
		}
	}
	return newest
}

// FindChunk returns chunk fp from wherever the spool still holds it:
// staged, or in a handed-over snapshot. It looks in the order chunks move
// (staging, ready/, consuming/), listing each place just before reading
// it, so that a chunk the uploader moves meanwhile is still found. It
// returns an error wrapping fs.ErrNotExist when it holds it nowhere
// (uploaded and removed).
func (d Dir) FindChunk(fp manifest.Fingerprint) ([]byte, error) {
	read := func(c Chunks) ([]byte, bool, error) {
		b, err := c.Read(fp)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, false, nil
		}
		return b, true, err
	}
	if b, ok, err := read(d.StagedChunks()); ok {
		return b, err
	}
	for _, state := range []string{readyDir, consumingDir} {
		snaps, _ := d.handovers(state)
		for _, h := range snaps {
			if b, ok, err := read(h.Chunks()); ok {
				return b, err
			}
		}
	}
	return nil, fmt.Errorf("spool: chunk %s of %s: %w", fp, d.path, fs.ErrNotExist)
}

// Lag reports the age of the oldest snapshot the store lacks (the
// replication lag: the commit that made it is the oldest one the store
// lacks) and the bytes waiting in the spool. A snapshot counts only if
// its ID differs from uploaded, the ID of the snapshot last uploaded.
func (d Dir) Lag(uploaded [32]byte, now time.Time) (lag time.Duration, pending int64) {
	var oldest time.Time
	consider := func(p string) {
		b, err := fsutil.ReadFile(p)
		if err != nil || snapshotID(b) == uploaded {
			return
		}
		m, err := headerOf(b)
		if err != nil {
			return
		}
		if oldest.IsZero() || m.Created.Before(oldest) {
			oldest = m.Created
		}
		pending += int64(len(b))
	}
	for _, state := range []string{consumingDir, readyDir} {
		snaps, _ := d.handovers(state)
		for _, h := range snaps {
			consider(filepath.Join(h.dir, manifestFile))
			pending += h.Chunks().Bytes()
		}
	}
	consider(d.join(stagingDir, manifestFile))
	pending += d.StagedChunks().Bytes()
	if oldest.IsZero() {
		return 0, pending
	}
	return max(now.Sub(oldest), 0), pending
}

// Lock takes the database's spool lock, which snapshots and
// invalidations of every process take: while it is held, the staged
// snapshot does not change. Closing the returned function releases it.
func (d Dir) Lock() (unlock func(), err error) {
	f, err := openLockFile(d.join(LockFile))
	if err != nil {
		return nil, err
	}
	if err := flock(f, syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("spool: lock %s: %w", d.path, err)
	}
	return func() { f.Close() }, nil
}

// Marker reads the directory's txn marker (see [ReadMarker]).
func (d Dir) Marker() (Marker, error) { return ReadMarker(d.path) }

// Invalidate makes the next transaction rebuild the snapshot and stage
// every chunk again (see [Invalidate]).
func (d Dir) Invalidate() error { return Invalidate(d.path) }

// Invalidation returns the token the last [Invalidate] left: an uploader
// that finds it changed since its last upload forgets what it knew the
// store to hold. "" before any invalidation, or when it cannot be read
// (an uploader then compares "" with what it saw, as before).
func (d Dir) Invalidation() string {
	b, err := d.readRecord(invalidFile)
	if err != nil {
		return ""
	}
	return string(b)
}

// --- The uploader's records -----------------------------------------------

// writeRecord writes b to the record name by rename, no more readable
// than the database. It is written first under tmp/, with the name every
// scratch file has: one that a killed uploader leaves is deleted with the
// other leftovers (removeStaleTemps), or, in a directory without tmp/,
// beside the record.
func (d Dir) writeRecord(name string, b []byte) error {
	dst := d.join(name)
	tmp := d.join(tmpDir, uniqueName())
	err := os.WriteFile(tmp, b, recordPerm(d.Perm()))
	if errors.Is(err, fs.ErrNotExist) {
		// No tmp/: beside the record. The uploader does not make tmp/,
		// which must be the writer's (mkdirSpool refuses a directory
		// another user controls).
		tmp = dst + ".tmp." + uniqueName()
		err = os.WriteFile(tmp, b, recordPerm(d.Perm()))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("spool: write %s: %w", dst, pathless(err))
	}
	if err := replaceFile(tmp, dst); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("spool: write %s: %w", dst, pathless(err))
	}
	return nil
}

// readRecord reads the record name; a missing record is (nil, nil), an
// empty one a non-nil empty slice.
func (d Dir) readRecord(name string) ([]byte, error) {
	b, err := fsutil.ReadFile(d.join(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("spool: read %s: %w", d.join(name), err)
	}
	if b == nil {
		b = []byte{}
	}
	return b, nil
}

// recordPerm is the mode of the uploader's records: read for the owner,
// and the database's read bits for group and others.
func recordPerm(db fs.FileMode) fs.FileMode { return 0o400 | db&0o044 }

// Uploaded returns the manifest the uploader last put in the store, with
// its pack table, as it recorded it (a head over its base); nil and no
// error when there is none. A record that does not decode is ErrCorrupt.
func (d Dir) Uploaded() (*manifest.Manifest, error) {
	for tries := 0; ; tries++ {
		b, err := d.readRecord(uploadedFile)
		if err != nil || b == nil {
			return nil, err
		}
		m, _, err := decodeStaged(d.path, b)
		if errors.Is(err, errBaseGone) && tries < 3 {
			continue // a newer record replaced the base since the read
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, d.join(uploadedFile), err)
		}
		return m, nil
	}
}

// RecordUploaded records b, the manifest put in the store with its pack
// table, as the one the store now holds: whole (base nil), or a head over
// base, the encoded base, which is written beside it once. So a record
// costs the spool what the upload changed, not the database's size.
func (d Dir) RecordUploaded(b, base []byte) error {
	keep := ""
	if base != nil {
		keep = baseName(manifest.Sum(base))
		if !fsutil.Exists(d.join(keep)) {
			if err := d.writeRecord(keep, base); err != nil {
				return err
			}
		}
	}
	if err := d.writeRecord(uploadedFile, b); err != nil {
		return err
	}
	// The bases of earlier records: readers that read a record over one
	// read again (Uploaded). One left behind is removed with the next
	// record; the record itself is written.
	_ = removeBaseFiles(d.path, keep)
	return nil
}

// HasUploaded reports whether an upload of the database was recorded.
func (d Dir) HasUploaded() bool { return fsutil.Exists(d.join(uploadedFile)) }

// UploadedTime returns when the last upload was recorded, zero if none:
// the uploaders of every process pace their manifests by it.
func (d Dir) UploadedTime() time.Time {
	fi, err := os.Stat(d.join(uploadedFile))
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}

// UploadedID returns the ID of the snapshot last uploaded, zero if none.
func (d Dir) UploadedID() [32]byte {
	b, err := fsutil.ReadFile(d.join(uploadedFile))
	if err != nil {
		return [32]byte{}
	}
	var um *manifest.Manifest // the record decoded, when it had to be
	id := snapshotID(b)
	if v, err := manifest.FormatVersion(b); err == nil && v == 2 {
		// A head over a base: the ID of the whole manifest it gives,
		// the one a whole record would have.
		m, err := d.Uploaded()
		if err != nil || m == nil {
			return [32]byte{}
		}
		if id, err = plainID(m); err != nil {
			return [32]byte{}
		}
		um = m
	}
	// The uploader records the whole manifest it put; a staged head of the
	// same snapshot has another ID (the hash of the head's bytes). Say it
	// is uploaded, or every restart would put each large database's
	// manifest again.
	if staged, err := fsutil.ReadFile(d.join(stagingDir, manifestFile)); err != nil || snapshotID(staged) == id {
		return id
	} else if v, err := manifest.FormatVersion(staged); err != nil || v != 2 {
		return id
	}
	if s, err := d.Staged(); err == nil && s != nil && s.ID != id {
		if um == nil {
			um, _ = manifest.Decode(b)
		}
		if um != nil && sameSnapshot(um, s.Manifest) {
			return s.ID
		}
	}
	return id
}

// plainID is the ID of m as a whole manifest without its pack table.
func plainID(m *manifest.Manifest) ([32]byte, error) {
	plain := *m
	plain.Packs = nil
	b, err := plain.MarshalBinary()
	if err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(b), nil
}

// UploadedIs reports whether the last uploaded manifest is the snapshot
// id (a [Snapshot.ID]), pack tables aside.
func (d Dir) UploadedIs(id [32]byte) bool { return id != [32]byte{} && d.UploadedID() == id }

// sameSnapshot reports whether a and b describe the same snapshot, pack
// tables aside.
func sameSnapshot(a, b *manifest.Manifest) bool {
	if !a.Created.Equal(b.Created) || a.Size != b.Size || a.VersionID != b.VersionID ||
		a.SourcePath != b.SourcePath || !slices.Equal(a.Chunks, b.Chunks) {
		return false
	}
	ea, b1 := *a, *b
	ea.Packs, b1.Packs = nil, nil
	x, err1 := ea.MarshalBinary()
	y, err2 := b1.MarshalBinary()
	return err1 == nil && err2 == nil && bytes.Equal(x, y)
}

// placementSize is the size of one record of the placements file: a chunk
// fingerprint, a pack ID, and the blob's offset and length, big-endian.
const placementSize = 2*manifest.FingerprintSize + 8

// Placements returns where the uploader put the chunks it packed that no
// uploaded manifest lists yet. A torn last record (a crash mid-append) is
// ignored.
func (d Dir) Placements() (map[manifest.Fingerprint]manifest.PackRef, error) {
	b, err := d.readRecord(packedFile)
	if err != nil {
		return nil, err
	}
	out := make(map[manifest.Fingerprint]manifest.PackRef, len(b)/placementSize)
	for ; len(b) >= placementSize; b = b[placementSize:] {
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

// AddPlacements records that chunk fps[i] is in pack refs[i]: the
// uploader does it before it deletes the chunks' files, so that a restart
// between a pack upload and its manifest's upload forgets nothing. The
// record is rewritten whole (it is small: placements wait only for the
// next manifest), as SetPlacements writes it read-only.
func (d Dir) AddPlacements(fps []manifest.Fingerprint, refs []manifest.PackRef) error {
	b, err := d.readRecord(packedFile)
	if err != nil {
		return fmt.Errorf("spool: record placements in %s: %w", d.join(packedFile), err)
	}
	for i := range fps {
		b = appendPlacement(b, fps[i], refs[i])
	}
	if err := d.writeRecord(packedFile, b); err != nil {
		return fmt.Errorf("spool: record placements: %w", err)
	}
	return nil
}

// SetPlacements replaces the placements with placed; none removes the
// file.
func (d Dir) SetPlacements(placed map[manifest.Fingerprint]manifest.PackRef) error {
	if len(placed) == 0 {
		return d.removeRecord(packedFile)
	}
	var b []byte
	for fp, ref := range placed {
		b = appendPlacement(b, fp, ref)
	}
	return d.writeRecord(packedFile, b)
}

func (d Dir) removeRecord(name string) error {
	if err := os.Remove(d.join(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("spool: remove %s: %w", d.join(name), pathless(err))
	}
	return nil
}

// Base returns the manifest base (manifest.NewBase) the uploader last put
// in every target, as it recorded it; nil and no error when there is
// none.
func (d Dir) Base() ([]byte, error) { return d.readRecord(baseFile) }

// RecordBase records b, the encoding of a manifest base every target
// holds, as the one the next manifests are written against.
func (d Dir) RecordBase(b []byte) error { return d.writeRecord(baseFile, b) }

// HasBase reports whether a manifest base is recorded.
func (d Dir) HasBase() bool { return fsutil.Exists(d.join(baseFile)) }

// RemoveBase removes the record of the manifest base, when manifests are
// uploaded whole again.
func (d Dir) RemoveBase() error { return d.removeRecord(baseFile) }

// Targets returns the record of the targets the staged chunks were
// uploaded to (nil when there is none); SetTargets replaces it.
func (d Dir) Targets() ([]byte, error) { return d.readRecord(targetsFile) }

// SetTargets records the targets the chunks are uploaded to.
func (d Dir) SetTargets(b []byte) error { return d.writeRecord(targetsFile, b) }

// Status returns the uploader's last saved status of the database (nil
// when none); SetStatus replaces it.
func (d Dir) Status() ([]byte, error) { return d.readRecord(statusFile) }

// SetStatus saves the uploader's status of the database, for other
// processes (vfsctl status).
func (d Dir) SetStatus(b []byte) error { return d.writeRecord(statusFile, b) }

// A Beat is the heartbeat of the uploader that serves a database: it
// rewrites it every few seconds, even with nothing to upload, and never
// calls a store to do so. A lag with a live uploader is a store that does
// not take the uploads; a lag without one, a writer that exited (or
// crashed) before its uploads were done.
type Beat struct {
	At    time.Time     `json:"at"`       // when it was written, by the uploader's clock
	Every time.Duration `json:"every_ns"` // how often the uploader rewrites it
	PID   int           `json:"pid"`      // the uploader's process, in its PID namespace
}

// beatMisses is how many heartbeats may be missed before the uploader is
// taken for gone: a loaded machine delays some.
const beatMisses = 3

// Alive reports whether the uploader that wrote b is alive at now: it
// wrote b no more than a few of its periods ago.
func (b Beat) Alive(now time.Time) bool {
	return !b.At.IsZero() && b.Every > 0 && now.Sub(b.At) <= beatMisses*b.Every
}

// Beat returns the directory's last heartbeat, and false when there is
// none (or it does not decode: no uploader wrote it).
func (d Dir) Beat() (Beat, bool) {
	raw, err := d.readRecord(beatFile)
	var b Beat
	if err != nil || raw == nil || json.Unmarshal(raw, &b) != nil {
		return Beat{}, false
	}
	return b, true
}

// WriteBeat writes the heartbeat b; a directory that no longer exists
// (the database was deleted) is an error wrapping fs.ErrNotExist.
func (d Dir) WriteBeat(b Beat) error {
	raw, err := json.Marshal(b)
	if err != nil {
		return fmt.Errorf("spool: encode heartbeat: %w", err)
	}
	return d.writeRecord(beatFile, raw)
}

// The paths of the directory's files, for messages, for tools that report
// on a spool, and for tests that damage one.

// StatusFile is the path of the uploader's saved status.
func (d Dir) StatusFile() string { return d.join(statusFile) }

// StagedManifestFile is the path of the staged snapshot's manifest.
func (d Dir) StagedManifestFile() string { return d.join(stagingDir, manifestFile) }

// SourceFile is the path of the record of the source path.
func (d Dir) SourceFile() string { return d.join(sourceFile) }

// MarkerFile is the path of the txn marker.
func (d Dir) MarkerFile() string { return d.join(markerFile) }

// UploadedFile is the path of the record of the last upload.
func (d Dir) UploadedFile() string { return d.join(uploadedFile) }

// BeatFile is the path of the uploader's heartbeat.
func (d Dir) BeatFile() string { return d.join(beatFile) }

// UploadLockFile is the path of the lock LockUpload takes.
func (d Dir) UploadLockFile() string { return d.join(uploadLock) }

// PlacementsFile is the path of the record of pack placements.
func (d Dir) PlacementsFile() string { return d.join(packedFile) }

// Path is the path of chunk fp's name in the directory: a link to the
// segment that holds it, or an earlier version's chunk file.
func (c Chunks) Path(fp manifest.Fingerprint) string { return filepath.Join(c.dir, fp.String()) }

// Has reports whether the directory holds a name for chunk fp.
func (c Chunks) Has(fp manifest.Fingerprint) bool { return fsutil.Exists(c.Path(fp)) }

// Path is the handed-over snapshot's directory.
func (h Handover) Path() string { return h.dir }

// HasPlacements reports whether placements are recorded.
func (d Dir) HasPlacements() bool { return fsutil.Exists(d.join(packedFile)) }

// DropStaged forgets the staged snapshot, as a crash that lost it would:
// the uploader then uploads the newest handed-over snapshot, if any.
func (d Dir) DropStaged() error {
	if err := os.Remove(d.join(stagingDir, manifestFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("spool: remove %s: %w", d.join(stagingDir, manifestFile), pathless(err))
	}
	return removeBaseFiles(d.join(stagingDir), "")
}

// HandoverState names where PutHandover puts a snapshot.
type HandoverState int

const (
	// InReady: published, not taken by an uploader yet.
	InReady HandoverState = iota
	// InConsuming: taken by an uploader, not uploaded yet.
	InConsuming
)

// PutHandover hands over a snapshot built by the caller: m, and the chunk
// files given (the others being in the store already, or elsewhere in the
// spool), into ready/ (which must be free) or consuming/. It is what a
// snapshot's publication does, without touching the staged snapshot: for
// tools that move spools, and for tests of the uploader, which build the
// states that crashes and races leave.
func (d Dir) PutHandover(m *manifest.Manifest, chunks map[manifest.Fingerprint][]byte, state HandoverState) (Handover, error) {
	mb, err := m.MarshalBinary()
	if err != nil {
		return Handover{}, fmt.Errorf("spool: encode manifest: %w", err)
	}
	for _, p := range []string{d.join(tmpDir)} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			return Handover{}, fmt.Errorf("spool: create %s: %w", p, pathless(err))
		}
	}
	top := d.join(tmpDir, uniqueName())
	name := uniqueName()
	snap := filepath.Join(top, name)
	if err := os.MkdirAll(filepath.Join(snap, chunksDir), 0o700); err != nil {
		return Handover{}, fmt.Errorf("spool: create %s: %w", snap, pathless(err))
	}
	perm := fileMode(d.Perm())
	if err := os.WriteFile(filepath.Join(snap, manifestFile), mb, perm); err != nil {
		_ = os.RemoveAll(top)
		return Handover{}, fmt.Errorf("spool: write %s: %w", snap, pathless(err))
	}
	if _, err := writeSegments(d.join(tmpDir), filepath.Join(snap, chunksDir), chunks, perm, nil); err != nil {
		_ = os.RemoveAll(top)
		return Handover{}, err
	}
	dst := d.join(readyDir)
	if state == InConsuming {
		dst = d.join(consumingDir)
		if err := os.MkdirAll(dst, 0o700); err != nil {
			_ = os.RemoveAll(top)
			return Handover{}, fmt.Errorf("spool: create %s: %w", dst, pathless(err))
		}
		if err := os.Rename(snap, filepath.Join(dst, name)); err != nil {
			_ = os.RemoveAll(top)
			return Handover{}, fmt.Errorf("spool: hand over to %s: %w", dst, pathless(err))
		}
		_ = os.Remove(top)
		return Handover{Name: name, dir: filepath.Join(dst, name)}, nil
	}
	if err := syscall.Rename(top, dst); err != nil {
		_ = os.RemoveAll(top)
		return Handover{}, fmt.Errorf("spool: publish %s: %w", dst, err)
	}
	return Handover{Name: name, dir: filepath.Join(dst, name)}, nil
}

// LockUpload takes the advisory lock that keeps two processes from
// uploading one database at once. When wait is false it gives up at once,
// returning a nil unlock; otherwise it waits, until ctx is done.
func (d Dir) LockUpload(ctx context.Context, wait bool) (unlock func(), err error) {
	path := d.join(uploadLock)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, lockMode(d.path))
	if err != nil {
		return nil, fmt.Errorf("spool: open lock %s: %w", path, pathless(err))
	}
	backoff := time.Millisecond
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("spool: lock %s: %w", path, err)
		}
		if !wait {
			f.Close()
			return nil, nil
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			return nil, fmt.Errorf("spool: waiting for another process's upload of %s: %w", d.path, ctx.Err())
		case <-t.C:
		}
		backoff = min(backoff*2, 100*time.Millisecond)
	}
}

// WALMode reports whether the database file at source says it is in WAL
// mode. Its staged snapshot cannot vouch for it, whatever the txn marker
// says: a program that does not use boule commits to its log, or, once
// that program checkpoints, to the file, and records nothing in the spool.
// False when the file cannot be read.
func (d Dir) WALMode(source string) bool {
	hdr, n, _, err := readFileHeader(source)
	return err == nil && n == HeaderSize && walModeHeader(hdr[:])
}

// readFileHeader reads the database header of the file at source (n of
// its bytes: fewer for a shorter file), and stats it.
func readFileHeader(source string) (hdr [HeaderSize]byte, n int, fi fs.FileInfo, err error) {
	f, fi, err := fsutil.OpenFollow(source)
	if err != nil {
		return hdr, 0, nil, err
	}
	defer f.Close()
	n, _ = f.ReadAt(hdr[:], 0)
	return hdr, n, fi, nil
}

// FileChanged reports whether the database file at source changed after
// its staged snapshot while the txn marker recorded nothing: a clean
// marker, no transaction in flight, and a staged snapshot whose header
// and size are not the file's. That is a commit no writer could record in
// the spool (one that cannot write it: a read-only file system, a spool
// directory it may not create), or a write by a program that does not use
// boule; either way the staged snapshot is not the database, whatever the
// marker says.
//
// In WAL mode, while the staged snapshot is at the file alone (no boule
// connection holds the log), frames in the log, or a size that is not the
// snapshot's, are such commits: a program that does not use boule wrote
// after the last boule connection closed. A commit of such a program that
// was checkpointed without changing the size goes unseen (SQLite keeps no
// change counter in WAL mode); a flush re-stages any WAL database anyway
// (see WALMode). A transaction under way outside boule, or one a killed
// program left uncommitted in the log, reads as changed until a flush.
//
// It cannot tell, and reports false, when the marker is not clean or
// changes while it looks (a transaction is under way), while the staged
// snapshot's position is in the log (the log's captures are checked where
// they are read), or when it cannot read the file.
func (d Dir) FileChanged(source string) bool {
	before, err := ReadMarker(d.path)
	if err != nil || before.State != MarkerClean || before.Writer != 0 || before.WAL {
		return false
	}
	hdr, n, fi, err := readFileHeader(source)
	if err != nil {
		return false
	}
	wal := n == HeaderSize && walModeHeader(hdr[:])
	// The staged manifest's header: a head's base need not be read.
	b, err := fsutil.ReadFile(d.join(stagingDir, manifestFile))
	if err != nil {
		return false
	}
	m, err := headerOf(b)
	if err != nil {
		return false
	}
	// In WAL mode with the staged snapshot at the file alone (the last
	// boule connection closed, or the database was in rollback mode),
	// frames in the log are commits no boule process captured.
	logFrames := false
	if wal {
		if lf, err := os.Lstat(source + "-wal"); err == nil && lf.Mode().IsRegular() && lf.Size() > walHeaderSize {
			logFrames = true
		}
	}
	if after, err := ReadMarker(d.path); err != nil || after.State != before.State || after.Writer != 0 || after.WAL ||
		after.Committed != before.Committed || after.Persisted != before.Persisted {
		return false
	}
	switch {
	case wal:
		// SQLite does not keep the header's change counter in WAL mode:
		// the size and the log are what tell.
		return logFrames || m.Size != fi.Size()
	case n < HeaderSize:
		return m.Size != fi.Size()
	}
	return m.Size != fi.Size() || m.VersionID != versionID(hdr)
}
