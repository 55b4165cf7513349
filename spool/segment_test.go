package spool

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/boule-vfs/boule/manifest"
)

// inodes returns the files and directories under dir, by inode.
func inodes(t testing.TB, dir string) map[fileKey]string {
	t.Helper()
	out := make(map[fileKey]string)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		out[fileKey{dev: uint64(st.Dev), ino: st.Ino}] = p
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return out
}

// countCreates counts the spool's file creations (its "create" steps) in
// *n, and passes every step on to next.
func countCreates(n *atomic.Int64) func(op, p string) error {
	return func(op, p string) error {
		if op == "create" {
			n.Add(1)
		}
		return nil
	}
}

// TestPersistCreatesFewFiles: a persist that stages 40 chunks creates a
// handful of files (a segment, the manifest, the directory handed to the
// uploader), not one per chunk, and the snapshot is exact.
func TestPersistCreatesFewFiles(t *testing.T) {
	for _, published := range []bool{true, false} {
		name := "handed over"
		if !published {
			name = "kept staged"
		}
		t.Run(name, func(t *testing.T) {
			d := newTestDB(t, 100*cs, holdPersister)
			mustTxn(t, d.db, d.src, unchanged)
			up := &uploader{remote: map[string][]byte{}}
			if published {
				up.take(t, d.db)
				up.finish(t, d.db)
			}
			readyBefore := names(t, d.db.readyDir())
			var creates atomic.Int64
			d.fault.set(countCreates(&creates))
			before := inodes(t, d.db.Dir())
			var dirty []int
			for i := range 40 {
				dirty = append(dirty, 10+2*i)
			}
			mustCtxn(t, d.db, d.src, rewriteChunks(d.rng, 100, 200, dirty...), dirty...)
			waitStaged(t, d.db)
			d.fault.clear()
			var created []string
			for k, p := range inodes(t, d.db.Dir()) {
				if _, ok := before[k]; !ok {
					created = append(created, p)
				}
			}
			// A segment, the manifest, a base (40 of 100 chunks
			// changed: the head starts a new one), and when handed
			// over the snapshot's three directories.
			if len(created) > 6 {
				t.Errorf("a persist of 40 chunks left %d new files and directories, want at most 6: %v", len(created), created)
			}
			if n := creates.Load(); n > 3 {
				t.Errorf("a persist of 40 chunks created %d files, want at most 3", n)
			}
			got := names(t, d.db.readyDir())
			if len(got) != 1 || slices.Contains(readyBefore, got[0]) == published {
				t.Errorf("ready holds %v (before: %v), want one snapshot, the new one: %v", got, readyBefore, published)
			}
			up.assertExact(t, d.db, d.src)
			assertStagingReferenced(t, d.db)
		})
	}
}

