//go:build cgo

package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// pureBinary returns the path of vfsctl built with CGO_ENABLED=0, once per
// test run.
func pureBinary(t testing.TB) string {
	t.Helper()
	bin := build(t, "vfsctl-nocgo", "CGO_ENABLED=0")
	out, err := exec.Command("go", "version", "-m", bin).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "CGO_ENABLED=0") {
		t.Fatalf("go version -m %s: %v %s; want a build with CGO_ENABLED=0", bin, err, out)
	}
	return bin
}

// runBinary runs bin with args and returns its exit code and output.
func runBinary(t *testing.T, bin string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "BOULE_CONFIG=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return exitOK, out.String(), errb.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String(), errb.String()
	}
	t.Fatalf("%s %q: %v", bin, args, err)
	return 0, "", ""
}

// TestPureGo: vfsctl built without cgo restores byte for byte, verifies,
// and flushes what is spooled; sync, and a flush that needs a new
// snapshot of the database, fail saying that they need the cgo build,
// rather than claiming what the store does not hold.
func TestPureGo(t *testing.T) {
	bin := pureBinary(t)

	t.Run("restore", func(t *testing.T) {
		f := flushed(t)
		want := f.bytes(t)
		for _, tc := range []struct {
			name string
			args []string
		}{
			{"SOURCE", []string{f.db}},
			{"source-path", []string{"--source-path", f.db}},
			{"manifest name", []string{"--manifest", "boule://" + hostname(t) + f.db}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				out := filepath.Join(t.TempDir(), "restored.db")
				args := append([]string{"--config", f.config(), "restore", "--out", out}, tc.args...)
				if code, stdout, errs := runBinary(t, bin, args...); code != exitOK {
					t.Fatalf("pure-Go vfsctl %q=%d %q %q", args, code, stdout, errs)
				}
				got, err := os.ReadFile(out)
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("pure-Go restore wrote %d bytes (%v), want the %d bytes of %s", len(got), err, len(want), f.db)
				}
			})
		}
		code, stdout, errs := runBinary(t, bin, "--config", f.config(), "restore", f.db)
		if code != exitOK || stdout != string(want) {
			t.Fatalf("pure-Go restore to standard output=%d, %d bytes %q; want exit 0 and the %d bytes of %s", code, len(stdout), errs, len(want), f.db)
		}
		if code, stdout, errs := runBinary(t, bin, "--config", f.config(), "verify", f.db); code != exitOK || !strings.Contains(stdout, " 0 missing, 0 corrupt, 0 unreadable") {
			t.Fatalf("pure-Go verify=%d %q %q; want exit 0 and nothing bad", code, stdout, errs)
		}
	})

	t.Run("sync", func(t *testing.T) {
		f := newFixture(t)
		code, stdout, errs := runBinary(t, bin, "--config", f.config(), "sync", f.db)
		want := "vfsctl sync: this vfsctl was built without cgo (CGO_ENABLED=0), and sync reads the database through SQLite: that needs the cgo build of vfsctl"
		if code != exitUsage || !strings.Contains(errs, want) {
			t.Fatalf("pure-Go sync=%d %q %q; want exit %d and %q", code, stdout, errs, exitUsage, want)
		}
		if code, _, errs := runBinary(t, bin, "sync", "--help"); code != exitOK || !strings.Contains(errs, "Needs a vfsctl\nbuilt with cgo") {
			t.Fatalf("pure-Go sync --help=%d %q; want exit 0 and the need for cgo", code, errs)
		}
	})

	t.Run("flush", func(t *testing.T) {
		f := newFixture(t)
		code, stdout, errs := runBinary(t, bin, "--config", f.config(), "flush", f.spool)
		if code != exitOK || !strings.Contains(stdout, "ok      "+f.db) {
			t.Fatalf("pure-Go flush=%d %q %q", code, stdout, errs)
		}
		f.checkStore(t, hostname(t))
		before := storedBytes(t, f, hostname(t))

		// A writer killed between its commit and its snapshot: the
		// pure-Go flush cannot take a new snapshot, and fails.
		f.killedWriter(t)
		code, stdout, errs = runBinary(t, bin, "--config", f.config(), "flush", f.spool)
		want := "its last snapshot never finished (a transaction is in flight, or its writer died), and a new snapshot failed too: " +
			"this vfsctl was built without cgo (CGO_ENABLED=0), and taking a new snapshot of " + f.db + " reads it through SQLite: that needs the cgo build of vfsctl"
		if code != exitFail || !strings.Contains(stdout, "FAILED  "+f.db) || !strings.Contains(errs, want) {
			t.Fatalf("pure-Go flush after a killed writer=%d %q %q; want exit 1, FAILED and %q", code, stdout, errs, want)
		}
		if after := storedBytes(t, f, hostname(t)); !bytes.Equal(after, before) {
			t.Fatalf("the failed pure-Go flush changed what the store holds")
		}
		// The cgo build takes the snapshot the pure-Go one could not.
		if code, stdout, errs := vfsctl(t, "--config", f.config(), "flush", f.spool); code != exitOK {
			t.Fatalf("cgo flush after the pure-Go one=%d %q %q", code, stdout, errs)
		}
		f.checkStore(t, hostname(t))
	})

	t.Run("flush gone", func(t *testing.T) {
		f := newFixture(t)
		f.leaveMarker(t)
		if err := os.Remove(f.db); err != nil {
			t.Fatal(err)
		}
		code, stdout, errs := runBinary(t, bin, "--config", f.config(), "flush", f.spool)
		if code != exitOK || !strings.Contains(stdout, "gone    "+f.db) {
			t.Fatalf("pure-Go flush of a deleted database=%d %q %q; want exit 0 and gone", code, stdout, errs)
		}
	})
}
