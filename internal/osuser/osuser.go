package osuser

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Name is the second user's login name.
const Name = "boule-other"

// User is the second OS user.
type User struct {
	Name     string
	UID, GID int
}

// Other returns the second OS user, creating it if needed. Creating a
// user and switching to it take root: without root the test is skipped,
// or fails under CI=true, where nothing may skip.
func Other(t testing.TB) User {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("osuser: this test plays a second OS user and must run as root under CI=true")
		}
		t.Skip("osuser: a second OS user takes root")
	}
	u, err := user.Lookup(Name)
	if err != nil {
		// Tests of several packages may create it at once; useradd
		// fails while another holds its lock.
		var out []byte
		for try := 0; try < 50; try++ {
			var cerr error
			out, cerr = exec.Command("useradd", "--no-create-home", "--shell", "/bin/sh", Name).CombinedOutput()
			if u, err = user.Lookup(Name); err == nil {
				break
			}
			if cerr == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("osuser: useradd %s: %v %s", Name, err, out)
		}
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		t.Fatalf("osuser: uid %q: %v", u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		t.Fatalf("osuser: gid %q: %v", u.Gid, err)
	}
	return User{Name: Name, UID: uid, GID: gid}
}

// Command returns the command that runs name with args as the user.
func (u User) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("runuser", append([]string{"-u", u.Name, "--", name}, args...)...)
}

// Run runs name with args as the user and returns its combined output,
// or an error that includes it.
func (u User) Run(name string, args ...string) (string, error) {
	out, err := u.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("runuser -u %s -- %s %s: %w: %s", u.Name, name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Reachable makes dir and every directory above it searchable by others
// (adding o+x), so that the user can reach what the test puts under dir:
// test temp directories are private to root.
func Reachable(t testing.TB, dir string) {
	t.Helper()
	for d := dir; ; {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, fi.Mode().Perm()|0o001); err != nil {
				t.Fatal(err)
			}
		}
		parent := d[:max(strings.LastIndexByte(d, '/'), 1)]
		if parent == d {
			return
		}
		d = parent
	}
}
