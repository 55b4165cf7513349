package sqlshell

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/boule-vfs/boule/internal/testchild"
)

// Shell is a sqlite3 shell process with a database open.
type Shell struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

// Path returns the sqlite3 shell's path. It fails the test when there is
// no sqlite3 on the PATH.
func Path(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("sqlite3")
	if err != nil {
		t.Fatalf("the sqlite3 shell is required (.ci/run installs it): %v", err)
	}
	return p
}

// Start starts the sqlite3 shell on path; the test's cleanup closes it.
// What the shell writes to stderr goes to the test's stderr.
func Start(t testing.TB, path string) *Shell {
	t.Helper()
	cmd := exec.Command(Path(t), path)
	cmd.Stderr = os.Stderr
	return StartCmd(t, cmd)
}

// StartCmd starts cmd, a sqlite3 shell with the arguments and environment
// the test chose; the test's cleanup closes it. When cmd.Stderr is nil,
// what the shell writes to stderr is read with its output.
func StartCmd(t testing.TB, cmd *exec.Cmd) *Shell {
	t.Helper()
	stdin, stdout := testchild.Pipes(t, cmd)
	if cmd.Stderr == nil {
		cmd.Stderr = cmd.Stdout
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("sqlite3: %v", err)
	}
	sh := &Shell{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	t.Cleanup(sh.Close)
	return sh
}

// Pid returns the shell's process id.
func (sh *Shell) Pid() int { return sh.cmd.Process.Pid }

// Do runs sql, then waits for the shell to print mark, which tells that
// sql has run.
func (sh *Shell) Do(t testing.TB, sql, mark string) {
	t.Helper()
	sh.send(t, fmt.Sprintf("%s\nSELECT '%s';\n", sql, mark))
	sh.until(t, sql, mark)
}

// Output runs script (SQL and dot-commands), then has the shell print
// mark, and returns what the shell wrote before mark, one line each.
func (sh *Shell) Output(t testing.TB, script, mark string) []string {
	t.Helper()
	sh.send(t, fmt.Sprintf("%s\n.print %s\n", script, mark))
	return sh.until(t, script, mark)
}

func (sh *Shell) send(t testing.TB, s string) {
	t.Helper()
	if _, err := io.WriteString(sh.stdin, s); err != nil {
		t.Fatal(err)
	}
}

// until reads the shell's lines up to the one that is mark, and returns
// those before it.
func (sh *Shell) until(t testing.TB, sql, mark string) []string {
	t.Helper()
	var lines []string
	for {
		line, err := sh.out.ReadString('\n')
		if err != nil {
			t.Fatalf("sqlite3 after %q: %v; it wrote %q", sql, err, lines)
		}
		if strings.TrimSpace(line) == mark {
			return lines
		}
		lines = append(lines, strings.TrimSuffix(line, "\n"))
	}
}

// Close ends the shell and waits for it. It may be called more than once.
func (sh *Shell) Close() {
	sh.stdin.Close()
	_ = sh.cmd.Wait()
}
