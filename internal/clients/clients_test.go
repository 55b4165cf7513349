package clients

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/boule-vfs/boule/internal/testfs"
)

// Built once per test binary, into a temp directory, from the sources
// under test (never from a possibly stale build/).
var (
	artifacts string // directory holding libboule.so, vfsctl, the C example
	repoRoot  string
)

func TestMain(m *testing.M) {
	_, file, _, _ := runtime.Caller(0)
	repoRoot = filepath.Join(filepath.Dir(file), "..", "..")
	dir, err := os.MkdirTemp("", "boule-clients-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	artifacts = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// build runs go build once per artifact and returns its path.
func build(t *testing.T, name string, args ...string) string {
	t.Helper()
	out := filepath.Join(artifacts, name)
	if _, err := os.Stat(out); err == nil {
		return out
	}
	cmd := exec.Command("go", append([]string{"build", "-o", out}, args...)...)
	cmd.Dir = repoRoot
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", name, err, b)
	}
	return out
}

func extension(t *testing.T) string {
	return build(t, "libboule.so", "-buildmode=c-shared", "-tags", "boule_ext", "./cmd/libboule")
}

func vfsctl(t *testing.T) string { return build(t, "vfsctl", "./cmd/vfsctl") }

// need returns the path of a real client, failing (not skipping) when it
// is missing: .ci/run installs them.
func need(t *testing.T, path string) string {
	t.Helper()
	p, err := exec.LookPath(path)
	if err != nil {
		t.Fatalf("%s is required (.ci/run installs it with apt-get): %v", path, err)
	}
	return p
}

type fixture struct {
	dir, spool, store, db string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	s := testfs.NewSite(t, "x.db")
	return &fixture{dir: s.Dir, spool: s.Spool, store: s.Store, db: s.DB}
}

// cfg is the configuration JSON for the fixture.
func (f *fixture) cfg() string {
	return testfs.Site{Spool: f.spool, Store: f.store}.Config()
}

// shellFixture returns what a test that drives Debian's sqlite3 shell
// starts with: the shell, the extension to .load, a fixture, and the
// environment that points the extension at the fixture.
func shellFixture(t *testing.T) (shell, lib string, f *fixture, env []string) {
	t.Helper()
	shell = need(t, "sqlite3")
	lib = strings.TrimSuffix(extension(t), ".so")
	f = newFixture(t)
	return shell, lib, f, []string{"BOULE_CONFIG=" + f.cfg()}
}

func run(t *testing.T, env []string, stdin string, name string, args ...string) (string, string, error) {
	t.Helper()
	return runIn(append(os.Environ(), env...), stdin, name, args...)
}

// runIn runs name with args in exactly the environment env, stdin on its
// standard input, and returns what it wrote to its standard output and
// error.
func runIn(env []string, stdin string, name string, args ...string) (string, string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = env
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// restoreAndCompare restores f.db with the vfsctl binary and checks the
// result is byte-identical to the file.
func (f *fixture) restoreAndCompare(t *testing.T) {
	t.Helper()
	out := filepath.Join(f.dir, "restored.db")
	if o, e, err := run(t, []string{"BOULE_CONFIG=" + f.cfg()}, "", vfsctl(t), "restore", "--source-path", f.db, "--out", out); err != nil {
		t.Fatalf("vfsctl restore: %v %s %s", err, o, e)
	}
	testfs.WantSameFile(t, out, f.db)
}

func TestSqlite3Shell(t *testing.T) {
	shell, lib, f, env := shellFixture(t)
	script := fmt.Sprintf(`.load %s
.open file:%s?vfs=boule
CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 2000) INSERT INTO t(v) SELECT randomblob(300) FROM c;
UPDATE t SET v = zeroblob(10) WHERE id %% 7 = 0;
PRAGMA boule_flush_replication_data;
`, lib, f.db)
	out, errs, err := run(t, env, script, shell, "-batch")
	if err != nil || strings.TrimSpace(out) != "1" {
		t.Fatalf("sqlite3 shell: %v, stdout %q, stderr %q; want the flush pragma to print 1", err, out, errs)
	}
	f.restoreAndCompare(t)

	// A read replica in the shell.
	script = fmt.Sprintf(`.load %s
.open file:boule://%s?vfs=boule_snapshot
SELECT count(*), sum(length(v)) FROM t;
PRAGMA integrity_check;
`, lib, f.db)
	out, errs, err = run(t, env, script, shell, "-batch")
	want := fmt.Sprintf("2000|%d\nok\n", 2000*300-285*300+285*10)
	if err != nil || out != want {
		t.Fatalf("replica in the shell: %v, stdout %q (want %q), stderr %q", err, out, want, errs)
	}

	// A bad configuration makes .load fail with a message naming the key.
	bad := []string{`BOULE_CONFIG={"replication_spooling_dirr": "/tmp"}`}
	out, errs, err = run(t, bad, ".load "+lib+"\nSELECT 'still here';\n", shell, "-batch", "-bail")
	if err == nil || !strings.Contains(errs, `"replication_spooling_dirr"`) || strings.Contains(out, "still here") {
		t.Fatalf(".load with a bad config: %v, stdout %q, stderr %q; want a failure naming the key", err, out, errs)
	}
}

func TestPython(t *testing.T) {
	py := need(t, "/usr/bin/python3")
	lib := extension(t)
	f := newFixture(t)
	script := fmt.Sprintf(`
import sqlite3
loader = sqlite3.connect(":memory:")
loader.enable_load_extension(True)
loader.load_extension(%q)
db = sqlite3.connect("file:%s?vfs=boule", uri=True)
db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT)")
db.executemany("INSERT INTO t(name) VALUES (?)", [("row %%d" %% i,) for i in range(5000)])
db.commit()
print(db.execute("PRAGMA boule_flush_replication_data").fetchone()[0])
db.close()
r = sqlite3.connect("file:boule://%s?vfs=boule_snapshot", uri=True)
print(r.execute("SELECT count(*), max(name) FROM t").fetchone())
try:
    r.execute("INSERT INTO t(name) VALUES ('nope')")
    print("wrote to a replica")
except sqlite3.OperationalError as e:
    print("refused:", e)
`, lib, f.db, f.db)
	out, errs, err := run(t, []string{"BOULE_CONFIG=" + f.cfg()}, script, py, "-")
	want := "1\n(5000, 'row 999')\nrefused: attempt to write a readonly database\n"
	if err != nil || out != want {
		t.Fatalf("python: %v\nstdout %q\nwant   %q\nstderr %s", err, out, want, errs)
	}
	f.restoreAndCompare(t)
}

// cExample builds examples/c/example.c with the command README.md
// documents (and the example's comment repeats), against what make install
// put in a temporary prefix, plus -Wall -Werror. It returns the program's
// path.
func cExample(t *testing.T) string {
	t.Helper()
	need(t, "cc")
	work := filepath.Join(artifacts, "c-example")
	exe := filepath.Join(work, "example")
	if _, err := os.Stat(exe); err == nil {
		return exe
	}
	var cmdline string
	for _, s := range readmeTranscript(t, "Quick start: C") {
		if strings.HasPrefix(s.cmd, "cc ") && strings.Contains(s.cmd, "examples/c/example.c") {
			cmdline = s.cmd
			break
		}
	}
	src, err := os.ReadFile(filepath.Join(repoRoot, "examples", "c", "example.c"))
	if err != nil {
		t.Fatal(err)
	}
	if cmdline == "" || !strings.Contains(string(src), "**     "+cmdline+"\n") {
		t.Fatalf("README.md's command to build the C example, %q, is not the one in examples/c/example.c's comment", cmdline)
	}
	prefix := installed(t)
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(repoRoot, "examples"), filepath.Join(work, "examples")); err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}
	cmdline = strings.ReplaceAll(cmdline, readmePrefix, prefix)
	if _, errs, err := run(t, nil, "", "bash", "-c", "cd "+shellQuote(work)+" && "+cmdline+" -Wall -Werror"); err != nil {
		t.Fatalf("%s -Wall -Werror: %v\n%s", cmdline, err, errs)
	}
	return exe
}

