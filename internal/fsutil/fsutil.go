package fsutil

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// ErrNotRegular is returned, wrapped in an *fs.PathError that names the
// file and says what it is, when a file that should be a regular file is
// a named pipe, a device, a socket, a directory, or a symbolic link that
// is not followed.
var ErrNotRegular = errors.New("not a regular file")

// ErrTooLarge is returned, wrapped, by ReadFileMax when the file holds more
// than the limit.
var ErrTooLarge = errors.New("file too large")

// openFlags are the flags every read of a regular file uses. O_NONBLOCK
// makes open(2) return at once for a named pipe with no writer (reads of
// regular files ignore it); O_CLOEXEC keeps the descriptor from children.
const openFlags = os.O_RDONLY | syscall.O_NONBLOCK | syscall.O_CLOEXEC

// Open opens the regular file at path for reading, without blocking and
// without following a symbolic link at path (a link is never where Boule
// writes a file). It returns the file's status, taken from the open file.
// Anything but a regular file is an error wrapping ErrNotRegular; a
// symbolic link is one too, where the system reports ELOOP.
func Open(path string) (*os.File, fs.FileInfo, error) {
	return open(path, openFlags|syscall.O_NOFOLLOW)
}

// OpenFollow is Open for a directory that someone else fills, where a
// file may be a symbolic link to a regular file: it follows links.
func OpenFollow(path string) (*os.File, fs.FileInfo, error) {
	return open(path, openFlags)
}

func open(path string, flags int) (*os.File, fs.FileInfo, error) {
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) && flags&syscall.O_NOFOLLOW != 0 {
			if fi, lerr := os.Lstat(path); lerr == nil && fi.Mode().Type() == fs.ModeSymlink {
				return nil, nil, notRegular(path, fi.Mode())
			}
		}
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, notRegular(path, fi.Mode())
	}
	return f, fi, nil
}

func notRegular(path string, mode fs.FileMode) error {
	return &fs.PathError{Op: "open", Path: path, Err: fmt.Errorf("is %s, %w", FileKind(mode), ErrNotRegular)}
}

// ReadFile reads the whole regular file at path, opened as Open opens it.
// A missing file is an error wrapping fs.ErrNotExist, as for os.ReadFile.
func ReadFile(path string) ([]byte, error) {
	return ReadFileMax(path, -1)
}

// ReadFileMax is ReadFile for a file of at most limit bytes (no limit when
// negative): a larger file is an error wrapping ErrTooLarge, refused from
// its size when it is opened, or once more than limit bytes were read
// from a file that grew meanwhile.
func ReadFileMax(path string, limit int64) ([]byte, error) {
	f, fi, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readAll(f, path, fi.Size(), limit)
}

// readAll reads f, a regular file of about size bytes opened with Open,
// to its end, at most limit bytes (no limit when negative).
func readAll(f *os.File, path string, size, limit int64) ([]byte, error) {
	if limit >= 0 && size > limit {
		return nil, &fs.PathError{Op: "read", Path: path,
			Err: fmt.Errorf("%d bytes, more than the %d it may have: %w", size, limit, ErrTooLarge)}
	}
	b := make([]byte, 0, size+1)
	for {
		n, err := f.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if limit >= 0 && int64(len(b)) > limit {
			return nil, &fs.PathError{Op: "read", Path: path,
				Err: fmt.Errorf("more than the %d bytes it may have: %w", limit, ErrTooLarge)}
		}
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return nil, err
		}
		if len(b) == cap(b) {
			b = slices.Grow(b, 4096)
		}
	}
}

// ReadDir reads the directory at path, as os.ReadDir does (entries sorted
// by name), but never blocks in open(2): anything but a directory (a
// named pipe, say) is an error, ENOTDIR. It follows a symbolic link.
func ReadDir(path string) ([]fs.DirEntry, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	entries, err := f.ReadDir(-1)
	slices.SortFunc(entries, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return entries, err
}

// fileKinds names the file types FileKind tells apart, by the mode bit
// that marks each, in the order it tests them (a character device has
// ModeDevice set too).
var fileKinds = []struct {
	bit  fs.FileMode
	name string
}{
	{fs.ModeDir, "a directory"},
	{fs.ModeSymlink, "a symbolic link"},
	{fs.ModeNamedPipe, "a named pipe (FIFO)"},
	{fs.ModeSocket, "a socket"},
	{fs.ModeCharDevice, "a character device"},
	{fs.ModeDevice, "a block device"},
}

// FileKind names the type of a file mode for messages: "a named pipe
// (FIFO)", "a character device", "a regular file".
func FileKind(mode fs.FileMode) string {
	t := mode.Type()
	if t == 0 {
		return "a regular file"
	}
	for _, k := range fileKinds {
		if t&k.bit != 0 {
			return k.name
		}
	}
	return "an irregular file"
}

// Irregular returns what is at path, not following a symbolic link, when
// it is not a regular file (a directory, a named pipe, a device, a link),
// for a caller about to replace path by renaming a file over it; it
// returns nil, nil when nothing or a regular file is there.
func Irregular(path string) (fs.FileInfo, error) {
	st, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, nil
	case err != nil:
		return nil, err
	case st.Mode().IsRegular():
		return nil, nil
	}
	return st, nil
}

// DirEmpty reports whether the directory p is empty or does not exist.
func DirEmpty(p string) bool {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return true
	}
	defer f.Close()
	names, _ := f.Readdirnames(1)
	return len(names) == 0
}

// Exists reports whether p exists.
func Exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// CreateTemp creates a new file in dir, named prefix and a random suffix,
// with mode perm less what the umask takes away (a file created read-only
// is still open for writing).
func CreateTemp(dir, prefix string, perm fs.FileMode) (f *os.File, err error) {
	for range 100 {
		name := filepath.Join(dir, prefix+strconv.FormatUint(rand.Uint64(), 36))
		f, err = os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, perm)
		if !errors.Is(err, fs.ErrExist) {
			break
		}
	}
	return f, err
}

// NoSpace reports whether err says the file system is full, or the
// user's quota on it is used up.
func NoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// Owner returns the user that owns fi, and false where the system does
// not say.
func Owner(fi fs.FileInfo) (uid int, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(st.Uid), true
}

// CopyPerm returns the permission bits of fi, less the group's unless
// its group is this process's: a copy this process creates gets this
// process's group, and the bits of the original's group would open the
// copy to another group (a 0640 database of group payroll, copied with
// group staff, readable by staff).
func CopyPerm(fi fs.FileInfo) fs.FileMode {
	m := fi.Mode().Perm()
	if s, ok := fi.Sys().(*syscall.Stat_t); ok && int(s.Gid) != os.Getegid() {
		m &^= 0o070
	}
	return m
}
