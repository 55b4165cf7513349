package spool

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/boule-vfs/boule/manifest"
)

func TestFirstSnapshotIsRebuild(t *testing.T) {
	tests := []struct {
		name     string
		file     string
		size     int
		pageSize int
		check    bool // first snapshot by a read transaction's check
	}{
		{name: "empty file", file: "a.db", size: 0, pageSize: 0, check: true},
		{name: "one page", file: "a.db", size: 4096, pageSize: 4096},
		{name: "header only", file: "a.db", size: HeaderSize, pageSize: 4096},
		{name: "ten full chunks", file: "a.db", size: 10 * cs, pageSize: 4096},
		{name: "partial last chunk", file: "a.db", size: 10*cs + 1234, pageSize: 512},
		{name: "page size 65536", file: "a.db", size: 3 * cs, pageSize: 65536},
		{name: "read check", file: "a.db", size: 4*cs + 7, pageSize: 1024, check: true},
		{name: "special characters in path", file: "dir #1 é/a%2Fb ~^.db", size: 2 * cs, pageSize: 4096},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sp := openSpool(t, testOptions(t))
			src := newDBFile(t, tt.file, makeDB(newRand(t), tt.size, tt.pageSize), 0o644)
			db, err := sp.DB(src.path)
			if err != nil {
				t.Fatalf("DB(%q)=%v, want nil", src.path, err)
			}
			if tt.check {
				err = db.Snapshot(src, Change{})
			} else {
				err = txn(t, db, src, unchanged)
			}
			if err != nil {
				t.Fatalf("Snapshot()=%v, want nil", err)
			}
			data := src.bytes()
			n := manifest.NumChunks(int64(len(data)))
			st := db.Stats()
			if st.Snapshots != 1 || st.Incremental != 0 {
				t.Errorf("Stats() Snapshots=%d Incremental=%d, want 1 and 0", st.Snapshots, st.Incremental)
			}
			m := assertExact(t, db, src)
			// Every chunk is staged but those the manifest carries inline.
			wantChunks, wantBytes := int64(n), int64(len(data))
			for i, b := range m.Inline {
				if int(i) >= n || !bytes.Equal(b, chunkOf(data, int(i))) {
					t.Errorf("Inline[%d] is not chunk %d of the file", i, i)
				}
				wantChunks--
				wantBytes -= int64(len(b))
			}
			if st.ChunksStaged != wantChunks || st.BytesStaged != wantBytes {
				t.Errorf("Stats() ChunksStaged=%d BytesStaged=%d, want %d and %d", st.ChunksStaged, st.BytesStaged, wantChunks, wantBytes)
			}
			if ready := names(t, filepath.Join(db.Dir(), "ready")); len(ready) != 1 {
				t.Errorf("ready holds %v, want one snapshot", ready)
			} else if got := int64(len(names(t, filepath.Join(db.Dir(), "ready", ready[0], "chunks")))); got != wantChunks {
				t.Errorf("ready snapshot holds %d chunk files, want %d", got, wantChunks)
			}
			if m.Size != int64(len(data)) {
				t.Errorf("Size=%d, want %d", m.Size, len(data))
			}
			if m.PageSize != uint32(tt.pageSize) {
				t.Errorf("PageSize=%d, want %d", m.PageSize, tt.pageSize)
			}
			if want := counter(append(bytes.Clone(data), make([]byte, 28)...)); m.ChangeCounter != want {
				t.Errorf("ChangeCounter=%d, want %d", m.ChangeCounter, want)
			}
			if m.SourcePath != src.path {
				t.Errorf("SourcePath=%q, want %q", m.SourcePath, src.path)
			}
			if m.Hostname != "h" {
				t.Errorf("Hostname=%q, want %q", m.Hostname, "h")
			}
			if m.Generator != "boule" {
				t.Errorf("Generator=%q, want %q", m.Generator, "boule")
			}
			if len(m.Chunks) != n {
				t.Errorf("len(Chunks)=%d, want %d", len(m.Chunks), n)
			}
			if want := ctimeOf(t, src.path); !m.SourceCtime.Equal(want) {
				t.Errorf("SourceCtime=%v, want %v", m.SourceCtime, want)
			}
			if markerIsSet(t, db) {
				t.Errorf("marker %s still set after a successful snapshot", db.MarkerPath())
			}
			if b, err := os.ReadFile(filepath.Join(db.Dir(), "source")); err != nil || string(b) != src.path {
				t.Errorf("source file = %q, %v; want %q", b, err, src.path)
			}
			if filepath.Dir(db.Dir()) != sp.BootDir() {
				t.Errorf("Dir()=%q, want it directly under %q", db.Dir(), sp.BootDir())
			}
		})
	}
}

