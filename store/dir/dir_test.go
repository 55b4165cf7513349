package dir

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/storetest"
)

func newDirHarness(t *testing.T) (*Store, storetest.Harness) {
	t.Helper()
	d, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return d, storetest.FileHarness(d, d.chunkPath)
}

func TestDirStoreConformance(t *testing.T) {
	_, h := newDirHarness(t)
	storetest.Run(t, h)
}

// TestLimitedDirConformance runs the suite through the retry wrapper,
// which must be transparent.
func TestLimitedDirConformance(t *testing.T) {
	_, h := newDirHarness(t)
	storetest.RunLimited(t, h)
}

func TestDirLayout(t *testing.T) {
	d, _ := newDirHarness(t)
	ctx := store.WithSourcePerm(context.Background(), 0o644)
	data := storetest.Compressible(manifest.ChunkSize)
	fp := manifest.Sum(data)
	if err := d.PutChunk(ctx, fp, data); err != nil {
		t.Fatal(err)
	}
	h := fp.String()
	blob, err := os.ReadFile(filepath.Join(d.Root(), "chunks", h[:2], h))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(blob), "\x28\xb5\x2f\xfd") {
		t.Error("compressible chunk not stored as zstd")
	}
	key := storetest.MustKey(t, "example.com", "/var/db/app.db")
	m := storetest.Manifest(t, "example.com", "/var/db/app.db", 1, 1)
	if err := d.PutManifest(ctx, key, m); err != nil {
		t.Fatal(err)
	}
	latest := filepath.Join(d.Root(), "manifests", "a0e4-example.com", "98f2-%2Fvar%2Fdb%2Fapp.db")
	if _, err := os.Stat(latest); err != nil {
		t.Fatal(err)
	}
	vdir := filepath.Join(d.Root(), "versions", "a0e4-example.com", "98f2-%2Fvar%2Fdb%2Fapp.db")
	names, err := readDirNames(vdir)
	if err != nil || len(names) != 1 || len(names[0]) != 20 {
		t.Fatalf("versions dir holds %q, %v", names, err)
	}
	a, _ := os.Stat(latest)
	b, _ := os.Stat(filepath.Join(vdir, names[0]))
	if !os.SameFile(a, b) {
		t.Error("the version is not a hard link of the latest manifest")
	}
	for dir, perm := range map[string]os.FileMode{"chunks": 0o755, "manifests": 0o755, "versions": 0o755, "tmp": 0o700} {
		fi, err := os.Stat(filepath.Join(d.Root(), dir))
		if err != nil || fi.Mode().Perm() != perm&^currentUmask() {
			t.Errorf("%s: %v %v, want %v", dir, fi.Mode(), err, perm&^currentUmask())
		}
	}
	if tmp, _ := readDirNames(filepath.Join(d.Root(), "tmp")); len(tmp) != 0 {
		t.Errorf("temporary files left behind: %q", tmp)
	}
}

func currentUmask() os.FileMode {
	dir, err := os.MkdirTemp("", "umask")
	if err != nil {
		return 0o022
	}
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, "d")
	if err := os.Mkdir(p, 0o777); err != nil {
		return 0o022
	}
	fi, _ := os.Stat(p)
	return 0o777 &^ fi.Mode().Perm()
}

func TestDirVersionPruning(t *testing.T) {
	d, _ := newDirHarness(t)
	ctx := context.Background()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	d.now = func() time.Time { return now }
	key := storetest.MustKey(t, "h", "/p.db")
	m := storetest.Manifest(t, "h", "/p.db", 1, 1)

	// 15 versions a day apart: after the last put, those older than 7
	// days go, but the newest 10 stay whatever their age.
	for range 15 {
		if err := d.PutManifest(ctx, key, m); err != nil {
			t.Fatal(err)
		}
		now = now.Add(24 * time.Hour)
	}
	vs, err := d.ManifestVersions(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != minVersions {
		t.Fatalf("%d versions kept, want %d", len(vs), minVersions)
	}
	// Many recent versions: at most maxVersions stay after a put.
	vdir := d.versionDir(key)
	for i := range maxVersions + 5 {
		id := formatVersionID(now.Add(-time.Hour).UnixNano() + int64(i))
		if err := os.WriteFile(filepath.Join(vdir, id), m, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.PutManifest(ctx, key, m); err != nil {
		t.Fatal(err)
	}
	vs, err = d.ManifestVersions(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != maxVersions {
		t.Fatalf("%d versions kept, want %d", len(vs), maxVersions)
	}
	if !vs[0].IsLatest {
		t.Error("newest version not latest")
	}
	for i := 1; i < len(vs); i++ {
		if vs[i].ID >= vs[i-1].ID {
			t.Fatalf("version IDs not decreasing at %d: %s, %s", i, vs[i-1].ID, vs[i].ID)
		}
	}
	// Puts at the same clock reading still get increasing IDs.
	for range 3 {
		if err := d.PutManifest(ctx, key, m); err != nil {
			t.Fatal(err)
		}
	}
	vs2, err := d.ManifestVersions(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(vs2) != maxVersions || vs2[0].ID <= vs[0].ID || vs2[1].ID <= vs[0].ID || vs2[2].ID <= vs[0].ID {
		t.Fatalf("versions after same-instant puts: %d, newest %v", len(vs2), vs2[:3])
	}
}

func TestDirVersionsWithoutHistory(t *testing.T) {
	d, _ := newDirHarness(t)
	ctx := context.Background()
	key := storetest.MustKey(t, "h", "/p.db")
	m := storetest.Manifest(t, "h", "/p.db", 1, 1)
	if err := d.PutManifest(ctx, key, m); err != nil {
		t.Fatal(err)
	}
	// A manifest copied in by hand, without versions.
	if err := os.RemoveAll(filepath.Join(d.Root(), "versions")); err != nil {
		t.Fatal(err)
	}
	vs, err := d.ManifestVersions(ctx, key)
	if err != nil || len(vs) != 1 || !vs[0].IsLatest || vs[0].ID != "" {
		t.Fatalf("versions = %+v, %v", vs, err)
	}
	if got, err := d.GetManifestVersion(ctx, key, ""); err != nil || string(got) != string(m) {
		t.Fatalf("GetManifestVersion(\"\"): %v", err)
	}
	if _, err := d.GetManifestVersion(ctx, key, "../../../etc/passwd"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("bad version ID: %v", err)
	}
}

func TestDirMissingRoot(t *testing.T) {
	// A missing root does not fail New (the VFS must register
	// before a late mount), but every operation fails permanently.
	root := filepath.Join(t.TempDir(), "missing")
	md, err := New(root)
	if err != nil {
		t.Fatalf("New(missing): %v", err)
	}
	err = md.PutManifest(context.Background(), storetest.MustKey(t, "h", "/p"), []byte("x"))
	if !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), root) || store.IsRetryable(err) {
		t.Fatalf("PutManifest into a missing root: %v", err)
	}
	if _, err := md.ListManifests(context.Background(), ""); !errors.Is(err, store.ErrPermanent) {
		t.Fatalf("ListManifests of a missing root: %v", err)
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(file); !errors.Is(err, store.ErrPermanent) {
		t.Fatalf("New(file): %v", err)
	}

	// The root vanishing later (an unmounted file system) is permanent,
	// and the store does not recreate it.
	root = filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(root); err != nil {
		t.Fatal(err)
	}
	err = d.PutChunk(context.Background(), manifest.ZeroChunk, make([]byte, manifest.ChunkSize))
	if !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), root) || store.IsRetryable(err) {
		t.Fatalf("PutChunk into a vanished root: %v", err)
	}
	if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the store recreated its root")
	}
	_, err = d.GetChunk(context.Background(), manifest.ZeroChunk)
	if !errors.Is(err, store.ErrPermanent) {
		t.Fatalf("GetChunk from a vanished root: %v", err)
	}
}

func TestDirUnwritable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root ignores file permissions")
	}
	root := t.TempDir()
	d, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(root, 0o555); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(root, 0o755) })
	err = d.PutChunk(context.Background(), manifest.ZeroChunk, make([]byte, manifest.ChunkSize))
	if !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), root) {
		t.Fatalf("PutChunk into a read-only root: %v", err)
	}
}