// TestSegmentReads: a chunk name reads its chunk's bytes from the segment
// it links to; an earlier version's chunk file reads whole; a name that
// links to a segment that does not hold it is an error; a damaged
// segment gives bytes that do not verify.
func TestSegmentReads(t *testing.T) {
	dir := t.TempDir()
	tmp := filepath.Join(dir, "tmp")
	chunks := filepath.Join(dir, "chunks")
	for _, p := range []string{tmp, chunks} {
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	rng := newRand(t)
	data := map[manifest.Fingerprint][]byte{}
	for _, n := range []int{cs, 100, cs, 1, cs - 7} {
		b := make([]byte, n)
		fillRandom(rng, b)
		data[manifest.Sum(b)] = b
	}
	linked, err := writeSegments(tmp, chunks, data, 0o444, nil)
	if err != nil || len(linked) != len(data) {
		t.Fatalf("writeSegments()=%d linked, %v; want %d, nil", len(linked), err, len(data))
	}
	if left := names(t, tmp); len(left) != 0 {
		t.Errorf("tmp holds %v, want nothing", left)
	}
	c := Chunks{dir: chunks}
	for fp, want := range data {
		got, err := c.Read(fp)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("Read(%s)=%d bytes, %v; want its %d bytes", fp, len(got), err, len(want))
		}
		fi, err := os.Stat(c.Path(fp))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o444 {
			t.Errorf("%s has mode %v, want 0444", c.Path(fp), fi.Mode().Perm())
		}
		if n := fi.Sys().(*syscall.Stat_t).Nlink; n != uint64(len(data)) {
			t.Errorf("the segment has %d links, want one per chunk: %d", n, len(data))
		}
	}
	var total int
	for _, b := range data {
		total += len(b)
	}
	if got, want := c.Bytes(), int64(total); got != want {
		t.Errorf("Bytes()=%d, want %d: the chunks' bytes", got, want)
	}

	// An earlier version's chunk file.
	old := make([]byte, cs)
	fillRandom(rng, old)
	oldFP := manifest.Sum(old)
	if err := os.WriteFile(c.Path(oldFP), old, 0o444); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Read(oldFP); err != nil || !bytes.Equal(got, old) {
		t.Errorf("Read(an old chunk file)=%d bytes, %v; want its bytes", len(got), err)
	}
	if got, want := c.Bytes(), int64(total+cs); got != want {
		t.Errorf("Bytes()=%d, want %d", got, want)
	}
	// A chunk uploaded and released: its bytes no longer count.
	var gone manifest.Fingerprint
	for fp := range data {
		gone = fp
		break
	}
	if err := c.Remove(gone); err != nil {
		t.Fatal(err)
	}
	if got, want := c.Bytes(), int64(total+cs-len(data[gone])); got != want {
		t.Errorf("Bytes() after Remove=%d, want %d", got, want)
	}
	if b, err := c.Read(gone); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Read(a removed chunk)=%d bytes, %v; want fs.ErrNotExist", len(b), err)
	}
	for fp, want := range data {
		if fp == gone {
			continue
		}
		if got, err := c.Read(fp); err != nil || !bytes.Equal(got, want) {
			t.Errorf("Read(%s) after another was removed=%d bytes, %v; want its bytes", fp, len(got), err)
		}
	}

	// A name linked to a segment that does not hold its chunk.
	var some manifest.Fingerprint
	for fp := range data {
		if fp != gone {
			some = fp
			break
		}
	}
	stray := manifest.Sum([]byte("stray"))
	if err := os.Link(c.Path(some), c.Path(stray)); err != nil {
		t.Fatal(err)
	}
	if b, err := c.Read(stray); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Read(a name its segment does not hold)=%d bytes, %v; want ErrCorrupt", len(b), err)
	}

	// A flipped byte in a chunk's bytes: read, and refused by the
	// caller's check.
	seg, err := os.ReadFile(c.Path(some))
	if err != nil {
		t.Fatal(err)
	}
	seg[0] ^= 1
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, seg, 0o444); err != nil {
		t.Fatal(err)
	}
	idx, err := segmentIndex(bad)
	if err != nil || len(idx) != len(data) {
		t.Fatalf("segmentIndex()=%d entries, %v; want %d", len(idx), err, len(data))
	}
	first := idx[0].fp
	if b, err := readChunk(bad, first); err != nil || manifest.Sum(b) == first {
		t.Errorf("readChunk(a damaged chunk)=%v, verifies %v; want bytes that do not verify", err, manifest.Sum(b) == first)
	}
	// A damaged trailer: not a segment; too large to be a chunk file.
	seg[len(seg)-1] ^= 1
	if err := os.WriteFile(bad+"2", seg, 0o444); err != nil {
		t.Fatal(err)
	}
	if _, err := readChunk(bad+"2", first); !errors.Is(err, ErrCorrupt) {
		t.Errorf("readChunk(a damaged trailer)=%v, want ErrCorrupt", err)
	}
}

