package spool

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// replaceFile renames tmp to dst, replacing the file at dst atomically, as
// rename(2) does, without making the file system write tmp out. ext4
// writes a file to disk at once when it is renamed over another
// (auto_da_alloc, on by default), to save applications that replace files
// without fsync from zero-length files after a crash. The spool is never
// fsynced and is discarded at each boot: for it that is disk traffic for
// nothing, beside the database's own fsyncs, at every snapshot and every
// upload. So the two names are swapped instead (renameat2 with
// RENAME_EXCHANGE, which ext4 does not treat so), and the old file, now at
// tmp, is removed: a crash in between leaves it in tmp/, where the sweep
// deletes leftovers. Where dst does not exist, or the file system cannot
// swap names, it renames.
func replaceFile(tmp, dst string) error {
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dst, unix.RENAME_EXCHANGE)
	if err == nil {
		_ = os.Remove(tmp)
		return nil
	}
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
		return os.Rename(tmp, dst)
	}
	return &os.LinkError{Op: "rename", Old: tmp, New: dst, Err: err}
}
