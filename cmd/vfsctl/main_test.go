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
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/testfs"
	"github.com/boule-vfs/boule/restore"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/dir"
	"github.com/boule-vfs/boule/vfs"
)

// vfsctl runs the command in-process and returns its exit code and output.
func vfsctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

type fixture struct {
	dir, spool, store, db string
}

// newFixture writes a database through boule with a spool and no target,
// so that everything stays spooled for vfsctl.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	s := testfs.NewSite(t, "app.db")
	f := &fixture{dir: s.Dir, spool: s.Spool, store: s.Store, db: s.DB}
	if err := vfs.Register(vfs.Config{ReplicationSpoolingDir: f.spool}); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite3", "file:"+f.db+"?vfs=boule")
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)",
		"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 300) INSERT INTO t(v) SELECT randomblob(1000) FROM n",
		"UPDATE t SET v = randomblob(10) WHERE id = 7",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	return f
}

func (f *fixture) config() string {
	return testfs.Site{Spool: f.spool, Store: f.store}.Config()
}

// checkStore asserts the dir store holds exactly the database's bytes.
func (f *fixture) checkStore(t *testing.T, host string) {
	t.Helper()
	got := storedBytes(t, f, host)
	want, err := os.ReadFile(f.db)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("store holds %d bytes, the database %d", len(got), len(want))
	}
}

// storedBytes returns the database as the fixture's dir store holds it,
// under host.
func storedBytes(t *testing.T, f *fixture, host string) []byte {
	t.Helper()
	s, err := dir.New(f.store)
	if err != nil {
		t.Fatal(err)
	}
	key, err := store.ManifestKey(host, f.db)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	m, _, err := store.FetchManifest(ctx, []store.Store{s}, key)
	if err != nil {
		t.Fatalf("manifest %s: %v", key, err)
	}
	var buf bytes.Buffer
	if err := restore.Reassemble(ctx, []store.Store{s}, m, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// plainFixture writes the database name with the sqlite3 shell, without
// boule, running script; it returns the fixture and the shell's path.
func plainFixture(t *testing.T, name, script string) (*fixture, string) {
	t.Helper()
	tmpdir := testfs.TempDir(t)
	f := &fixture{dir: tmpdir, spool: filepath.Join(tmpdir, "spool"), store: filepath.Join(tmpdir, "store"), db: filepath.Join(tmpdir, name)}
	if err := os.Mkdir(f.store, 0o755); err != nil {
		t.Fatal(err)
	}
	sqlite3, err := exec.LookPath("sqlite3")
	if err != nil {
		t.Fatalf("the sqlite3 shell is required (.ci/run installs it): %v", err)
	}
	if out, err := exec.Command(sqlite3, f.db, script).CombinedOutput(); err != nil {
		t.Fatalf("sqlite3: %v %s", err, out)
	}
	return f, sqlite3
}

// sync runs vfsctl sync on the fixture's database, which must succeed and
// print its manifest name.
func (f *fixture) sync(t *testing.T) {
	t.Helper()
	code, out, errs := vfsctl(t, "--config", f.config(), "sync", f.db)
	want, _ := store.ManifestKey(hostname(t), f.db)
	if code != exitOK || strings.TrimSpace(out) != want {
		t.Fatalf("sync=%d %q %q; want the manifest name %q", code, out, errs, want)
	}
}

func hostname(t *testing.T) string {
	t.Helper()
	h, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// usageCase is a command line, the exit code it must end with, and what
// its output must say.
type usageCase struct {
	name string
	args []string
	code int
	want string
}

// checkUsage runs each case in a subtest, with BOULE_CONFIG empty.
func checkUsage(t *testing.T, cases []usageCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("BOULE_CONFIG", "")
			code, out, errs := vfsctl(t, tc.args...)
			if code != tc.code || !strings.Contains(out+errs, tc.want) {
				t.Fatalf("vfsctl %q = %d, %q %q; want %d and %q", tc.args, code, out, errs, tc.code, tc.want)
			}
		})
	}
}