func TestIncremental(t *testing.T) {
	compose := func(fs ...func([]byte) []byte) func([]byte) []byte {
		return func(b []byte) []byte {
			for _, f := range fs {
				b = f(b)
			}
			return b
		}
	}
	tests := []struct {
		name    string
		size    int
		mutate  func(rng *rand.Rand) func([]byte) []byte
		dirty   []int
		changed []int // chunks whose content changes; chunk 0 always does (the counter)
	}{
		{
			name:    "rewrite chunk 3",
			size:    10 * cs,
			mutate:  func(r *rand.Rand) func([]byte) []byte { return rewrite(r, 3*cs+100, 4096) },
			dirty:   []int{3},
			changed: []int{0, 3},
		},
		{
			name: "rewrite chunks 3 and 7",
			size: 10 * cs,
			mutate: func(r *rand.Rand) func([]byte) []byte {
				return compose(rewrite(r, 3*cs, 4096), rewrite(r, 8*cs-4096, 4096))
			},
			dirty:   []int{3, 7},
			changed: []int{0, 3, 7},
		},
		{
			name:    "dirty but unchanged chunk",
			size:    10 * cs,
			mutate:  func(r *rand.Rand) func([]byte) []byte { return rewrite(r, 3*cs, 4096) },
			dirty:   []int{3, 5},
			changed: []int{0, 3},
		},
		{
			name:    "write across a chunk boundary",
			size:    10 * cs,
			mutate:  func(r *rand.Rand) func([]byte) []byte { return rewrite(r, 4*cs-2048, 4096) },
			dirty:   []int{3, 4},
			changed: []int{0, 3, 4},
		},
		{
			name:    "grow partial last chunk",
			size:    9*cs + 1000,
			mutate:  func(r *rand.Rand) func([]byte) []byte { return resize(r, 9*cs+5000) },
			changed: []int{0, 9},
		},
		{
			name:    "append chunks",
			size:    10 * cs,
			mutate:  func(r *rand.Rand) func([]byte) []byte { return resize(r, 12*cs+100) },
			changed: []int{0, 10, 11, 12},
		},
		{
			name: "grow and rewrite",
			size: 9*cs + 1000,
			mutate: func(r *rand.Rand) func([]byte) []byte {
				return compose(rewrite(r, 2*cs, 100), resize(r, 11*cs))
			},
			dirty:   []int{2},
			changed: []int{0, 2, 9, 10},
		},
		{
			name:    "shrink mid-chunk",
			size:    10 * cs,
			mutate:  func(r *rand.Rand) func([]byte) []byte { return resize(r, 7*cs+300) },
			changed: []int{0, 7},
		},
		{
			name:    "shrink to a chunk boundary",
			size:    10 * cs,
			mutate:  func(r *rand.Rand) func([]byte) []byte { return resize(r, 6*cs) },
			changed: []int{0},
		},
		{
			name:    "shrink within the last chunk",
			size:    9*cs + 5000,
			mutate:  func(r *rand.Rand) func([]byte) []byte { return resize(r, 9*cs+1000) },
			changed: []int{0, 9},
		},
		{
			name:    "shrink to the header",
			size:    10 * cs,
			mutate:  func(r *rand.Rand) func([]byte) []byte { return resize(r, HeaderSize) },
			changed: []int{0},
		},
		{
			name:    "grow from empty",
			size:    0,
			mutate:  func(r *rand.Rand) func([]byte) []byte { return func([]byte) []byte { return makeDB(r, 3*cs+5, 4096) } },
			changed: []int{0, 1, 2, 3},
		},
		{
			name:    "shrink to empty",
			size:    10 * cs,
			mutate:  func(r *rand.Rand) func([]byte) []byte { return resize(r, 0) },
			changed: []int{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := snapshotted(t, tt.size)
			before := d.db.Stats()
			mustTxn(t, d.db, d.src, tt.mutate(d.rng), tt.dirty...)
			after := d.db.Stats()
			if got := after.Incremental - before.Incremental; got != 1 {
				t.Errorf("Stats().Incremental grew by %d, want 1", got)
			}
			if got := after.Snapshots - before.Snapshots; got != 1 {
				t.Errorf("Stats().Snapshots grew by %d, want 1", got)
			}
			m := assertExact(t, d.db, d.src)
			// Exactly the changed chunks are staged, but those inline.
			if got, want := after.ChunksStaged-before.ChunksStaged, blobCount(m, tt.changed...); got != want {
				t.Errorf("Stats().ChunksStaged grew by %d, want %d (chunks %v)", got, want, tt.changed)
			}
			if want := int64(len(d.src.bytes())); m.Size != want {
				t.Errorf("Size=%d, want %d", m.Size, want)
			}
			assertStagingReferenced(t, d.db)
			assertMarkerClear(t, d.db)
		})
	}

	t.Run("header chunk not written", func(t *testing.T) {
		// Not what SQLite does (it bumps the counter), but nothing in the
		// spool may depend on chunk 0 being dirty.
		d := snapshotted(t, 4*cs)
		ch := preChange(t, d.db, d.src)
		nb := rewrite(d.rng, 2*cs, 4096)(bytes.Clone(d.src.bytes()))
		writeDBFile(t, d.src.path, nb)
		d.src.set(nb)
		ch.Dirty = dirtyBitmap([]int{2})
		before := d.db.Stats()
		if err := d.db.Snapshot(d.src, ch); err != nil {
			t.Fatalf("Snapshot()=%v, want nil", err)
		}
		if got := d.db.Stats().Incremental; got != before.Incremental+1 {
			t.Errorf("Stats().Incremental=%d, want %d", got, before.Incremental+1)
		}
		assertExact(t, d.db, d.src)
	})

	t.Run("long run stays incremental", func(t *testing.T) {
		d := snapshotted(t, 10*cs+500)
		for i := range 30 {
			c := d.rng.IntN(10)
			before := d.db.Stats().Incremental
			mustTxn(t, d.db, d.src, rewrite(d.rng, c*cs+d.rng.IntN(cs-512), 512), c)
			if got := d.db.Stats().Incremental; got != before+1 {
				t.Fatalf("txn %d: Stats().Incremental=%d, want %d", i, got, before+1)
			}
			assertExact(t, d.db, d.src)
		}
		assertStagingReferenced(t, d.db)
	})
}