// TestSegmentsRoll: a snapshot that stages more chunks than a segment
// holds writes several, each of at most segMaxChunks chunks.
func TestSegmentsRoll(t *testing.T) {
	d := newTestDB(t, (segMaxChunks+40)*cs)
	mustTxn(t, d.db, d.src, unchanged)
	st := d.db.Stats()
	if st.Segments != 2 {
		t.Errorf("Stats().Segments=%d after staging %d chunks, want 2", st.Segments, st.ChunksStaged)
	}
	files := map[fileKey]int{}
	ready := names(t, d.db.readyDir())
	if len(ready) != 1 {
		t.Fatalf("ready holds %v, want one snapshot", ready)
	}
	dir := filepath.Join(d.db.readyDir(), ready[0], "chunks")
	for _, n := range names(t, dir) {
		fi, err := os.Stat(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		files[fileKey{dev: uint64(st.Dev), ino: st.Ino}]++
	}
	if len(files) != 2 {
		t.Errorf("the handed-over chunks link to %d files, want 2", len(files))
	}
	for _, n := range files {
		if n > segMaxChunks {
			t.Errorf("a segment holds %d chunks, want at most %d", n, segMaxChunks)
		}
	}
	assertExact(t, d.db, d.src)
}

// TestOldLayoutSpool: a spool an earlier version left, with a chunk file
// per chunk, is read as it is, and the snapshots that follow it stage
// segments beside its files.
func TestOldLayoutSpool(t *testing.T) {
	d := newTestDB(t, 20*cs)
	mustTxn(t, d.db, d.src, unchanged)
	(&uploader{}).take(t, d.db) // consuming/: the handed-over snapshot
	mustTxn(t, d.db, d.src, rewrite(d.rng, 3*cs, 100), 3)
	mustTxn(t, d.db, d.src, rewrite(d.rng, 5*cs, 100), 5)
	// What the earlier version wrote: every chunk name a file of its own.
	dirs := []string{d.db.StagingChunksDir()}
	for _, s := range names(t, d.db.consumingDir()) {
		dirs = append(dirs, filepath.Join(d.db.consumingDir(), s, "chunks"))
	}
	for _, dir := range dirs {
		for _, n := range names(t, dir) {
			fp := must(manifest.ParseFingerprint(n))
			b, err := readChunk(filepath.Join(dir, n), fp)
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, n)
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o444); err != nil {
				t.Fatal(err)
			}
		}
	}
	assertExact(t, d.db, d.src)
	for range 5 {
		c := 1 + d.rng.IntN(18)
		mustTxn(t, d.db, d.src, rewrite(d.rng, c*cs+10, 100), c)
		assertExact(t, d.db, d.src)
		assertStagingReferenced(t, d.db)
	}
	leaveMarker(t, d.db) // a rebuild collects what nothing references
	mustTxn(t, d.db, d.src, rewrite(d.rng, 7*cs, 100), 7)
	assertExact(t, d.db, d.src)
	assertStagingReferenced(t, d.db)
	up := &uploader{remote: map[string][]byte{}}
	up.finish(t, d.db)
	up.take(t, d.db)
	up.finish(t, d.db)
	up.assertExact(t, d.db, d.src)
}

// TestStagingCompaction: while the uploader is stuck, chunks superseded
// in staging free their bytes although their segments hold chunks still
// staged: staging stays within its live chunks plus compactAt, and every
// name still reads its chunk.
func TestStagingCompaction(t *testing.T) {
	const n = 64
	d := newTestDB(t, n*cs)
	mustTxn(t, d.db, d.src, unchanged) // ready/ taken by the first snapshot, never uploaded
	size := int64(len(d.src.bytes()))
	for round := range 30 {
		// Rewrite every chunk but one of a different eighth each time:
		// each round's segment keeps one chunk the next rounds do not
		// supersede, and the rest of it goes dead.
		dirty := chunksBut(n, 8, round)
		mustTxn(t, d.db, d.src, rewriteChunks(d.rng, 50, 10, dirty...), dirty...)
		live := int64(len(names(t, d.db.StagingChunksDir()))) * cs
		held := spoolBytes(t, d.db.StagingChunksDir())
		if limit := live + d.db.compactAt(size) + int64(segMaxChunks*segEntryLen*4); held > limit {
			t.Fatalf("round %d: staging holds %d bytes for %d bytes of staged chunks, want at most %d", round, held, live, limit)
		}
		assertExact(t, d.db, d.src)
		assertStagingReferenced(t, d.db)
	}
	if st := d.db.Stats(); st.Compactions == 0 {
		t.Errorf("Stats().Compactions=0, want some")
	}
	if left := names(t, d.db.tmpDir()); len(left) != 0 {
		t.Errorf("tmp holds %v, want nothing", left)
	}
}

