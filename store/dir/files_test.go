package dir

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/boule-vfs/boule/internal/testfs"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/storetest"
)

// TestDirFIFO: a named pipe at a key of a directory store is an error
// that names it, at once, not an open(2) that waits for a writer forever.
func TestDirFIFO(t *testing.T) {
	ctx := context.Background()
	data := storetest.RandomBytes(7, 5000)
	fp := manifest.Sum(data)
	packID := manifest.Sum([]byte("pack"))
	key := storetest.MustKey(t, "dir-test-host", "/fifo.db")
	for _, tc := range []struct {
		name string
		path func(d *Store) string
		call func(d *Store) error
	}{
		{"manifest", func(d *Store) string { return d.manifestPath(key) },
			func(d *Store) error { _, err := d.GetManifest(ctx, key); return err }},
		{"latest manifest version", func(d *Store) string { return d.manifestPath(key) },
			func(d *Store) error { _, err := d.GetManifestVersion(ctx, key, ""); return err }},
		{"manifest version", func(d *Store) string { return filepath.Join(d.versionDir(key), formatVersionID(1)) },
			func(d *Store) error { _, err := d.GetManifestVersion(ctx, key, formatVersionID(1)); return err }},
		{"chunk", func(d *Store) string { return d.chunkPath(fp) },
			func(d *Store) error { _, err := d.GetChunk(ctx, fp); return err }},
		{"pack", func(d *Store) string { return d.objectPath(store.PackKey(packID)) },
			func(d *Store) error { _, err := d.GetPack(ctx, packID); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, _ := newDirHarness(t)
			p := tc.path(d)
			testfs.Mkfifo(t, p)
			err := testfs.Promptly(t, p, func() error { return tc.call(d) })
			testfs.WantNamedPipe(t, err, p)
			if !errors.Is(err, store.ErrCorrupt) {
				t.Errorf("err=%v, want ErrCorrupt", err)
			}
		})
	}
	t.Run("host directory", func(t *testing.T) {
		d, _ := newDirHarness(t)
		if err := d.PutManifest(ctx, key, storetest.Manifest(t, "dir-test-host", "/fifo.db", 1, 1)); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(d.Root(), dirManifests, "0000-other.host")
		testfs.Mkfifo(t, p)
		var l []store.ManifestInfo
		err := testfs.Promptly(t, p, func() (err error) { l, err = d.ListManifests(ctx, ""); return err })
		if err != nil || len(l) != 1 || l[0].Key != key {
			t.Fatalf("ListManifests()=%v, %v, want only %s", l, err, key)
		}
	})
}

// TestDirPermissions: what a directory store writes for a database is at
// most as readable as the database, within the umask, and its owner
// still reads it all.
func TestDirPermissions(t *testing.T) {
	for _, tc := range []struct {
		name           string
		src            fs.FileMode // 0: no WithSourcePerm
		umask          int
		file, dir, tmp fs.FileMode
	}{
		{"0644 source", 0o644, 0o022, 0o444, 0o755, 0o700},
		{"0600 source", 0o600, 0o022, 0o400, 0o700, 0o700},
		{"0640 source", 0o640, 0o022, 0o440, 0o750, 0o700},
		{"0644 source under umask 077", 0o644, 0o077, 0o400, 0o700, 0o700},
		{"0666 source under umask 027", 0o666, 0o027, 0o440, 0o750, 0o700},
		{"source not given", 0, 0o022, 0o400, 0o700, 0o700},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, _ := newDirHarness(t)
			ctx := context.Background()
			if tc.src != 0 {
				ctx = store.WithSourcePerm(ctx, tc.src)
			}
			data := storetest.RandomBytes(11, 3000)
			fp := manifest.Sum(data)
			pack, packID, _ := store.EncodePack([]store.PackedChunk{{FP: manifest.Sum(storetest.RandomBytes(12, 100)), Data: storetest.RandomBytes(12, 100)}, {FP: manifest.Sum(storetest.RandomBytes(13, 100)), Data: storetest.RandomBytes(13, 100)}})
			key := storetest.MustKey(t, "dir-test-host", "/perm.db")
			m := storetest.Manifest(t, "dir-test-host", "/perm.db", 1, 1)
			testfs.WithUmask(tc.umask, func() {
				if err := d.PutChunk(ctx, fp, data); err != nil {
					t.Fatal(err)
				}
				if err := d.PutPack(ctx, packID, pack); err != nil {
					t.Fatal(err)
				}
				if err := d.PutManifest(ctx, key, m); err != nil {
					t.Fatal(err)
				}
			})
			got := testfs.Modes(t, d.Root())
			if len(got) < 12 {
				t.Fatalf("store holds %v, want chunks, packs, manifests and versions", got)
			}
			for rel, mode := range got {
				want := tc.file
				switch {
				case rel == dirTmp:
					want = tc.tmp | fs.ModeDir
				case mode.IsDir():
					want = tc.dir | fs.ModeDir
				}
				if mode != want {
					t.Errorf("%s: mode %v, want %v", rel, mode, want)
				}
			}
			// The owner reads it all back.
			if b, err := d.GetChunk(ctx, fp); err != nil || !bytes.Equal(b, data) {
				t.Errorf("GetChunk()=%v, want the chunk", err)
			}
			if b, err := d.GetPack(ctx, packID); err != nil || !bytes.Equal(b, pack) {
				t.Errorf("GetPack()=%v, want the pack", err)
			}
			if b, err := d.GetManifest(ctx, key); err != nil || !bytes.Equal(b, m) {
				t.Errorf("GetManifest()=%v, want the manifest", err)
			}
		})
	}
}

// TestDirSharedObjectsNarrowest: a chunk, and the directories, that
// databases of different modes share keep the narrowest access any of
// them asked for, whatever the order of their puts.
func TestDirSharedObjectsNarrowest(t *testing.T) {
	d, _ := newDirHarness(t)
	data := storetest.RandomBytes(21, 4000)
	fp := manifest.Sum(data)
	h := fp.String()
	check := func(step string, file, dir fs.FileMode) {
		t.Helper()
		for rel, want := range map[string]fs.FileMode{
			filepath.Join(dirChunks, h[:2], h): file,
			filepath.Join(dirChunks, h[:2]):    dir | fs.ModeDir,
			dirChunks:                          dir | fs.ModeDir,
		} {
			fi, err := os.Lstat(filepath.Join(d.Root(), rel))
			if err != nil || fi.Mode() != want {
				t.Errorf("after %s: %s: %v %v, want %v", step, rel, fi.Mode(), err, want)
			}
		}
	}
	testfs.WithUmask(0o022, func() {
		for _, step := range []struct {
			name      string
			src       fs.FileMode
			file, dir fs.FileMode
		}{
			{"a 0644 database's put", 0o644, 0o444, 0o755},
			{"a 0640 database's put", 0o640, 0o440, 0o750},
			{"a 0604 database's put", 0o604, 0o400, 0o700},
			{"a 0644 database's put again", 0o644, 0o400, 0o700},
		} {
			if err := d.PutChunk(store.WithSourcePerm(context.Background(), step.src), fp, data); err != nil {
				t.Fatal(err)
			}
			check(step.name, step.file, step.dir)
		}
	})
	if b, err := d.GetChunk(context.Background(), fp); err != nil || !bytes.Equal(b, data) {
		t.Errorf("GetChunk()=%v, want the chunk", err)
	}
}
