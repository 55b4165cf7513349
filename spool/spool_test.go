package spool

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestOpenRejects(t *testing.T) {
	tests := []struct {
		name    string
		dir     string // relative to a temporary directory unless absolute is false
		rel     bool
		boot    string
		bootErr bool
	}{
		{name: "relative dir", dir: "spool", rel: true, boot: "b"},
		{name: "dot-relative dir", dir: "./spool", rel: true, boot: "b"},
		{name: "empty dir", dir: "", rel: true, boot: "b"},
		{name: "boot id with slash", dir: "spool", boot: "a/b", bootErr: true},
		{name: "boot id dot-dot", dir: "spool", boot: "..", bootErr: true},
		{name: "boot id with NUL", dir: "spool", boot: "a\x00b", bootErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := tt.dir
			if !tt.rel {
				dir = filepath.Join(t.TempDir(), tt.dir)
			}
			sp, err := Open(Options{Dir: dir, BootID: tt.boot, Hostname: "h"})
			if err == nil || sp != nil {
				t.Fatalf("Open(Dir %q, BootID %q)=%v, %v; want nil and an error", dir, tt.boot, sp, err)
			}
			if tt.bootErr && !errors.Is(err, ErrBootID) {
				t.Errorf("Open()=%v, want ErrBootID", err)
			}
			if !tt.rel && exists(dir) {
				t.Errorf("rejected Open created %s", dir)
			}
		})
	}
}

func TestOpenCreatesDirs(t *testing.T) {
	opts := testOptions(t)
	opts.Perm = 0o750
	sp := openSpool(t, opts)
	if sp.Root() != opts.Dir {
		t.Errorf("Root()=%q, want %q", sp.Root(), opts.Dir)
	}
	if want := filepath.Join(opts.Dir, "boule-v2.test-boot"); sp.BootDir() != want {
		t.Errorf("BootDir()=%q, want %q", sp.BootDir(), want)
	}
	if st, err := os.Stat(sp.BootDir()); err != nil || !st.IsDir() {
		t.Errorf("boot directory: %v", err)
	}
	if _, err := sp.DB("relative.db"); err == nil {
		t.Errorf("DB(relative path)=nil error, want an error")
	}
	a, err := sp.DB("/x/a.db")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := sp.DB("/x/a.db"); a != b {
		t.Errorf("DB() returned two *DB for one path")
	}
	if got := sp.DBs(); len(got) != 1 || got[0] != a {
		t.Errorf("DBs()=%v, want [%p]", got, a)
	}
}

