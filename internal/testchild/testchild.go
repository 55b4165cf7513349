package testchild

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"testing"
)

// Run runs the child that the environment variable env names, then exits
// the process: with status 0 when the child returns nil, 1 (the error on
// stderr) when it fails, and 2 when children has no such name. When env
// is unset or empty, Run returns and the process runs its tests.
func Run(env string, children map[string]func() error) {
	name := os.Getenv(env)
	if name == "" {
		return
	}
	child, ok := children[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown child %q\n", name)
		os.Exit(2)
	}
	if err := child(); err != nil {
		fmt.Fprintf(os.Stderr, "child %s: %v\n", name, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Pipes returns pipes to cmd's standard input and from its standard
// output, for a test that talks to a child process it has yet to start.
func Pipes(t testing.TB, cmd *exec.Cmd) (io.WriteCloser, io.ReadCloser) {
	t.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	return stdin, stdout
}
