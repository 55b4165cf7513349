//go:build unix

package restore

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// The bytes SQLite's unix VFS locks in a database file: PENDING_BYTE, the
// RESERVED byte after it, then the 510 SHARED bytes.
const (
	sqlitePendingByte = 0x40000000
	sqliteLockBytes   = 512
)

// sweepOpenFlags open a possible leftover temp file without following a
// symbolic link or blocking on a named pipe put in its place.
const sweepOpenFlags = os.O_RDONLY | syscall.O_NOFOLLOW | syscall.O_NONBLOCK

// sqliteLockHolder reports whether a process holds a SQLite lock (any
// POSIX record lock on SQLite's lock bytes) on the file at path, and its
// pid when the kernel says (0 when it does not). Call it only when this
// process does not have the file open: closing the descriptor it opens
// would drop this process's own POSIX locks on the file.
func sqliteLockHolder(path string) (int, bool, error) {
	f, err := os.OpenFile(path, sweepOpenFlags, 0)
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: sqlitePendingByte, Len: sqliteLockBytes}
	if err := unix.FcntlFlock(f.Fd(), unix.F_GETLK, &lk); err != nil {
		return 0, false, &fs.PathError{Op: "fcntl F_GETLK", Path: path, Err: err}
	}
	if lk.Type == unix.F_UNLCK {
		return 0, false, nil
	}
	return max(int(lk.Pid), 0), true, nil
}

// openersOf returns the pids of the processes that have the file st open,
// among those whose descriptors /proc lets this process see (all of them
// for root; a user's own otherwise). It finds none where there is no
// /proc.
func openersOf(st fs.FileInfo) []int {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid <= 0 {
			continue
		}
		fdDir := filepath.Join("/proc", p.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue // gone, or another user's
		}
		for _, fd := range fds {
			// Stat follows the descriptor's link to the open file
			// without opening it.
			if fi, err := os.Stat(filepath.Join(fdDir, fd.Name())); err == nil && os.SameFile(fi, st) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// lockTemp takes an exclusive flock on f without waiting, and reports
// whether it got it. The kernel releases it when the process dies, which
// is how a restore tells a temp file of a killed restore from one of a
// restore under way.
func lockTemp(f *os.File) (bool, error) {
	err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EWOULDBLOCK):
		return false, nil
	default:
		return false, err
	}
}

// renameNoReplace moves oldpath to newpath unless something is at
// newpath, in which case it fails with an error matching fs.ErrExist: a
// hard link fails atomically when the name is taken. Where hard links
// are not supported it checks, then renames.
func renameNoReplace(oldpath, newpath string) error {
	err := os.Link(oldpath, newpath)
	switch {
	case err == nil:
		return os.Remove(oldpath)
	case errors.Is(err, fs.ErrExist):
		return err
	}
	if _, lerr := os.Lstat(newpath); lerr == nil {
		return &fs.PathError{Op: "rename", Path: newpath, Err: fs.ErrExist}
	}
	return os.Rename(oldpath, newpath)
}