// TestCExample runs the C example, including on paths that JSON and
// SQLite URIs must escape.
func TestCExample(t *testing.T) {
	exe := cExample(t)
	for _, c := range []struct{ name, db, spool, store string }{
		{"plain", "x.db", "spool", "store"},
		{"awkward paths", `d"b\ ?#%.db`, "sp\tool\n\"", `st"o\re`},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			f.db, f.spool, f.store = filepath.Join(f.dir, c.db), filepath.Join(f.dir, c.spool), filepath.Join(f.dir, c.store)
			if err := os.MkdirAll(f.store, 0o755); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(f.dir, "out.db")
			stdout, stderr, err := run(t, nil, "", exe, f.db, f.spool, f.store, out)
			if err != nil {
				t.Fatalf("example: %v\n%s%s", err, stdout, stderr)
			}
			var status []struct {
				Source       string  `json:"source"`
				LagSeconds   float64 `json:"lag_seconds"`
				PendingBytes int64   `json:"pending_bytes"`
				Uploads      int64   `json:"uploads"`
				LastError    string  `json:"last_error"`
			}
			line, _, _ := strings.Cut(stdout, "\n")
			js, ok := strings.CutPrefix(line, "replication: ")
			if !ok || json.Unmarshal([]byte(js), &status) != nil || len(status) != 1 {
				t.Fatalf("example's first line=%q, want \"replication: \" and the status of one database", line)
			}
			if s := status[0]; s.Source != f.db || s.LagSeconds != 0 || s.PendingBytes != 0 || s.Uploads == 0 || s.LastError != "" {
				t.Errorf("status after boule_flush=%+v, want source %q, no lag, nothing pending, uploads, no error", s, f.db)
			}
			uri := "file:boule://" + strings.NewReplacer("%", "%25", "?", "%3F", "#", "%23").Replace(f.db) + "?vfs=boule_snapshot"
			for _, want := range []string{"restored " + out + ": 1000 rows\n", "replica " + uri + ": 1000 rows\n"} {
				if !strings.Contains(stdout, want) {
					t.Errorf("example output lacks %q:\n%s", want, stdout)
				}
			}
			a, _ := os.ReadFile(f.db)
			b, _ := os.ReadFile(out)
			if len(a) == 0 || !bytes.Equal(a, b) {
				t.Fatalf("restored file (%d bytes) differs from the database (%d bytes)", len(b), len(a))
			}
			// Again, as whoever tries the README twice runs it.
			if stdout, stderr, err := run(t, nil, "", exe, f.db, f.spool, f.store, out); err != nil || !strings.Contains(stdout, "restored "+out+": 1000 rows\n") {
				t.Fatalf("example run again: %v, want 1000 rows restored\n%s%s", err, stdout, stderr)
			}
		})
	}
	// JSON cannot carry a path that is not UTF-8: refused, not mangled.
	t.Run("not UTF-8", func(t *testing.T) {
		f := newFixture(t)
		spool := filepath.Join(f.dir, "sp\xffool")
		_, stderr, err := run(t, nil, "", exe, f.db, spool, f.store, filepath.Join(f.dir, "out.db"))
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(stderr, "not UTF-8") {
			t.Fatalf("example with a spool path that is not UTF-8: %v %q, want exit 1 saying so", err, stderr)
		}
	})
	// Bad arguments: the documented usage, exit 2.
	t.Run("usage", func(t *testing.T) {
		_, stderr, err := run(t, nil, "", exe)
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(stderr, "usage: example") {
			t.Fatalf("example without arguments: %v %q, want exit 2 and the usage", err, stderr)
		}
	})
}

