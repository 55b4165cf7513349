//go:build !unix

package restore

import (
	"errors"
	"io/fs"
	"os"
)

const sweepOpenFlags = os.O_RDONLY

// sqliteLockHolder cannot see locks here.
func sqliteLockHolder(path string) (int, bool, error) { return 0, false, nil }

// openersOf cannot see other processes' files here.
func openersOf(st fs.FileInfo) []int { return nil }

// lockTemp cannot lock here: every leftover temp file looks abandoned.
func lockTemp(f *os.File) (bool, error) { return true, nil }

// renameNoReplace checks, then renames.
func renameNoReplace(oldpath, newpath string) error {
	if _, err := os.Lstat(newpath); err == nil {
		return &fs.PathError{Op: "rename", Path: newpath, Err: fs.ErrExist}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return os.Rename(oldpath, newpath)
}