func TestStalePreStateForcesRebuild(t *testing.T) {
	tests := []struct {
		name    string
		outside func(d *testDB) func([]byte) []byte // nil: no outside write
		// sameTick reports the pre-transaction ctime as the staged one, as
		// a kernel with coarse timestamps may after a quick outside write:
		// the header or the size must then tell.
		sameTick bool
		adjust   func(*Change)
	}{
		{
			name: "counter changed by another writer",
			outside: func(d *testDB) func([]byte) []byte {
				return func(b []byte) []byte {
					fillRandom(d.rng, b[6*cs:6*cs+4096])
					b[27]++
					return b
				}
			},
		},
		{
			// The important case: the header is untouched, only the ctime
			// tells that the staged manifest is stale.
			name: "ctime changed by another writer",
			outside: func(d *testDB) func([]byte) []byte {
				return func(b []byte) []byte {
					b[6*cs+10] ^= 0xff
					return b
				}
			},
		},
		{
			name: "size changed by another writer",
			outside: func(d *testDB) func([]byte) []byte {
				return func(b []byte) []byte { return resize(d.rng, len(b)+3000)(b) }
			},
		},
		{
			name: "counter changed within one ctime tick",
			outside: func(d *testDB) func([]byte) []byte {
				return func(b []byte) []byte {
					fillRandom(d.rng, b[6*cs:6*cs+4096])
					b[27]++
					return b
				}
			},
			sameTick: true,
		},
		{
			name: "size changed within one ctime tick",
			outside: func(d *testDB) func([]byte) []byte {
				return func(b []byte) []byte { return resize(d.rng, len(b)-3000)(b) }
			},
			sameTick: true,
		},
		{
			name:   "pre-state not captured",
			adjust: func(ch *Change) { ch.PreOK = false },
		},
		{
			name: "pre-state of another file",
			adjust: func(ch *Change) {
				ch.PreCtime = ch.PreCtime.Add(-time.Second)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := snapshotted(t, 10*cs)
			staged := stagedManifest(t, d.db)
			if tt.outside != nil {
				outsideWrite(t, d.src, tt.outside(d))
				if ctimeOf(t, d.src.path).Equal(staged.SourceCtime) {
					t.Fatalf("ctime unchanged by the outside write")
				}
			}
			adjust := tt.adjust
			if tt.sameTick {
				adjust = func(ch *Change) { ch.PreCtime = staged.SourceCtime }
			}
			before := d.db.Stats()
			err := txnWith(t, d.db, d.src, adjust, rewrite(d.rng, 2*cs, 4096), 2)
			if err != nil {
				t.Fatalf("Snapshot()=%v, want nil", err)
			}
			after := d.db.Stats()
			if after.Incremental != before.Incremental {
				t.Errorf("Stats().Incremental=%d, want %d (a rebuild)", after.Incremental, before.Incremental)
			}
			if after.Snapshots != before.Snapshots+1 {
				t.Errorf("Stats().Snapshots=%d, want %d", after.Snapshots, before.Snapshots+1)
			}
			assertExact(t, d.db, d.src)
			assertStagingReferenced(t, d.db)
		})
	}
}

func TestMarker(t *testing.T) {
	t.Run("crashed transaction forces rebuild", func(t *testing.T) {
		d := snapshotted(t, 10*cs)
		// A transaction sets the marker, writes, and dies before its
		// snapshot.
		_ = preChange(t, d.db, d.src)
		outsideWrite(t, d.src, func(b []byte) []byte {
			b[27]++
			return rewrite(d.rng, 4*cs, 4096)(b)
		})
		before := d.db.Stats()
		ch := preChange(t, d.db, d.src)
		if !ch.Force {
			t.Fatalf("Change.Force=false, want true: the marker was left set")
		}
		if err := d.db.Snapshot(d.src, ch); err != nil {
			t.Fatalf("Snapshot()=%v, want nil", err)
		}
		assertRebuilt(t, d, before)
		assertMarkerClear(t, d.db)
	})

	t.Run("leftover marker alone forces rebuild", func(t *testing.T) {
		d := snapshotted(t, 10*cs)
		leaveMarker(t, d.db)
		before := d.db.Stats()
		var forced bool
		err := txnWith(t, d.db, d.src, func(ch *Change) { forced = ch.Force }, rewrite(d.rng, 2*cs, 100), 2)
		if err != nil {
			t.Fatalf("Snapshot()=%v, want nil", err)
		}
		if !forced {
			t.Fatalf("Change.Force=false, want true: the marker was left set")
		}
		assertRebuilt(t, d, before)
		assertMarkerClear(t, d.db)
	})

	t.Run("check with leftover marker rebuilds", func(t *testing.T) {
		d := snapshotted(t, 5*cs)
		leaveMarker(t, d.db)
		before := d.db.Stats()
		if err := d.db.Snapshot(d.src, Change{}); err != nil {
			t.Fatalf("Snapshot()=%v, want nil", err)
		}
		after := d.db.Stats()
		if after.Snapshots != before.Snapshots+1 || after.Incremental != before.Incremental {
			t.Errorf("Stats() Snapshots=%d Incremental=%d, want %d and %d",
				after.Snapshots, after.Incremental, before.Snapshots+1, before.Incremental)
		}
		assertMarkerClear(t, d.db)
		assertExact(t, d.db, d.src)
	})

	t.Run("check when up to date does nothing", func(t *testing.T) {
		d := snapshotted(t, 5*cs)
		mustTxn(t, d.db, d.src, rewrite(d.rng, cs, 10), 1)
		st1, err := os.Stat(d.db.StagingManifestPath())
		if err != nil {
			t.Fatal(err)
		}
		before := d.db.Stats()
		for range 3 {
			if err := d.db.Snapshot(d.src, Change{}); err != nil {
				t.Fatalf("Snapshot()=%v, want nil", err)
			}
		}
		after := d.db.Stats()
		if after.Snapshots != before.Snapshots || after.ChunksStaged != before.ChunksStaged {
			t.Errorf("Stats() Snapshots=%d ChunksStaged=%d, want %d and %d (unchanged)",
				after.Snapshots, after.ChunksStaged, before.Snapshots, before.ChunksStaged)
		}
		st2, err := os.Stat(d.db.StagingManifestPath())
		if err != nil {
			t.Fatal(err)
		}
		if !st2.ModTime().Equal(st1.ModTime()) || !os.SameFile(st1, st2) {
			t.Errorf("staged manifest rewritten by a check: mtime %v -> %v", st1.ModTime(), st2.ModTime())
		}
	})

	t.Run("check after another writer rebuilds", func(t *testing.T) {
		d := snapshotted(t, 5*cs)
		outsideWrite(t, d.src, func(b []byte) []byte {
			b[3*cs+1] ^= 1
			return b
		})
		before := d.db.Stats()
		if err := d.db.Snapshot(d.src, Change{}); err != nil {
			t.Fatalf("Snapshot()=%v, want nil", err)
		}
		if got := d.db.Stats().Snapshots; got != before.Snapshots+1 {
			t.Errorf("Stats().Snapshots=%d, want %d", got, before.Snapshots+1)
		}
		assertExact(t, d.db, d.src)
	})
}

