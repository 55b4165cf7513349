package spool

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
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
			_ = os.Remove(p)
			if err := syscall.Mkfifo(p, 0o644); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- txn(t, d.db, d.src, rewrite(d.rng, 2*cs+100, 50), 2) }()
			select {
			case err := <-done:
				// The marker cannot be cleared where it is not a file:
				// the snapshot may say so, naming it.
				if err != nil && (tc.name != "txn marker" || !strings.Contains(err.Error(), p)) {
					t.Fatalf("Snapshot()=%v, want nil", err)
				}
			case <-time.After(10 * time.Second):
				// Let the blocked open go, so that the test can end.
				for range 100 {
					if w, err := os.OpenFile(p, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
						w.Close()
					}
					select {
					case <-done:
					case <-time.After(10 * time.Millisecond):
						continue
					}
					break
				}
				t.Fatalf("a snapshot with a named pipe at the %s blocked", tc.name)
			}
			if tc.name != "txn marker" {
				assertExact(t, d.db, d.src)
			}
		})
	}
}
