package cache

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/boule-vfs/boule/internal/testfs"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/storetest"
)

// TestLocalCachePermissions: a cache's directories are 0700 and its files
// read-only, at most as readable as the database, within the umask; a
// shard or a file an older version left wider is narrowed by the next put.
func TestLocalCachePermissions(t *testing.T) {
	for _, tc := range []struct {
		name  string
		src   fs.FileMode
		umask int
		file  fs.FileMode
	}{
		{"0644 source", 0o644, 0o022, 0o444},
		{"0600 source", 0o600, 0o022, 0o400},
		{"0644 source under umask 077", 0o644, 0o077, 0o400},
		{"source not given", 0, 0o000, 0o400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "cache")
			c, err := New(dir, 4, 100)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if tc.src != 0 {
				ctx = store.WithSourcePerm(ctx, tc.src)
			}
			testfs.WithUmask(tc.umask, func() {
				for i := range 8 {
					data := storetest.RandomBytes(uint64(30+i), 500)
					if err := c.PutChunk(ctx, manifest.Sum(data), data); err != nil {
						t.Fatal(err)
					}
				}
			})
			got := testfs.Modes(t, dir)
			got["."] = testfs.Must(os.Stat(dir)).Mode()
			for rel, mode := range got {
				want := tc.file
				if mode.IsDir() {
					want = fs.ModeDir | 0o700
				}
				if mode != want {
					t.Errorf("%s: mode %v, want %v", rel, mode, want)
				}
			}
		})
	}
	t.Run("left wider by an older version", func(t *testing.T) {
		c := newTestCache(t, 1, 100)
		data := storetest.RandomBytes(40, 700)
		fp := manifest.Sum(data)
		p := c.Path(fp)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o444); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := c.PutChunk(store.WithSourcePerm(context.Background(), 0o600), fp, data); err != nil {
			t.Fatal(err)
		}
		for _, q := range []struct {
			p    string
			want fs.FileMode
		}{{p, 0o400}, {filepath.Dir(p), fs.ModeDir | 0o700}} {
			if fi, err := os.Stat(q.p); err != nil || fi.Mode() != q.want {
				t.Errorf("%s: %v %v, want %v", q.p, fi.Mode(), err, q.want)
			}
		}
	})
}