var journalMagicBytes = []byte{0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7}

func TestSnapshotErrors(t *testing.T) {
	for _, b := range [][2]byte{{2, 2}, {1, 2}, {2, 1}} {
		t.Run(fmt.Sprintf("WAL mode without a log %d-%d", b[0], b[1]), func(t *testing.T) {
			// The commit that switches to WAL mode: no log yet, the
			// file is the database.
			d := newTestDB(t, 3*cs)
			mustTxn(t, d.db, d.src, func(x []byte) []byte {
				x[18], x[19] = b[0], b[1]
				return x
			})
			if got := markerState(t, d.db); got != MarkerClean {
				t.Errorf("marker %v, want clean", got)
			}
			assertExact(t, d.db, d.src)
		})
	}

	t.Run("WAL mode with a log not open here", func(t *testing.T) {
		// The file alone is not the database: a commit given only the
		// file fails and asks for a rebuild; a check leaves the log's
		// writers to capture it.
		d := snapshotted(t, 3*cs)
		if err := os.WriteFile(d.src.path+"-wal", make([]byte, 4096+56), 0o600); err != nil {
			t.Fatal(err)
		}
		err := txn(t, d.db, d.src, func(x []byte) []byte {
			x[18], x[19] = 2, 2
			return x
		})
		if !errors.Is(err, ErrWAL) {
			t.Fatalf("Snapshot()=%v, want ErrWAL", err)
		}
		if got := markerState(t, d.db); got != MarkerSet {
			t.Errorf("marker %v after ErrWAL, want %v (a rebuild)", got, MarkerSet)
		}
		if err := d.db.Snapshot(d.src, Change{}); err != nil {
			t.Fatalf("check with a log not open here=%v, want nil", err)
		}
		if err := os.Remove(d.src.path + "-wal"); err != nil {
			t.Fatal(err)
		}
		// Without the log, the next transaction rebuilds from the file.
		before := d.db.Stats()
		mustTxn(t, d.db, d.src, func(x []byte) []byte {
			x[18], x[19] = 1, 1
			return x
		})
		assertRebuilt(t, d, before)
	})

	journalTests := []struct {
		name     string
		journal  []byte
		reserved bool
		want     error
	}{
		{name: "hot journal", journal: append(bytes.Clone(journalMagicBytes), make([]byte, 504)...), want: ErrHotJournal},
		{name: "journal of a live writer", journal: append(bytes.Clone(journalMagicBytes), make([]byte, 504)...), reserved: true},
		{name: "zeroed journal header", journal: make([]byte, 512)},
		{name: "short journal", journal: journalMagicBytes[:5]},
		{name: "empty journal", journal: []byte{}},
	}
	for _, tt := range journalTests {
		t.Run(tt.name, func(t *testing.T) {
			d := snapshotted(t, 3*cs)
			if err := os.WriteFile(d.src.path+"-journal", tt.journal, 0o644); err != nil {
				t.Fatal(err)
			}
			d.src.setReserved(tt.reserved)
			before := d.db.Stats()
			err := txn(t, d.db, d.src, rewrite(d.rng, cs, 100), 1)
			if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("Snapshot()=%v, want %v", err, tt.want)
			}
			if tt.want == nil {
				assertExact(t, d.db, d.src)
				return
			}
			if !markerIsSet(t, d.db) {
				t.Errorf("marker cleared after %v; the next transaction would not rebuild", err)
			}
			if got := d.db.Stats(); got.Snapshots != before.Snapshots || got.Failures != before.Failures {
				t.Errorf("Stats() Snapshots=%d Failures=%d, want %d and %d",
					got.Snapshots, got.Failures, before.Snapshots, before.Failures)
			}
			// The journal is rolled back and removed; the next transaction
			// rebuilds.
			if err := os.Remove(d.src.path + "-journal"); err != nil {
				t.Fatal(err)
			}
			mustTxn(t, d.db, d.src, rewrite(d.rng, 2*cs, 100), 2)
			assertRebuilt(t, d, before)
		})
	}

	t.Run("not a database", func(t *testing.T) {
		d := newTestDB(t, 200)
		outsideWrite(t, d.src, func(b []byte) []byte {
			copy(b, "SQLite format 2\x00")
			return b
		})
		err := d.db.Snapshot(d.src, Change{})
		if !errors.Is(err, ErrNotDatabase) {
			t.Fatalf("Snapshot()=%v, want ErrNotDatabase", err)
		}
		if exists(d.db.StagingManifestPath()) {
			t.Errorf("staging manifest created for a file that is not a database")
		}
		if st := d.db.Stats(); st.Failures != 1 || st.LastError == "" {
			t.Errorf("Stats() Failures=%d LastError=%q, want 1 and an error", st.Failures, st.LastError)
		}
	})
}

