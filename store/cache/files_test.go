package cache

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boule-vfs/boule/internal/fsutil"
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

// TestLocalCacheOpenChunk: a cache file opens without blocking, only if
// it is a regular file, and may be mapped only if nobody but this user
// can change it.
func TestLocalCacheOpenChunk(t *testing.T) {
	data := storetest.RandomBytes(50, 2000)
	fp := manifest.Sum(data)
	for _, tc := range []struct {
		name     string
		setup    func(t *testing.T, c *Store, p string)
		mappable bool
		err      error
	}{
		{"as put", func(*testing.T, *Store, string) {}, true, nil},
		{"with a write bit", func(t *testing.T, _ *Store, p string) { chmodT(t, p, 0o600) }, false, nil},
		{"shard writable by others", func(t *testing.T, _ *Store, p string) { chmodT(t, filepath.Dir(p), 0o703) }, false, nil},
		{"cache writable by its group", func(t *testing.T, c *Store, _ string) { chmodT(t, c.Dir(), 0o770) }, false, nil},
		{"another user's file", func(t *testing.T, _ *Store, p string) {
			if os.Geteuid() != 0 {
				t.Skip("chown takes root")
			}
			if err := os.Chown(p, 54321, 54321); err != nil {
				t.Fatal(err)
			}
		}, false, nil},
		{"another user's shard", func(t *testing.T, _ *Store, p string) {
			if os.Geteuid() != 0 {
				t.Skip("chown takes root")
			}
			if err := os.Chown(filepath.Dir(p), 54321, 54321); err != nil {
				t.Fatal(err)
			}
		}, false, nil},
		{"named pipe", func(t *testing.T, _ *Store, p string) { testfs.Mkfifo(t, p) }, false, fsutil.ErrNotRegular},
		{"symbolic link", func(t *testing.T, _ *Store, p string) { linkInPlace(t, p) }, false, fsutil.ErrNotRegular},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCache(t, 2, 100)
			if err := c.PutChunk(context.Background(), fp, data); err != nil {
				t.Fatal(err)
			}
			p := c.Path(fp)
			tc.setup(t, c, p)
			var mappable bool
			err := testfs.Promptly(t, p, func() error {
				f, _, m, err := c.OpenChunk(fp)
				if err == nil {
					f.Close()
				}
				mappable = m
				return err
			})
			if !errors.Is(err, tc.err) || mappable != tc.mappable {
				t.Fatalf("OpenChunk()=%v, %v, want %v, %v", mappable, err, tc.mappable, tc.err)
			}
			if tc.err != nil {
				_, gerr := c.GetChunk(context.Background(), fp)
				if !errors.Is(gerr, store.ErrCorrupt) || !strings.Contains(gerr.Error(), p) {
					t.Errorf("GetChunk()=%v, want ErrCorrupt naming %s", gerr, p)
				}
				if _, lerr := os.Lstat(p); lerr != nil {
					t.Errorf("GetChunk() removed what is not a cache file: %v", lerr)
				}
			}
		})
	}
	t.Run("cache directory reached through a symbolic link", func(t *testing.T) {
		real := filepath.Join(t.TempDir(), "real")
		if err := os.Mkdir(real, 0o700); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(t.TempDir(), "link")
		if err := os.Symlink(real, link); err != nil {
			t.Fatal(err)
		}
		c, err := New(link, 2, 100)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.PutChunk(context.Background(), fp, data); err != nil {
			t.Fatal(err)
		}
		f, _, m, err := c.OpenChunk(fp)
		if err != nil || !m {
			t.Fatalf("OpenChunk()=%v, %v, want mappable", m, err)
		}
		f.Close()
	})
}

func chmodT(t *testing.T, p string, mode fs.FileMode) {
	t.Helper()
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// linkInPlace moves the file p to p.real and leaves a symbolic link to it
// at p.
func linkInPlace(t *testing.T, p string) {
	t.Helper()
	q := p + ".real"
	if err := os.Rename(p, q); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(q, p); err != nil {
		t.Fatal(err)
	}
}
