package main

import (
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/boule-vfs/boule/store"
)

// parseSourceArgs parses a command's arguments as the command does: its
// source flags, then what is left.
func parseSourceArgs(t testing.TB, a sourceArgs, args []string) (source, []string, error) {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	a.define(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	return a.source(fs.Args())
}

// TestSourceArgs: every command names its source the same way, SOURCE as
// an argument, with --hostname; --manifest where the command takes one;
// restore's --source-path as another spelling of SOURCE; and whatever
// follows SOURCE is shell's own.
func TestSourceArgs(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	here := defaultHostname()
	var (
		plain   = sourceArgs{}
		verify  = sourceArgs{withManifest: true}
		restore = sourceArgs{withManifest: true, withSourcePath: true}
		shell   = sourceArgs{withManifest: true, trailing: true}
	)
	for _, tc := range []struct {
		name       string
		cmd        sourceArgs
		args       []string
		host, path string   // the source wanted
		rest       []string // the arguments left
		err        string   // the usage error wanted instead
	}{
		{name: "path", cmd: plain, args: []string{"/data/app.db"}, host: here, path: "/data/app.db"},
		{name: "relative path", cmd: plain, args: []string{"app.db"}, host: here, path: filepath.Join(wd, "app.db")},
		{name: "hostname", cmd: plain, args: []string{"--hostname", "db1", "/data/app.db"}, host: "db1", path: "/data/app.db"},
		{name: "name", cmd: plain, args: []string{"boule://db1/data/app.db"}, host: "db1", path: "/data/app.db"},
		{name: "verneuil name", cmd: plain, args: []string{"verneuil://db1/data/app.db"}, host: "db1", path: "/data/app.db"},
		{name: "verneuil manifest name", cmd: verify, args: []string{"--manifest", "verneuil://db1/data/app.db"}, host: "db1", path: "/data/app.db"},
		{name: "name and its host", cmd: plain, args: []string{"--hostname", "db1", "boule://db1/data/app.db"}, host: "db1", path: "/data/app.db"},
		{name: "name and another host", cmd: plain, args: []string{"--hostname", "db2", "boule://db1/data/app.db"}, err: `--hostname "db2" contradicts the host in boule://db1/data/app.db`},
		{name: "hostile path", cmd: plain, args: []string{"/a/../etc/passwd"}, err: "not a clean file path"},
		{name: "none", cmd: plain, err: "want exactly one SOURCE, got 0 arguments"},
		{name: "two", cmd: plain, args: []string{"/a.db", "/b.db"}, err: "want exactly one SOURCE, got 2 arguments"},
		{name: "verify path", cmd: verify, args: []string{"/data/app.db"}, host: here, path: "/data/app.db"},
		{name: "verify manifest name", cmd: verify, args: []string{"--manifest", "boule://db1/data/app.db"}, host: "db1", path: "/data/app.db"},
		{name: "verify none", cmd: verify, err: "want one SOURCE or --manifest"},
		{name: "verify two", cmd: verify, args: []string{"/a.db", "/b.db"}, err: "want exactly one SOURCE, got 2 arguments"},
		{name: "verify both", cmd: verify, args: []string{"--manifest", "boule://db1/a.db", "/b.db"}, err: "give SOURCE or --manifest, not both"},
		{name: "verify manifest and hostname", cmd: verify, args: []string{"--hostname", "db1", "--manifest", "boule://db1/a.db"}, err: "give SOURCE with --hostname, or --manifest, not both"},
		{name: "restore path", cmd: restore, args: []string{"--hostname", "db1", "/data/app.db"}, host: "db1", path: "/data/app.db"},
		{name: "restore source-path", cmd: restore, args: []string{"--hostname", "db1", "--source-path", "/data/app.db"}, host: "db1", path: "/data/app.db"},
		{name: "restore source-path name", cmd: restore, args: []string{"--source-path", "boule://db1/data/app.db"}, host: "db1", path: "/data/app.db"},
		{name: "restore both paths", cmd: restore, args: []string{"--source-path", "/a.db", "/a.db"}, err: "give SOURCE or --source-path, not both"},
		{name: "restore source-path and manifest", cmd: restore, args: []string{"--manifest", "x", "--source-path", "/y"}, err: "give --source-path or --manifest, not both"},
		{name: "restore all three", cmd: restore, args: []string{"--manifest", "x", "--source-path", "/y", "/z"}, err: "give one of SOURCE, --source-path, --manifest"},
		{name: "restore none", cmd: restore, err: "want one SOURCE or --manifest"},
		{name: "shell path", cmd: shell, args: []string{"/data/app.db"}, host: here, path: "/data/app.db"},
		{name: "shell arguments", cmd: shell, args: []string{"/data/app.db", "--", "-batch", "-bail"}, host: here, path: "/data/app.db", rest: []string{"-batch", "-bail"}},
		{name: "shell arguments without --", cmd: shell, args: []string{"/data/app.db", "-batch"}, host: here, path: "/data/app.db", rest: []string{"-batch"}},
		{name: "shell manifest and arguments", cmd: shell, args: []string{"--manifest", "boule://db1/data/app.db", "--", "-batch"}, host: "db1", path: "/data/app.db", rest: []string{"-batch"}},
		{name: "shell none", cmd: shell, args: []string{}, err: "want one SOURCE or --manifest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, rest, err := parseSourceArgs(t, tc.cmd, tc.args)
			if tc.err != "" {
				var ue usageError
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("source(%q)=%+v, %v; want the usage error %q", tc.args, src, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("source(%q)=%v", tc.args, err)
			}
			key, err := store.ManifestKey(tc.host, tc.path)
			if err != nil {
				t.Fatal(err)
			}
			if want := (source{host: tc.host, path: tc.path, key: key}); src != want {
				t.Errorf("source(%q)=%+v, want %+v", tc.args, src, want)
			}
			if !slices.Equal(rest, tc.rest) {
				t.Errorf("source(%q) left %q, want %q", tc.args, rest, tc.rest)
			}
		})
	}
}

// TestSourceArgsManifestFile: --manifest takes a manifest file, which must
// be a regular file.
func TestSourceArgsManifestFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "app.manifest")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, arg string
		want      source
		err       string
	}{
		{"file", file, source{file: file}, ""},
		{"directory", filepath.Dir(file), source{}, "is not a regular file"},
		{"missing", file + ".no", source{}, "manifest file: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, _, err := parseSourceArgs(t, sourceArgs{withManifest: true}, []string{"--manifest", tc.arg})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("source(--manifest %s)=%+v, %v; want an error %q", tc.arg, src, err, tc.err)
				}
				return
			}
			if err != nil || src != tc.want {
				t.Fatalf("source(--manifest %s)=%+v, %v; want %+v", tc.arg, src, err, tc.want)
			}
		})
	}
}
