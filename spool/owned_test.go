package spool

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSpoolRefusesPlantedLink: in a shared spool root, another user can
// put a symbolic link where a database's spool directory, or one of its
// subdirectories, goes. The writer refuses to spool through it, naming
// it, and changes nothing where it points: it once made a user's private
// 0700 directory 0755 (for a 0644 database) and wrote the staged
// manifest and chunks into it.
func TestSpoolRefusesPlantedLink(t *testing.T) {
	for _, tc := range []struct {
		name string
		at   func(d *DB) string
	}{
		{"database directory", (*DB).Dir},
		{"its tmp", (*DB).tmpDir},
		{"its staging", func(d *DB) string { return filepath.Join(d.Dir(), stagingDir) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newTestDB(t, 3*cs)
			private := t.TempDir()
			if err := os.Chmod(private, 0o700); err != nil {
				t.Fatal(err)
			}
			p := tc.at(d.db)
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(private, p); err != nil {
				t.Fatal(err)
			}
			err := txn(t, d.db, d.src, unchanged)
			if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "symbolic link") {
				t.Errorf("Snapshot()=%v, want an error naming %s as a link", err, p)
			}
			fi, err := os.Stat(private)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o700 {
				t.Errorf("the link's target is now %v, want 0700 as it was", fi.Mode().Perm())
			}
			if entries, _ := os.ReadDir(private); len(entries) != 0 {
				t.Errorf("the spool wrote %d entries through the link (%s...)", len(entries), entries[0].Name())
			}
		})
	}
}

// TestSpoolLockModes: a database's lock files open only for those who
// may write it: a reader of a 0644 database who could open them could
// hold the lock, and keep every writer waiting. Its consuming/ follows
// the database's mode, as its other directories do.
func TestSpoolLockModes(t *testing.T) {
	d := snapshotted(t, 3*cs)
	sp := OpenDir(d.db.Dir())
	unlock, err := sp.LockUpload(t.Context(), false)
	if err != nil || unlock == nil {
		t.Fatalf("LockUpload()=%v", err)
	}
	unlock()
	if err := sp.TakeReady(); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]fs.FileMode{LockFile: 0o600, uploadLock: 0o600, consumingDir: fs.ModeDir | 0o755} {
		fi, err := os.Lstat(filepath.Join(d.db.Dir(), name))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode() &^ fs.ModeSticky; got != want {
			t.Errorf("%s: mode %v, want %v (database 0644)", name, got, want)
		}
	}
}

// TestSpoolGroupOfCopies: the spool's copies of a group-readable database
// get this process's group, not the database's: they keep the group's
// read bits only when the two are the same group. A 0640 database of
// another group had its chunks copied 0440 with the writer's group,
// readable by users the database's group does not include.
func TestSpoolGroupOfCopies(t *testing.T) {
	for _, tc := range []struct {
		name      string
		otherGID  bool
		wantGroup fs.FileMode
	}{
		{"the database's group is this process's", false, 0o040},
		{"another group", true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newTestDB(t, 3*cs)
			gid := os.Getegid()
			if tc.otherGID {
				gid += 4242
			}
			if err := os.Chown(d.src.path, -1, gid); err != nil {
				t.Skipf("chown to group %d: %v (needs root)", gid, err)
			}
			if err := os.Chmod(d.src.path, 0o640); err != nil {
				t.Fatal(err)
			}
			mustTxn(t, d.db, d.src, unchanged)
			n := 0
			err := filepath.WalkDir(d.db.Dir(), func(p string, e fs.DirEntry, err error) error {
				if err != nil || !e.Type().IsRegular() || strings.HasSuffix(p, ".lock") {
					return err
				}
				fi, err := e.Info()
				if err != nil {
					return err
				}
				n++
				if got := fi.Mode().Perm() & 0o070; got != tc.wantGroup {
					t.Errorf("%s: group bits %v, want %v", p, got, tc.wantGroup)
				}
				return nil
			})
			if err != nil || n == 0 {
				t.Fatalf("walk the spool: %d files, %v", n, err)
			}
		})
	}
}