func TestUsage(t *testing.T) {
	checkUsage(t, []usageCase{
		{"no command", nil, exitUsage, "usage: vfsctl"},
		{"help", []string{"--help"}, exitOK, "Commands:"},
		{"unknown command", []string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{"flush help", []string{"flush", "--help"}, exitOK, "usage: vfsctl flush [--json] SPOOL_DIR"},
		{"sync help", []string{"sync", "--help"}, exitOK, "usage: vfsctl sync [--full] [--optimize] DB"},
		{"status help", []string{"status", "--help"}, exitOK, "-json"},
		{"flush without dir", []string{"flush"}, exitUsage, "want exactly one SPOOL_DIR"},
		{"sync two dbs", []string{"sync", "a", "b"}, exitUsage, "want exactly one DB"},
		{"status bad flag", []string{"status", "--jsn", "x"}, exitUsage, "flag provided but not defined: -jsn"},
		{"bad log level", []string{"--log", "loud", "status", "x"}, exitUsage, `--log "loud"`},
		{"bad config key", []string{"--config", `{"replication_targetz": []}`, "flush", "/tmp"}, exitUsage, `unknown key "replication_targetz"`},
		{"no targets", []string{"--config", `{}`, "flush", "/tmp"}, exitUsage, "no replication targets"},
	})
}

func TestFlushAndStatus(t *testing.T) {
	f := newFixture(t)
	// Before the flush: one database, pending bytes, never uploaded.
	code, out, errs := vfsctl(t, "status", "--json", f.spool)
	if code != exitOK {
		t.Fatalf("status=%d %s", code, errs)
	}
	var st []statusJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st) != 1 || st[0].Source != f.db || st[0].PendingBytes == 0 || st[0].LagSeconds <= 0 {
		t.Fatalf("status before flush=%s (%v), want one pending database with a lag", out, err)
	}

	code, out, errs = vfsctl(t, "--config", f.config(), "flush", f.spool)
	if code != exitOK || !strings.Contains(out, "ok      "+f.db) {
		t.Fatalf("flush=%d %q %q", code, out, errs)
	}
	f.checkStore(t, hostname(t))

	code, out, _ = vfsctl(t, "status", "--json", f.spool)
	st = nil
	if err := json.Unmarshal([]byte(out), &st); err != nil || code != exitOK || len(st) != 1 || st[0].LagSeconds != 0 || st[0].Uploads == 0 || st[0].LastUpload == "" {
		t.Fatalf("status after flush=%d %s (%v), want no lag and an upload", code, out, err)
	}
	code, out, _ = vfsctl(t, "status", f.spool)
	if code != exitOK || !strings.Contains(out, "SOURCE") || !strings.Contains(out, f.db) {
		t.Fatalf("status table=%d %q", code, out)
	}
}

func TestFlushFailure(t *testing.T) {
	f := newFixture(t)
	missing := filepath.Join(f.dir, "no-such-store")
	cfg := fmt.Sprintf(`{"replication_targets": [{"dir": {"path": %q}}]}`, missing)
	code, out, errs := vfsctl(t, "--config", cfg, "flush", f.spool)
	if code != exitFail || !strings.Contains(errs, "does not exist") || !strings.Contains(out, "FAILED") {
		t.Fatalf("flush to a missing store=%d %q %q; want exit 1 saying it does not exist", code, out, errs)
	}
	code, _, errs = vfsctl(t, "status", filepath.Join(f.dir, "no-spool"))
	if code != exitFail || !strings.Contains(errs, "no-spool") {
		t.Fatalf("status of a missing spool=%d %q; want exit 1 naming it", code, errs)
	}
}

