package clients

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boule-vfs/boule/internal/testfs"
)

// The README's quick starts assume make install's default prefix and
// write under /tmp; the tests run them with these replaced by a temporary
// prefix and directory.
const (
	readmePrefix = "/usr/local"
	readmeTmp    = "/tmp/"
)

// installed runs make install once per test binary, into a temporary
// PREFIX (and BUILD, to leave the checkout's build/ alone), and returns
// PREFIX.
func installed(t *testing.T) string {
	t.Helper()
	prefix := filepath.Join(artifacts, "prefix")
	if _, err := os.Stat(filepath.Join(prefix, "bin", "vfsctl")); err == nil {
		return prefix
	}
	mk := need(t, "make")
	cmd := exec.Command(mk, "install", "PREFIX="+prefix, "BUILD="+filepath.Join(artifacts, "install-build"))
	cmd.Dir = repoRoot
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, b)
	}
	return prefix
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// readmeBlock returns the first fenced block of README.md whose info
// string is lang, in the section headed "## "+section.
func readmeBlock(t *testing.T, section, lang string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(b), "\n## "+section+"\n")
	if !ok {
		t.Fatalf("README.md has no section %q", section)
	}
	if i := strings.Index(after, "\n## "); i >= 0 {
		after = after[:i]
	}
	var block []string
	open, found := false, false
	for _, line := range strings.Split(after, "\n") {
		switch {
		case !open && strings.HasPrefix(line, "```"):
			open, found = true, line == "```"+lang
		case open && line == "```":
			if found {
				return strings.Join(block, "\n") + "\n"
			}
			open = false
		case open && found:
			block = append(block, line)
		}
	}
	t.Fatalf("README.md's section %q has no complete ```%s block", section, lang)
	return ""
}

// step is one command of a README transcript: "$ cmd", then the lines it
// reads ("sqlite> ..." for the sqlite3 shell), and the lines it prints.
type step struct {
	cmd, stdin, stdout string
}

// readmeTranscript parses the ```sh transcript of a README section.
func readmeTranscript(t *testing.T, section string) []step {
	t.Helper()
	var steps []step
	for _, line := range strings.Split(strings.TrimSuffix(readmeBlock(t, section, "sh"), "\n"), "\n") {
		if cmd, ok := strings.CutPrefix(line, "$ "); ok {
			steps = append(steps, step{cmd: cmd})
			continue
		}
		if len(steps) == 0 {
			t.Fatalf("README.md's section %q: transcript starts with %q, not a $ command", section, line)
		}
		s := &steps[len(steps)-1]
		if in, ok := strings.CutPrefix(line, "sqlite> "); ok {
			s.stdin += in + "\n"
		} else {
			s.stdout += line + "\n"
		}
	}
	return steps
}

// quickStart runs README transcripts and snippets as a reader who
// installed into prefix would, in dir: /usr/local and /tmp/ are replaced,
// PREFIX/bin leads PATH, and each step sees the variables the previous
// ones exported. Nothing is inherited that would help: no BOULE_CONFIG,
// BOULE_EXTENSION or BOULE_LOG.
type quickStart struct {
	prefix, dir string
	exports     []string
}

func (q *quickStart) subst(s string) string {
	return strings.NewReplacer(readmePrefix, q.prefix, readmeTmp, q.dir+"/").Replace(s)
}