// TestVfsctlShell: vfsctl shell opens the stock sqlite3 shell on a replica.
func TestVfsctlShell(t *testing.T) {
	need(t, "sqlite3")
	lib := extension(t)
	f := newFixture(t)
	env := []string{"BOULE_CONFIG=" + f.cfg()}
	script := fmt.Sprintf(".load %s\n.open file:%s?vfs=boule\nCREATE TABLE t(x); INSERT INTO t VALUES ('from the source');\nPRAGMA boule_flush_replication_data;\n", strings.TrimSuffix(lib, ".so"), f.db)
	if out, errs, err := run(t, env, script, "sqlite3", "-batch"); err != nil || strings.TrimSpace(out) != "1" {
		t.Fatalf("write: %v %q %q", err, out, errs)
	}
	out, errs, err := run(t, env, "SELECT x FROM t;\n", vfsctl(t), "shell", "--vfs", lib, f.db, "--", "-batch")
	if err != nil || out != "from the source\n" {
		t.Fatalf("vfsctl shell: %v, stdout %q, stderr %q", err, out, errs)
	}
	// The shell's own failure is reported with its status.
	_, errs, err = run(t, env, "SELECT nope FROM t;\n", vfsctl(t), "shell", "--vfs", lib, f.db, "--", "-batch", "-bail")
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(errs, "no such column: nope") {
		t.Fatalf("failing query: %v %q", err, errs)
	}
	_, errs, err = run(t, env, "", vfsctl(t), "shell", "--executable", "no-such-shell", f.db)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(errs, "no-such-shell") {
		t.Fatalf("missing shell: %v %q", err, errs)
	}
	// A database the store does not have: a failure naming it, not a
	// session on an empty in-memory database.
	missing := filepath.Join(f.dir, "no-such.db")
	out, errs, err = run(t, env, "SELECT 1;\n", vfsctl(t), "shell", "--vfs", lib, missing, "--", "-batch")
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(errs, "no-such.db") || out != "" {
		t.Fatalf("shell on a database the store lacks: %v, stdout %q, stderr %q; want exit 1 naming it", err, out, errs)
	}
}

