package replicate

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boule-vfs/boule/manifest"
)

// mkfifo makes a named pipe at p, creating its directory.
func mkfifo(t testing.TB, p string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(p)
	if err := syscall.Mkfifo(p, 0o644); err != nil {
		t.Fatal(err)
	}
}

// promptly runs f and returns its error, failing t if it is still running
// after 10 seconds: then it opens the named pipe at fifo for writing, for
// a few seconds, which lets each open(2) blocked on it return, so that
// the test ends.
func promptly(t testing.TB, fifo string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for range 500 {
		if w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			w.Close()
		}
		select {
		case <-done:
			t.Fatalf("blocked on the named pipe %s until something opened it for writing", fifo)
		case <-tick.C:
		}
	}
	t.Fatalf("blocked on the named pipe %s", fifo)
	return nil
}

// wantNamedPipe fails t unless err says that p is a named pipe.
func wantNamedPipe(t testing.TB, err error, p string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "named pipe") {
		t.Fatalf("err=%v, want an error saying %s is a named pipe", err, p)
	}
}

// TestDirFIFO: a named pipe at a key of a directory store is an error
// that names it, at once, not an open(2) that waits for a writer forever.
func TestDirFIFO(t *testing.T) {
	ctx := context.Background()
	data := testData(7, 5000)
	fp := manifest.Sum(data)
	packID := manifest.Sum([]byte("pack"))
	key := mustKey(t, testHost, "/fifo.db")
	for _, tc := range []struct {
		name string
		path func(d *DirStore) string
		call func(d *DirStore) error
	}{
		{"manifest", func(d *DirStore) string { return d.manifestPath(key) },
			func(d *DirStore) error { _, err := d.GetManifest(ctx, key); return err }},
		{"latest manifest version", func(d *DirStore) string { return d.manifestPath(key) },
			func(d *DirStore) error { _, err := d.GetManifestVersion(ctx, key, ""); return err }},
		{"manifest version", func(d *DirStore) string { return filepath.Join(d.versionDir(key), formatVersionID(1)) },
			func(d *DirStore) error { _, err := d.GetManifestVersion(ctx, key, formatVersionID(1)); return err }},
		{"chunk", func(d *DirStore) string { return d.chunkPath(fp) },
			func(d *DirStore) error { _, err := d.GetChunk(ctx, fp); return err }},
		{"pack", func(d *DirStore) string { return d.objectPath(PackKey(packID)) },
			func(d *DirStore) error { _, err := d.GetPack(ctx, packID); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, _ := newDirHarness(t)
			p := tc.path(d)
			mkfifo(t, p)
			err := promptly(t, p, func() error { return tc.call(d) })
			wantNamedPipe(t, err, p)
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("err=%v, want ErrCorrupt", err)
			}
		})
	}
	t.Run("host directory", func(t *testing.T) {
		d, _ := newDirHarness(t)
		if err := d.PutManifest(ctx, key, testManifest(t, testHost, "/fifo.db", 1, 1)); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(d.Root(), dirManifests, "0000-other.host")
		mkfifo(t, p)
		var l []ManifestInfo
		err := promptly(t, p, func() (err error) { l, err = d.ListManifests(ctx, ""); return err })
		if err != nil || len(l) != 1 || l[0].Key != key {
			t.Fatalf("ListManifests()=%v, %v, want only %s", l, err, key)
		}
	})
}

// withUmask runs f under the umask mask. The umask is the process's: no
// test of this package runs in parallel.
func withUmask(mask int, f func()) {
	old := syscall.Umask(mask)
	defer syscall.Umask(old)
	f()
}