// TestCompactionFaults: a compaction that fails at any of its steps
// leaves every staged name naming its chunk, and a later one finishes.
func TestCompactionFaults(t *testing.T) {
	for _, op := range []string{"create", "write", "link", "rename"} {
		t.Run(op, func(t *testing.T) {
			const n = 32
			d := newTestDB(t, n*cs)
			mustTxn(t, d.db, d.src, unchanged)
			var failed atomic.Int64
			var armed atomic.Bool
			d.fault.set(func(o, p string) error {
				// Only compaction's steps: they follow the rename of the
				// staged manifest (ready/ is taken, so nothing is
				// published).
				if o == "rename" && p == d.db.StagingManifestPath() {
					armed.Store(true)
					return nil
				}
				if o == op && armed.Load() {
					failed.Add(1)
					return syscall.ENOSPC
				}
				return nil
			})
			for round := range 12 {
				armed.Store(false)
				dirty := chunksBut(n, 4, round)
				mustTxn(t, d.db, d.src, rewriteChunks(d.rng, 50, 10, dirty...), dirty...)
				armed.Store(false)
				assertExact(t, d.db, d.src)
				assertStagingReferenced(t, d.db)
			}
			if failed.Load() == 0 {
				t.Fatalf("no compaction step %q ran", op)
			}
			if left := names(t, d.db.tmpDir()); len(left) != 0 {
				t.Errorf("tmp holds %v, want nothing", left)
			}
			d.fault.clear()
			before := d.db.Stats().Compactions
			for round := range 4 {
				c := 1 + round
				mustTxn(t, d.db, d.src, rewrite(d.rng, c*cs+50, 10), c)
			}
			if after := d.db.Stats().Compactions; after == before {
				t.Errorf("Stats().Compactions=%d, want more once the fault is gone", after)
			}
			assertExact(t, d.db, d.src)
			assertStagingReferenced(t, d.db)
		})
	}
}

// TestSegmentLinkFails: a snapshot whose segment fails to link some of
// its chunks fails, drops the names it linked, and leaves the staged
// snapshot as it was; the next one stages everything.
func TestSegmentLinkFails(t *testing.T) {
	for _, nth := range []int64{1, 2, 5} {
		t.Run(fmt.Sprint("link ", nth), func(t *testing.T) {
			d := snapshotted(t, 12*cs)
			old := d.src.bytes()
			oldNames := names(t, d.db.StagingChunksDir())
			var links atomic.Int64
			d.fault.set(func(op, p string) error {
				if op == "link" && filepath.Dir(p) == d.db.StagingChunksDir() && links.Add(1) == nth {
					return syscall.ENOSPC
				}
				return nil
			})
			mut := rewriteChunks(d.rng, 9, 300, 2, 3, 4, 5, 6, 7)
			err := txn(t, d.db, d.src, mut, 2, 3, 4, 5, 6, 7)
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("Snapshot()=%v, want an error wrapping ENOSPC", err)
			}
			if got := names(t, d.db.StagingChunksDir()); !slices.Equal(got, oldNames) {
				t.Errorf("staging holds %v after the failure, want what it held before: %v", got, oldNames)
			}
			if left := names(t, d.db.tmpDir()); len(left) != 0 {
				t.Errorf("tmp holds %v, want nothing", left)
			}
			if got, _ := assembled(t, d.db); !bytes.Equal(got, old) {
				t.Errorf("after the failure the staged snapshot is not the file before the transaction")
			}
			d.fault.clear()
			mustTxn(t, d.db, d.src, rewrite(d.rng, 9*cs, 10), 9)
			assertExact(t, d.db, d.src)
			assertStagingReferenced(t, d.db)
		})
	}
}
