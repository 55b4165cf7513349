//go:build linux

package spool

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/boule-vfs/boule/internal/testfs"
	"github.com/boule-vfs/boule/manifest"
)

// TestDeadWritersTempsFreeTheSpool: scratch files that writers killed
// mid-write left in tmp/ fill a small spool, and the snapshot that fails
// for want of room is the last: the one after it deletes those whose
// process is gone (or, with the same pid, came before this one) and
// succeeds. Those of live processes (this one, another) stay, and so does
// a dead process's that is only just written.
// The torture test TestTinySpool once stalled for 41 s this way: its
// killed writers' segments took 832 KiB of a 1 MiB spool.
func TestDeadWritersTempsFreeTheSpool(t *testing.T) {
	d := newTestDB(t, 4*cs, func(o *Options) { testfs.MountTmpfs(t, o.Dir, "1m") })
	mustTxn(t, d.db, d.src, unchanged)
	assertExact(t, d.db, d.src)

	live := exec.Command("sleep", "600")
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = live.Process.Kill(); _ = live.Wait() })
	deadPid, livePid, self := goneProcess(t), live.Process.Pid, os.Getpid()

	tmp := d.db.tmpDir()
	now := time.Now()
	temp := func(name string, age time.Duration, fill bool) string {
		t.Helper()
		p := filepath.Join(tmp, name)
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if fill {
			fillUntilFull(t, f)
		} else if _, err := f.Write(make([]byte, 4096)); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if err := os.Chtimes(p, now.Add(-age), now.Add(-age)); err != nil {
			t.Fatal(err)
		}
		return p
	}
	named := func(pid int, inc, suffix string) string {
		return fmt.Sprintf("%d.%d.%s89abcdef%s", pid, now.UnixNano(), inc, suffix)
	}
	name := func(pid int, suffix string) string { return named(pid, incarnation, suffix) }
	earlier := "00000000" // another incarnation than this process's
	if earlier == incarnation {
		earlier = "11111111"
	}
	keep := []string{
		temp(name(livePid, segSuffix), 5*time.Second, false),
		temp(name(self, ""), 5*time.Second, false),
		temp(name(deadPid, ".young"+segSuffix), 100*time.Millisecond, false),
	}
	drop := []string{
		temp(name(self, ".old"), 2*time.Minute, false),
		// An earlier process's with this one's pid, as a container's
		// program has after a restart.
		temp(named(self, earlier, segSuffix), 5*time.Second, false),
		temp(ctlTempPrefix+name(deadPid, ""), 5*time.Second, false),
		// Dated in the future: the clock was stepped back since.
		temp(name(deadPid, ".future"), -10*time.Minute, false),
		temp(name(deadPid, segSuffix), 5*time.Second, true),
	}

	if err := txn(t, d.db, d.src, rewrite(d.rng, 2*cs, 4096), 2); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Snapshot() with the spool full of a dead writer's segment=%v, want ENOSPC", err)
	}
	mustTxn(t, d.db, d.src, rewrite(d.rng, 3*cs, 4096), 3)
	assertExact(t, d.db, d.src)
	for _, p := range drop {
		if exists(p) {
			t.Errorf("%s is left in tmp/", filepath.Base(p))
		}
	}
	for _, p := range keep {
		if !exists(p) {
			t.Errorf("%s was deleted from tmp/", filepath.Base(p))
		}
	}
}

