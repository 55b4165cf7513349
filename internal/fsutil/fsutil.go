// Package fsutil holds small file system helpers shared by the spool and
// the uploader.
package fsutil

import "os"

// DirEmpty reports whether the directory p is empty or does not exist.
func DirEmpty(p string) bool {
	f, err := os.Open(p)
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
