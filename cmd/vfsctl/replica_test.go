//go:build cgo

package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/boule-vfs/boule/internal/miniotest"
	"github.com/boule-vfs/boule/internal/testfs"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/snapshot"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/dir"
)

// flushed returns a fixture whose database is uploaded to its dir store.
func flushed(t *testing.T) *fixture {
	t.Helper()
	f := newFixture(t)
	if code, out, errs := vfsctl(t, "--config", f.config(), "flush", f.spool); code != exitOK {
		t.Fatalf("flush=%d %q %q", code, out, errs)
	}
	return f
}

func (f *fixture) bytes(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(f.db)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// write commits more rows to the fixture's database through boule.
func (f *fixture) write(t *testing.T, q string) {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+f.db+"?vfs=boule")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(q); err != nil {
		t.Fatal(err)
	}
}

func TestRestore(t *testing.T) {
	f := flushed(t)
	want := f.bytes(t)
	out := filepath.Join(f.dir, "restored.db")
	code, _, errs := vfsctl(t, "--config", f.config(), "restore", "--source-path", f.db, "--out", out)
	if code != exitOK {
		t.Fatalf("restore=%d %q", code, errs)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		t.Fatalf("restored %d bytes differ from the source's %d", len(got), len(want))
	}

	// To standard output, by boule:// name, with one worker.
	var stdout bytes.Buffer
	var stderr bytes.Buffer
	code = run(context.Background(), []string{"--config", f.config(), "restore", "--concurrency", "1", "--manifest", "boule://" + hostname(t) + f.db}, &stdout, &stderr)
	if code != exitOK || !bytes.Equal(stdout.Bytes(), want) {
		t.Fatalf("restore to stdout=%d, %d bytes (want %d); %s", code, stdout.Len(), len(want), stderr.String())
	}

	// From a saved manifest file.
	mf := filepath.Join(f.dir, "saved.manifest")
	if code, _, errs := vfsctl(t, "--config", f.config(), "manifest", "--out", mf, f.db); code != exitOK {
		t.Fatalf("manifest --out=%d %q", code, errs)
	}
	out2 := filepath.Join(f.dir, "from-file.db")
	if code, _, errs := vfsctl(t, "--config", f.config(), "restore", "--manifest", mf, "--out", out2); code != exitOK {
		t.Fatalf("restore --manifest FILE=%d %q", code, errs)
	}
	if got, _ := os.ReadFile(out2); !bytes.Equal(got, want) {
		t.Fatal("restore from a manifest file differs from the source")
	}
}

// TestRestoreAt restores older versions, byte-identical to what the source
// was then.
func TestRestoreAt(t *testing.T) {
	f := flushed(t)
	v1 := f.bytes(t)
	t1 := time.Now()
	f.write(t, "INSERT INTO t(v) SELECT randomblob(3000) FROM t LIMIT 100")
	if code, _, errs := vfsctl(t, "--config", f.config(), "flush", f.spool); code != exitOK {
		t.Fatalf("second flush=%d %q", code, errs)
	}
	v2 := f.bytes(t)
	if bytes.Equal(v1, v2) {
		t.Fatal("the write changed nothing")
	}

	code, out, errs := vfsctl(t, "--config", f.config(), "ls-versions", "--json", f.db)
	var vs []versionJSON
	if code != exitOK || json.Unmarshal([]byte(out), &vs) != nil || len(vs) != 2 || !vs[0].Latest || vs[1].Latest {
		t.Fatalf("ls-versions=%d %q %q; want two versions, the first latest", code, out, errs)
	}

	for _, tc := range []struct {
		at   string
		want []byte
	}{
		{t1.UTC().Format(time.RFC3339Nano), v1},
		{time.Now().UTC().Format(time.RFC3339Nano), v2},
	} {
		out := filepath.Join(f.dir, "at.db")
		code, _, errs := vfsctl(t, "--config", f.config(), "restore", "--source-path", f.db, "--at", tc.at, "--out", out, "--force")
		if code != exitOK {
			t.Fatalf("restore --at %s=%d %q", tc.at, code, errs)
		}
		if got, _ := os.ReadFile(out); !bytes.Equal(got, tc.want) {
			t.Fatalf("restore --at %s: %d bytes, not the source's bytes at that time", tc.at, len(got))
		}
	}

	// Before the first version: nothing to restore, and no file appears.
	out = filepath.Join(f.dir, "too-early.db")
	code, _, errs = vfsctl(t, "--config", f.config(), "restore", "--source-path", f.db, "--at", "2001-01-01T00:00:00Z", "--out", out)
	if code != exitFail || !strings.Contains(errs, "no manifest version") {
		t.Fatalf("restore --at 2001=%d %q; want exit 1, no version", code, errs)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("a failed restore left %s behind: %v", out, err)
	}
}

