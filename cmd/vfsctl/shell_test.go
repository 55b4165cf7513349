package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFindExtension: shell finds libboule.so where make install and make
// ext put it, takes --vfs and BOULE_EXTENSION first, and otherwise fails
// naming --vfs and every place it looked.
func TestFindExtension(t *testing.T) {
	root := t.TempDir()
	file := func(parts ...string) string {
		t.Helper()
		p := filepath.Join(append([]string{root}, parts...)...)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// A make install prefix.
	installed := file("prefix", "lib", "libboule.so")
	prefixExe := filepath.Join(root, "prefix", "bin", "vfsctl")
	// A checkout, with make ext's output.
	built := file("checkout", "build", "libboule.so")
	checkout := filepath.Dir(filepath.Dir(built))
	if err := os.WriteFile(filepath.Join(checkout, "go.mod"), []byte("module github.com/boule-vfs/boule\n\ngo 1.26.0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A directory with a build/ that is not Boule's.
	other := filepath.Dir(filepath.Dir(file("other", "build", "libboule.so")))
	if err := os.WriteFile(filepath.Join(other, "go.mod"), []byte("module example.com/other\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	beside := file("beside", "libboule.so")
	env := file("env", "libboule.so")
	nowhere := filepath.Join(root, "nowhere", "vfsctl")

	for _, tc := range []struct {
		name     string
		lib, env string
		exe, wd  string
		want     string
		err      []string // substrings of the usage error wanted instead
	}{
		{name: "installed", exe: prefixExe, want: installed},
		{name: "next to vfsctl", exe: filepath.Join(root, "beside", "vfsctl"), want: beside},
		{name: "built in the checkout", exe: filepath.Join(checkout, "vfsctl"), want: built},
		{name: "go run from the checkout", exe: nowhere, wd: checkout, want: built},
		{name: "BOULE_EXTENSION", env: env, exe: prefixExe, want: env},
		{name: "--vfs first", lib: beside, env: env, exe: prefixExe, want: beside},
		{name: "--vfs bare name", lib: "libboule", exe: nowhere, want: "libboule"},
		{name: "BOULE_EXTENSION missing", env: filepath.Join(root, "no", "libboule.so"), exe: prefixExe, err: []string{"BOULE_EXTENSION " + filepath.Join(root, "no", "libboule.so") + ": no such library"}},
		{name: "--vfs missing", lib: filepath.Join(root, "no", "libboule.so"), exe: prefixExe, err: []string{"--vfs " + filepath.Join(root, "no", "libboule.so") + ": no such library"}},
		{name: "not a checkout", exe: nowhere, wd: other, err: []string{"--vfs", "BOULE_EXTENSION", filepath.Join(root, "nowhere", "libboule.so"), filepath.Join(root, "lib", "libboule.so")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := findExtension(tc.lib, tc.env, extensionCandidates(tc.exe, tc.wd))
			if tc.err != nil {
				var ue usageError
				if !errors.As(err, &ue) {
					t.Fatalf("findExtension()=%q, %v; want a usage error", got, err)
				}
				for _, w := range tc.err {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("findExtension()=%v, want it to name %q", err, w)
					}
				}
				if strings.Contains(err.Error(), filepath.Join(other, "build")) {
					t.Errorf("findExtension()=%v looked in the build/ of a directory that is not a Boule checkout", err)
				}
				return
			}
			if err != nil || filepath.Clean(got) != tc.want {
				t.Fatalf("findExtension()=%q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
