package vfs

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestTempChunkCacheRefusals: the per-user chunk cache under the temp
// directory is a name anyone can take first. It is refused unless it is a
// directory of this user's, private to it, and the error says what is
// wrong with the one there.
func TestTempChunkCacheRefusals(t *testing.T) {
	name := func(tmp string) string { return filepath.Join(tmp, "boule-chunks-"+itoa(os.Getuid())) }
	for _, tc := range []struct {
		name, want string
		setup      func(t *testing.T, p string)
	}{
		{"a file", "regular file", func(t *testing.T, p string) {
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"another user's", "belongs to user 4242", func(t *testing.T, p string) {
			if err := os.Mkdir(p, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(p, 4242, -1); err != nil {
				t.Skipf("chown: %v (needs root)", err)
			}
		}},
		{"open to others", "its mode is -rwxr-xr-x", func(t *testing.T, p string) {
			if err := os.Mkdir(p, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			tc.setup(t, name(tmp))
			_, err := tempChunkCache(tmp)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("tempChunkCache()=%v, want an error saying %q", err, tc.want)
			}
		})
	}
	tmp := t.TempDir()
	if dir, err := tempChunkCache(tmp); err != nil || dir != name(tmp) {
		t.Fatalf("tempChunkCache() of a fresh temp directory=%q, %v", dir, err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