// TestAtTooEarly: --at before the first version fails naming, first, the
// command that was run: the restore package's name, which starts the
// error it returns, is not the command's unless it is restore.
func TestAtTooEarly(t *testing.T) {
	f := flushed(t)
	for _, cmd := range []string{"restore", "manifest", "verify"} {
		t.Run(cmd, func(t *testing.T) {
			code, _, errs := vfsctl(t, "--config", f.config(), cmd, "--at", "2001-01-01T00:00:00Z", f.db)
			want := "vfsctl " + cmd + ": " + snapshot.Scheme + hostname(t) + f.db + ": no manifest version at or before"
			if code != exitFail || !strings.HasPrefix(errs, want) || strings.Contains(strings.TrimPrefix(errs, "vfsctl "+cmd+":"), "restore:") {
				t.Fatalf("vfsctl %s --at 2001=%d %q; want exit 1 and %q, and no other command named", cmd, code, errs, want)
			}
		})
	}
}

// TestSourceNotFound: a database the store does not hold fails with a
// hint at how to find the names it holds, and at --hostname.
func TestSourceNotFound(t *testing.T) {
	f := flushed(t)
	missing := filepath.Join(f.dir, "nope.db")
	for _, args := range [][]string{
		{"manifest", missing},
		{"restore", missing},
		{"verify", missing},
		{"verify", "--at", "-1m", missing},
		{"ls-versions", missing},
		{"manifest", "--hostname", "elsewhere", f.db},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			code, _, errs := vfsctl(t, append([]string{"--config", f.config()}, args...)...)
			if code != exitFail || !strings.Contains(errs, "not found") || !strings.Contains(errs, "vfsctl ls --all") || !strings.Contains(errs, "--hostname") {
				t.Fatalf("vfsctl %q=%d %q; want exit 1, not found, and hints at vfsctl ls --all and --hostname", args, code, errs)
			}
		})
	}
}

func TestManifestCommands(t *testing.T) {
	f := flushed(t)
	key, _ := store.ManifestKey(hostname(t), f.db)
	code, out, _ := vfsctl(t, "manifest-name", f.db)
	if code != exitOK || strings.TrimSpace(out) != key {
		t.Fatalf("manifest-name=%d %q, want %q", code, out, key)
	}
	code, out, _ = vfsctl(t, "manifest-name", "--hostname", "other.example", f.db)
	if want, _ := store.ManifestKey("other.example", f.db); code != exitOK || strings.TrimSpace(out) != want {
		t.Fatalf("manifest-name --hostname=%d %q, want %q", code, out, want)
	}

	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"--config", f.config(), "manifest", f.db}, &stdout, &stderr); code != exitOK {
		t.Fatalf("manifest=%d %s", code, stderr.String())
	}
	m, err := manifest.Decode(stdout.Bytes())
	if err != nil || m.SourcePath != f.db || m.Size != int64(len(f.bytes(t))) {
		t.Fatalf("manifest output decodes to %+v, %v", m, err)
	}
	code, out, _ = vfsctl(t, "--config", f.config(), "manifest", "--json", f.db)
	var mj manifestJSON
	if code != exitOK || json.Unmarshal([]byte(out), &mj) != nil || mj.SourcePath != f.db || len(mj.Chunks) != len(m.Chunks) {
		t.Fatalf("manifest --json=%d %q", code, out)
	}

	code, out, _ = vfsctl(t, "--config", f.config(), "ls", "--json")
	var ls []lsJSON
	if code != exitOK || json.Unmarshal([]byte(out), &ls) != nil || len(ls) != 1 || ls[0].Path != f.db || ls[0].Hostname != hostname(t) {
		t.Fatalf("ls=%d %q, want the one database", code, out)
	}
	code, out, _ = vfsctl(t, "--config", f.config(), "ls", "--hostname", "nobody.example")
	if code != exitOK || strings.Contains(out, f.db) {
		t.Fatalf("ls of another host=%d %q, want no database", code, out)
	}

	code, out, errs := vfsctl(t, "--config", f.config(), "verify", f.db)
	if code != exitOK || !strings.Contains(out, "0 missing, 0 corrupt") {
		t.Fatalf("verify=%d %q %q", code, out, errs)
	}
}