func TestBootID(t *testing.T) {
	opts := testOptions(t)
	opts.BootID = "old"
	old := openSpool(t, opts)
	src := newDBFile(t, "a.db", makeDB(newRand(t), 3*cs, 4096), 0o644)
	db, err := old.DB(src.path)
	if err != nil {
		t.Fatal(err)
	}
	mustTxn(t, db, src, unchanged)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := old.WaitCleaned(ctx); err != nil {
		t.Fatalf("WaitCleaned()=%v, want nil", err)
	}
	oldDir := old.BootDir()
	if !exists(db.StagingManifestPath()) {
		t.Fatalf("no staged manifest under the old boot")
	}
	// A deletion interrupted by a crash, and a file that is not ours.
	leftover := filepath.Join(opts.Dir, ".del.boule-v2.older", "x", "y")
	if err := os.MkdirAll(leftover, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(leftover, "f"), []byte("x"), 0o400); err != nil {
		t.Fatal(err)
	}
	keep := filepath.Join(opts.Dir, "not-boule")
	if err := os.WriteFile(keep, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	opts.BootID = "new"
	sp := openSpool(t, opts)
	if err := sp.WaitCleaned(ctx); err != nil {
		t.Fatalf("WaitCleaned()=%v, want nil", err)
	}
	if got := names(t, opts.Dir); len(got) != 2 || got[0] != "boule-v2.new" || got[1] != "not-boule" {
		t.Errorf("spool root holds %v after cleaning, want [boule-v2.new not-boule]", got)
	}
	if exists(oldDir) {
		t.Errorf("old boot state %s not deleted", oldDir)
	}

	db2, err := sp.DB(src.path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(db2.Dir(), sp.BootDir()+"/") {
		t.Errorf("Dir()=%q, want it under %q", db2.Dir(), sp.BootDir())
	}
	mustTxn(t, db2, src, rewrite(newRand(t), cs, 10), 1)
	m := assertExact(t, db2, src)
	if st, want := db2.Stats(), blobCount(m, 0, 1, 2); st.Incremental != 0 || st.ChunksStaged != want {
		t.Errorf("Stats() Incremental=%d ChunksStaged=%d, want a rebuild staging %d chunks", st.Incremental, st.ChunksStaged, want)
	}
	if exists(oldDir) {
		t.Errorf("old boot state %s recreated", oldDir)
	}
}

func TestPermissions(t *testing.T) {
	tests := []struct {
		dbMode, file, dir fs.FileMode
	}{
		{dbMode: 0o640, file: 0o440, dir: 0o750},
		{dbMode: 0o600, file: 0o400, dir: 0o700},
		{dbMode: 0o660, file: 0o440, dir: 0o770},
		{dbMode: 0o644, file: 0o444, dir: 0o755},
	}
	for _, umask := range []int{0, 0o077} {
		for _, tt := range tests {
			t.Run(tt.dbMode.String()+"/umask "+fs.FileMode(umask).String(), func(t *testing.T) {
				old := syscall.Umask(umask)
				defer syscall.Umask(old)
				d := newTestDB(t, 3*cs)
				if err := os.Chmod(d.src.path, tt.dbMode); err != nil {
					t.Fatal(err)
				}
				mustTxn(t, d.db, d.src, unchanged)
				mustTxn(t, d.db, d.src, rewrite(d.rng, cs, 10), 1) // stages into staging/
				files := []string{d.db.StagingManifestPath(), filepath.Join(d.db.Dir(), "source")}
				for _, state := range []string{d.db.StagingChunksDir()} {
					for _, n := range names(t, state) {
						files = append(files, filepath.Join(state, n))
					}
				}
				for _, snap := range names(t, d.db.readyDir()) {
					dir := filepath.Join(d.db.readyDir(), snap)
					files = append(files, filepath.Join(dir, "manifest"))
					for _, n := range names(t, filepath.Join(dir, "chunks")) {
						files = append(files, filepath.Join(dir, "chunks", n))
					}
				}
				if len(files) < 5 {
					t.Fatalf("only %d spool files, want at least 5", len(files))
				}
				for _, p := range files {
					st, err := os.Stat(p)
					if err != nil {
						t.Fatal(err)
					}
					if got := st.Mode().Perm(); got != tt.file {
						t.Errorf("mode of %s = %v, want %v", strings.TrimPrefix(p, d.db.Dir()), got, tt.file)
					}
				}
				for _, p := range []string{d.db.Dir(), filepath.Join(d.db.Dir(), "staging"), d.db.StagingChunksDir()} {
					st, err := os.Stat(p)
					if err != nil {
						t.Fatal(err)
					}
					if got := st.Mode().Perm(); got != tt.dir {
						t.Errorf("mode of directory %s = %v, want %v", p, got, tt.dir)
					}
				}
			})
		}
	}
}

// TestList: List finds the current boot's databases; a spool root with
// nothing for this boot (after a reboot, or never used) is an empty
// spool; any other directory is not a spool.
func TestList(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, root string) // makes root, or not
		sources []string                        // want these databases
		notRoot bool                            // want ErrNotSpool
		err     bool                            // want another error
	}{
		{name: "empty", setup: func(t *testing.T, root string) { mkdirs(t, root) }},
		{name: "earlier boot only", setup: func(t *testing.T, root string) {
			mkdirs(t, filepath.Join(root, "boule-v2.earlier-boot", MangleName("/x/a.db")))
		}},
		{name: "current boot", setup: func(t *testing.T, root string) {
			boot, err := BootDirFor(root)
			if err != nil {
				t.Fatal(err)
			}
			mkdirs(t, filepath.Join(boot, MangleName("/x/a.db")), filepath.Join(root, "boule-v2.earlier-boot"))
			if err := os.WriteFile(filepath.Join(boot, "stray-file"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, sources: []string{"/x/a.db"}},
		{name: "current boot, empty", setup: func(t *testing.T, root string) {
			boot, err := BootDirFor(root)
			if err != nil {
				t.Fatal(err)
			}
			mkdirs(t, boot)
		}},
		{name: "other files", setup: func(t *testing.T, root string) {
			mkdirs(t, filepath.Join(root, "some-dir"))
			if err := os.WriteFile(filepath.Join(root, "boule-v1.not-a-dir"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, notRoot: true},
		{name: "a file", setup: func(t *testing.T, root string) {
			if err := os.WriteFile(root, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, notRoot: true},
		{name: "missing", setup: func(t *testing.T, root string) {}, err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "spool")
			tt.setup(t, root)
			dbs, err := List(root)
			switch {
			case tt.notRoot:
				if !errors.Is(err, ErrNotSpool) || !strings.Contains(err.Error(), "not a spool directory: "+root) {
					t.Fatalf("List()=%v, %v; want ErrNotSpool naming %s", dbs, err, root)
				}
				return
			case tt.err:
				if err == nil || errors.Is(err, ErrNotSpool) || !strings.Contains(err.Error(), root) {
					t.Fatalf("List()=%v, %v; want an error naming %s", dbs, err, root)
				}
				return
			case err != nil:
				t.Fatalf("List()=%v, want nil", err)
			}
			var got []string
			for _, d := range dbs {
				got = append(got, d.Source)
			}
			if !slices.Equal(got, tt.sources) {
				t.Errorf("List() sources=%q, want %q", got, tt.sources)
			}
		})
	}
}

func mkdirs(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
}

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

// TestWhoseParent: a refusal to create a spool directory names the owner
// and mode of the directory it goes in, when that is another user's (in
// a shared root, someone else made this boot's directory first).
func TestWhoseParent(t *testing.T) {
	parent := filepath.Join(t.TempDir(), "boot")
	if err := os.Mkdir(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(parent, 4242, -1); err != nil {
		t.Skipf("chown: %v (needs root)", err)
	}
	refused := &fs.PathError{Op: "mkdir", Path: parent + "/db", Err: syscall.EACCES}
	if got := whoseParent(parent+"/db", refused); !strings.Contains(got, "belongs to user 4242") || !strings.Contains(got, "-rwxr-xr-x") {
		t.Errorf("whoseParent()=%q, want the owner and mode of %s", got, parent)
	}
	if got := whoseParent(parent+"/db", syscall.ENOSPC); got != "" {
		t.Errorf("whoseParent() of ENOSPC=%q, want nothing", got)
	}
}