func TestFaults(t *testing.T) {
	enospc := syscall.ENOSPC
	tests := []struct {
		name  string
		fault func(d *DB) func(op, path string) error
	}{
		{name: "write", fault: func(*DB) func(string, string) error { return failOp("write", enospc) }},
		{name: "rename", fault: func(*DB) func(string, string) error { return failOp("rename", enospc) }},
		{name: "create", fault: func(*DB) func(string, string) error { return failOp("create", enospc) }},
		{name: "link of a staged chunk", fault: func(*DB) func(string, string) error { return failOp("link", enospc) }},
		{name: "rename of the staged manifest", fault: func(d *DB) func(string, string) error {
			return func(op, p string) error {
				if op == "rename" && p == d.StagingManifestPath() {
					return enospc
				}
				return nil
			}
		}},
		// The txn marker is a shared mapping (ctl.go): settling it after
		// a snapshot is a store to memory, which cannot fail.
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := snapshotted(t, 10*cs)
			old := d.src.bytes()
			d.fault.set(tt.fault(d.db))
			err := txn(t, d.db, d.src, rewrite(d.rng, 3*cs, 4096), 3)
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("Snapshot()=%v, want an error wrapping ENOSPC", err)
			}
			if left := names(t, d.db.tmpDir()); len(left) != 0 {
				t.Errorf("tmp holds %v after a failed snapshot, want nothing", left)
			}
			if !markerIsSet(t, d.db) {
				t.Errorf("marker cleared by a failed snapshot")
			}
			if st := d.db.Stats(); st.Failures != 1 || st.LastError == "" {
				t.Errorf("Stats() Failures=%d LastError=%q, want 1 and the error", st.Failures, st.LastError)
			}
			// The spool stays consistent: it describes the file before or
			// after the transaction.
			if got, _ := assembled(t, d.db); !bytes.Equal(got, old) && !bytes.Equal(got, d.src.bytes()) {
				t.Errorf("after the failure Assemble() gives neither the old nor the new file")
			}

			d.fault.clear()
			before := d.db.Stats()
			// Chunk 3 again: what the failed snapshot staged for it is
			// referenced by nothing now, and must not stay in staging.
			mustTxn(t, d.db, d.src, rewrite(d.rng, 3*cs, 4096), 3)
			after := d.db.Stats()
			if after.Incremental != before.Incremental {
				t.Errorf("Stats().Incremental=%d, want %d (a rebuild after a failure)", after.Incremental, before.Incremental)
			}
			if after.LastError != "" {
				t.Errorf("Stats().LastError=%q after a success, want \"\"", after.LastError)
			}
			assertExact(t, d.db, d.src)
			assertStagingReferenced(t, d.db)
			assertMarkerClear(t, d.db)
		})
	}

	t.Run("mkdir of the spool root", func(t *testing.T) {
		fsw := &faultSwitch{}
		opts := testOptions(t)
		opts.Fault = fsw.fault
		fsw.set(func(op, p string) error {
			if op == "mkdir" && p == opts.Dir {
				return enospc
			}
			return nil
		})
		sp := openSpool(t, opts) // Open does not fail: snapshots retry
		if err := sp.Check(); !errors.Is(err, syscall.ENOSPC) {
			t.Errorf("Check()=%v, want an error wrapping ENOSPC", err)
		}
		src := newDBFile(t, "a.db", makeDB(newRand(t), 3*cs+10, 4096), 0o644)
		db, err := sp.DB(src.path)
		if err != nil {
			t.Fatal(err)
		}
		err = txn(t, db, src, unchanged)
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("Snapshot()=%v, want an error wrapping ENOSPC", err)
		}
		if exists(opts.Dir) {
			t.Errorf("spool root created despite the fault")
		}
		fsw.clear()
		if err := sp.Check(); err != nil {
			t.Errorf("Check()=%v, want nil", err)
		}
		mustTxn(t, db, src, rewrite(newRand(t), cs, 10), 1)
		assertExact(t, db, src)
		if st := db.Stats(); st.Snapshots != 1 || st.Failures != 1 || st.LastError != "" {
			t.Errorf("Stats() Snapshots=%d Failures=%d LastError=%q, want 1, 1, \"\"", st.Snapshots, st.Failures, st.LastError)
		}
	})

	t.Run("rename of ready", func(t *testing.T) {
		d := newTestDB(t, 4*cs)
		d.fault.set(func(op, p string) error {
			if op == "rename" && p == d.db.readyDir() {
				return enospc
			}
			return nil
		})
		// Publication for upload is best effort: the snapshot succeeds.
		mustTxn(t, d.db, d.src, unchanged)
		if got := names(t, d.db.readyDir()); len(got) != 0 {
			t.Fatalf("ready holds %v despite the fault", got)
		}
		if got, want := int64(len(names(t, d.db.StagingChunksDir()))), blobCount(stagedManifest(t, d.db), 0, 1, 2, 3); got != want {
			t.Errorf("staging holds %d chunks, want %d", got, want)
		}
		if left := names(t, d.db.tmpDir()); len(left) != 0 {
			t.Errorf("tmp holds %v after a failed publication, want nothing", left)
		}
		assertExact(t, d.db, d.src)
		d.fault.clear()
		mustTxn(t, d.db, d.src, rewrite(d.rng, 2*cs, 10), 2)
		if got := names(t, d.db.readyDir()); len(got) != 1 {
			t.Fatalf("ready holds %v, want one snapshot", got)
		}
		if got := names(t, d.db.StagingChunksDir()); len(got) != 0 {
			t.Errorf("staging holds %v after publication, want nothing", got)
		}
		assertExact(t, d.db, d.src)
	})
}

// uploader simulates the uploader: it takes ready/ as consuming/, copies
// its chunks to a remote store, and deletes it.
type uploader struct {
	remote map[string][]byte
}

func (u *uploader) take(t *testing.T, db *DB) {
	t.Helper()
	if err := os.Rename(db.readyDir(), db.consumingDir()); err != nil {
		t.Fatalf("rename ready to consuming: %v", err)
	}
}

func (u *uploader) finish(t *testing.T, db *DB) {
	t.Helper()
	for _, snap := range names(t, db.consumingDir()) {
		dir := filepath.Join(db.consumingDir(), snap)
		if _, err := os.Stat(filepath.Join(dir, "manifest")); err != nil {
			t.Fatalf("consuming/%s has no manifest: %v", snap, err)
		}
		for _, c := range names(t, filepath.Join(dir, "chunks")) {
			fp, err := manifest.ParseFingerprint(c)
			if err != nil {
				t.Fatal(err)
			}
			b, err := readChunk(filepath.Join(dir, "chunks", c), fp)
			if err != nil {
				t.Fatal(err)
			}
			u.remote[c] = b
		}
	}
	if err := os.RemoveAll(db.consumingDir()); err != nil {
		t.Fatal(err)
	}
}