// modes returns the permission bits of everything under root, by path
// relative to root.
func modes(t testing.TB, root string) map[string]fs.FileMode {
	t.Helper()
	out := map[string]fs.FileMode{}
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = fi.Mode()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
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
				ctx = WithSourcePerm(ctx, tc.src)
			}
			data := testData(11, 3000)
			fp := manifest.Sum(data)
			pack, packID, _ := EncodePack([]PackedChunk{{FP: manifest.Sum(testData(12, 100)), Data: testData(12, 100)}, {FP: manifest.Sum(testData(13, 100)), Data: testData(13, 100)}})
			key := mustKey(t, testHost, "/perm.db")
			m := testManifest(t, testHost, "/perm.db", 1, 1)
			withUmask(tc.umask, func() {
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
			got := modes(t, d.Root())
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
	data := testData(21, 4000)
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
	withUmask(0o022, func() {
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
			if err := d.PutChunk(WithSourcePerm(context.Background(), step.src), fp, data); err != nil {
				t.Fatal(err)
			}
			check(step.name, step.file, step.dir)
		}
	})
	if b, err := d.GetChunk(context.Background(), fp); err != nil || !bytes.Equal(b, data) {
		t.Errorf("GetChunk()=%v, want the chunk", err)
	}
}

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
			c, err := NewLocalCache(dir, 4, 100)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if tc.src != 0 {
				ctx = WithSourcePerm(ctx, tc.src)
			}
			withUmask(tc.umask, func() {
				for i := range 8 {
					data := testData(uint64(30+i), 500)
					if err := c.PutChunk(ctx, manifest.Sum(data), data); err != nil {
						t.Fatal(err)
					}
				}
			})
			got := modes(t, dir)
			got["."] = must(os.Stat(dir)).Mode()
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
		data := testData(40, 700)
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
		if err := c.PutChunk(WithSourcePerm(context.Background(), 0o600), fp, data); err != nil {
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

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestUploaderSpoolFIFO: a named pipe where the spool keeps a file makes
// a flush fail at once, naming it, rather than wait forever; status
// readers do not wait either.
func TestUploaderSpoolFIFO(t *testing.T) {
	for _, rel := range []string{
		"staging/manifest",
		uploadedManifestFile,
		packedFile,
		"staging/chunks/",
	} {
		t.Run(rel, func(t *testing.T) {
			store := newFakeStore("s3")
			u := newTestUploader(t, uploadOpts(newTestNow(), target(store)))
			d := newTestSpool(t, t.TempDir(), "/data/fifo.db")
			data := testData(60, 3*manifest.ChunkSize)
			d.stage(d.snapshot(data, time.Now()))
			mustFlush(t, u, d.dir)
			s := d.snapshot(withChunk(data, 1, 61), time.Now().Add(time.Second))
			d.stage(s)
			p := filepath.Join(d.dir, rel)
			if strings.HasSuffix(rel, "/") {
				p = filepath.Join(d.dir, rel, s.m.Chunks[1].String()) // the new chunk
			}
			mkfifo(t, p)
			err := promptly(t, p, func() error { return u.Flush(context.Background(), d.dir) })
			wantNamedPipe(t, err, p)
		})
	}
	t.Run("status", func(t *testing.T) {
		d := newTestSpool(t, t.TempDir(), "/data/fifo.db")
		for _, name := range []string{statusFile, uploadedManifestFile} {
			mkfifo(t, filepath.Join(d.dir, name))
		}
		_ = promptly(t, filepath.Join(d.dir, statusFile), func() error {
			_, err := ReadStatus(d.dir, time.Now())
			return err
		})
	})
}

// TestUploaderSourcePerm: the uploader tells the stores the mode of the
// database it uploads (from its spool), so that what they write for it is
// no more readable than it.
func TestUploaderSourcePerm(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		spool                fs.FileMode // the staged manifest's mode: the database's read bits
		file, dir, cacheFile fs.FileMode
	}{
		{"0644 database", 0o444, 0o444, 0o755, 0o444},
		{"0600 database", 0o400, 0o400, 0o700, 0o400},
		{"0640 database", 0o440, 0o440, 0o750, 0o440},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			ds, err := NewDirStore(filepath.Join(root, "store"))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(ds.Root(), 0o755); err != nil {
				t.Fatal(err)
			}
			cache, err := NewLocalCache(filepath.Join(root, "cache"), 2, 100)
			if err != nil {
				t.Fatal(err)
			}
			opts := uploadOpts(newTestNow(), Target{Name: "cache", Store: cache, Cache: true}, Target{Name: "dir", Store: ds})
			opts.PackChunks = 4
			u := newTestUploader(t, opts)
			d := newTestSpool(t, filepath.Join(root, "spool"), "/data/perm.db")
			s := d.snapshot(testData(61, 6*manifest.ChunkSize), time.Now())
			d.stage(s)
			if err := os.Chmod(filepath.Join(d.dir, "staging", "manifest"), tc.spool); err != nil {
				t.Fatal(err)
			}
			withUmask(0o022, func() { mustFlush(t, u, d.dir) })
			for rel, mode := range modes(t, ds.Root()) {
				want := tc.file
				switch {
				case rel == dirTmp:
					want = fs.ModeDir | 0o700
				case mode.IsDir():
					want = fs.ModeDir | tc.dir
				}
				if mode != want {
					t.Errorf("store %s: mode %v, want %v", rel, mode, want)
				}
			}
			n := 0
			for rel, mode := range modes(t, cache.Dir()) {
				want := tc.cacheFile
				if mode.IsDir() {
					want = fs.ModeDir | 0o700
				} else {
					n++
				}
				if mode != want {
					t.Errorf("cache %s: mode %v, want %v", rel, mode, want)
				}
			}
			if n != len(s.fps()) {
				t.Errorf("cache holds %d chunks, want %d", n, len(s.fps()))
			}
		})
	}
}
