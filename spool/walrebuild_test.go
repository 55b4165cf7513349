package spool

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"path/filepath"
	"testing"

	"github.com/boule-vfs/boule/manifest"
)

// TestWALRebuildInReadTransaction: a persister's rebuild from the logical
// database in a read transaction (writers going on) commits nothing when
// the log restarted under it (its verify fails): the staged snapshot and
// the marker stay as they were, nothing counts as a failure, and the
// chunks it staged are gone. When the log held still, the rebuild is the
// logical database, and the marker says it holds the commits up to the
// generation it read at, not the ones taken meanwhile.
func TestWALRebuildInReadTransaction(t *testing.T) {
	const ps = 4096
	d := snapshotted(t, 6*manifest.ChunkSize)
	before, _ := assembled(t, d.db)
	s0, err := OpenDir(d.db.Dir()).Staged()
	if err != nil || s0 == nil {
		t.Fatalf("Staged()=%v, %v", s0, err)
	}
	files := func() int {
		n := 0
		err := filepath.WalkDir(d.db.Dir(), func(_ string, e fs.DirEntry, err error) error {
			if err == nil && !e.IsDir() {
				n++
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	nfiles := files()

	// A log whose committed frames change pages in chunks 1 and 4.
	w := newMemWAL(ps, 7, 9)
	pages := uint32(len(before) / ps)
	w.frame(1, 20, 0, 'a')
	w.frame(2, 70, pages, 'b')
	var x walIndex
	if err := x.scan(w); err != nil {
		t.Fatal(err)
	}
	c := d.db.ctlp.Load()
	if c == nil {
		t.Fatal("no control block after the first snapshot")
	}
	read := d.db.takeGen(c)  // the rebuild's generation
	later := d.db.takeGen(c) // a commit while it reads

	src := newLogicalSource(d.src, w, &x)
	src.upTo = read
	src.verify = func() error { return errWALMoved }
	if err := d.db.walRebuild(src, true); !errors.Is(err, errWALMoved) {
		t.Fatalf("walRebuild() with the log moved=%v, want errWALMoved", err)
	}
	s1, err := OpenDir(d.db.Dir()).Staged()
	if err != nil || s1 == nil || s1.ID != s0.ID {
		t.Fatalf("staged snapshot after a rebuild whose log moved: %v (%v); want the one before, %x", s1, err, s0.ID)
	}
	if got := c.load(ctlPersisted); got >= read {
		t.Errorf("persisted generation %d after a rebuild whose log moved, want under %d", got, read)
	}
	if st := d.db.Stats(); st.Failures != 0 || st.LastError != "" {
		t.Errorf("Stats()=%+v after a rebuild whose log moved, want no failure", st)
	}
	if n := files(); n != nfiles {
		t.Errorf("%d files in the spool after a rebuild whose log moved, want the %d before", n, nfiles)
	}

	src = newLogicalSource(d.src, w, &x)
	src.upTo = read
	src.verify = func() error { return nil }
	if err := d.db.walRebuild(src, true); err != nil {
		t.Fatalf("walRebuild()=%v", err)
	}
	want, err := src.FullImage()
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := assembled(t, d.db); !bytes.Equal(got, want) {
		t.Fatalf("rebuilt snapshot: %s of the logical database", firstDiff(got, want))
	}
	if bytes.Equal(want, before) {
		t.Fatal("the log changed nothing: the test proves nothing")
	}
	if p, cm := c.load(ctlPersisted), c.load(ctlCommitted); p != read || cm != later {
		t.Errorf("marker persisted %d, committed %d; want %d (the rebuild's) and %d (the commit taken meanwhile, still to stage)", p, cm, read, later)
	}
}

// TestRebuildCheck: the check of a rebuild in a read transaction fails
// (errWALMoved, nothing committed) when the log restarted under the read,
// or when the staged position moved meanwhile: another process's rebuild
// staged a newer state, which this older read would undo; otherwise it
// passes.
func TestRebuildCheck(t *testing.T) {
	const ps = 4096
	d := snapshotted(t, 2*manifest.ChunkSize)
	c := d.db.ctlp.Load()
	if c == nil {
		t.Fatal("no control block after the first snapshot")
	}
	w := newMemWAL(ps, 3, 4)
	w.frame(1, 2, 2, 'a')
	var x walIndex
	if err := x.scan(w); err != nil {
		t.Fatal(err)
	}
	pos := loadPos(c)
	if err := rebuildCheck(c, w, &x, pos)(); err != nil {
		t.Fatalf("check with nothing moved=%v, want nil", err)
	}

	moved := pos
	moved.mode, moved.salt, moved.frame = walAt, x.hdr.salt, 1
	storePos(c, moved)
	if err := rebuildCheck(c, w, &x, pos)(); !errors.Is(err, errWALMoved) {
		t.Errorf("check after another rebuild moved the position=%v, want errWALMoved", err)
	}
	storePos(c, pos)

	w.restart(5, 6)
	if err := rebuildCheck(c, w, &x, pos)(); !errors.Is(err, errWALMoved) {
		t.Errorf("check after the log restarted=%v, want errWALMoved", err)
	}

	// A TRUNCATE checkpoint under a read that began with the log
	// checkpointed whole: the log is empty, and a read of its header
	// fails short, as SQLite's xRead does (SQLITE_IOERR_SHORT_READ).
	var y walIndex
	w = newMemWAL(ps, 7, 8)
	w.frame(1, 2, 2, 'b')
	if err := y.scan(w); err != nil {
		t.Fatal(err)
	}
	short := shortReadWAL{w}
	w.b = w.b[:0]
	if err := rebuildCheck(c, short, &y, pos)(); !errors.Is(err, errWALMoved) {
		t.Errorf("check after the log was truncated=%v, want errWALMoved", err)
	}
}

// shortReadWAL is a log whose reads past its end fail, as SQLite's do.
type shortReadWAL struct{ *memWAL }

func (w shortReadWAL) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > int64(len(w.b)) {
		return 0, io.ErrUnexpectedEOF
	}
	return w.memWAL.ReadAt(p, off)
}

// truncatingWAL is a log that a TRUNCATE checkpoint empties after the
// scan has looked at its size, just before its read number after; reads
// past its end then fail short, as SQLite's do.
type truncatingWAL struct {
	*memWAL
	after, reads int
}

func (w *truncatingWAL) ReadAt(p []byte, off int64) (int, error) {
	if w.reads == w.after {
		w.b = w.b[:0]
	}
	w.reads++
	return shortReadWAL{w.memWAL}.ReadAt(p, off)
}

// TestWALIndexScanTruncated: a persister's read transaction that began
// with the log checkpointed whole does not keep the log from being
// truncated under its scan. The scan says the log moved (the persister
// reads again), not that it failed (a failed snapshot, logged as an
// error).
func TestWALIndexScanTruncated(t *testing.T) {
	const ps = 1024
	for _, tc := range []struct {
		name  string
		after int // reads before the truncation
	}{
		{"header", 0},
		{"frames", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newMemWAL(ps, 7, 9)
			w.frame(1, 3, 3, 'a')
			w.frame(2, 2, 3, 'b')
			var x walIndex
			if err := x.scan(&truncatingWAL{memWAL: w, after: tc.after}); !errors.Is(err, errWALMoved) {
				t.Fatalf("scan() of a log truncated under it=%v, want errWALMoved", err)
			}
		})
	}
}
