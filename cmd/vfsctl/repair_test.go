//go:build cgo

package main

import (
	"database/sql"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSyncFullRepairsTheStore: a store that lost an object and holds
// another corrupt is repaired by sync --full, which uploads every chunk
// again. A plain sync uploads only what changed, and trusts what the
// spool says the store holds: it leaves the damage as it is. verify says
// which to run.
func TestSyncFullRepairsTheStore(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, object string)
		want   string // in verify's output
	}{
		{"object lost", func(t *testing.T, object string) {
			if err := os.Remove(object); err != nil {
				t.Fatal(err)
			}
		}, "missing  "},
		{"object corrupt", func(t *testing.T, object string) {
			b, err := os.ReadFile(object)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 0xff
			if err := os.Chmod(object, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(object, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "corrupt  "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.sync(t)
			objects := storeObjects(t, f)
			if len(objects) == 0 {
				t.Fatal("the store holds no chunk object to damage")
			}
			tc.damage(t, objects[0])

			code, out, errs := vfsctl(t, "--config", f.config(), "verify", f.db)
			if code != exitFail || !strings.Contains(out, tc.want) {
				t.Fatalf("verify of a damaged store=%d %q %q; want exit 1 and %q", code, out, errs, tc.want)
			}
			if !strings.Contains(errs, "vfsctl sync --full "+f.db) {
				t.Errorf("verify's error %q does not say how to repair (vfsctl sync --full %s)", errs, f.db)
			}

			f.sync(t)
			if code, out, _ := vfsctl(t, "--config", f.config(), "verify", f.db); code != exitFail {
				t.Fatalf("verify after a plain sync=%d %q; want the damage still there (sync uploads what changed)", code, out)
			}

			code, out, errs = vfsctl(t, "--config", f.config(), "sync", "--full", f.db)
			if code != exitOK {
				t.Fatalf("sync --full=%d %q %q", code, out, errs)
			}
			if code, out, errs := vfsctl(t, "--config", f.config(), "verify", f.db); code != exitOK {
				t.Fatalf("verify after sync --full=%d %q %q; want the store repaired", code, out, errs)
			}
			f.checkStore(t, hostname(t))
		})
	}
}

// storeObjects lists the chunk and pack objects of the fixture's dir
// store, in a fixed order.
func storeObjects(t *testing.T, f *fixture) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(filepath.Join(f.store, "chunks"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			out = append(out, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestWarnUnflushed: restore and verify of the newest version say so when
// this host's spool holds commits the store does not have yet; once
// flushed, they say nothing.
func TestWarnUnflushed(t *testing.T) {
	f := newFixture(t)
	if code, _, errs := vfsctl(t, "--config", f.config(), "flush", f.spool); code != exitOK {
		t.Fatalf("flush=%d %q", code, errs)
	}
	// A commit the store does not have: boule spools it, with no target.
	db, err := sql.Open("sqlite3", "file:"+f.db+"?vfs=boule")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("INSERT INTO t(v) VALUES (randomblob(5000))"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	for _, args := range [][]string{
		{"restore", "--out", filepath.Join(f.dir, "out.db"), f.db},
		{"verify", f.db},
	} {
		code, _, errs := vfsctl(t, append([]string{"--config", f.config()}, args...)...)
		want := "vfsctl " + args[0] + ": warning: this host's spool holds commits of " + f.db + " that the store does not have yet"
		if code != exitOK || !strings.Contains(errs, want) {
			t.Errorf("%s with commits spooled=%d %q; want success and %q", args[0], code, errs, want)
		}
	}
	if code, _, errs := vfsctl(t, "--config", f.config(), "flush", f.spool); code != exitOK {
		t.Fatalf("flush=%d %q", code, errs)
	}
	if code, _, errs := vfsctl(t, "--config", f.config(), "verify", f.db); code != exitOK || strings.Contains(errs, "warning") {
		t.Errorf("verify once flushed=%d %q; want no warning", code, errs)
	}
}