// assertExactWithRemote reassembles the staged manifest from the spool and
// the uploaded chunks.
func (u *uploader) assertExact(t *testing.T, db *DB, fake *fakeSource) {
	t.Helper()
	m := stagedManifest(t, db)
	dirs := []string{db.StagingChunksDir()}
	for _, state := range []string{db.readyDir(), db.consumingDir()} {
		for _, s := range names(t, state) {
			dirs = append(dirs, filepath.Join(state, s, "chunks"))
		}
	}
	var out []byte
	for i, fp := range m.Chunks {
		data, ok := m.Inline[uint32(i)]
		if !ok {
			data, ok = u.remote[fp.String()]
		}
		for _, d := range dirs {
			if ok {
				break
			}
			if b, err := readChunk(filepath.Join(d, fp.String()), fp); err == nil {
				data, ok = b, true
			}
		}
		if !ok {
			t.Fatalf("chunk %d (%s) is neither spooled nor uploaded", i, fp)
		}
		out = append(out, data...)
	}
	if want := fake.bytes(); !bytes.Equal(out, want) {
		t.Fatalf("reassembled %d bytes, want the %d-byte file: %s", len(out), len(want), firstDiff(out, want))
	}
}

func TestReadyPublication(t *testing.T) {
	d := newTestDB(t, 6*cs+99)
	mustTxn(t, d.db, d.src, unchanged)

	ready := names(t, d.db.readyDir())
	if len(ready) != 1 {
		t.Fatalf("ready holds %v after the first snapshot, want one snapshot", ready)
	}
	first := ready[0]
	snapDir := filepath.Join(d.db.readyDir(), first)
	// 7 chunks: a head (TestMain), over the base beside it in staging/.
	bases := names(t, filepath.Join(d.db.Dir(), "staging"))
	bases = slices.DeleteFunc(bases, func(n string) bool { return !strings.HasPrefix(n, "base.") })
	if len(bases) != 1 {
		t.Fatalf("staging/ holds bases %v, want one", bases)
	}
	if got, want := names(t, snapDir), []string{bases[0], "chunks", "manifest"}; !slices.Equal(got, want) {
		t.Fatalf("ready/%s holds %v, want %v", first, got, want)
	}
	if !sameFile(t, filepath.Join(snapDir, bases[0]), filepath.Join(d.db.Dir(), "staging", bases[0])) {
		t.Errorf("ready/%s/%s is not a link to the staged base", first, bases[0])
	}
	m := stagedManifest(t, d.db)
	readyManifest, err := os.ReadFile(filepath.Join(snapDir, "manifest"))
	if err != nil {
		t.Fatal(err)
	}
	if staged, _ := os.ReadFile(d.db.StagingManifestPath()); !bytes.Equal(readyManifest, staged) {
		t.Errorf("ready/%s/manifest differs from the staged manifest", first)
	}
	chunks := names(t, filepath.Join(snapDir, "chunks"))
	if want := blobCount(m, seq(0, len(m.Chunks))...); int64(len(chunks)) != want {
		t.Errorf("ready/%s/chunks holds %d chunks, want %d", first, len(chunks), want)
	}
	for i, fp := range m.Chunks {
		if _, inline := m.Inline[uint32(i)]; inline {
			continue
		}
		if !exists(filepath.Join(snapDir, "chunks", fp.String())) {
			t.Errorf("ready/%s/chunks lacks %s", first, fp)
		}
	}
	if got := names(t, d.db.StagingChunksDir()); len(got) != 0 {
		t.Errorf("staging/chunks holds %v after publication, want nothing", got)
	}

	// Without an uploader, ready/ keeps the first snapshot and staging
	// holds only what the staged manifest references.
	for i := range 8 {
		c := 1 + i%3
		mustTxn(t, d.db, d.src, rewrite(d.rng, c*cs+100*i, 100), c)
		if got := names(t, d.db.readyDir()); len(got) != 1 || got[0] != first {
			t.Fatalf("txn %d: ready holds %v, want [%s]", i, got, first)
		}
		if b, _ := os.ReadFile(filepath.Join(snapDir, "manifest")); !bytes.Equal(b, readyManifest) {
			t.Fatalf("txn %d: ready/%s/manifest changed", i, first)
		}
		assertStagingReferenced(t, d.db)
		assertExact(t, d.db, d.src)
	}
	if got, want := int64(len(names(t, d.db.StagingChunksDir()))), blobCount(stagedManifest(t, d.db), 0, 1, 2, 3); got != want {
		t.Errorf("staging holds %d chunks, want %d (chunks 0 to 3 but the inline ones)", got, want)
	}

	// The uploader takes ready/, a transaction publishes a new snapshot
	// meanwhile, then the uploader finishes and takes the next one.
	up := &uploader{remote: make(map[string][]byte)}
	seen := map[string]bool{first: true}
	up.take(t, d.db)
	for round := range 4 {
		c := 1 + round%5
		mustTxn(t, d.db, d.src, rewrite(d.rng, c*cs, 4096), c)
		got := names(t, d.db.readyDir())
		if len(got) != 1 {
			t.Fatalf("round %d: ready holds %v, want one snapshot", round, got)
		}
		if seen[got[0]] {
			t.Fatalf("round %d: ready/%s reuses an earlier name", round, got[0])
		}
		seen[got[0]] = true
		if left := names(t, d.db.StagingChunksDir()); len(left) != 0 {
			t.Errorf("round %d: staging holds %v after publication, want nothing", round, left)
		}
		// Assemble cannot be used: earlier rounds' chunks were uploaded.
		up.assertExact(t, d.db, d.src)
		up.finish(t, d.db)
		up.assertExact(t, d.db, d.src)
		up.take(t, d.db)
	}
	up.finish(t, d.db)
	// Nothing is waiting: the next transaction is published at once, and
	// what it does not carry was uploaded.
	mustTxn(t, d.db, d.src, rewrite(d.rng, 5*cs, 10), 5)
	if got := names(t, d.db.readyDir()); len(got) != 1 || seen[got[0]] {
		t.Fatalf("ready holds %v, want one snapshot with a new name", got)
	}
	up.assertExact(t, d.db, d.src)
	// A forced rebuild does not stage again what was uploaded.
	up.take(t, d.db)
	up.finish(t, d.db)
	before := d.db.Stats().ChunksStaged
	leaveMarker(t, d.db)
	mustTxn(t, d.db, d.src, rewrite(d.rng, 3*cs, 10), 3)
	if got, want := d.db.Stats().ChunksStaged-before, blobCount(stagedManifest(t, d.db), 0, 3); got != want {
		t.Errorf("a rebuild staged %d chunks, want %d (0 and 3 but the inline ones)", got, want)
	}
	up.assertExact(t, d.db, d.src)
}