func TestDirStaleTemps(t *testing.T) {
	root := t.TempDir()
	tmp := filepath.Join(root, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	old, fresh := filepath.Join(tmp, "put-old"), filepath.Join(tmp, "put-fresh")
	other := filepath.Join(tmp, "not-a-put") // not the store's: kept
	for _, p := range []string{old, fresh, other} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-48 * time.Hour)
	for _, p := range []string{old, other} {
		if err := os.Chtimes(p, past, past); err != nil {
			t.Fatal(err)
		}
	}
	s, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); err != nil {
		t.Error("opening the store removed a temporary file: readers must change nothing")
	}
	if err := s.PutChunk(context.Background(), manifest.Sum([]byte("y")), []byte("y")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !errors.Is(err, os.ErrNotExist) {
		t.Error("stale temporary file kept after a put")
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Error("fresh temporary file removed")
	}
	if _, err := os.Stat(other); err != nil {
		t.Error("a stale file the store did not write removed")
	}
}

// TestDirStaleTempsStayInside: whoever can write a store may make tmp/ a
// symbolic link, or put links in it; the sweep of stale temporary files
// removes nothing outside the store through them.
func TestDirStaleTempsStayInside(t *testing.T) {
	past := time.Now().Add(-72 * time.Hour)
	victim := t.TempDir()
	for _, name := range []string{"put-important", "important.conf"} {
		p := filepath.Join(victim, name)
		if err := os.WriteFile(p, []byte("keep"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, past, past); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("tmp is a link", func(t *testing.T) {
		root := t.TempDir()
		if err := os.Symlink(victim, filepath.Join(root, "tmp")); err != nil {
			t.Fatal(err)
		}
		s, err := New(root)
		if err != nil {
			t.Fatal(err)
		}
		// The put may fail or not; either way nothing outside goes.
		_ = s.PutChunk(context.Background(), manifest.Sum([]byte("y")), []byte("y"))
	})
	t.Run("links in tmp", func(t *testing.T) {
		root := t.TempDir()
		tmp := filepath.Join(root, "tmp")
		if err := os.Mkdir(tmp, 0o700); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(tmp, "put-link")
		if err := os.Symlink(filepath.Join(victim, "put-important"), link); err != nil {
			t.Fatal(err)
		}
		s, err := New(root)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.PutChunk(context.Background(), manifest.Sum([]byte("y")), []byte("y")); err != nil {
			t.Fatal(err)
		}
	})
	for _, name := range []string{"put-important", "important.conf"} {
		if _, err := os.Stat(filepath.Join(victim, name)); err != nil {
			t.Errorf("%s outside the store: %v", name, err)
		}
	}
}

func TestDirOversizedChunk(t *testing.T) {
	d, h := newDirHarness(t)
	fp := manifest.Sum([]byte("x"))
	if err := d.PutChunk(context.Background(), fp, []byte("x")); err != nil {
		t.Fatal(err)
	}
	h.Tamper(t, fp, make([]byte, 10<<20))
	if _, err := d.GetChunk(context.Background(), fp); !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("oversized chunk file: %v", err)
	}
}

func TestDirString(t *testing.T) {
	root := t.TempDir()
	d, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	if got := d.String(); got != "dir:"+root {
		t.Errorf("String() = %q", got)
	}
}
