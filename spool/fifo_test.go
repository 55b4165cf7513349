package spool

import (
	"strings"
	"testing"

	"github.com/boule-vfs/boule/internal/testfs"
)

// TestSpoolFileFIFO: a named pipe where the spool keeps a file does not
// block a transaction's snapshot: the spool rebuilds from the database,
// as for any unreadable spool file, and the snapshot is exact.
func TestSpoolFileFIFO(t *testing.T) {
	for _, tc := range []struct {
		name string
		path func(db *DB) string
	}{
		{"staged manifest", (*DB).StagingManifestPath},
		{"txn marker", (*DB).MarkerPath},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := snapshotted(t, 5*cs)
			p := tc.path(d.db)
			testfs.Mkfifo(t, p)
			err := testfs.Promptly(t, p, func() error { return txn(t, d.db, d.src, rewrite(d.rng, 2*cs+100, 50), 2) })
			// The marker cannot be cleared where it is not a file: the
			// snapshot may say so, naming it.
			if err != nil && (tc.name != "txn marker" || !strings.Contains(err.Error(), p)) {
				t.Fatalf("Snapshot()=%v, want nil", err)
			}
			if tc.name != "txn marker" {
				assertExact(t, d.db, d.src)
			}
		})
	}
}
