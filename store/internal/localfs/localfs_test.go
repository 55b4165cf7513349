package localfs

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boule-vfs/boule/internal/testfs"
)

// TestWriteTemp: the file holds the data, with the mode asked for less the
// umask, under the prefix; a failed write leaves nothing.
func TestWriteTemp(t *testing.T) {
	for _, sync := range []bool{false, true} {
		dir := t.TempDir()
		var p string
		var err error
		testfs.WithUmask(0o022, func() { p, err = WriteTemp(dir, "put-", []byte("data"), 0o444, sync) })
		if err != nil {
			t.Fatalf("WriteTemp(sync=%v)=%v", sync, err)
		}
		if filepath.Dir(p) != dir || !strings.HasPrefix(filepath.Base(p), "put-") {
			t.Errorf("WriteTemp()=%s, want put-… in %s", p, dir)
		}
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(b, []byte("data")) {
			t.Errorf("file holds %q, %v, want the data", b, err)
		}
		if fi, err := os.Stat(p); err != nil || fi.Mode() != 0o444 {
			t.Errorf("file mode %v, %v, want 0444", fi.Mode(), err)
		}
	}
	missing := filepath.Join(t.TempDir(), "missing")
	if _, err := WriteTemp(missing, "put-", []byte("x"), 0o400, true); err == nil {
		t.Error("WriteTemp() into a missing directory=nil, want an error")
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Errorf("WriteTemp() left %s behind: %v", missing, err)
	}
}

// TestNarrowDir: a directory loses the read and search bits for group and
// others that the database's mode does not give, and never gains any.
func TestNarrowDir(t *testing.T) {
	for _, tc := range []struct {
		name string
		have fs.FileMode
		perm fs.FileMode
		want fs.FileMode
	}{
		{"others lose what the database denies", 0o755, 0o750, 0o750},
		{"group and others lose all", 0o755, 0o700, 0o700},
		{"nothing to take", 0o750, 0o755, 0o750},
		{"write bits stay", 0o775, 0o700, 0o720},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "d")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, tc.have); err != nil {
				t.Fatal(err)
			}
			NarrowDir(dir, tc.perm)
			if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != tc.want {
				t.Errorf("NarrowDir(%v, %v) left %v, %v, want %v", tc.have, tc.perm, fi.Mode().Perm(), err, tc.want)
			}
		})
	}
}
