package spool

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/boule-vfs/boule/manifest"
)

// changeInPlace commits, in fake's memory only, new random bytes in the
// chunks idx (and a new change counter), and snapshots the change. The file
// on disk keeps its ctime, which is what the spool checks: a test can
// commit many times to a large database without rewriting it each time.
func changeInPlace(t testing.TB, d *testDB, idx ...int) {
	t.Helper()
	ch := preChange(t, d.db, d.src)
	d.src.mu.Lock()
	for _, i := range idx {
		fillRandom(d.rng, chunkOf(d.src.data, i))
	}
	binary.BigEndian.PutUint32(d.src.data[24:], counter(d.src.data)+1)
	d.src.mu.Unlock()
	ch.Dirty = dirtyBitmap(append(idx, 0))
	if err := d.db.Snapshot(d.src, ch); err != nil {
		t.Fatalf("Snapshot()=%v, want nil", err)
	}
}

// stagedBases lists the base files in db's staging/.
func stagedBases(t testing.TB, db *DB) []string {
	t.Helper()
	return slices.DeleteFunc(names(t, filepath.Join(db.Dir(), "staging")), func(n string) bool {
		return !strings.HasPrefix(n, basePrefix)
	})
}

func stagedVersion(t testing.TB, db *DB) int {
	t.Helper()
	v, err := manifest.FormatVersion(must(os.ReadFile(db.StagingManifestPath())))
	if err != nil {
		t.Fatalf("FormatVersion(staged manifest)=%v, want nil", err)
	}
	return v
}

// TestStagedHeadBytes: the staged manifest of a large database is a head
// over a base, so that the bytes a snapshot writes follow what it changed,
// not the database's size. Whole manifests would write 32 bytes per chunk
// each time.
func TestStagedHeadBytes(t *testing.T) {
	for _, n := range []int{64, 1024} {
		d := newTestDB(t, n*cs)
		mustTxn(t, d.db, d.src, unchanged)
		if v := stagedVersion(t, d.db); v != 2 {
			t.Fatalf("%d chunks: staged manifest has version %d, want 2 (a head)", n, v)
		}
		const commits = 300
		before := d.db.Stats()
		for range commits {
			changeInPlace(t, d, 1+d.rng.IntN(n-1))
		}
		after := d.db.Stats()
		if got := after.Incremental - before.Incremental; got != commits {
			t.Fatalf("%d chunks: %d incremental snapshots of %d, want all", n, got, commits)
		}
		assertExact(t, d.db, d.src)
		if b := stagedBases(t, d.db); len(b) != 1 {
			t.Errorf("%d chunks: staging holds bases %v, want one", n, b)
		}
		// Every snapshot carries chunk 0 inline, whatever its form.
		perSnapshot := float64(after.ManifestBytes-before.ManifestBytes)/commits - cs
		whole := float64(n * manifest.FingerprintSize)
		t.Logf("%d chunks: %.0f bytes per snapshot besides the inline chunk, against %.0f for a whole manifest's fingerprints", n, perSnapshot, whole)
		// The heads and the bases they amortize grow with the square
		// root of the size (FORMAT.md): an eighth of a whole list at
		// 1024 chunks, less than half of it at 64.
		if limit := whole / 2; n == 64 && perSnapshot > limit {
			t.Errorf("%d chunks: %.0f bytes per snapshot, want at most %.0f", n, perSnapshot, limit)
		}
		if limit := whole / 8; n == 1024 && perSnapshot > limit {
			t.Errorf("%d chunks: %.0f bytes per snapshot, want at most %.0f", n, perSnapshot, limit)
		}
	}
}