// TestSync: a database written without boule at all gets uploaded.
func TestSync(t *testing.T) {
	f, sqlite3 := plainFixture(t, "plain.db", "CREATE TABLE t(x); INSERT INTO t VALUES (zeroblob(200000)), ('hello');")
	tmpdir := f.dir
	f.sync(t)
	f.checkStore(t, hostname(t))

	// The file changes outside boule; sync again uploads the new state.
	if out, err := exec.Command(sqlite3, f.db, "INSERT INTO t VALUES (randomblob(100000));").CombinedOutput(); err != nil {
		t.Fatalf("sqlite3: %v %s", err, out)
	}
	if code, _, errs := vfsctl(t, "--config", f.config(), "sync", f.db); code != exitOK {
		t.Fatalf("second sync=%d %q", code, errs)
	}
	f.checkStore(t, hostname(t))

	if code, _, errs := vfsctl(t, "--config", f.config(), "sync", filepath.Join(tmpdir, "nope.db")); code != exitFail || !strings.Contains(errs, "nope.db") {
		t.Fatalf("sync of a missing file=%d %q; want exit 1 naming it", code, errs)
	}
}

// TestSyncFullRepairsTheStore: a store that lost an object and holds
// another corrupt is repaired by sync --full, which uploads every chunk
// again. A plain sync uploads only what changed, and trusts what the
// spool says the store holds: it leaves the damage as it is. verify says
// which to run.
func TestSyncFullRepairsTheStore(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, object string)
		want   string // in verify's output
	}{
		{"object lost", func(t *testing.T, object string) {
			if err := os.Remove(object); err != nil {
				t.Fatal(err)
			}
		}, "missing  "},
		{"object corrupt", func(t *testing.T, object string) {
			b, err := os.ReadFile(object)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 0xff
			if err := os.Chmod(object, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(object, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "corrupt  "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.sync(t)
			objects := storeObjects(t, f)
			if len(objects) == 0 {
				t.Fatal("the store holds no chunk object to damage")
			}
			tc.damage(t, objects[0])

			code, out, errs := vfsctl(t, "--config", f.config(), "verify", f.db)
			if code != exitFail || !strings.Contains(out, tc.want) {
				t.Fatalf("verify of a damaged store=%d %q %q; want exit 1 and %q", code, out, errs, tc.want)
			}
			if !strings.Contains(errs, "vfsctl sync --full "+f.db) {
				t.Errorf("verify's error %q does not say how to repair (vfsctl sync --full %s)", errs, f.db)
			}

			f.sync(t)
			if code, out, _ := vfsctl(t, "--config", f.config(), "verify", f.db); code != exitFail {
				t.Fatalf("verify after a plain sync=%d %q; want the damage still there (sync uploads what changed)", code, out)
			}

			code, out, errs = vfsctl(t, "--config", f.config(), "sync", "--full", f.db)
			if code != exitOK {
				t.Fatalf("sync --full=%d %q %q", code, out, errs)
			}
			if code, out, errs := vfsctl(t, "--config", f.config(), "verify", f.db); code != exitOK {
				t.Fatalf("verify after sync --full=%d %q %q; want the store repaired", code, out, errs)
			}
			f.checkStore(t, hostname(t))
		})
	}
}

// storeObjects lists the chunk and pack objects of the fixture's dir
// store, in a fixed order.
func storeObjects(t *testing.T, f *fixture) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(filepath.Join(f.store, "chunks"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			out = append(out, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestWarnUnflushed: restore and verify of the newest version say so when
// this host's spool holds commits the store does not have yet; once
// flushed, they say nothing.
func TestWarnUnflushed(t *testing.T) {
	f := newFixture(t)
	if code, _, errs := vfsctl(t, "--config", f.config(), "flush", f.spool); code != exitOK {
		t.Fatalf("flush=%d %q", code, errs)
	}
	// A commit the store does not have: boule spools it, with no target.
	db, err := sql.Open("sqlite3", "file:"+f.db+"?vfs=boule")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("INSERT INTO t(v) VALUES (randomblob(5000))"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	for _, args := range [][]string{
		{"restore", "--out", filepath.Join(f.dir, "out.db"), f.db},
		{"verify", f.db},
	} {
		code, _, errs := vfsctl(t, append([]string{"--config", f.config()}, args...)...)
		want := "vfsctl " + args[0] + ": warning: this host's spool holds commits of " + f.db + " that the store does not have yet"
		if code != exitOK || !strings.Contains(errs, want) {
			t.Errorf("%s with commits spooled=%d %q; want success and %q", args[0], code, errs, want)
		}
	}
	if code, _, errs := vfsctl(t, "--config", f.config(), "flush", f.spool); code != exitOK {
		t.Fatalf("flush=%d %q", code, errs)
	}
	if code, _, errs := vfsctl(t, "--config", f.config(), "verify", f.db); code != exitOK || strings.Contains(errs, "warning") {
		t.Errorf("verify once flushed=%d %q; want no warning", code, errs)
	}
}

// TestSyncOddName: a database whose name holds characters a file: URI
// gives a meaning to (%XX escapes, the query and fragment marks) is synced
// under its own name, and restores byte for byte.
func TestSyncOddName(t *testing.T) {
	// The shell takes a plain file name literally.
	f, _ := plainFixture(t, "a%41 b?x=1#frag.db", "CREATE TABLE t(x); INSERT INTO t VALUES (randomblob(300000));")
	tmpdir := f.dir
	f.sync(t)
	restored := filepath.Join(tmpdir, "restored.db")
	if code, _, errs := vfsctl(t, "--config", f.config(), "restore", "--source-path", f.db, "--out", restored); code != exitOK {
		t.Fatalf("restore=%d %q", code, errs)
	}
	got, err := os.ReadFile(restored)
	if err != nil {
		t.Fatal(err)
	}
	if src, _ := os.ReadFile(f.db); len(src) == 0 || !bytes.Equal(got, src) {
		t.Fatalf("restored %d bytes, want the %d bytes of %s", len(got), len(src), f.db)
	}
	// Nothing else appeared: no database opened under a mangled name.
	entries, err := os.ReadDir(tmpdir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if n := e.Name(); n != "spool" && n != "store" && n != "restored.db" && n != filepath.Base(f.db) {
			t.Errorf("sync left %s in %s", n, tmpdir)
		}
	}
}

// TestBinary runs the real vfsctl binary once, to check the exit code
// reaches the shell.
func TestBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "vfsctl")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v %s", err, out)
	}
	cmd := exec.Command(bin, "frobnicate")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitUsage || !strings.Contains(string(out), "unknown command") {
		t.Fatalf("vfsctl frobnicate: %v %q, want exit %d", err, out, exitUsage)
	}
}

// TestShellSetup: vfsctl shell fails, with a message and a non-zero exit,
// when the replica cannot open, instead of leaving the sqlite3 shell on an
// empty in-memory database and exiting 0.
func TestShellSetup(t *testing.T) {
	f := flushed(t)
	// A stand-in for sqlite3 that records that it ran, and succeeds.
	ran := filepath.Join(f.dir, "ran")
	fake := filepath.Join(f.dir, "fake-sqlite3")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\ntouch '"+ran+"'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	missingLib := filepath.Join(f.dir, "lib", "libboule.so")
	// The fake shell loads nothing: any file will do as the extension.
	t.Setenv("BOULE_EXTENSION", fake)
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"missing source", []string{"--config", f.config(), "shell", "--executable", fake, "/no/such.db"}, exitFail, "boule://" + hostname(t) + "/no/such.db"},
		{"missing manifest file", []string{"--config", f.config(), "shell", "--executable", fake, "--manifest", filepath.Join(f.dir, "no.manifest")}, exitFail, "no.manifest"},
		{"no targets", []string{"--config", "{}", "shell", "--executable", fake, f.db}, exitUsage, "no replication target"},
		{"missing library", []string{"--config", f.config(), "shell", "--executable", fake, "--vfs", missingLib, f.db}, exitUsage, "--vfs " + missingLib + ": no such library"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("BOULE_CONFIG", "")
			code, out, errs := vfsctl(t, tc.args...)
			if code != tc.code || !strings.Contains(errs, tc.want) {
				t.Fatalf("vfsctl %q=%d %q %q; want %d and %q", tc.args, code, out, errs, tc.code, tc.want)
			}
			if _, err := os.Stat(ran); err == nil {
				t.Fatalf("vfsctl %q started the shell", tc.args)
			}
		})
	}
	// The checks pass: the shell runs.
	if code, out, errs := vfsctl(t, "--config", f.config(), "shell", "--executable", fake, f.db); code != exitOK {
		t.Fatalf("vfsctl shell with a good source=%d %q %q", code, out, errs)
	}
	if _, err := os.Stat(ran); err != nil {
		t.Fatalf("vfsctl shell with a good source did not start the shell: %v", err)
	}

	// What vfsctl cannot check, a library the dynamic loader does not
	// find, ends the real shell with an error: the setup bails out.
	sqlite3, err := exec.LookPath("sqlite3")
	if err != nil {
		t.Fatalf("the sqlite3 shell is required (.ci/run installs it): %v", err)
	}
	code, out, errs := vfsctl(t, "--config", f.config(), "shell", "--executable", sqlite3, "--vfs", "libboule-no-such-library", f.db, "--", "-batch")
	if code != exitFail || !strings.Contains(errs, "libboule-no-such-library") || !strings.Contains(errs, "sqlite3 exited with status 1") {
		t.Fatalf("vfsctl shell with a library the loader cannot find=%d %q %q; want exit 1 and the shell's error", code, out, errs)
	}
}