// TestTempOwner: the pid and the incarnation at the front of the names
// uniqueName makes, with or without the control block's prefix; nothing
// for other names.
func TestTempOwner(t *testing.T) {
	for _, c := range []struct {
		name string
		pid  int
		inc  string
	}{
		{uniqueName(), os.Getpid(), incarnation},
		{uniqueName() + segSuffix, os.Getpid(), incarnation},
		{ctlTempPrefix + uniqueName(), os.Getpid(), incarnation},
		{"17.1733000000000000000.00ff00ff00ff00ff", 17, "00ff00ff"},
		{"17.1733000000000000000.00ff00ff.seg", 17, "00ff00ff"},
		{"spill-123456", 0, ""},
		{"0.1.2", 0, ""},
		{"-3.1.00ff00ff", 0, ""},
		{"x17.1.00ff00ff", 0, ""},
		{"17.x.00ff00ff", 0, ""},
		{"17.5.00ff", 0, ""},
		{"17.5", 0, ""},
		{"17", 0, ""},
		{"", 0, ""},
	} {
		pid, inc, ok := tempOwner(c.name)
		if pid != c.pid || inc != c.inc || ok != (c.pid != 0) {
			t.Errorf("tempOwner(%q)=%d, %q, %v; want %d, %q", c.name, pid, inc, ok, c.pid, c.inc)
		}
	}
	if a, b := uniqueName(), uniqueName(); a == b {
		t.Errorf("uniqueName() twice gave %s", a)
	}
}

// TestOrphanStagedChunksFreeTheSpool: a writer killed between linking a
// snapshot's chunks into staging/chunks and writing its manifest leaves
// chunks that no manifest references; they are deleted once the snapshot
// succeeds. When they fill the spool none can succeed, so the rebuild
// that follows a dead writer deletes them before it stages anything.
// TestTinySpool once ended its run with six such chunks (384 KiB of its
// 1 MiB spool) and no snapshot staged for 38 s.
func TestOrphanStagedChunksFreeTheSpool(t *testing.T) {
	d := newTestDB(t, 4*cs, func(o *Options) { testfs.MountTmpfs(t, o.Dir, "1m") })
	mustTxn(t, d.db, d.src, unchanged)

	// The dead writer's chunks, one segment each, until the spool is
	// full.
	var orphans []manifest.Fingerprint
	for {
		b := make([]byte, cs)
		fillRandom(d.rng, b)
		fp := manifest.Sum(b)
		if err := d.db.StageChunks(map[manifest.Fingerprint][]byte{fp: b}); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
		orphans = append(orphans, fp)
	}
	if len(orphans) == 0 {
		t.Fatal("no orphan chunk fits in the spool")
	}
	leaveMarker(t, d.db)

	before := d.db.Stats()
	mustTxn(t, d.db, d.src, rewrite(d.rng, 2*cs, 4096), 2)
	assertRebuilt(t, d, before)
	chunks := OpenDir(d.db.Dir()).StagedChunks()
	for _, fp := range orphans {
		if chunks.Has(fp) {
			t.Errorf("orphan chunk %s is still staged", fp)
		}
	}
	assertStagingReferenced(t, d.db)
}

// TestRecordsWrittenUnderTmp: the uploader's records are written under
// tmp/ and renamed into place, so that one a killed uploader leaves is a
// scratch file like the others, which snapshots delete; written beside
// the record, it stayed until the next boot. In a directory without tmp/
// the record is still written, and tmp/ not made.
func TestRecordsWrittenUnderTmp(t *testing.T) {
	d := snapshotted(t, 3*cs)
	dir := OpenDir(d.db.Dir())
	tmp := d.db.tmpDir()
	if err := dir.SetStatus([]byte(`{"a":1}`)); err != nil {
		t.Fatal(err)
	}
	if got := names(t, tmp); len(got) != 0 {
		t.Fatalf("tmp/ after a record holds %v", got)
	}

	// With tmp/ a file, the write fails: it went through tmp/.
	if err := os.RemoveAll(tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tmp, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := dir.SetStatus([]byte(`{"a":2}`)); !errors.Is(err, syscall.ENOTDIR) {
		t.Fatalf("SetStatus() with tmp/ a file=%v, want ENOTDIR", err)
	}
	if b, err := dir.Status(); err != nil || string(b) != `{"a":1}` {
		t.Fatalf("Status()=%q, %v; want the first record", b, err)
	}

	// Without tmp/, the record is written all the same, and tmp/ is not
	// made: it must be the writer's, and this may be another user.
	if err := os.Remove(tmp); err != nil {
		t.Fatal(err)
	}
	if err := dir.SetStatus([]byte(`{"a":3}`)); err != nil {
		t.Fatal(err)
	}
	if b, err := dir.Status(); err != nil || string(b) != `{"a":3}` {
		t.Fatalf("Status()=%q, %v; want the third record", b, err)
	}
	if _, err := os.Lstat(tmp); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("tmp/ after a record in a directory without one: %v, want none", err)
	}
}