// TestDemo runs make demo, which says it is building before it does,
// explains its columns and shows the command equivalent to each step; then
// the demo with -dir, whose vfsctl commands, run as printed on the files
// it keeps, work.
func TestDemo(t *testing.T) {
	mk := need(t, "make")
	cmd := exec.Command(mk, "--no-print-directory", "demo", "BUILD="+filepath.Join(artifacts, "demo-build"))
	cmd.Dir = repoRoot
	b, err := cmd.Output()
	out := string(b)
	if err != nil {
		t.Fatalf("make demo: %v\n%s", err, out)
	}
	if first, _, _ := strings.Cut(out, "\n"); !strings.Contains(first, "Building the demo") {
		t.Errorf("make demo's first line=%q, want it to say it is building", first)
	}
	for _, want := range []string{
		"file size:", "chunks:", "new chunks:", // the columns, explained
		"run with -dir DIR", "$ export BOULE_CONFIG=", "$ vfsctl status ", "$ vfsctl manifest --json ", "$ vfsctl shell ", "$ vfsctl restore --out ",
		"caught up", `refresh: 501 rows, the newest says "hello from the writer"`, "is byte-identical to",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("make demo's output lacks %q:\n%s", want, out)
		}
	}
	// The spool's files are internals, shown only with -internals.
	if strings.Contains(out, "Inside:") || strings.Contains(out, "staged manifest") {
		t.Errorf("make demo's output shows the spool's internals:\n%s", out)
	}

	dir := testfs.TempDir(t)
	demo := build(t, "demo", "./cmd/demo")
	out, errs, err := run(t, nil, "", demo, "-dir", dir, "-internals")
	if err != nil {
		t.Fatalf("demo -dir -internals: %v\n%s\n%s", err, out, errs)
	}
	if !strings.Contains(out, "The files stay in "+dir) || !strings.Contains(out, "Inside: the staged manifest") {
		t.Fatalf("demo -dir %s -internals does not say its files stay, or shows no internals:\n%s", dir, out)
	}
	// Its vfsctl lines, run as printed with the configuration it printed.
	var env []string
	var cmds []string
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if cfg, ok := strings.CutPrefix(line, "$ export BOULE_CONFIG='"); ok {
			env = append(env, "BOULE_CONFIG="+strings.TrimSuffix(cfg, "'"))
		} else if c, ok := strings.CutPrefix(line, "$ vfsctl "); ok {
			cmds = append(cmds, c)
		}
	}
	if len(env) != 1 || len(cmds) != 4 {
		t.Fatalf("demo printed %d configurations and %d vfsctl commands, want 1 and 4:\n%s", len(env), len(cmds), out)
	}
	env = append(env, "BOULE_EXTENSION="+extension(t))
	if err := os.Remove(filepath.Join(dir, "restored.db")); err != nil {
		t.Fatal(err)
	}
	for _, c := range cmds {
		stdin := ""
		if strings.HasPrefix(c, "shell ") {
			stdin = "SELECT count(*) FROM notes;\n"
		}
		o, e, err := run(t, env, stdin, vfsctl(t), strings.Fields(c)...)
		if err != nil {
			t.Errorf("vfsctl %s, as the demo printed it: %v\n%s%s", c, err, o, e)
		}
		if strings.HasPrefix(c, "shell ") && o != "501\n" {
			t.Errorf("vfsctl %s printed %q, want the replica's 501 rows", c, o)
		}
	}
	a, _ := os.ReadFile(filepath.Join(dir, "app.db"))
	r, _ := os.ReadFile(filepath.Join(dir, "restored.db"))
	if len(a) == 0 || !bytes.Equal(a, r) {
		t.Errorf("vfsctl restore as the demo printed it wrote %d bytes, want the database's %d", len(r), len(a))
	}
}

// TestExtensionLinksNoSQLite: the extension defines no SQLite of its own
// (every call goes through the loader's API table) and exports only its
// entry point, its API table pointer (sqlite3_api) and the C API.
func TestExtensionLinksNoSQLite(t *testing.T) {
	nm := need(t, "nm")
	out, errs, err := run(t, nil, "", nm, "-D", "--defined-only", extension(t))
	if err != nil {
		t.Fatalf("nm: %v %s", err, errs)
	}
	var sqliteSyms []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && strings.HasPrefix(f[2], "sqlite3") && f[2] != "sqlite3_boule_init" && f[2] != "sqlite3_api" {
			sqliteSyms = append(sqliteSyms, f[2])
		}
	}
	if len(sqliteSyms) > 0 {
		t.Fatalf("the extension defines SQLite symbols %v: it would run a second SQLite", sqliteSyms)
	}
	if !strings.Contains(out, " sqlite3_boule_init\n") {
		t.Fatalf("no sqlite3_boule_init entry point in:\n%s", out)
	}
}

