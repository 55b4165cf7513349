package clients

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/boule-vfs/boule/internal/miniotest"
	"github.com/boule-vfs/boule/internal/testfs"
)

// verneuilConfig returns a configuration copied byte for byte from
// Verneuil's repository into config/testdata (see SOURCES.md there).
func verneuilConfig(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "config", "testdata", "TestVerneuilConfigs", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// replaceOnce replaces old, which must occur exactly once in s, by new:
// what a test must change in a verbatim configuration, and nothing else.
func replaceOnce(t *testing.T, s, old, new string) string {
	t.Helper()
	if n := strings.Count(s, old); n != 1 {
		t.Fatalf("%q occurs %d times in the configuration, want once", old, n)
	}
	return strings.Replace(s, old, new, 1)
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// runVerneuil runs a client with the environment of a Verneuil user: no
// BOULE_CONFIG, VERNEUIL_CONFIG naming the configuration file, and the
// MinIO server's credentials.
func runVerneuil(t *testing.T, srv *miniotest.Server, cfgFile, stdin, name string, args ...string) (string, string, error) {
	t.Helper()
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k != "BOULE_CONFIG" && k != "VERNEUIL_CONFIG" && k != "BOULE_LOG" && !strings.HasPrefix(k, "AWS_") {
			env = append(env, kv)
		}
	}
	return runIn(append(append(env, srv.Env()...), "VERNEUIL_CONFIG=@"+cfgFile), stdin, name, args...)
}

// TestVerneuilUser follows Verneuil's README with Verneuil's own test
// configuration, t/test_with_minio.json, against MinIO: VERNEUIL_CONFIG
// names the file, the sqlite3 shell loads the extension, which becomes
// the default VFS (make_default), writes, flushes, and the database is
// restored and read as a replica. The file is used as Verneuil's
// repository has it, except for the three values this test must change:
// the endpoint (the test's MinIO, not 127.0.0.1:7777), and the spooling
// and cache directories (the test's own, not /tmp and
// /tmp/verneuil-cache, which other runs share). Credentials come from the
// environment, as in Verneuil.
func TestVerneuilUser(t *testing.T) {
	shell := need(t, "sqlite3")
	lib := strings.TrimSuffix(extension(t), ".so")
	// MinIO as Verneuil's t/test.sh runs it: no region configured, so
	// that it takes requests signed for the configuration's "minio".
	srv := miniotest.StartAnyRegion(t)
	f := newFixture(t)
	cache := filepath.Join(f.dir, "verneuil-cache")

	cfg := verneuilConfig(t, "t_test_with_minio.json")
	cfg = replaceOnce(t, cfg, `"http://127.0.0.1:7777"`, quote(srv.Endpoint))
	cfg = replaceOnce(t, cfg, `"replication_spooling_dir": "/tmp"`, `"replication_spooling_dir": `+quote(f.spool))
	cfg = replaceOnce(t, cfg, `"/tmp/verneuil-cache"`, quote(cache))
	cfgFile := filepath.Join(f.dir, "verneuil.json")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}

	// Written through boule as the default VFS: .open names no VFS, and
	// only boule answers the flush pragma.
	script := fmt.Sprintf(`.load %s
.open %s
CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 3000) INSERT INTO t(v) SELECT randomblob(200) FROM c;
PRAGMA boule_flush_replication_data;
`, lib, f.db)
	out, errs, err := runVerneuil(t, srv, cfgFile, script, shell, "-batch", "-bail")
	if err != nil || strings.TrimSpace(out) != "1" {
		t.Fatalf("sqlite3 shell: %v, stdout %q, stderr %q; want the flush pragma to print 1", err, out, errs)
	}
	const notice = "VERNEUIL_CONFIG used because BOULE_CONFIG is unset"
	if n := strings.Count(errs, notice); n != 1 {
		t.Errorf("stderr %q: the notice %q appears %d times, want once", errs, notice, n)
	}

	// The buckets the configuration names, created on demand, hold what
	// was uploaded; the local cache holds the chunks.
	for _, b := range []string{"chunks", "manifests"} {
		entries, err := os.ReadDir(filepath.Join(srv.DataDir, b))
		if err != nil || len(entries) == 0 {
			t.Errorf("bucket %s in MinIO's data: %d entries, %v; want objects", b, len(entries), err)
		}
	}
	var cached int
	_ = filepath.WalkDir(cache, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			cached++
		}
		return nil
	})
	if cached == 0 {
		t.Errorf("local cache %s holds no chunk after the flush", cache)
	}

	// vfsctl reads VERNEUIL_CONFIG too, and restores the same bytes.
	restored := filepath.Join(f.dir, "restored.db")
	if o, e, err := runVerneuil(t, srv, cfgFile, "", vfsctl(t), "restore", "--source-path", f.db, "--out", restored); err != nil {
		t.Fatalf("vfsctl restore: %v %s %s", err, o, e)
	}
	testfs.WantSameFile(t, restored, f.db)

	// A read replica in the shell, with the same configuration.
	script = fmt.Sprintf(".load %s\n.open file:boule://%s?vfs=boule_snapshot\nSELECT count(*), sum(length(v)) FROM t;\nPRAGMA integrity_check;\n", lib, f.db)
	out, errs, err = runVerneuil(t, srv, cfgFile, script, shell, "-batch", "-bail")
	if wantOut := "3000|600000\nok\n"; err != nil || out != wantOut {
		t.Fatalf("replica: %v, stdout %q (want %q), stderr %q", err, out, wantOut, errs)
	}
}

