package fsutil

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestDirEmpty(t *testing.T) {
	dir := t.TempDir()
	if !DirEmpty(dir) {
		t.Fatal("DirEmpty(new dir)=false, want true")
	}
	if !DirEmpty(filepath.Join(dir, "missing")) {
		t.Fatal("DirEmpty(missing)=false, want true")
	}
	if err := os.WriteFile(filepath.Join(dir, "f"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if DirEmpty(dir) {
		t.Fatal("DirEmpty(dir with a file)=true, want false")
	}
}

// threeKinds returns a new directory that holds file, a read-only regular
// file that says "contents", fifo, a named pipe, and link, a symbolic
// link to file.
func threeKinds(t testing.TB) (dir, file, fifo, link string) {
	t.Helper()
	dir = t.TempDir()
	file = filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("contents"), 0o400); err != nil {
		t.Fatal(err)
	}
	fifo = filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	link = filepath.Join(dir, "link")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	return dir, file, fifo, link
}

// TestReadFile: only a regular file is read, never blocking, and what it
// is not is named; a missing file is fs.ErrNotExist, as for os.ReadFile.
func TestReadFile(t *testing.T) {
	dir, file, fifo, link := threeKinds(t)
	for _, tc := range []struct {
		name, path string
		open       func(string) (*os.File, fs.FileInfo, error)
		err        error
		kind       string
	}{
		{"regular file", file, Open, nil, ""},
		{"named pipe", fifo, Open, ErrNotRegular, "is a named pipe (FIFO)"},
		{"named pipe, following links", fifo, OpenFollow, ErrNotRegular, "is a named pipe (FIFO)"},
		{"directory", dir, Open, ErrNotRegular, "is a directory"},
		{"character device", "/dev/null", Open, ErrNotRegular, "is a character device"},
		{"symbolic link", link, Open, ErrNotRegular, "is a symbolic link"},
		{"symbolic link, followed", link, OpenFollow, nil, ""},
		{"missing", filepath.Join(dir, "missing"), Open, fs.ErrNotExist, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				f, fi, err := tc.open(tc.path)
				if err == nil {
					defer f.Close()
					if !fi.Mode().IsRegular() {
						err = fmt.Errorf("opened %v", fi.Mode())
					}
				}
				done <- err
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				if w, werr := os.OpenFile(tc.path, os.O_WRONLY|syscall.O_NONBLOCK, 0); werr == nil {
					w.Close()
				}
				t.Fatalf("open of %s blocked", tc.path)
			}
			if !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Fatalf("open(%s)=%v, want %v", tc.path, err, tc.err)
			}
			if tc.kind != "" && !strings.Contains(err.Error(), tc.path+": "+tc.kind+", not a regular file") {
				t.Errorf("open(%s)=%q, want it to say %q", tc.path, err, tc.kind)
			}
		})
	}
	if b, err := ReadFile(file); err != nil || string(b) != "contents" {
		t.Errorf("ReadFile()=%q, %v, want the contents", b, err)
	}
	if _, err := ReadFile(fifo); !errors.Is(err, ErrNotRegular) {
		t.Errorf("ReadFile(fifo)=%v, want ErrNotRegular", err)
	}
	if b, err := ReadFileMax(file, 8); err != nil || string(b) != "contents" {
		t.Errorf("ReadFileMax(8)=%q, %v, want the contents", b, err)
	}
	if _, err := ReadFileMax(file, 7); !errors.Is(err, ErrTooLarge) {
		t.Errorf("ReadFileMax(7)=%v, want ErrTooLarge", err)
	}
	if _, err := ReadDir(fifo); !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("ReadDir(fifo)=%v, want ENOTDIR", err)
	}
	if !DirEmpty(fifo) {
		t.Error("DirEmpty(fifo)=false, want true")
	}
	entries, err := ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if err != nil || strings.Join(names, " ") != "fifo file link" {
		t.Errorf("ReadDir()=%q, %v, want fifo file link", names, err)
	}
}

func TestFileKind(t *testing.T) {
	for _, tc := range []struct {
		mode fs.FileMode
		want string
	}{
		{0o644, "a regular file"},
		{fs.ModeDir | 0o755, "a directory"},
		{fs.ModeSymlink | 0o777, "a symbolic link"},
		{fs.ModeNamedPipe | 0o644, "a named pipe (FIFO)"},
		{fs.ModeSocket | 0o755, "a socket"},
		{fs.ModeDevice | fs.ModeCharDevice | 0o666, "a character device"},
		{fs.ModeDevice | 0o660, "a block device"},
		{fs.ModeIrregular, "an irregular file"},
	} {
		if got := FileKind(tc.mode); got != tc.want {
			t.Errorf("FileKind(%v)=%q, want %q", tc.mode, got, tc.want)
		}
	}
}

// TestIrregular: Irregular tells what is at a path apart from nothing and
// a regular file, without following a symbolic link.
func TestIrregular(t *testing.T) {
	dir, file, fifo, link := threeKinds(t)
	for _, tc := range []struct {
		name string
		path string
		want fs.FileMode // the type; 0 for none
	}{
		{"missing", filepath.Join(dir, "missing"), 0},
		{"regular file", file, 0},
		{"directory", dir, fs.ModeDir},
		{"named pipe", fifo, fs.ModeNamedPipe},
		{"link to a regular file", link, fs.ModeSymlink},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := Irregular(tc.path)
			if err != nil {
				t.Fatalf("Irregular()=%v, want nil error", err)
			}
			got := "nil"
			if st != nil {
				got = FileKind(st.Mode())
			}
			want := "nil"
			if tc.want != 0 {
				want = FileKind(tc.want)
			}
			if got != want {
				t.Errorf("Irregular()=%s, want %s", got, want)
			}
		})
	}
	if _, err := Irregular(filepath.Join(file, "below")); !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("Irregular(below a file)=%v, want ENOTDIR", err)
	}
}