// TestExtensionLogging: BOULE_LOG sets the level of the extension's log on
// standard error: errors and warnings show by default, only errors at
// BOULE_LOG=error, and a bad level fails the load.
func TestExtensionLogging(t *testing.T) {
	shell, lib, f, _ := shellFixture(t)
	script := fmt.Sprintf(".load %s\n.open file:boule:///no/such/db.sqlite?vfs=boule_snapshot\nSELECT 1 FROM sqlite_schema;\n", lib)
	_, errs, _ := run(t, []string{"BOULE_CONFIG=" + f.cfg(), "BOULE_LOG="}, script, shell, "-batch")
	if !strings.Contains(errs, "level=ERROR") || !strings.Contains(errs, "cannot open replica") || !strings.Contains(errs, "/no/such/db.sqlite") {
		t.Fatalf("a failed replica open logged nothing useful on stderr: %q", errs)
	}

	// A warning when the extension loads: the chunk cache under tempdir is
	// not private to the user, so replicas keep their chunks in memory.
	tmp := filepath.Join(f.dir, "tmp")
	cache := filepath.Join(tmp, fmt.Sprintf("boule-chunks-%d", os.Getuid()))
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`{"tempdir": %q, "replication_spooling_dir": %q, "replication_targets": [{"dir": {"path": %q}}]}`, tmp, f.spool, f.store)
	for _, c := range []struct {
		level string
		warns bool
	}{{"", true}, {"error", false}, {"warn", true}, {"info", true}} {
		t.Run("BOULE_LOG="+c.level, func(t *testing.T) {
			out, errs, err := run(t, []string{"BOULE_CONFIG=" + cfg, "BOULE_LOG=" + c.level}, ".load "+lib+"\nSELECT 'loaded';\n", shell, "-batch", "-bail")
			if err != nil || out != "loaded\n" {
				t.Fatalf("load: %v, stdout %q, stderr %q", err, out, errs)
			}
			if got := strings.Contains(errs, "level=WARN") && strings.Contains(errs, cache); got != c.warns {
				t.Fatalf("BOULE_LOG=%q: stderr %q; want the warning naming %s: %v", c.level, errs, cache, c.warns)
			}
		})
	}

	// BOULE_LOG_FILE takes the log off stderr, into a file the user
	// alone can read.
	logf := filepath.Join(f.dir, "boule.log")
	out, errs, err := run(t, []string{"BOULE_CONFIG=" + cfg, "BOULE_LOG=", "BOULE_LOG_FILE=" + logf}, ".load "+lib+"\nSELECT 'loaded';\n", shell, "-batch", "-bail")
	if err != nil || out != "loaded\n" || errs != "" {
		t.Fatalf("load with BOULE_LOG_FILE: %v, stdout %q, stderr %q; want nothing on stderr", err, out, errs)
	}
	b, err := os.ReadFile(logf)
	if err != nil || !strings.Contains(string(b), "level=WARN") || !strings.Contains(string(b), cache) {
		t.Fatalf("BOULE_LOG_FILE holds %q (%v); want the warning naming %s", b, err, cache)
	}
	if st, err := os.Stat(logf); err != nil || st.Mode().Perm()&0o007 != 0 {
		t.Fatalf("BOULE_LOG_FILE mode: %v %v; want no access for others", st.Mode(), err)
	}
	// A FIFO in its place fails the load at once, naming it, instead of
	// blocking at the first line until something reads.
	fifo := filepath.Join(f.dir, "boule.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	_, errs, err = run(t, []string{"BOULE_CONFIG=" + cfg, "BOULE_LOG_FILE=" + fifo}, ".load "+lib+"\n", shell, "-batch", "-bail")
	if err == nil || !strings.Contains(errs, "BOULE_LOG_FILE") || !strings.Contains(errs, fifo) {
		t.Fatalf("BOULE_LOG_FILE a FIFO: %v %q; want the load to fail naming it", err, errs)
	}

	_, errs, err = run(t, []string{"BOULE_CONFIG=" + f.cfg(), "BOULE_LOG=chatty"}, ".load "+lib+"\n", shell, "-batch", "-bail")
	if err == nil || !strings.Contains(errs, `BOULE_LOG="chatty"`) {
		t.Fatalf("a bad BOULE_LOG: %v %q; want the load to fail naming it", err, errs)
	}
}
