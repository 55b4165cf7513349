package spool

import (
	"fmt"
	"io/fs"
	"os"

	"github.com/boule-vfs/boule/internal/fsutil"
	"github.com/boule-vfs/boule/manifest"
)

// The primitives a snapshot is made of, for writers that have the
// database's new state in hand instead of reading it through the VFS
// (and for the uploader's tests, which build spool states with them).
// Each takes the database's spool lock, as a snapshot does, so that they
// never interleave with a snapshot or an invalidation in any process.

// stageMode is the mode a snapshot gives the database's spool files: the
// database's own bits as last seen, or those of the file at the source
// path, or 0o600 when there is none.
func (d *DB) stageMode() fs.FileMode {
	if d.mode != 0 {
		return d.mode
	}
	if st, err := os.Stat(d.path); err == nil {
		return fsutil.CopyPerm(st)
	}
	return 0o600
}

// lockForStaging takes d.mu and, once the spool's directories are made,
// the spool lock, for a caller that stages files with the returned mode;
// unlock releases both.
func (d *DB) lockForStaging() (mode fs.FileMode, unlock func(), err error) {
	d.mu.Lock()
	mode = d.stageMode()
	if err := d.ensureDirs(mode); err != nil {
		d.mu.Unlock()
		return 0, nil, err
	}
	unlockSpool, err := d.lockSpool()
	if err != nil {
		d.mu.Unlock()
		return 0, nil, err
	}
	return mode, func() { unlockSpool(); d.mu.Unlock() }, nil
}

// StageChunks adds chunks (raw bytes by fingerprint) to the staged
// chunks. A chunk already staged stays as it is.
func (d *DB) StageChunks(chunks map[manifest.Fingerprint][]byte) error {
	mode, unlock, err := d.lockForStaging()
	if err != nil {
		return err
	}
	defer unlock()
	for fp, b := range chunks {
		if manifest.Sum(b) != fp {
			return fmt.Errorf("spool: stage chunk %s of %s: the bytes do not match the fingerprint", fp, d.path)
		}
	}
	linked, err := writeSegments(d.tmpDir(), d.StagingChunksDir(), chunks, fileMode(mode), d.s.fault)
	for _, fp := range linked {
		d.stats.ChunksStaged++
		d.stats.BytesStaged += int64(len(chunks[fp]))
	}
	return err
}

// StageManifest makes m the staged snapshot and records, in the txn
// marker, that it holds every commit, as a new generation: the caller
// staged every chunk of m the store may lack.
func (d *DB) StageManifest(m *manifest.Manifest) error {
	mode, unlock, err := d.lockForStaging()
	if err != nil {
		return err
	}
	defer unlock()
	d.cur = nil
	if _, _, err := d.writeManifest(m, nil, mode); err != nil {
		return err
	}
	c, err := d.ctlLocked()
	if err != nil {
		return err
	}
	d.settle(c, true)
	return nil
}

// Publish hands the staged snapshot over to the uploader, as a snapshot
// does: staged chunks the staged manifest does not reference are deleted,
// and, when ready/ is free, the manifest and the staged chunks move into
// it. It reports whether the snapshot was handed over; when it was not, it
// stays staged, to be squashed into a later one.
func (d *DB) Publish() (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	unlock, err := d.lockSpool()
	if err != nil {
		return false, err
	}
	defer unlock()
	d.cur = nil
	cur := d.loadCached()
	if cur == nil {
		return false, fmt.Errorf("spool: publish %s: nothing is staged", d.path)
	}
	d.gcStaging(cur.refs)
	if !OpenDir(d.dir).readyFree() {
		return false, nil
	}
	d.mode = d.stageMode()
	if d.maybePublishReady(cur) {
		d.pinned = 0 // staging is empty
	}
	return !OpenDir(d.dir).readyFree(), nil
}
