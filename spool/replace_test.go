package spool

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/boule-vfs/boule/internal/testfs"
)

// TestReplacedFilesStayInMemory: the spool is never fsynced, and what it
// replaces (the staged manifest at every snapshot, the uploader's records
// at every upload) must not reach the disk either. ext4 writes a file out
// at once when it is renamed over another one (auto_da_alloc, on by
// default): the spool's replacements must not trigger it. On a fresh ext4,
// 64 snapshots of a 4 MiB database and 64 replaced 64 KiB records write,
// by the time the file system is synced, about what the last state holds,
// not every state: under 4 MiB, against 12 MiB or more by rename(2).
func TestReplacedFilesStayInMemory(t *testing.T) {
	mnt := filepath.Join(testfs.TempDir(t), "ext4")
	dev := testfs.MountExt4(t, mnt, 256<<20)
	d := newTestDB(t, 4<<20, func(o *Options) { o.Dir = filepath.Join(mnt, "spool") })
	mustTxn(t, d.db, d.src, unchanged)
	rec := OpenDir(d.db.Dir())
	b := make([]byte, 64<<10)

	before := deviceWrites(t, dev, mnt)
	for i := range 64 {
		mustTxn(t, d.db, d.src, rewrite(d.rng, 5*cs+i, 1), 5)
		b[0] = byte(i)
		if err := rec.SetStatus(b); err != nil {
			t.Fatal(err)
		}
	}
	assertExact(t, d.db, d.src)
	written := deviceWrites(t, dev, mnt) - before
	t.Logf("%d KiB written to %s", written>>10, dev)
	if written > 4<<20 {
		t.Errorf("the spool's replacements wrote %d KiB to disk, want under 4 MiB", written>>10)
	}
}

// deviceWrites syncs the file system mounted on mnt and returns the bytes
// its block device has written since it was set up.
func deviceWrites(t *testing.T, dev, mnt string) int64 {
	t.Helper()
	f, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	stat, err := os.ReadFile(filepath.Join("/sys/block", dev, "stat"))
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(stat))
	sectors, err := strconv.ParseInt(fields[6], 10, 64)
	if err != nil {
		t.Fatalf("/sys/block/%s/stat: %q", dev, stat)
	}
	return sectors * 512
}
