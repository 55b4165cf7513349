package fsutil

import (
	"os"
	"path/filepath"
	"testing"
)

func TestDirEmpty(t *testing.T) {
	dir := t.TempDir()
	if !DirEmpty(dir) {
		t.Fatal("DirEmpty(new dir)=false, want true")
	}
	if !DirEmpty(filepath.Join(dir, "missing")) {
		t.Fatal("DirEmpty(missing)=false, want true")
	}
	if err := os.WriteFile(filepath.Join(dir, "f"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if DirEmpty(dir) {
		t.Fatal("DirEmpty(dir with a file)=true, want false")
	}
}
