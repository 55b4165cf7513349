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
		{"symbolic link", func(t *testing.T, _ *Store, p string) {
			q := p + ".real"
			if err := os.Rename(p, q); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(q, p); err != nil {
				t.Fatal(err)
			}
		}, false, fsutil.ErrNotRegular},
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