// bash runs script in cwd with the exports so far.
func (q *quickStart) bash(t *testing.T, cwd, script, stdin string) (string, string, error) {
	t.Helper()
	cmd := exec.Command("bash", "-c", "set -e\n"+strings.Join(q.exports, "\n")+"\n"+script)
	cmd.Dir = cwd
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "BOULE_CONFIG" && k != "BOULE_EXTENSION" && k != "BOULE_LOG" && k != "VERNEUIL_CONFIG" && k != "PATH" {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "PATH="+filepath.Join(q.prefix, "bin")+":"+os.Getenv("PATH"))
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// transcript runs each step of a README transcript and checks that it
// succeeds and, when the README shows what it prints or reads, that it
// prints exactly that.
func (q *quickStart) transcript(t *testing.T, cwd string, steps []step) {
	t.Helper()
	for _, s := range steps {
		cmd := q.subst(s.cmd)
		out, errs, err := q.bash(t, cwd, cmd, q.subst(s.stdin))
		if err != nil {
			t.Fatalf("README step %q: %v\nstdout %q\nstderr %q", s.cmd, err, out, errs)
		}
		if (s.stdout != "" || s.stdin != "") && out != q.subst(s.stdout) {
			t.Fatalf("README step %q printed %q, want %q as the README shows\nstderr %q", s.cmd, out, q.subst(s.stdout), errs)
		}
		if strings.HasPrefix(cmd, "export ") {
			q.exports = append(q.exports, cmd)
		}
	}
}

// TestQuickStarts: make install into a temporary prefix, then the README's
// shell, Python and C quick starts, taken from README.md itself, run as
// written (with that prefix for /usr/local) against a dir store, one after
// the other as a reader would.
func TestQuickStarts(t *testing.T) {
	need(t, "sqlite3")
	need(t, "cc")
	py := need(t, "/usr/bin/python3")
	dir := testfs.TempDir(t)
	q := &quickStart{prefix: installed(t), dir: dir}
	for _, f := range []string{"bin/vfsctl", "lib/libboule.so", "lib/libboule.a", "include/boule.h"} {
		if _, err := os.Stat(filepath.Join(q.prefix, f)); err != nil {
			t.Fatalf("make install did not install PREFIX/%s: %v", f, err)
		}
	}

	t.Run("shell", func(t *testing.T) {
		steps := readmeTranscript(t, "Quick start: the sqlite3 shell")
		var shell bool
		for _, s := range steps {
			shell = shell || strings.HasPrefix(s.cmd, "vfsctl shell ") && !strings.Contains(s.cmd, "--vfs")
		}
		if !shell {
			t.Fatalf("the shell quick start does not run vfsctl shell without --vfs: %+v", steps)
		}
		q.transcript(t, dir, steps)
	})

	t.Run("python", func(t *testing.T) {
		if len(q.exports) == 0 {
			t.Fatal("the shell quick start exported no BOULE_CONFIG for the Python one")
		}
		script := q.subst(readmeBlock(t, "Quick start: Python", "python"))
		out, errs, err := q.bash(t, dir, shellQuote(py)+" -", script)
		if want := "1\n[('hello from python',)]\n"; err != nil || out != want {
			t.Fatalf("README's Python quick start: %v\nstdout %q, want %q\nstderr %s", err, out, want, errs)
		}
	})

	t.Run("c", func(t *testing.T) {
		work := filepath.Join(dir, "clone")
		if err := os.Mkdir(work, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(repoRoot, "examples"), filepath.Join(work, "examples")); err != nil {
			t.Fatal(err)
		}
		q.transcript(t, work, readmeTranscript(t, "Quick start: C"))
		a, errA := os.ReadFile(filepath.Join(dir, "c.db"))
		b, errB := os.ReadFile(filepath.Join(dir, "c-restored.db"))
		if errA != nil || errB != nil || len(a) == 0 || string(a) != string(b) {
			t.Fatalf("after the C quick start, c-restored.db (%d bytes, %v) is not c.db (%d bytes, %v)", len(b), errB, len(a), errA)
		}
	})
}

// TestGoFromClone: a Go program outside the clone builds with the replace
// directive and the imports the README gives, and, as the README and
// package vfs say, fails to link without mattn/go-sqlite3.
func TestGoFromClone(t *testing.T) {
	gomod := readmeBlock(t, "Install", "")
	const clone = "/path/to/your/clone/of/boule"
	if !strings.Contains(gomod, "replace github.com/boule-vfs/boule => "+clone) {
		t.Fatalf("README.md's Install section has no replace directive for %s:\n%s", clone, gomod)
	}
	quick := readmeBlock(t, "Quick start: Go", "go")
	start, end := strings.Index(quick, "import ("), strings.Index(quick, "\n)\n")
	if start < 0 || end < start {
		t.Fatalf("README.md's Go quick start has no import block:\n%s", quick)
	}
	imports := quick[start : end+3]
	const mattn = `_ "github.com/mattn/go-sqlite3"`
	if !strings.Contains(imports, mattn) {
		t.Fatalf("README.md's Go quick start does not import %s:\n%s", mattn, imports)
	}
	body := "\nvar _ config.Target\n\nfunc main() {\n\t_ = vfs.RegisterFromEnv()\n\tdb, _ := sql.Open(\"sqlite3\", \"file:/x.db?vfs=boule\")\n\t_ = db\n}\n"

	build := func(t *testing.T, imports string) (string, error) {
		dir := t.TempDir()
		sum, err := os.ReadFile(filepath.Join(repoRoot, "go.sum"))
		if err != nil {
			t.Fatal(err)
		}
		for name, data := range map[string]string{
			"go.mod":  "module example.com/quickstart\n\ngo 1.26.0\n\n" + strings.ReplaceAll(gomod, clone, repoRoot),
			"go.sum":  string(sum),
			"main.go": "package main\n\n" + imports + body,
		} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "quickstart"), ".")
		cmd.Dir = dir
		// Offline: every module comes from the module cache, checked
		// against the clone's go.sum.
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off")
		b, err := cmd.CombinedOutput()
		return string(b), err
	}
	t.Run("with mattn", func(t *testing.T) {
		if out, err := build(t, imports); err != nil {
			t.Fatalf("go build of the README's Go quick start with its replace directive: %v\n%s", err, out)
		}
	})
	t.Run("without mattn", func(t *testing.T) {
		without := strings.Replace(imports, mattn, "", 1)
		if out, err := build(t, without); err == nil || !strings.Contains(out, "undefined reference to `sqlite3_") {
			t.Fatalf("go build without %s: %v, want a link failure with undefined sqlite3_ references:\n%s", mattn, err, out)
		}
	})
}