// TestStagedHeadsStayExact: heads over bases through growth past the base,
// shrinks, new bases, another process's spool object reading what this one
// wrote, and handed-over snapshots whose base staging has replaced since.
func TestStagedHeadsStayExact(t *testing.T) {
	d := snapshotted(t, 16*cs)
	u := &uploader{}
	u.take(t, d.db) // the first snapshot waits in consuming/
	first, err := readSnapshot(filepath.Join(d.db.consumingDir(), names(t, d.db.consumingDir())[0], "manifest"))
	if err != nil || first == nil {
		t.Fatalf("readSnapshot(consuming)=%v, %v, want the first snapshot", first, err)
	}
	firstBase := stagedBases(t, d.db)
	steps := []struct {
		name   string
		mutate func([]byte) []byte
		dirty  []int
	}{
		{"rewrite", rewrite(d.rng, 3*cs, 100), []int{3}},
		{"grow past the base", resize(d.rng, 24*cs+7), []int{15, 16, 17, 18, 19, 20, 21, 22, 23, 24}},
		{"rewrite past the base", rewrite(d.rng, 20*cs, 100), []int{20}},
		{"shrink", resize(d.rng, 10*cs), nil},
		{"grow back", resize(d.rng, 18*cs), []int{10, 11, 12, 13, 14, 15, 16, 17}},
		{"shrink below a whole manifest", resize(d.rng, 2*cs+5), nil},
		{"grow into a head again", resize(d.rng, 9*cs), []int{2, 3, 4, 5, 6, 7, 8}},
	}
	for _, s := range steps {
		mustTxn(t, d.db, d.src, s.mutate, s.dirty...)
		assertExact(t, d.db, d.src)
		want := 2
		if len(d.src.bytes()) <= 3*cs {
			want = 1
		}
		if v := stagedVersion(t, d.db); v != want {
			t.Errorf("%s: staged manifest has version %d, want %d", s.name, v, want)
		}
		if b := stagedBases(t, d.db); len(b) != want-1 {
			t.Errorf("%s: staging holds bases %v, want %d", s.name, b, want-1)
		}
	}
	for range 60 { // enough heads to need new bases
		mustTxn(t, d.db, d.src, rewrite(d.rng, 4*cs, 10), 4)
	}
	if b := stagedBases(t, d.db); slices.Equal(b, firstBase) {
		t.Errorf("staging holds the first base %v still, want a newer one", b)
	}
	// The snapshot in consuming/ kept its own link to its base.
	again, err := readSnapshot(filepath.Join(d.db.consumingDir(), names(t, d.db.consumingDir())[0], "manifest"))
	if err != nil || again == nil || again.ID != first.ID || !slices.Equal(again.Manifest.Chunks, first.Manifest.Chunks) {
		t.Errorf("readSnapshot(consuming) after new bases = %v, want the first snapshot", err)
	}

	// Another process (another Spool) reads the head and its base, and
	// goes on incrementally.
	other, err := Open(d.sp.opts)
	if err != nil {
		t.Fatal(err)
	}
	odb, err := other.DB(d.src.path)
	if err != nil {
		t.Fatal(err)
	}
	before := odb.Stats()
	mustTxn(t, odb, d.src, rewrite(d.rng, 5*cs, 10), 5)
	if got := odb.Stats().Incremental - before.Incremental; got != 1 {
		t.Errorf("another process's snapshot over the staged head: %d incremental, want 1", got)
	}
	assertExact(t, odb, d.src)
	mustTxn(t, d.db, d.src, rewrite(d.rng, 6*cs, 10), 6)
	assertExact(t, d.db, d.src)
}

// TestUploadedHeadKeepsItsID: the uploader records the whole manifest it
// put; after a restart, the staged head of that same snapshot still
// counts as uploaded, or every large database would be put again.
func TestUploadedHeadKeepsItsID(t *testing.T) {
	d := snapshotted(t, 8*cs)
	dir := OpenDir(d.db.Dir())
	s, err := dir.Staged()
	if err != nil || s == nil {
		t.Fatalf("Staged()=%v, %v", s, err)
	}
	whole, err := s.Manifest.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := dir.RecordUploaded(whole, nil); err != nil {
		t.Fatal(err)
	}
	if got := dir.UploadedID(); got != s.ID {
		t.Errorf("UploadedID()=%x, want the staged head's ID %x", got, s.ID)
	}
	mustTxn(t, d.db, d.src, rewrite(d.rng, 2*cs, 10), 2)
	if staged, _ := dir.StagedID(); dir.UploadedID() == staged {
		t.Errorf("UploadedID() is the ID of a newer staged snapshot, want the uploaded one's")
	}
}