// TestTampering: a flipped byte in a stored chunk, or in the manifest,
// makes verify and restore fail with a message, and restore leaves no
// file.
func TestTampering(t *testing.T) {
	f := flushed(t)
	// Flip a byte in the blob of chunk 2 (not inline), in its pack.
	m, ref := packedChunk(t, f.store, f.db, 2)
	flip(t, filepath.Join(f.store, "chunks", store.PackKey(ref.ID)), int(ref.Offset)+40)

	code, out, errs := vfsctl(t, "--config", f.config(), "verify", f.db)
	if code != exitFail || !strings.Contains(out, "corrupt  "+m.Chunks[2].String()) {
		t.Fatalf("verify with a bad chunk=%d %q %q; want exit 1 naming it", code, out, errs)
	}
	dst := filepath.Join(f.dir, "r.db")
	code, _, errs = vfsctl(t, "--config", f.config(), "restore", "--source-path", f.db, "--out", dst)
	if code != exitFail || !strings.Contains(errs, "corrupt") {
		t.Fatalf("restore with a bad chunk=%d %q; want exit 1, corrupt", code, errs)
	}
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Fatalf("a failed restore left %s: %v", dst, err)
	}

	// Now the manifest (stored as is in a dir store, not compressed): a
	// byte flipped past the header fails its checksum. Not a "not found",
	// and no fallback to another version or store.
	key, _ := store.ManifestKey(hostname(t), f.db)
	flip(t, filepath.Join(f.store, "manifests", key), 30)
	want := fmt.Sprintf("manifest %s in dir:%s: %v", key, f.store, manifest.ErrChecksum)
	for _, args := range [][]string{
		{"restore", "--source-path", f.db, "--out", dst},
		{"verify", f.db},
	} {
		code, _, errs = vfsctl(t, append([]string{"--config", f.config()}, args...)...)
		if code != exitFail || !strings.Contains(errs, want) {
			t.Fatalf("%s with a bad manifest=%d %q; want exit 1 and %q", args[0], code, errs, want)
		}
	}
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Fatalf("a failed restore left %s: %v", dst, err)
	}
}

// flip inverts one byte of the file at p.
func flip(t *testing.T, p string, off int) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if off >= len(b) {
		off = len(b) - 1
	}
	b[off] ^= 0xff
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestReplicaUsage(t *testing.T) {
	f := flushed(t)
	checkUsage(t, []usageCase{
		{"restore nothing", []string{"restore"}, exitUsage, "want one SOURCE or --manifest"},
		{"restore both", []string{"restore", "--manifest", "x", "--source-path", "/y"}, exitUsage, "not both"},
		{"restore bad at", []string{"restore", "--source-path", "/y", "--at", "yesterday"}, exitUsage, `--at "yesterday"`},
		{"restore hostile path", []string{"restore", "--source-path", "/a/../etc/passwd"}, exitUsage, "not a clean file path"},
		{"restore hostile name", []string{"restore", "--manifest", "boule://h/a\x00b"}, exitUsage, "control character"},
		{"restore missing", []string{"--config", f.config(), "restore", "--source-path", "/no/such.db", "--out", filepath.Join(f.dir, "x")}, exitFail, "/no/such.db"},
		{"restore help", []string{"restore", "--help"}, exitOK, "--at"},
		{"manifest-name none", []string{"manifest-name"}, exitUsage, "want exactly one SOURCE"},
		{"ls-versions missing", []string{"--config", f.config(), "ls-versions", "/no/such.db"}, exitFail, "not found"},
		{"verify nothing", []string{"--config", f.config(), "verify"}, exitUsage, "want one SOURCE or --manifest"},
		{"ls both", []string{"ls", "--all", "--hostname", "h"}, exitUsage, "not both"},
		{"no targets", []string{"--config", "{}", "restore", "--source-path", f.db, "--out", filepath.Join(f.dir, "y")}, exitUsage, "no replication target"},
	})
}

