//go:build boule_validate

package vfs

// Built with -tags boule_validate (the conformance testfixture, see
// scripts/conformance.sh), every successful snapshot is checked: the
// staged snapshot, reassembled from the spool and the store, must be the
// database byte for byte. A mismatch aborts the process, so that SQLite's
// test suite, which knows nothing of replication, fails loudly.

/*
#include <stdlib.h>
*/
import "C"

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/upload"
)

// validateSnapshot runs after each successful snapshot, while the VFS still
// holds its SHARED lock, so the database cannot change under it.
func validateSnapshot(c *conn, src cSource) {
	err := checkStaged(c, src)
	var unreadable unreadableError
	if errors.As(err, &unreadable) {
		// The database could not be read back, for instance because a
		// test injects I/O errors: nothing to compare with.
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "boule_validate: the staged snapshot of %s is not the database: %v\n", c.db.Path(), err)
		C.abort()
	}
}

func checkStaged(c *conn, src cSource) error {
	dir := c.db.Dir()
	// The spool lock keeps out snapshots of other processes and the
	// uploader's invalidations while the spool is read.
	unlock, err := spool.OpenDir(dir).Lock()
	if err != nil {
		return err
	}
	defer unlock()

	b, err := os.ReadFile(c.db.StagingManifestPath())
	if errors.Is(err, fs.ErrNotExist) && invalidated(dir) {
		return nil // the uploader invalidated the spool; the next transaction rebuilds
	}
	if err != nil {
		return err
	}
	m, err := manifest.Decode(b)
	if err != nil {
		return fmt.Errorf("staged manifest: %w", err)
	}
	size, err := src.Size()
	if err != nil {
		return unreadableError{err}
	}
	if m.SourcePath != c.db.Path() || m.Size != size {
		return fmt.Errorf("manifest describes %s, %d bytes; the database has %d bytes", m.SourcePath, m.Size, size)
	}
	var stores []store.Store                             // built only when a chunk has left the spool
	var places map[manifest.Fingerprint]manifest.PackRef // read again on a miss
	want := make([]byte, manifest.ChunkSize)
	for i, fp := range m.Chunks {
		n := manifest.ChunkLen(size, i)
		if _, err := src.ReadAt(want[:n], m.ChunkOffset(i)); err != nil {
			return unreadableError{err}
		}
		data, ok := m.Inline[uint32(i)]
		if !ok {
			if data, err = spool.OpenDir(dir).FindChunk(fp); errors.Is(err, fs.ErrNotExist) {
				data, err = nil, nil
			} else if err != nil {
				return fmt.Errorf("chunk %d: %w", i, err)
			}
		}
		if data == nil {
			if stores == nil {
				if stores, err = uploadStores(c.rt.cfg); err != nil {
					return err
				}
			}
			// The placements are read after the chunk was found gone
			// from the spool: the uploader records a chunk's placement
			// before it deletes the chunk's file, so a fresh read knows
			// it. A cached read from an earlier chunk may not.
			ref, ok := places[fp]
			if !ok {
				if places, err = upload.Places(dir); err != nil {
					return err
				}
				ref, ok = places[fp]
			}
			if ok {
				pack, err := store.FetchPack(context.Background(), stores, ref.ID)
				if err == nil {
					data, err = store.DecodePackMember(pack, ref, fp)
				}
				if err != nil {
					return fmt.Errorf("chunk %d is neither in the spool nor in its pack: %w", i, err)
				}
			} else if data, err = store.FetchChunk(context.Background(), stores, m, i); err != nil {
				return fmt.Errorf("chunk %d is neither in the spool nor in the store: %w", i, err)
			}
		}
		if len(data) != n || manifest.Sum(data) != fp {
			return fmt.Errorf("chunk %d (%s): %d bytes that do not match its fingerprint", i, fp, len(data))
		}
		if !bytes.Equal(data, want[:n]) {
			j := 0
			for data[j] == want[j] {
				j++
			}
			return fmt.Errorf("chunk %d (%s) differs from the database at byte %d", i, fp, m.ChunkOffset(i)+int64(j))
		}
	}
	return nil
}

// unreadableError is a failure to read the database itself.
type unreadableError struct{ err error }

func (e unreadableError) Error() string { return "read database: " + e.err.Error() }
func (e unreadableError) Unwrap() error { return e.err }

// invalidated reports whether the txn marker is set, as spool.Invalidate
// leaves it.
func invalidated(dir string) bool {
	mk, err := spool.OpenDir(dir).Marker()
	return err == nil && mk.State == spool.MarkerSet
}

func uploadStores(cfg Config) ([]store.Store, error) {
	targets, err := Targets(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	var out []store.Store
	for _, t := range targets {
		if !t.Cache {
			out = append(out, t.Store)
		}
	}
	return out, nil
}