// TestOpenedCheck: the statement shell runs after .open fails on the
// in-memory database the sqlite3 shell falls back to, and returns nothing
// on a database file.
func TestOpenedCheck(t *testing.T) {
	for _, tc := range []struct {
		name, dsn string
		fails     bool
	}{
		{"in memory", ":memory:", true},
		{"file", filepath.Join(t.TempDir(), "x.db"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, err := sql.Open("sqlite3", tc.dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			rows, err := db.Query(openedCheck)
			if err == nil {
				for rows.Next() {
					t.Errorf("openedCheck returned a row")
				}
				err = rows.Err()
				rows.Close()
			}
			if (err != nil) != tc.fails {
				t.Fatalf("openedCheck on %s: %v, want failure %v", tc.dsn, err, tc.fails)
			}
		})
	}
}

// TestNotASpool: flush and status refuse a directory that is not a spool
// (a typo such as /tmp exited 0 saying nothing), and accept a spool with
// nothing for this boot, saying so.
func TestNotASpool(t *testing.T) {
	tmpdir := testfs.TempDir(t)
	notSpool := filepath.Join(tmpdir, "not-a-spool")
	if err := os.MkdirAll(filepath.Join(notSpool, "something"), 0o755); err != nil {
		t.Fatal(err)
	}
	rebooted := filepath.Join(tmpdir, "rebooted") // an earlier boot's state only
	if err := os.MkdirAll(filepath.Join(rebooted, "boule-v1.earlier-boot", "#x#a.db"), 0o755); err != nil {
		t.Fatal(err)
	}
	sto := filepath.Join(tmpdir, "store")
	if err := os.Mkdir(sto, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`{"replication_targets": [{"dir": {"path": %q}}]}`, sto)
	for _, cmd := range [][]string{{"flush"}, {"status"}, {"status", "--json"}} {
		t.Run(strings.Join(cmd, " "), func(t *testing.T) {
			args := append([]string{"--config", cfg}, cmd...)
			code, out, errs := vfsctl(t, append(args, notSpool)...)
			if want := "not a spool directory: " + notSpool; code != exitFail || !strings.Contains(errs, want) {
				t.Fatalf("vfsctl %s on a plain directory=%d %q %q; want exit %d and %q", cmd, code, out, errs, exitFail, want)
			}
			code, out, errs = vfsctl(t, append(args, rebooted)...)
			if want := "nothing spooled for this boot in " + rebooted; code != exitOK || !strings.Contains(errs, want) || strings.Contains(out, "a.db") {
				t.Fatalf("vfsctl %s on a spool of an earlier boot=%d %q %q; want exit 0, nothing listed, and %q", cmd, code, out, errs, want)
			}
		})
	}
	// A spool with databases says nothing of the kind.
	f := newFixture(t)
	if code, _, errs := vfsctl(t, "status", f.spool); code != exitOK || errs != "" {
		t.Fatalf("status of a live spool=%d %q; want exit 0 and nothing on stderr", code, errs)
	}
}

// TestFlushRestages: the state a writer killed between its commit and its
// snapshot leaves (the file ahead of the staged snapshot, the txn marker
// set). vfsctl flush takes a new snapshot of the file before uploading:
// the store holds the killed writer's commit, not the previous one.
func TestFlushRestages(t *testing.T) {
	f := newFixture(t)
	if code, out, errs := vfsctl(t, "--config", f.config(), "flush", f.spool); code != exitOK {
		t.Fatalf("first flush=%d %q %q", code, out, errs)
	}
	f.killedWriter(t)

	code, out, errs := vfsctl(t, "--config", f.config(), "flush", f.spool)
	if code != exitOK || !strings.Contains(out, "ok      "+f.db) {
		t.Fatalf("flush after the killed writer=%d %q %q", code, out, errs)
	}
	f.checkStore(t, hostname(t))
	if code, out, errs := vfsctl(t, "status", f.spool); code != exitOK {
		t.Fatalf("status after the flush=%d %q %q; want exit 0", code, out, errs)
	}
}

// TestStatusNotReplicated: a database whose last snapshot failed is shown
// as not replicated, and makes vfsctl status exit 1 naming it, until a
// flush takes a new snapshot; a database whose uploads a permanent error
// blocked makes status and flush exit 1. A database in WAL mode is
// replicated like any other.
func TestStatusNotReplicated(t *testing.T) {
	w := newFixture(t)
	db, err := sql.Open("sqlite3", "file:"+w.db+"?vfs=boule")
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"PRAGMA journal_mode=WAL", "INSERT INTO t(v) VALUES (randomblob(100))"} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	if code, out, errs := vfsctl(t, "status", w.spool); code != exitOK || strings.Contains(out, "NOT REPLICATED") {
		t.Fatalf("status of a WAL database=%d %q %q; want exit 0, replicated", code, out, errs)
	}
	if code, out, errs := vfsctl(t, "--config", w.config(), "flush", w.spool); code != exitOK || !strings.Contains(out, "ok      "+w.db) {
		t.Fatalf("flush of a WAL database=%d %q %q; want ok", code, out, errs)
	}
	w.checkStore(t, hostname(t))

	f := newFixture(t)
	dirs, err := spool.List(f.spool)
	if err != nil || len(dirs) != 1 {
		t.Fatalf("spool directories under %s: %v, %v; want one", f.spool, dirs, err)
	}
	if err := spool.OpenDir(dirs[0].Dir).WriteMarker(spool.Marker{State: spool.MarkerFailed, Err: "no space left on device"}); err != nil {
		t.Fatal(err)
	}
	code, out, errs := vfsctl(t, "status", f.spool)
	if code != exitFail || !strings.Contains(out, "NOT REPLICATED") || !strings.Contains(out, "no space left") || !strings.Contains(errs, f.db) {
		t.Fatalf("status of a failing database=%d %q %q; want exit 1, NOT REPLICATED, the error, and its name on stderr", code, out, errs)
	}
	code, out, _ = vfsctl(t, "status", "--json", f.spool)
	var st []statusJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil || code != exitFail || len(st) != 1 || !st[0].NotReplicated || !strings.Contains(st[0].Problem, "no space left") {
		t.Fatalf("status --json of a failing database=%d %s (%v); want exit 1 and not_replicated", code, out, err)
	}
	// The flush takes a new snapshot, which succeeds: replicated again.
	if code, out, errs := vfsctl(t, "--config", f.config(), "flush", f.spool); code != exitOK || !strings.Contains(out, "ok      "+f.db) {
		t.Fatalf("flush of a database whose last snapshot failed=%d %q %q; want ok (a new snapshot)", code, out, errs)
	}
	if code, out, errs := vfsctl(t, "status", f.spool); code != exitOK || strings.Contains(out, "NOT REPLICATED") {
		t.Fatalf("status after the flush=%d %q %q; want exit 0, replicated", code, out, errs)
	}

	g := newFixture(t)
	missing := filepath.Join(g.dir, "no-such-store")
	cfg := fmt.Sprintf(`{"replication_targets": [{"dir": {"path": %q}}]}`, missing)
	if code, _, _ := vfsctl(t, "--config", cfg, "flush", g.spool); code != exitFail {
		t.Fatalf("flush to a missing store=%d, want %d", code, exitFail)
	}
	code, out, errs = vfsctl(t, "status", g.spool)
	if code != exitFail || !strings.Contains(out, "BLOCKED") || !strings.Contains(errs, g.db) {
		t.Fatalf("status of a blocked database=%d %q %q; want exit 1, BLOCKED, and its name", code, out, errs)
	}
}