// TestRestoreAtS3: point-in-time restores from a versioned manifest bucket
// in minio, byte-identical to what the source was at each time.
func TestRestoreAtS3(t *testing.T) {
	srv := miniotest.Start(t)
	f := newFixture(t)
	cfg := s3Config(t, srv, f, srv.Endpoint, true)
	var versions [][]byte
	var times []time.Time
	for i := range 3 {
		if i > 0 {
			f.write(t, fmt.Sprintf("INSERT INTO t(v) SELECT randomblob(%d) FROM t LIMIT 50", 100*i))
		}
		if code, _, errs := vfsctl(t, "--config", cfg, "flush", f.spool); code != exitOK {
			t.Fatalf("flush %d=%d %q", i, code, errs)
		}
		versions = append(versions, f.bytes(t))
		times = append(times, time.Now())
	}
	code, out, errs := vfsctl(t, "--config", cfg, "ls-versions", "--json", f.db)
	var vs []versionJSON
	if code != exitOK || json.Unmarshal([]byte(out), &vs) != nil || len(vs) != 3 {
		t.Fatalf("ls-versions=%d %q %q; want 3 versions", code, out, errs)
	}
	for i, at := range times {
		dst := filepath.Join(f.dir, fmt.Sprintf("at%d.db", i))
		code, _, errs := vfsctl(t, "--config", cfg, "restore", "--source-path", f.db, "--at", at.UTC().Format(time.RFC3339Nano), "--out", dst)
		if code != exitOK {
			t.Fatalf("restore --at version %d=%d %q", i, code, errs)
		}
		if got, _ := os.ReadFile(dst); !bytes.Equal(got, versions[i]) {
			t.Fatalf("restore --at version %d: %d bytes, not the source's bytes then", i, len(got))
		}
	}
	// verify --at checks an older version's chunks.
	if code, out, errs := vfsctl(t, "--config", cfg, "verify", "--at", times[0].UTC().Format(time.RFC3339Nano), f.db); code != exitOK {
		t.Fatalf("verify --at=%d %q %q", code, out, errs)
	}
}

func TestFlushJSON(t *testing.T) {
	f := newFixture(t)
	code, out, errs := vfsctl(t, "--config", f.config(), "flush", "--json", f.spool)
	var res []flushJSON
	if code != exitOK || json.Unmarshal([]byte(out), &res) != nil || len(res) != 1 || !res[0].OK || res[0].Source != f.db {
		t.Fatalf("flush --json=%d %q %q", code, out, errs)
	}
}

// TestEveryCommandHasHelp: --help on every subcommand prints its usage
// and exits 0; the command list shows the same usage, and it names every
// flag the command defines.
func TestEveryCommandHasHelp(t *testing.T) {
	flagLine := regexp.MustCompile(`(?m)^  -([a-z][a-z-]*)`)
	for _, c := range commands {
		t.Run(c.name, func(t *testing.T) {
			code, out, errs := vfsctl(t, c.name, "--help")
			help := out + errs
			if code != exitOK || !strings.Contains(help, "usage: vfsctl "+c.name) {
				t.Fatalf("vfsctl %s --help = %d %q", c.name, code, help)
			}
			first, _, _ := strings.Cut(help, "\n")
			if want := "usage: vfsctl " + c.name + " " + c.args; first != want {
				t.Errorf("vfsctl %s --help says %q, the command list %q", c.name, first, want)
			}
			for _, m := range flagLine.FindAllStringSubmatch(help, -1) {
				if !strings.Contains(c.args, "--"+m[1]+" ") && !strings.Contains(c.args, "--"+m[1]+"]") {
					t.Errorf("the usage of %s, %q, does not mention its flag --%s", c.name, c.args, m[1])
				}
			}
		})
	}
}

