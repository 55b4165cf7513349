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

// walOpener is nil in this build: WAL commits are read at the commit, not
// by persisters through connections of their own. SQLite's test suite,
// which this build runs, shuts SQLite down and counts its allocations
// between test files; a connection opened from another thread meanwhile
// crashes it or fails its leak checks.
var walOpener func(string) (*spool.WALReader, error)

// fullSource gives the whole database at the commit, for the validator.
type fullSource struct{ cSource }

func (s fullSource) FullImage() ([]byte, error) { return spool.ReadAll(s) }

// withFull makes a commit's capture carry the whole database, so that the
// snapshot staged from it, off the commit path, can be checked against the
// database as it was at that commit.
func withFull(_ *conn, src cSource) spool.Source { return fullSource{src} }

// validator checks each staged snapshot (spool.Options.Validate): the
// staged snapshot, reassembled from the spool and the store, must be want,
// the database as it was at the commit that generation gen stages. When
// the spool has staged a later generation meanwhile, there is nothing to
// compare with. A mismatch aborts the process.
func validator(db *spool.DB, gen uint64, want []byte) {
	err := checkStaged(db, gen, want)
	if err != nil {
		fmt.Fprintf(os.Stderr, "boule_validate: the staged snapshot of %s is not the database: %v\n", db.Path(), err)
		C.abort()
	}
}

func checkStaged(db *spool.DB, gen uint64, want []byte) error {
	dir := db.Dir()
	// The spool lock keeps out snapshots of other processes and the
	// uploader's invalidations while the spool is read.
	unlock, err := spool.OpenDir(dir).Lock()
	if err != nil {
		return err
	}
	defer unlock()
	if mk, err := spool.OpenDir(dir).Marker(); err != nil || mk.Persisted != gen {
		return nil // a later snapshot is staged: this one is gone
	}

	s, err := spool.OpenDir(dir).Staged()
	if err != nil {
		return fmt.Errorf("staged manifest: %w", err)
	}
	if s == nil {
		if invalidated(dir) {
			return nil // the uploader invalidated the spool; the next transaction rebuilds
		}
		return fmt.Errorf("staged manifest: %w", fs.ErrNotExist)
	}
	m := s.Manifest
	size := int64(len(want))
	if m.SourcePath != db.Path() || m.Size != size {
		return fmt.Errorf("manifest describes %s, %d bytes; the database had %d bytes", m.SourcePath, m.Size, size)
	}
	var stores []store.Store                             // built only when a chunk has left the spool
	var places map[manifest.Fingerprint]manifest.PackRef // read again on a miss
	for i, fp := range m.Chunks {
		n := manifest.ChunkLen(size, i)
		wantChunk := want[m.ChunkOffset(i) : m.ChunkOffset(i)+int64(n)]
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
				if stores, err = uploadStores(); err != nil {
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
		if !bytes.Equal(data, wantChunk) {
			j := 0
			for data[j] == wantChunk[j] {
				j++
			}
			return fmt.Errorf("chunk %d (%s) differs from the database at byte %d", i, fp, m.ChunkOffset(i)+int64(j))
		}
	}
	return nil
}

// invalidated reports whether the txn marker is set, as spool.Invalidate
// leaves it.
func invalidated(dir string) bool {
	mk, err := spool.OpenDir(dir).Marker()
	return err == nil && mk.State == spool.MarkerSet
}

// uploadStores opens the stores of the configuration in force.
func uploadStores() ([]store.Store, error) {
	rt := current.Load()
	if rt == nil {
		return nil, fmt.Errorf("vfs: not registered")
	}
	targets, err := Targets(context.Background(), rt.cfg)
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