// TestRebuildKeepsChunksOfAnUnreadManifest: the early deletion of staged
// chunks is made against a staged manifest read whole. When the rebuild
// could not use it (here it names another source path; a transient read
// error does the same), the manifest is still on disk, maybe in the
// middle of its upload: its chunks stay, even when the rebuild fails.
func TestRebuildKeepsChunksOfAnUnreadManifest(t *testing.T) {
	d := snapshotted(t, 4*cs)
	m := stagedManifest(t, d.db)
	m.SourcePath = d.src.path + "-elsewhere"
	b := make([]byte, cs)
	fillRandom(d.rng, b)
	fp := manifest.Sum(b)
	m.Chunks[2] = fp
	if err := d.db.StageChunks(map[manifest.Fingerprint][]byte{fp: b}); err != nil {
		t.Fatal(err)
	}
	if err := d.db.StageManifest(m); err != nil {
		t.Fatal(err)
	}
	leaveMarker(t, d.db)
	d.fault.set(failOp("create", syscall.ENOSPC))
	if err := txn(t, d.db, d.src, rewrite(d.rng, 3*cs, 4096), 3); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Snapshot()=%v, want ENOSPC", err)
	}
	if !OpenDir(d.db.Dir()).StagedChunks().Has(fp) {
		t.Fatalf("chunk %s of the staged manifest on disk was deleted by a rebuild that did not read it", fp)
	}
	d.fault.clear()
	mustTxn(t, d.db, d.src, rewrite(d.rng, 3*cs, 4096), 3)
	assertExact(t, d.db, d.src)
	assertStagingReferenced(t, d.db)
}

// TestOtherDatabasesLeftoversSwept: a snapshot that fails for want of
// room sweeps the tmp/ of every database of the spool, not only its
// own: the leftovers filling the filesystem may be those of a database
// no process opens any more.
func TestOtherDatabasesLeftoversSwept(t *testing.T) {
	d := newTestDB(t, 4*cs, func(o *Options) { testfs.MountTmpfs(t, o.Dir, "1m") })
	mustTxn(t, d.db, d.src, unchanged)
	other := newDBFile(t, "other.db", makeDB(d.rng, 2*cs, 4096), 0o644)
	odb, err := d.sp.DB(other.path)
	if err != nil {
		t.Fatal(err)
	}
	mustTxn(t, odb, other, unchanged)

	left := filepath.Join(odb.tmpDir(), fmt.Sprintf("%d.%d.0000000089abcdef.seg", goneProcess(t), time.Now().UnixNano()))
	f, err := os.Create(left)
	if err != nil {
		t.Fatal(err)
	}
	fillUntilFull(t, f)
	f.Close()
	past := time.Now().Add(-5 * time.Second)
	if err := os.Chtimes(left, past, past); err != nil {
		t.Fatal(err)
	}

	if err := txn(t, d.db, d.src, rewrite(d.rng, 2*cs, 4096), 2); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Snapshot() with the spool full of another database's leftover=%v, want ENOSPC", err)
	}
	if exists(left) {
		t.Fatalf("the other database's leftover %s is still there after a snapshot failed for want of room", filepath.Base(left))
	}
	mustTxn(t, d.db, d.src, rewrite(d.rng, 3*cs, 4096), 3)
	assertExact(t, d.db, d.src)
}

// goneProcess returns the pid of a process that has exited and been
// reaped.
func goneProcess(t *testing.T) int {
	t.Helper()
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	return gone.ProcessState.Pid()
}

// fillUntilFull writes to f until its filesystem is full, as a killed
// writer's segment may leave it.
func fillUntilFull(t *testing.T, f *os.File) {
	t.Helper()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return
		}
	}
}