// TestRestoreRefusesStaleJournal: a leftover journal next to --out would
// be rolled into the restored file by the next open.
func TestRestoreRefusesStaleJournal(t *testing.T) {
	f := flushed(t)
	out := filepath.Join(f.dir, "target.db")
	if err := os.WriteFile(out+"-journal", []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errs := vfsctl(t, "--config", f.config(), "restore", "--source-path", f.db, "--out", out)
	if code != exitFail || !strings.Contains(errs, "target.db-journal exists") {
		t.Fatalf("restore over a stale journal=%d %q; want exit 1 naming it", code, errs)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("restore wrote %s anyway", out)
	}
}

// TestOutNotRegular: restore --out and manifest --out refuse to replace
// a named pipe (or a device: as root, /dev/null), exit 2 naming it, and
// leave it as it was.
func TestOutNotRegular(t *testing.T) {
	f := flushed(t)
	fifo := filepath.Join(f.dir, "pipe")
	testfs.Mkfifo(t, fifo)
	for _, args := range [][]string{
		{"restore", "--source-path", f.db, "--out", fifo},
		{"manifest", "--out", fifo, f.db},
	} {
		t.Run(args[0], func(t *testing.T) {
			code, out, errs := vfsctl(t, append([]string{"--config", f.config()}, args...)...)
			want := "--out " + fifo + " is a named pipe (FIFO), not a regular file; refusing to replace it"
			if code != exitUsage || !strings.Contains(errs, want) {
				t.Fatalf("vfsctl %s --out FIFO=%d %q %q; want exit %d and %q", args[0], code, out, errs, exitUsage, want)
			}
			if st, err := os.Lstat(fifo); err != nil || st.Mode().Type() != fs.ModeNamedPipe {
				t.Fatalf("after vfsctl %s, %s: %v, %v; want it still a FIFO", args[0], fifo, st, err)
			}
		})
	}
	entries, _ := os.ReadDir(f.dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("a refused --out left %s behind", e.Name())
		}
	}
}