// TestFlushGone: a database deleted while its last snapshot was unfinished
// is reported as gone, and does not fail the flush of the others.
func TestFlushGone(t *testing.T) {
	f := newFixture(t)
	f.leaveMarker(t)
	if err := os.Remove(f.db); err != nil {
		t.Fatal(err)
	}
	code, out, errs := vfsctl(t, "--config", f.config(), "flush", f.spool)
	if code != exitOK || !strings.Contains(out, "gone    "+f.db) {
		t.Fatalf("flush of a deleted database=%d %q %q; want exit 0 and gone", code, out, errs)
	}
}

// killedWriter leaves what a writer killed between its commit and its
// snapshot leaves: it set the marker, wrote, committed (here without
// boule, which would have snapshotted).
func (f *fixture) killedWriter(t *testing.T) {
	t.Helper()
	f.leaveMarker(t)
	plain, err := sql.Open("sqlite3", "file:"+f.db)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := plain.Exec("INSERT INTO t(v) SELECT randomblob(1000) FROM t"); err != nil {
		t.Fatal(err)
	}
}

// leaveMarker sets the database's txn marker as a writer does before its
// transaction, and leaves it so, as a writer killed before its snapshot
// does.
func (f *fixture) leaveMarker(t *testing.T) {
	t.Helper()
	dirs, err := spool.List(f.spool)
	if err != nil || len(dirs) != 1 {
		t.Fatalf("spool directories under %s: %v, %v; want one", f.spool, dirs, err)
	}
	if err := spool.OpenDir(dirs[0].Dir).WriteMarker(spool.Marker{State: spool.MarkerSet}); err != nil {
		t.Fatal(err)
	}
}

