package upload

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/boule-vfs/boule/internal/testfs"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store/cache"
	"github.com/boule-vfs/boule/store/dir"
	"github.com/boule-vfs/boule/store/storetest"
)

// TestUploaderSpoolFIFO: a named pipe where the spool keeps a file makes
// a flush fail at once, naming it, rather than wait forever; status
// readers do not wait either.
func TestUploaderSpoolFIFO(t *testing.T) {
	for _, tc := range []struct {
		name string
		path func(d *testSpool, s *snap) string
	}{
		{"staged manifest", func(d *testSpool, _ *snap) string { return d.sp.StagedManifestFile() }},
		{"uploaded record", func(d *testSpool, _ *snap) string { return d.sp.UploadedFile() }},
		{"placements", func(d *testSpool, _ *snap) string { return d.sp.PlacementsFile() }},
		{"staged chunk", func(d *testSpool, s *snap) string { return d.sp.StagedChunks().Path(s.m.Chunks[1]) }}, // the new chunk
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := storetest.NewFake("s3")
			u := newTestUploader(t, uploadOpts(storetest.NewClock(), target(fake)))
			d := newTestSpool(t, t.TempDir(), "/data/fifo.db")
			data := storetest.RandomBytes(60, 3*manifest.ChunkSize)
			d.stageNew(data, time.Now())
			mustFlush(t, u, d.dir)
			s := d.stageNew(withChunk(data, 1, 61), time.Now().Add(time.Second))
			p := tc.path(d, s)
			testfs.Mkfifo(t, p)
			err := testfs.Promptly(t, p, func() error { return u.Flush(context.Background(), d.dir) })
			testfs.WantNamedPipe(t, err, p)
		})
	}
	t.Run("status", func(t *testing.T) {
		d := newTestSpool(t, t.TempDir(), "/data/fifo.db")
		for _, p := range []string{d.sp.StatusFile(), d.sp.UploadedFile()} {
			testfs.Mkfifo(t, p)
		}
		_ = testfs.Promptly(t, d.sp.StatusFile(), func() error {
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
			ds, err := dir.New(filepath.Join(root, "store"))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(ds.Root(), 0o755); err != nil {
				t.Fatal(err)
			}
			cache, err := cache.New(filepath.Join(root, "cache"), 2, 100)
			if err != nil {
				t.Fatal(err)
			}
			opts := uploadOpts(storetest.NewClock(), Target{Name: "cache", Store: cache, Cache: true}, Target{Name: "dir", Store: ds})
			opts.PackChunks = 4
			u := newTestUploader(t, opts)
			d := newTestSpool(t, filepath.Join(root, "spool"), "/data/perm.db")
			s := d.stageNew(storetest.RandomBytes(61, 6*manifest.ChunkSize), time.Now())
			if err := os.Chmod(d.sp.StagedManifestFile(), tc.spool); err != nil {
				t.Fatal(err)
			}
			testfs.WithUmask(0o022, func() { mustFlush(t, u, d.dir) })
			for rel, mode := range testfs.Modes(t, ds.Root()) {
				want := tc.file
				switch {
				case rel == "tmp": // the dir store's scratch directory
					want = fs.ModeDir | 0o700
				case mode.IsDir():
					want = fs.ModeDir | tc.dir
				}
				if mode != want {
					t.Errorf("store %s: mode %v, want %v", rel, mode, want)
				}
			}
			n := 0
			for rel, mode := range testfs.Modes(t, cache.Dir()) {
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