// TestManifestFileLimits: --manifest takes a regular file of bounded
// size; a device or a named pipe is refused at once (reading /dev/zero
// would never end, opening a FIFO would block), and so is a file larger
// than a manifest can be, before it is read.
func TestManifestFileLimits(t *testing.T) {
	f := flushed(t)
	fifo := filepath.Join(f.dir, "pipe")
	testfs.Mkfifo(t, fifo)
	huge := filepath.Join(f.dir, "huge.manifest")
	if err := os.WriteFile(huge, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(huge, 1<<30); err != nil { // sparse: no disk used
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, file string
		code       int
		want       string
	}{
		{"device", "/dev/zero", exitUsage, "--manifest /dev/zero is not a regular file"},
		{"fifo", fifo, exitUsage, "--manifest " + fifo + " is not a regular file"},
		{"too large", huge, exitFail, huge + " is 1073741824 bytes, more than"},
	} {
		for _, cmd := range []string{"restore", "verify"} {
			t.Run(tc.name+"/"+cmd, func(t *testing.T) {
				args := []string{"--config", f.config(), cmd, "--manifest", tc.file}
				if cmd == "restore" {
					args = append(args, "--out", filepath.Join(f.dir, "out.db"))
				}
				code, out, errs := vfsctl(t, args...)
				if code != tc.code || !strings.Contains(errs, tc.want) {
					t.Fatalf("vfsctl %s --manifest %s=%d %q %q; want %d and %q", cmd, tc.file, code, out, errs, tc.code, tc.want)
				}
			})
		}
	}
}

// TestManifestNamesItsSource: a manifest stored under another database's
// key (copied there, or a hash collision) is refused, newest or --at,
// rather than restored as that database.
func TestManifestNamesItsSource(t *testing.T) {
	f := flushed(t)
	ctx := context.Background()
	s, err := dir.New(f.store)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := store.ManifestKey(hostname(t), f.db)
	_, raw, err := store.FetchManifest(ctx, []store.Store{s}, key)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(f.dir, "other.db")
	for _, tc := range []struct {
		name, host, path string
	}{
		{"path", hostname(t), other},
		{"host", "elsewhere.example", f.db},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, _ := store.ManifestKey(tc.host, tc.path)
			if err := s.PutManifest(ctx, k, raw); err != nil {
				t.Fatal(err)
			}
			want := fmt.Sprintf("manifest %s describes boule://%s%s instead", k, hostname(t), f.db)
			for _, args := range [][]string{
				{"restore", "--hostname", tc.host, "--source-path", tc.path, "--out", filepath.Join(f.dir, "out.db")},
				{"restore", "--hostname", tc.host, "--source-path", tc.path, "--at", time.Now().UTC().Format(time.RFC3339Nano), "--out", filepath.Join(f.dir, "out.db")},
				{"manifest", "--hostname", tc.host, "--json", tc.path},
				{"verify", "--hostname", tc.host, tc.path},
			} {
				code, out, errs := vfsctl(t, append([]string{"--config", f.config()}, args...)...)
				if code != exitFail || !strings.Contains(errs, want) {
					t.Errorf("vfsctl %q=%d %q %q; want exit 1 and %q", args, code, out, errs, want)
				}
			}
			if _, err := os.Stat(filepath.Join(f.dir, "out.db")); !os.IsNotExist(err) {
				t.Errorf("a refused restore wrote out.db: %v", err)
			}
		})
	}
}

// TestVerifyEveryTarget: verify checks each replication target, not only
// the first: a pack deleted from the second is reported for that target,
// in the table and in JSON, and fails the command.
func TestVerifyEveryTarget(t *testing.T) {
	f := newFixture(t)
	store2 := filepath.Join(f.dir, "store2")
	if err := os.Mkdir(store2, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`{"replication_spooling_dir": %q, "replication_targets": [{"dir": {"path": %q}}, {"dir": {"path": %q}}]}`, f.spool, f.store, store2)
	if code, out, errs := vfsctl(t, "--config", cfg, "flush", f.spool); code != exitOK {
		t.Fatalf("flush=%d %q %q", code, out, errs)
	}
	if code, out, errs := vfsctl(t, "--config", cfg, "verify", f.db); code != exitOK || strings.Count(out, " 0 missing, 0 corrupt, 0 unreadable\n") != 2 {
		t.Fatalf("verify of two good targets=%d %q %q; want exit 0 and two good lines", code, out, errs)
	}

	m, ref := packedChunk(t, store2, f.db, 2)
	var lost []string // the chunks of that pack
	for i, fp := range m.Chunks {
		if r, ok := m.PackRefs()[uint32(i)]; ok && r.ID == ref.ID && !slices.Contains(lost, fp.String()) {
			lost = append(lost, fp.String())
		}
	}
	slices.Sort(lost)
	if err := os.Remove(filepath.Join(store2, "chunks", store.PackKey(ref.ID))); err != nil {
		t.Fatal(err)
	}

	code, out, errs := vfsctl(t, "--config", cfg, "verify", "--json", f.db)
	var res verifyJSON
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != exitFail {
		t.Fatalf("verify --json with a pack gone from the second target=%d %q %q (%v); want exit 1", code, out, errs, err)
	}
	if len(res.Targets) != 2 || res.Targets[0].Target != "dir:"+f.store || res.Targets[1].Target != "dir:"+store2 {
		t.Fatalf("verify --json targets=%+v, want dir:%s and dir:%s", res.Targets, f.store, store2)
	}
	if first := res.Targets[0]; first.OK != res.Unique || first.bad() != 0 {
		t.Errorf("first target=%+v, want all %d chunks ok", first, res.Unique)
	}
	if second := res.Targets[1]; !slices.Equal(second.Missing, lost) || second.OK != res.Unique-len(lost) || len(second.Corrupt)+len(second.Errors) != 0 {
		t.Errorf("second target=%+v, want %v missing and the rest ok", second, lost)
	}
	if !slices.Equal(res.Missing, lost) || res.OK != res.Unique-len(lost) {
		t.Errorf("summary: %d ok, missing %v; want %d and %v", res.OK, res.Missing, res.Unique-len(lost), lost)
	}
	if want := fmt.Sprintf("%d of %d chunks missing, corrupt or unreadable in dir:%s", len(lost), res.Unique, store2); !strings.Contains(errs, want) || strings.Count(errs, "unreadable in") != 1 {
		t.Errorf("verify error %q, want %q, and no other target", errs, want)
	}

	code, out, _ = vfsctl(t, "--config", cfg, "verify", f.db)
	wantLines := []string{
		fmt.Sprintf("  dir:%s: %d ok, 0 missing, 0 corrupt, 0 unreadable\n", f.store, res.Unique),
		fmt.Sprintf("  dir:%s: %d ok, %d missing, 0 corrupt, 0 unreadable\n", store2, res.Unique-len(lost), len(lost)),
		fmt.Sprintf("missing  %s  dir:%s\n", lost[0], store2),
	}
	for _, w := range wantLines {
		if code != exitFail || !strings.Contains(out, w) {
			t.Errorf("verify table=%d %q, want a line %q", code, out, w)
		}
	}
}