// randomTxn applies one random transaction, keeping the size within
// [lo, hi]. One time in ten, something forces the next snapshot to be a
// rebuild: a crashed transaction's marker, or another program's write.
func randomTxn(t *testing.T, d *testDB, lo, hi int) {
	t.Helper()
	switch d.rng.IntN(20) {
	case 0:
		leaveMarker(t, d.db)
	case 1:
		off := HeaderSize + d.rng.IntN(len(d.src.bytes())-HeaderSize-512)
		outsideWrite(t, d.src, rewrite(d.rng, off, 512))
	}
	b := d.src.bytes()
	var mutate func([]byte) []byte
	var dirty []int
	switch op := d.rng.IntN(10); {
	case op < 6:
		var fs []func([]byte) []byte
		for range 1 + d.rng.IntN(3) {
			off := HeaderSize + d.rng.IntN(len(b)-HeaderSize-4096)
			fs = append(fs, rewrite(d.rng, off, 4096))
			dirty = append(dirty, off/cs, (off+4095)/cs)
		}
		mutate = func(x []byte) []byte {
			for _, f := range fs {
				x = f(x)
			}
			return x
		}
	case op < 8:
		mutate = resize(d.rng, min(hi, len(b)+1+d.rng.IntN(2*cs)))
	default:
		mutate = resize(d.rng, max(lo, len(b)-1-d.rng.IntN(2*cs)))
	}
	mustTxn(t, d.db, d.src, mutate, dirty...)
}

func TestSpoolSizeBound(t *testing.T) {
	const lo, hi = 6 * cs, 8 * cs
	txns := 300
	if raceEnabled {
		txns = 100
	}
	for _, stuck := range []bool{false, true} {
		name := "no uploader"
		if stuck {
			name = "stuck uploader"
		}
		t.Run(name, func(t *testing.T) {
			d := snapshotted(t, 7*cs+1234)
			maxRatio := 0.0
			for i := range txns {
				if stuck && i == txns/3 {
					// Once staging has filled up again: the worst case.
					(&uploader{}).take(t, d.db)
				}
				randomTxn(t, d, lo, hi)
				size := int64(len(d.src.bytes()))
				used := spoolBytes(t, d.db.Dir())
				ratio := float64(used) / float64(size)
				maxRatio = max(maxRatio, ratio)
				if used > 4*size {
					t.Fatalf("txn %d: spool holds %d bytes for a %d-byte database (%.2fx), want at most 4x", i, used, size, ratio)
				}
				assertExact(t, d.db, d.src)
			}
			assertStagingReferenced(t, d.db)
			t.Logf("%s: maximum spool size %.3f times the database size", name, maxRatio)
		})
	}
}

// TestSpoolSizeAfterShrink: the snapshots waiting in ready/ and consuming/
// keep the size the database had when they were taken, so after a large
// shrink the spool is bounded by those sizes, not by the current one.
func TestSpoolSizeAfterShrink(t *testing.T) {
	d := snapshotted(t, 12*cs)
	(&uploader{}).take(t, d.db)
	mustTxn(t, d.db, d.src, rewrite(d.rng, 5*cs, 10), 5) // ready: 12 chunks
	mustTxn(t, d.db, d.src, resize(d.rng, cs+500))
	mustTxn(t, d.db, d.src, rewrite(d.rng, cs, 10), 1)
	assertExact(t, d.db, d.src)
	size := int64(len(d.src.bytes()))
	used := spoolBytes(t, d.db.Dir())
	var held int64
	for _, state := range []string{d.db.readyDir(), d.db.consumingDir()} {
		for _, s := range names(t, state) {
			snap, err := readSnapshot(filepath.Join(state, s, "manifest"))
			if err != nil || snap == nil {
				t.Fatalf("readSnapshot(%s)=%v, %v, want a snapshot", s, snap, err)
			}
			held += snap.Manifest.Size
		}
	}
	const overhead = 16 << 10 // manifests and the source file
	if used > size+held+overhead {
		t.Errorf("spool holds %d bytes, want at most %d (database) + %d (waiting snapshots) + %d",
			used, size, held, overhead)
	}
	t.Logf("after shrinking to %d bytes the spool holds %d bytes (%.1fx the database)", size, used, float64(used)/float64(size))
}

func TestConcurrentChecks(t *testing.T) {
	t.Run("up to date", func(t *testing.T) {
		d := snapshotted(t, 5*cs)
		before := d.db.Stats()
		errs := make(chan error, 200)
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() {
				for range 50 {
					if err := d.db.Snapshot(d.src, Change{}); err != nil {
						errs <- err
					}
					_ = d.db.Stats()
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("Snapshot()=%v, want nil", err)
		}
		if got := d.db.Stats(); got.Snapshots != before.Snapshots {
			t.Errorf("Stats().Snapshots=%d, want %d", got.Snapshots, before.Snapshots)
		}
		assertExact(t, d.db, d.src)
	})

	t.Run("stale", func(t *testing.T) {
		d := snapshotted(t, 5*cs)
		leaveMarker(t, d.db)
		before := d.db.Stats()
		errs := make(chan error, 4)
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				db, err := d.sp.DB(d.src.path)
				if err == nil && db != d.db {
					t.Errorf("DB(%q) returned a second *DB", d.src.path)
				}
				if err == nil {
					err = db.Snapshot(d.src, Change{})
				}
				if err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("Snapshot()=%v, want nil", err)
		}
		if got := d.db.Stats(); got.Snapshots != before.Snapshots+1 {
			t.Errorf("Stats().Snapshots=%d, want %d (one rebuild)", got.Snapshots, before.Snapshots+1)
		}
		assertExact(t, d.db, d.src)
	})
}

