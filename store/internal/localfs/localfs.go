package localfs

import (
	"io/fs"
	"os"

	"github.com/boule-vfs/boule/internal/fsutil"
)

// WriteTemp writes data to a new file in dir, named prefix and a random
// suffix, created with mode perm (less what the umask takes away), and
// returns its path, for the caller to rename or link into place. With
// sync, the data reaches the disk before it returns. On failure nothing is
// left behind.
func WriteTemp(dir, prefix string, data []byte, perm fs.FileMode, sync bool) (string, error) {
	f, err := fsutil.CreateTemp(dir, prefix, perm)
	if err != nil {
		return "", err
	}
	name := f.Name()
	_, err = f.Write(data)
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return "", err
	}
	return name, nil
}

// OwnedByMe reports whether fi is owned by this process's effective user.
func OwnedByMe(fi fs.FileInfo) bool {
	uid, ok := fsutil.Owner(fi)
	return ok && uid == os.Geteuid()
}

// NarrowDir takes from the directory dir the read and search bits for
// group and others that perm does not have, if this process may (it owns
// dir). It never adds a bit, so concurrent writers for databases of
// different modes leave it at the narrowest.
func NarrowDir(dir string, perm fs.FileMode) {
	fi, err := os.Lstat(dir)
	if err != nil || !fi.IsDir() || !OwnedByMe(fi) {
		return
	}
	cur := fi.Mode() & (fs.ModePerm | fs.ModeSetgid | fs.ModeSticky)
	if want := cur &^ (0o055 &^ perm); want != cur {
		_ = os.Chmod(dir, want)
	}
}