// packedChunk returns the newest manifest of db in the dir store at root,
// and where chunk i of it is packed; it fails the test when that chunk is
// not in a pack.
func packedChunk(t *testing.T, root, db string, i uint32) (*manifest.Manifest, manifest.PackRef) {
	t.Helper()
	key, _ := store.ManifestKey(hostname(t), db)
	s, _ := dir.New(root)
	m, _, err := store.FetchManifest(context.Background(), []store.Store{s}, key)
	if err != nil {
		t.Fatal(err)
	}
	ref, packed := m.PackRefs()[i]
	if !packed {
		t.Fatalf("chunk %d is not in a pack", i)
	}
	return m, ref
}

// TestRestoreWarnsUnflushed: restoring the newest version of a database
// whose commits this host's spool holds and the store does not says so on
// stderr, and how to include them; once flushed, it says nothing.
func TestRestoreWarnsUnflushed(t *testing.T) {
	f := flushed(t)
	out := filepath.Join(f.dir, "restored.db")
	if code, _, errs := vfsctl(t, "--config", f.config(), "restore", "--out", out, f.db); code != exitOK || errs != "" {
		t.Fatalf("restore of a flushed database=%d %q; want 0 and nothing on stderr", code, errs)
	}
	f.write(t, "INSERT INTO t(v) VALUES (randomblob(20000))") // spooled, not uploaded
	code, _, errs := vfsctl(t, "--config", f.config(), "restore", "--out", out, "--force", f.db)
	if code != exitOK || !strings.Contains(errs, "warning") || !strings.Contains(errs, f.db) || !strings.Contains(errs, "vfsctl flush "+f.spool) {
		t.Fatalf("restore with commits spooled=%d %q; want 0 and a warning naming the database and the flush to run", code, errs)
	}
	if code, out, errs := vfsctl(t, "--config", f.config(), "flush", f.spool); code != exitOK {
		t.Fatalf("flush=%d %q %q", code, out, errs)
	}
	if code, _, errs := vfsctl(t, "--config", f.config(), "restore", "--out", out, "--force", f.db); code != exitOK || errs != "" {
		t.Fatalf("restore after the flush=%d %q; want 0 and nothing on stderr", code, errs)
	}
	if got := f.bytes(t); !bytes.Equal(mustRead(t, out), got) {
		t.Fatal("the restore after the flush is not the database")
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
