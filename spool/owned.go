package spool

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/boule-vfs/boule/internal/fsutil"
)

// A spool root may be shared by users (a 1777 directory, as /tmp is), and
// whatever another user can create in it, they can plant before a
// writer does: a symbolic link where a database's directory goes, or a
// directory of their own with a default ACL that lets them read what is
// written in it. So a writer takes, as a spool directory, only a real
// directory that it owns or that the database's owner owns (who may read
// the data anyway), and changes the mode of its own directories only.

// mkdirSpool makes the spool directory p with mode dm, or takes the one
// there under the rules above; dbPath is the database whose data it is
// to hold ("" for the boot directory: this user's only). An existing
// directory of this user gets mode dm (umask-proof); one of the
// database's owner is left as it is.
func mkdirSpool(p string, dm fs.FileMode, dbPath string) error {
	created, fi, err := mkdirReal(p, dm)
	if err != nil {
		return err
	}
	uid, ok := fsutil.Owner(fi)
	me := os.Geteuid()
	if ok && uid != me {
		if dbPath == "" || !ownedBy(dbPath, uid) {
			return fmt.Errorf("spool: %s belongs to user %d, not to this user (%d) nor to the database's owner: refusing to spool into a directory another user controls", p, uid, me)
		}
		return nil
	}
	if created || fi.Mode()&(fs.ModePerm|fs.ModeSticky) != dm&(fs.ModePerm|fs.ModeSticky) {
		// p is this user's own directory, checked without following a
		// link: a chmod cannot reach anyone else's.
		return chmodDir(p, dm)
	}
	return nil
}

// mkdirReal makes directory p with mode dm (less the umask), or finds
// it there, and returns it, or an error if what is at p is not a
// directory (a symbolic link, say, which it does not follow).
func mkdirReal(p string, dm fs.FileMode) (created bool, fi fs.FileInfo, err error) {
	created = true
	if err := os.Mkdir(p, dm); errors.Is(err, fs.ErrExist) {
		created = false
	} else if err != nil {
		return false, nil, fmt.Errorf("spool: create %s: %w%s", p, pathless(err), whoseParent(p, err))
	}
	if fi, err = os.Lstat(p); err != nil {
		return false, nil, fmt.Errorf("spool: create %s: %w", p, pathless(err))
	}
	if !fi.IsDir() {
		return false, nil, fmt.Errorf("spool: %s is %s, not a directory: refusing to spool through it (another user may have put it there)", p, fsutil.FileKind(fi.Mode()))
	}
	return created, fi, nil
}

func chmodDir(p string, dm fs.FileMode) error {
	if err := os.Chmod(p, dm); err != nil {
		return fmt.Errorf("spool: set the mode of %s: %w", p, pathless(err))
	}
	return nil
}

// ownedBy reports whether the file at p belongs to user uid.
func ownedBy(p string, uid int) bool {
	fi, err := os.Stat(p)
	if err != nil {
		return false
	}
	u, ok := fsutil.Owner(fi)
	return ok && u == uid
}

// lockMode is the mode of a database's lock files: those who may write
// the database (read-write for its owner, and for group and others as
// far as the database's mode has their write bit, as its txn marker
// says) may open them, and no one else. flock(2) works on any open
// descriptor: a lock file a reader could open is one a reader could hold,
// and keep every writer of the database waiting.
func lockMode(dir string) fs.FileMode {
	fi, err := os.Lstat(filepath.Join(dir, markerFile))
	if err != nil || !fi.Mode().IsRegular() {
		return 0o600
	}
	// Each write bit of group and others (0o020, 0o002), times 3, is
	// that class's read and write bits (0o060, 0o006).
	return 0o600 | fi.Mode().Perm()&0o022*3
}

// checkBootDir makes the directory of this boot's state, or takes the one
// there. Every user who writes under the spool root creates the
// directories of their databases in it: it is as open as the root (umask
// aside), and sticky when others may write it, so that no one can rename
// or delete another user's directories (and plant a link in their place).
// It must be a real directory; the first user to make it sets its mode.
func checkBootDir(p string) error {
	root, err := os.Stat(filepath.Dir(p))
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	mode := root.Mode().Perm()
	if mode&0o022 != 0 {
		mode |= fs.ModeSticky
	}
	created, fi, err := mkdirReal(p, mode)
	if err != nil {
		return err
	}
	if uid, ok := fsutil.Owner(fi); ok && uid == os.Geteuid() && (created || fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0) {
		return chmodDir(p, mode)
	}
	return nil
}

// whoseParent says, when err is a refusal to create p, who owns the
// directory p goes in and its mode: in a shared spool root, another user
// may have made this boot's directory first, closed to others.
func whoseParent(p string, err error) string {
	if !errors.Is(err, fs.ErrPermission) {
		return ""
	}
	fi, serr := os.Lstat(filepath.Dir(p))
	if serr != nil {
		return ""
	}
	uid, ok := fsutil.Owner(fi)
	if !ok || uid == os.Geteuid() {
		return ""
	}
	return fmt.Sprintf(" (%s belongs to user %d, mode %v: give each user a spooling directory of their own)", filepath.Dir(p), uid, fi.Mode().Perm())
}