// TestSyncWAL: vfsctl sync of a database in WAL mode, written by a program
// that does not use boule and that holds it open, so that its last commits
// are only in the log: the store gets the logical database (the file with
// the log's committed frames), not the file alone.
func TestSyncWAL(t *testing.T) {
	f, _ := plainFixture(t, "wal.db", "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (randomblob(200000));")
	db, err := sql.Open("sqlite3", "file:"+f.db+"?vfs=unix&_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	for i := range 20 {
		if _, err := db.Exec("INSERT INTO t VALUES (randomblob(3000 + ?))", i); err != nil {
			t.Fatal(err)
		}
	}
	if st, err := os.Stat(f.db + "-wal"); err != nil || st.Size() < 20*3000 {
		t.Fatalf("the log holds %v bytes (%v); want the 20 commits in it", st, err)
	}
	for round := range 2 {
		f.sync(t)
		restored := filepath.Join(f.dir, fmt.Sprintf("restored%d.db", round))
		if code, _, errs := vfsctl(t, "--config", f.config(), "restore", "--source-path", f.db, "--out", restored); code != exitOK {
			t.Fatalf("restore=%d %q", code, errs)
		}
		got, err := os.ReadFile(restored)
		if err != nil {
			t.Fatal(err)
		}
		if want := checkpointedCopy(t, f.db); !bytes.Equal(got, want) {
			t.Fatalf("round %d: restored %d bytes, want the logical database's %d", round, len(got), len(want))
		}
		// More commits, only in the log, for the second sync.
		if _, err := db.Exec("DELETE FROM t WHERE rowid % 3 = 0"); err != nil {
			t.Fatal(err)
		}
	}
}

