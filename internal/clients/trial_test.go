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
	"github.com/boule-vfs/boule/manifest"
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

	first := filepath.Join(f.dir, "first.db")
	if out, err := exec.Command(shell, first, "PRAGMA page_size=4096; CREATE TABLE t(x); INSERT INTO t VALUES ('chunk 0');").CombinedOutput(); err != nil {
		t.Fatalf("sqlite3: %v %s", err, out)
	}
	b, err := os.ReadFile(first)
	if err != nil {
		t.Fatal(err)
	}
	chunk0 := make([]byte, manifest.ChunkSize)
	copy(chunk0, b)
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
