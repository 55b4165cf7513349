package clients

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boule-vfs/boule/internal/bigmanifest"
	"github.com/boule-vfs/boule/internal/testfs"
	"github.com/boule-vfs/boule/store"
)

// TestReplicaReadOnlyCacheLargeManifest opens in the sqlite3 shell a
// replica of a 4 GiB database (65,536 chunks: a 2 MiB fingerprint list,
// above snapshot's fileMemMin) whose configuration names a local chunk
// cache on a read-only mount. Before the fp-file merge (58344ae) the
// manifest was decoded in the Go heap and the replica opened: the cache
// is only an optimisation. Since, the list goes in an unlinked file in
// the cache's directory, and the open fails with "read-only file system"
// (only a missing directory falls back to TMPDIR), while a 1 GiB replica
// (a list below 1 MiB) of the same configuration opens.
func TestReplicaReadOnlyCacheLargeManifest(t *testing.T) {
	shell := need(t, "sqlite3")
	lib := strings.TrimSuffix(extension(t), ".so")
	f := newFixture(t)
	cache := filepath.Join(f.dir, "cache")
	testfs.MountTmpfs(t, cache, "16m")
	if out, err := exec.Command("mount", "-o", "remount,ro", cache).CombinedOutput(); err != nil {
		t.Fatalf("remount read-only: %v: %s", err, out)
	}
	cfg := fmt.Sprintf(`{"replication_spooling_dir": %q, "replication_targets": [{"local": {"directory": %q, "num_shards": 4, "capacity": 1000}}, {"dir": {"path": %q}}]}`,
		f.spool, cache, f.store)
	env := []string{"BOULE_CONFIG=" + cfg, "TMPDIR=" + t.TempDir()}

	chunk0 := chunk0DB(t, shell, f.dir)
	for _, size := range []int64{1 << 30, 4 << 30} {
		t.Run(fmt.Sprintf("%dGiB", size>>30), func(t *testing.T) {
			var z bytes.Buffer
			if err := (bigmanifest.Spec{Size: size, First: chunk0}).Zstd(&z, true); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(f.dir, fmt.Sprintf("m%d.zst", size>>30))
			if err := os.WriteFile(path, z.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			script := fmt.Sprintf(".load %s\n.open file:%s?vfs=boule_snapshot\nSELECT x FROM t;\n", lib, path)
			out, errs, err := run(t, env, script, shell, "-batch")
			if err != nil || !strings.HasPrefix(out, "chunk 0\n") {
				t.Errorf("replica of %d GiB with a read-only chunk cache: %v, stdout %q, stderr %.1500s; want chunk 0", size>>30, err, out, errs)
			}
		})
	}
}

// TestReplicaHostileDeclaredSizeDisk puts in a dir store, as the manifest
// of boule://h/big.db, 16 bytes: a zstd frame that declares 2 GiB of
// content and holds none. Opening the replica must fail as a corrupt
// manifest, without taking 2 GiB of the disk of the replica's temporary
// directory: since the fp-file merge (58344ae) the buffer for the
// declared size is an unlinked file, fallocated whole (strace:
// fallocate(fd, 0, 0, 2147614736)) before a byte is decoded, so each
// fetch of such a manifest takes 2 GiB of that disk for a moment (the
// spool's, if they share it), and on a smaller disk the open fails with
// "no room for a manifest of 2048 MiB" instead of naming the corrupt
// blob. Before, the buffer was Go heap, never touched past what the
// decoder wrote.
func TestReplicaHostileDeclaredSizeDisk(t *testing.T) {
	shell := need(t, "sqlite3")
	lib := strings.TrimSuffix(extension(t), ".so")
	f := newFixture(t)
	key, err := store.ManifestKey("h", "/big.db")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(f.store, "manifests", filepath.FromSlash(key))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	// Magic, a single-segment frame header with an 8-byte content size
	// of 2^31, one empty raw last block.
	hostile := []byte{0x28, 0xb5, 0x2f, 0xfd, 0xe0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0x01, 0, 0}
	if err := os.WriteFile(p, hostile, 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(f.dir, "tmp")
	testfs.MountTmpfs(t, tmp, "256m")
	env := []string{"BOULE_CONFIG=" + f.cfg(), "TMPDIR=" + tmp}
	out, errs, err := run(t, env, fmt.Sprintf(".load %s\n.open file:boule://h/big.db?vfs=boule_snapshot\nSELECT 1;\n", lib), shell, "-batch")
	if strings.Contains(errs, "no room for a manifest") || !strings.Contains(errs, "corrupt") {
		t.Errorf("replica of a 16-byte manifest declaring 2 GiB: %v, stdout %q, stderr %.1500s; want it refused as corrupt, with no 2 GiB taken on the temporary directory's disk", err, out, errs)
	}
}