// TestNonUTF8SourcePath: Linux paths are bytes, manifests require UTF-8.
// Either the path is refused up front or snapshots fail, but in no case may
// the spool grow without bound.
func TestNonUTF8SourcePath(t *testing.T) {
	sp := openSpool(t, testOptions(t))
	src := newDBFile(t, "caf\xe9/a.db", makeDB(newRand(t), 4*cs, 4096), 0o644)
	db, err := sp.DB(src.path)
	if err != nil {
		return // refusing the path is fine
	}
	rng := newRand(t)
	for i := range 30 {
		c := 1 + i%3
		err := txn(t, db, src, rewrite(rng, c*cs, 100), c)
		if err == nil {
			assertExact(t, db, src)
		}
		size := int64(len(src.bytes()))
		if used := spoolBytes(t, db.Dir()); used > 4*size {
			t.Fatalf("txn %d (Snapshot()=%v): spool holds %d bytes for a %d-byte database, want at most 4x",
				i, err, used, size)
		}
	}
}

// TestFailedSnapshotsDoNotGrowTheSpool: when every manifest write fails,
// the chunks each snapshot staged are deleted again, so a persistent
// failure cannot fill the disk; once it clears, the snapshot is exact.
func TestFailedSnapshotsDoNotGrowTheSpool(t *testing.T) {
	d := newTestDB(t, 8*cs)
	db, src, rng, sw := d.db, d.src, d.rng, d.fault
	mustTxn(t, db, src, unchanged)
	manifestPath := db.StagingManifestPath()
	sw.set(func(op, path string) error {
		if op == "rename" && path == manifestPath {
			return syscall.ENOSPC
		}
		return nil
	})
	size := int64(len(src.bytes()))
	for i := range 40 {
		c := 1 + i%7
		if err := txn(t, db, src, rewrite(rng, c*cs, 100), c); !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("txn %d: Snapshot()=%v, want ENOSPC", i, err)
		}
		if used := spoolBytes(t, db.Dir()); used > 4*size {
			t.Fatalf("txn %d: spool holds %d bytes for a %d-byte database", i, used, size)
		}
	}
	entries, err := os.ReadDir(db.StagingChunksDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		fp, _ := manifest.ParseFingerprint(e.Name())
		if _, m := assembled(t, db); m != nil && !slices.Contains(m.Chunks, fp) {
			t.Fatalf("staged chunk %s is referenced by no manifest after failed snapshots", e.Name())
		}
	}
	sw.clear()
	mustTxn(t, db, src, rewrite(rng, 2*cs, 100), 2)
	assertExact(t, db, src)
}

// TestPublishIntoEmptyReady: an empty ready/ (left by an uploader that took
// its snapshot) does not block the next publication.
func TestPublishIntoEmptyReady(t *testing.T) {
	d := newTestDB(t, 4*cs)
	db, src, rng := d.db, d.src, d.rng
	mustTxn(t, db, src, unchanged)
	ready := filepath.Join(db.Dir(), "ready")
	// The uploader takes the snapshot and leaves ready/ empty.
	subs, err := os.ReadDir(ready)
	if err != nil || len(subs) != 1 {
		t.Fatalf("ready/ after the first snapshot: %v, %v; want one snapshot", subs, err)
	}
	consuming := filepath.Join(db.Dir(), "consuming")
	if err := os.Mkdir(consuming, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(ready, subs[0].Name()), filepath.Join(consuming, subs[0].Name())); err != nil {
		t.Fatal(err)
	}
	mustTxn(t, db, src, rewrite(rng, 2*cs, 100), 2)
	subs, err = os.ReadDir(ready)
	if err != nil || len(subs) != 1 {
		t.Fatalf("ready/ after publishing into an empty ready/: %v, %v; want one snapshot", subs, err)
	}
	assertExact(t, db, src)
}

// TestConcurrentFailureKeepsOthersChunks: two processes snapshot the same
// state (both under SHARED). B stages the chunks and is about to publish
// its manifest when A, which stages the same chunks, starts and fails. The
// spool lock makes A wait for B; and A, which created none of the chunk
// files, must delete none of them either, or B's manifest would reference
// missing chunks.
func TestConcurrentFailureKeepsOthersChunks(t *testing.T) {
	opts := testOptions(t)
	var a, b faultSwitch
	optsA, optsB := opts, opts
	optsA.Fault, optsB.Fault = a.fault, b.fault
	spA, spB := openSpool(t, optsA), openSpool(t, optsB)
	rng := newRand(t)
	src := newDBFile(t, "shared.db", makeDB(rng, 6*cs, 4096), 0o644)
	dbA, err := spA.DB(src.path)
	if err != nil {
		t.Fatal(err)
	}
	dbB, err := spB.DB(src.path)
	if err != nil {
		t.Fatal(err)
	}
	manifestPath := dbB.StagingManifestPath()
	bStaged, release := make(chan struct{}), make(chan struct{})
	b.set(func(op, path string) error {
		if op == "rename" && path == manifestPath {
			close(bStaged)
			<-release
		}
		return nil
	})
	a.set(func(op, path string) error { // A stages, then fails on its manifest
		if op == "rename" && path == manifestPath {
			return syscall.ENOSPC
		}
		return nil
	})
	bErr, aErr := make(chan error, 1), make(chan error, 1)
	go func() { bErr <- dbB.Snapshot(src, Change{}) }()
	<-bStaged
	go func() { aErr <- dbA.Snapshot(src, Change{Wrote: true, Force: true}) }() // a rebuild: it stages every chunk
	close(release)
	if err := <-bErr; err != nil {
		t.Fatalf("B's Snapshot()=%v", err)
	}
	if err := <-aErr; err == nil {
		t.Fatal("A's Snapshot()=nil, want an injected failure")
	}
	b.clear()
	assertExact(t, dbB, src)
}