// checkpointedCopy is the database at path as a full checkpoint of its log
// would leave it, made on a copy with plain SQLite.
func checkpointedCopy(t *testing.T, path string) []byte {
	t.Helper()
	cp := filepath.Join(t.TempDir(), "copy.db")
	for _, suffix := range []string{"", "-wal"} {
		b, err := os.ReadFile(path + suffix)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cp+suffix, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	db, err := sql.Open("sqlite3", "file:"+cp+"?vfs=unix")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	b, err := os.ReadFile(cp)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSyncAfterRestoreInPlaceWAL: OPERATIONS.md's restore in place of a
// database in WAL mode: the writer stops, the database is restored over
// itself from an earlier version, and vfsctl sync makes the restored
// database the newest version in the store.
func TestSyncAfterRestoreInPlaceWAL(t *testing.T) {
	tmpdir := testfs.TempDir(t)
	f := &fixture{dir: tmpdir, spool: filepath.Join(tmpdir, "spool"), store: filepath.Join(tmpdir, "store"), db: filepath.Join(tmpdir, "wal.db")}
	if err := os.Mkdir(f.store, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(f.config())
	if err != nil {
		t.Fatal(err)
	}
	if err := vfs.Register(cfg); err != nil { // a writer, with its uploader
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = vfs.Register(vfs.Config{ReplicationSpoolingDir: f.spool}) })
	db, err := sql.Open("sqlite3", "file:"+f.db+"?vfs=boule&_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	ctx := context.Background()
	for _, q := range []string{"CREATE TABLE t(v)", "INSERT INTO t VALUES ('one')"} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	if err := vfs.Flush(ctx, f.db); err != nil {
		t.Fatal(err)
	}
	at := time.Now().UTC().Format(time.RFC3339Nano)
	if _, err := db.Exec("INSERT INTO t VALUES ('two')"); err != nil {
		t.Fatal(err)
	}
	if err := vfs.Flush(ctx, f.db); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	if code, _, errs := vfsctl(t, "--config", f.config(), "restore", "--at", at, "--out", f.db, "--force", f.db); code != exitOK {
		t.Fatalf("restore in place=%d %q", code, errs)
	}
	want, err := os.ReadFile(f.db)
	if err != nil {
		t.Fatal(err)
	}
	f.sync(t)
	got := filepath.Join(f.dir, "newest.db")
	if code, _, errs := vfsctl(t, "--config", f.config(), "restore", "--out", got, f.db); code != exitOK {
		t.Fatalf("restore of the newest=%d %q", code, errs)
	}
	if b, err := os.ReadFile(got); err != nil || !bytes.Equal(b, want) {
		t.Fatalf("the newest version after sync: %d bytes (%v), want the database restored in place (%d bytes): sync did not upload it", len(b), err, len(want))
	}
}
