// Package sqlshell runs Debian's sqlite3 shell on a database for tests that
// need another process to hold the database open or locked.
package sqlshell

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Shell is a sqlite3 shell process with a database open.
type Shell struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

// Start starts the sqlite3 shell on path; the test's cleanup closes it.
// It fails the test when there is no sqlite3 on the PATH.
func Start(t testing.TB, path string) *Shell {
	t.Helper()
	sqlite3, err := exec.LookPath("sqlite3")
	if err != nil {
		t.Fatalf("the sqlite3 shell is required (.ci/run installs it): %v", err)
	}
	cmd := exec.Command(sqlite3, path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
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
	if _, err := fmt.Fprintf(sh.stdin, "%s\nSELECT '%s';\n", sql, mark); err != nil {
		t.Fatal(err)
	}
	for {
		line, err := sh.out.ReadString('\n')
		if err != nil {
			t.Fatalf("sqlite3 after %q: %v", sql, err)
		}
		if strings.TrimSpace(line) == mark {
			return
		}
	}
}

// Close ends the shell and waits for it. It may be called more than once.
func (sh *Shell) Close() {
	sh.stdin.Close()
	_ = sh.cmd.Wait()
}
