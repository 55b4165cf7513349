package testfs

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Mkfifo makes a named pipe at p, creating its directory.
func Mkfifo(t testing.TB, p string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(p)
	if err := syscall.Mkfifo(p, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Promptly runs f and returns its error, failing t if it is still running
// after 10 seconds: then it opens the named pipe at fifo for writing, for
// a few seconds, which lets each open(2) blocked on it return, so that
// the test ends.
func Promptly(t testing.TB, fifo string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for range 500 {
		if w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			w.Close()
		}
		select {
		case <-done:
			t.Fatalf("blocked on the named pipe %s until something opened it for writing", fifo)
		case <-tick.C:
		}
	}
	t.Fatalf("blocked on the named pipe %s", fifo)
	return nil
}

// WantNamedPipe fails t unless err says that p is a named pipe.
func WantNamedPipe(t testing.TB, err error, p string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "named pipe") {
		t.Fatalf("err=%v, want an error saying %s is a named pipe", err, p)
	}
}

// WithUmask runs f under the umask mask. The umask is the process's: tests
// that call it must not run in parallel.
func WithUmask(mask int, f func()) {
	old := syscall.Umask(mask)
	defer syscall.Umask(old)
	f()
}

// Modes returns the permission bits of everything under root, by path
// relative to root.
func Modes(t testing.TB, root string) map[string]fs.FileMode {
	t.Helper()
	out := map[string]fs.FileMode{}
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = fi.Mode()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TempDir returns t.TempDir() with its symbolic links resolved, as the
// paths the VFS and vfsctl compare and print are.
func TempDir(t testing.TB) string {
	t.Helper()
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// WantSameFile fails the test unless the file at got holds the bytes of
// the file at want, saying where they first differ.
func WantSameFile(t testing.TB, got, want string) {
	t.Helper()
	g, err := os.ReadFile(got)
	if err != nil {
		t.Fatal(err)
	}
	w, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(g, w) {
		i := 0
		for i < min(len(g), len(w)) && g[i] == w[i] {
			i++
		}
		t.Fatalf("%s holds %d bytes, %s %d; first difference at %d", got, len(g), want, len(w), i)
	}
}

// Site is where a test replicates a database to a dir store: all of it in
// one temporary directory, Dir.
type Site struct {
	Dir   string
	Spool string // the spool directory, not created
	Store string // the dir store's directory, created empty
	DB    string // the database, not created
}

// NewSite makes a Site in a new TempDir, its database named db.
func NewSite(t testing.TB, db string) Site {
	t.Helper()
	dir := TempDir(t)
	s := Site{Dir: dir, Spool: filepath.Join(dir, "spool"), Store: filepath.Join(dir, "store"), DB: filepath.Join(dir, db)}
	if err := os.Mkdir(s.Store, 0o755); err != nil {
		t.Fatal(err)
	}
	return s
}

// Config returns the configuration (JSON) that spools under s.Spool and
// replicates to the dir store at s.Store.
func (s Site) Config() string {
	return fmt.Sprintf(`{"replication_spooling_dir": %q, "replication_targets": [{"dir": {"path": %q}}]}`, s.Spool, s.Store)
}

// MountTmpfs mounts a tmpfs of size (a mount option such as "64m") on dir,
// creating dir, until the test ends. Without root it skips, except under
// CI, which runs as root.
func MountTmpfs(t testing.TB, dir, size string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mount tmpfs (CI runs as root): %v: %s", err, out)
		}
		t.Skipf("cannot mount a tmpfs here (needs root): %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
}

// MountExt4 makes an ext4 file system with its default options in a
// sparse image of size bytes, and mounts it on dir through a loop device
// until the test ends. It returns the loop device's name ("loop3"), whose
// counters are in /sys/block/<name>/stat. Without root it skips, except
// under CI, which runs as root.
func MountExt4(t testing.TB, dir string, size int64) (device string) {
	t.Helper()
	img := filepath.Join(TempDir(t), "ext4.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 (e2fsprogs): %v: %s", err, out)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("losetup (CI runs as root): %v: %s", err, out)
		}
		t.Skipf("cannot set up a loop device here (needs root): %v: %s", err, out)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", loop).Run() })
	if out, err := exec.Command("mount", loop, dir).CombinedOutput(); err != nil {
		t.Fatalf("mount %s on %s: %v: %s", loop, dir, err, out)
	}
	// Lazily: a test's spool may keep a file of it mapped until the
	// process ends. The loop device goes with the last reference.
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return filepath.Base(loop)
}

// RemountTmpfs changes the size of the tmpfs MountTmpfs mounted on dir.
func RemountTmpfs(t testing.TB, dir, size string) {
	t.Helper()
	if out, err := exec.Command("mount", "-o", "remount,size="+size, dir).CombinedOutput(); err != nil {
		t.Fatalf("remount %s: %v: %s", dir, err, out)
	}
}

// Must returns v, and panics if err is not nil.
func Must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