// commentRE matches the // comments of the blocks in Verneuil's
// documentation, which are not JSON (serde_json refuses them too); in
// README_minimal.jsonc none is inside a string.
var commentRE = regexp.MustCompile(`(?m)[ \t]*//.*$`)

// TestVerneuilLegacyBuckets: the minimal configuration of Verneuil's
// README, bucket names "verneuil_chunks" and "verneuil_manifests", loads
// with a warning for each name (AWS still serves such legacy buckets),
// and against MinIO, which refuses them, the flush fails and says why,
// naming the bucket. The test removes the block's comments, adds the
// endpoint the README leaves commented out, and uses its own spooling
// directory.
func TestVerneuilLegacyBuckets(t *testing.T) {
	shell := need(t, "sqlite3")
	lib := strings.TrimSuffix(extension(t), ".so")
	srv := miniotest.Start(t)
	f := newFixture(t)

	cfg := commentRE.ReplaceAllString(verneuilConfig(t, "README_minimal.jsonc"), "")
	cfg = replaceOnce(t, cfg, `"region": "us-east-1",`, `"region": "us-east-1", "endpoint": `+quote(srv.Endpoint)+`,`)
	cfg = replaceOnce(t, cfg, `"/tmp/verneuil/"`, quote(f.spool))
	cfgFile := filepath.Join(f.dir, "verneuil.json")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(".load %s\n.open file:%s?vfs=boule\nCREATE TABLE t(x);\nINSERT INTO t VALUES (1);\nPRAGMA boule_flush_replication_data;\n", lib, f.db)
	out, errs, err := runVerneuil(t, srv, cfgFile, script, shell, "-batch")
	t.Logf("stdout %q\nstderr %s", out, errs)
	for _, w := range []string{
		`replication_targets[0].s3.chunk_bucket: \"verneuil_chunks\" is a legacy S3 bucket name`,
		`replication_targets[0].s3.manifest_bucket: \"verneuil_manifests\" is a legacy S3 bucket name`,
	} {
		if !strings.Contains(errs, w) {
			t.Errorf("stderr lacks the warning %q", w)
		}
	}
	if err != nil || strings.TrimSpace(out) != "0" {
		t.Fatalf("flush to buckets MinIO refuses: %v, stdout %q, want the flush pragma to print 0", err, out)
	}
	if !regexp.MustCompile(`level=ERROR msg="vfs: flush failed" .*bucket \\"verneuil_(chunks|manifests)\\".*InvalidBucketName`).MatchString(errs) {
		t.Errorf("flush to buckets MinIO refuses: stderr %q; want the flush's error naming the bucket and MinIO's refusal", errs)
	}
}
