//go:build cgo

package main

import (
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
