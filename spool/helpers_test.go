package spool

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/boule-vfs/boule/manifest"
)

const cs = manifest.ChunkSize

// fakeSource is a Source over an in-memory copy of the database file. Tests
// keep it equal to the file at its path, which Snapshot stats.
type fakeSource struct {
	path string

	mu       sync.RWMutex
	data     []byte
	reserved bool
}

func (f *fakeSource) ReadAt(p []byte, off int64) (int, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if off < 0 {
		return 0, errors.New("fakeSource: negative offset")
	}
	if off >= int64(len(f.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *fakeSource) Size() (int64, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return int64(len(f.data)), nil
}

func (f *fakeSource) Reserved() (bool, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.reserved, nil
}

// bytes returns the current content. Callers must not modify it: set
// replaces the slice, nothing writes into it.
func (f *fakeSource) bytes() []byte {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.data
}

func (f *fakeSource) set(b []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.data = b
}

func (f *fakeSource) setReserved(v bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reserved = v
}

// pageField encodes a page size as SQLite stores it at offset 16.
func pageField(ps int) uint16 {
	if ps == 65536 {
		return 1
	}
	return uint16(ps)
}

// makeDB returns size random bytes carrying a rollback-mode SQLite header
// with the given page size and change counter 1. Random content keeps every
// chunk distinct (and never the zero chunk, which Assemble can synthesize).
func makeDB(rng *rand.Rand, size, pageSize int) []byte {
	b := make([]byte, size)
	fillRandom(rng, b)
	if size >= 16 {
		copy(b, "SQLite format 3\x00")
	}
	if size >= HeaderSize {
		binary.BigEndian.PutUint16(b[16:], pageField(pageSize))
		b[18], b[19] = 1, 1
		binary.BigEndian.PutUint32(b[24:], 1)
	}
	return b
}

func fillRandom(rng *rand.Rand, b []byte) {
	for i := 0; i < len(b); i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], rng.Uint64())
		copy(b[i:], w[:])
	}
}

func newRand(t testing.TB) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	t.Logf("random seed %d", seed)
	return rand.New(rand.NewPCG(seed, 0x5eed))
}

func counter(b []byte) uint32 { return binary.BigEndian.Uint32(b[24:28]) }

// faultSwitch is an Options.Fault whose behaviour tests change at run time.
type faultSwitch struct {
	f atomic.Pointer[func(op, path string) error]
}

func (s *faultSwitch) fault(op, path string) error {
	if f := s.f.Load(); f != nil {
		return (*f)(op, path)
	}
	return nil
}

func (s *faultSwitch) set(f func(op, path string) error) { s.f.Store(&f) }
func (s *faultSwitch) clear()                            { s.f.Store(nil) }

// failOp fails every step named op with err.
func failOp(op string, err error) func(string, string) error {
	return func(o, _ string) error {
		if o == op {
			return err
		}
		return nil
	}
}

func testOptions(t *testing.T) Options {
	return Options{Dir: filepath.Join(t.TempDir(), "spool"), BootID: "test-boot", Hostname: "h"}
}

// openSpool opens a spool and makes sure its background deletion of old
// boots is over before the temporary directories are removed.
func openSpool(t *testing.T, opts Options) *Spool {
	t.Helper()
	sp, err := Open(opts)
	if err != nil {
		t.Fatalf("Open(%+v)=%v, want nil", opts, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = sp.WaitCleaned(ctx)
	})
	return sp
}

// writeDBFile writes b as the whole database file in place, as SQLite
// does (no truncation to zero first), keeping its mode.
func writeDBFile(t testing.TB, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err == nil {
		_, err = f.WriteAt(b, 0)
		if err == nil {
			err = f.Truncate(int64(len(b)))
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
}

// newDBFile creates the database file at a fresh path with content b and
// exactly mode perm, and returns its fake source.
func newDBFile(t *testing.T, name string, b []byte, perm fs.FileMode) *fakeSource {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	writeDBFile(t, p, b)
	if err := os.Chmod(p, perm); err != nil {
		t.Fatal(err)
	}
	return &fakeSource{path: p, data: bytes.Clone(b)}
}

func ctimeOf(t testing.TB, path string) time.Time {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	s := st.Sys().(*syscall.Stat_t)
	c := statCtim(s)
	return time.Unix(c.Sec, c.Nsec).UTC()
}

func dirtyBitmap(idx []int) []uint64 {
	var out []uint64
	for _, i := range idx {
		for len(out) <= i/64 {
			out = append(out, 0)
		}
		out[i/64] |= 1 << (i % 64)
	}
	return out
}

func chunkOf(b []byte, i int) []byte {
	lo := min(i*cs, len(b))
	hi := min(lo+cs, len(b))
	return b[lo:hi]
}

// txn simulates the C side of one write transaction: it captures the
// pre-state, sets the txn marker (Force when it was already set or cannot
// be set, as begin_txn does), applies mutate to a copy of the file and bumps the change counter
// (marking chunk 0 dirty), writes the file and calls Snapshot with the
// given dirty chunks. It fails the test if mutate changed a chunk of the
// unchanged-size range that is not listed in dirty: that would be a bug of
// the test, not of the spool.
func txn(t testing.TB, db *DB, fake *fakeSource, mutate func([]byte) []byte, dirty ...int) error {
	t.Helper()
	return txnWith(t, db, fake, nil, mutate, dirty...)
}

// txnWith is txn with a hook that may alter the Change before Snapshot.
func txnWith(t testing.TB, db *DB, fake *fakeSource, adjust func(*Change), mutate func([]byte) []byte, dirty ...int) error {
	t.Helper()
	ch := commitFile(t, db, fake, mutate, dirty...)
	if adjust != nil {
		adjust(&ch)
	}
	return db.Snapshot(fake, ch)
}

// commitFile does to fake's file what a commit does: mutate changes its
// bytes, which change only in the chunks dirty names (and chunk 0, whose
// change counter it bumps), and it returns the Change the commit hands
// the spool.
func commitFile(t testing.TB, db *DB, fake *fakeSource, mutate func([]byte) []byte, dirty ...int) Change {
	t.Helper()
	ch := preChange(t, db, fake)
	old := fake.bytes()
	nb := mutate(bytes.Clone(old))
	if len(nb) >= HeaderSize {
		binary.BigEndian.PutUint32(nb[24:], counter(nb)+1)
		dirty = append(dirty, 0)
	}
	checkDirty(t, old, nb, dirty)
	ch.Dirty = dirtyBitmap(dirty)
	writeDBFile(t, fake.path, nb)
	fake.set(nb)
	return ch
}

// preChange captures what begin_txn captures and sets the marker's txn
// word as it does: Force when a writer died in a transaction, the marker
// asks for a rebuild, or it cannot be mapped.
func preChange(t testing.TB, db *DB, fake *fakeSource) Change {
	t.Helper()
	old := fake.bytes()
	ch := Change{Wrote: true, PreOK: true, PreSize: int64(len(old)), PreCtime: ctimeOf(t, fake.path)}
	if len(old) >= HeaderSize {
		copy(ch.PreHeader[:], old)
	}
	ch.Force = setMarker(db)
	return ch
}

// setMarker does what begin_txn in vfs/boule_vfs.c does to the marker,
// and reports whether the transaction must rebuild.
func setMarker(db *DB) (force bool) {
	c := db.ctlp.Load()
	if c == nil {
		if _, err := db.Ctl(); err != nil {
			return true
		}
		c = db.ctlp.Load()
	}
	old := atomic.SwapUint64(c.word(ctlTxn), Self())
	c.cas(ctlSince, 0, uint64(time.Now().UnixNano()))
	return old != 0 || c.load(ctlState) != stateOK
}

// leaveMarker leaves the marker as a writer that died in a transaction
// leaves it.
func leaveMarker(t testing.TB, db *DB) {
	t.Helper()
	if err := OpenDir(db.Dir()).WriteMarker(Marker{State: MarkerSet}); err != nil {
		t.Fatal(err)
	}
}

// assertMarkerClear asserts that db's transaction marker is clear, as a
// successful snapshot leaves it.
func assertMarkerClear(t testing.TB, db *DB) {
	t.Helper()
	if markerIsSet(t, db) {
		t.Errorf("marker still set after a successful snapshot")
	}
}

// assertRebuilt asserts that no snapshot of d since before was
// incremental (they were rebuilt from the file), and that the staged
// snapshot is exact.
func assertRebuilt(t testing.TB, d *testDB, before Stats) {
	t.Helper()
	if got := d.db.Stats().Incremental; got != before.Incremental {
		t.Errorf("Stats().Incremental=%d, want %d (a rebuild)", got, before.Incremental)
	}
	assertExact(t, d.db, d.src)
}

// markerIsSet reports whether the marker says the staged snapshot may
// lack transactions: one in flight or unfinished, a failed snapshot, WAL.
func markerIsSet(t testing.TB, db *DB) bool {
	t.Helper()
	return markerState(t, db) != MarkerClean
}

// markerState reads the marker's state.
func markerState(t testing.TB, db *DB) MarkerState {
	t.Helper()
	m, err := ReadMarker(db.Dir())
	if err != nil {
		t.Fatal(err)
	}
	return m.State
}

// blobCount counts the chunk indexes in idx that m does not carry inline:
// those staged as files.
func blobCount(m *manifest.Manifest, idx ...int) int64 {
	var n int64
	for _, i := range idx {
		if _, inline := m.Inline[uint32(i)]; !inline {
			n++
		}
	}
	return n
}

func checkDirty(t testing.TB, old, nb []byte, dirty []int) {
	t.Helper()
	common := min(manifest.NumChunks(int64(len(old))), manifest.NumChunks(int64(len(nb))))
	for i := 0; i < common; i++ {
		if len(old) != len(nb) && i == common-1 {
			continue // the spool rehashes the last common chunk on a resize
		}
		if !bytes.Equal(chunkOf(old, i), chunkOf(nb, i)) && !slices.Contains(dirty, i) {
			t.Fatalf("test bug: chunk %d changed but is not in dirty %v", i, dirty)
		}
	}
}

// mustTxn is txn that fails the test on a Snapshot error.
func mustTxn(t testing.TB, db *DB, fake *fakeSource, mutate func([]byte) []byte, dirty ...int) {
	t.Helper()
	if err := txn(t, db, fake, mutate, dirty...); err != nil {
		t.Fatalf("Snapshot()=%v, want nil", err)
	}
}

// outsideWrite changes the file as a program outside Boule would: no
// marker, no snapshot. The tests are about the spool, not about the
// kernel's timestamp granularity, so it makes sure the ctime changed (on a
// kernel with coarse timestamps a quick second write may not change it).
func outsideWrite(t testing.TB, fake *fakeSource, mutate func([]byte) []byte) {
	t.Helper()
	before := ctimeOf(t, fake.path)
	nb := mutate(bytes.Clone(fake.bytes()))
	writeDBFile(t, fake.path, nb)
	fake.set(nb)
	for i := 0; ctimeOf(t, fake.path).Equal(before); i++ {
		if i == 100 {
			t.Fatalf("the ctime of %s does not change", fake.path)
		}
		time.Sleep(10 * time.Millisecond)
		writeDBFile(t, fake.path, nb)
	}
}

func unchanged(b []byte) []byte { return b }

// rewrite returns a mutation that overwrites n bytes at off with random
// bytes.
func rewrite(rng *rand.Rand, off, n int) func([]byte) []byte {
	return func(b []byte) []byte {
		fillRandom(rng, b[off:off+n])
		return b
	}
}

// rewriteChunks returns a mutation that overwrites n bytes at off within
// each of chunks, as rewrite does.
func rewriteChunks(rng *rand.Rand, off, n int, chunks ...int) func([]byte) []byte {
	return func(b []byte) []byte {
		for _, c := range chunks {
			b = rewrite(rng, c*cs+off, n)(b)
		}
		return b
	}
}

// chunksBut returns chunks 1 to n-1 but those congruent to skip modulo k.
func chunksBut(n, k, skip int) []int {
	var out []int
	for c := 1; c < n; c++ {
		if c%k != skip%k {
			out = append(out, c)
		}
	}
	return out
}

// resize returns a mutation that truncates or extends (with random bytes)
// the file to size bytes.
func resize(rng *rand.Rand, size int) func([]byte) []byte {
	return func(b []byte) []byte {
		if size <= len(b) {
			return b[:size]
		}
		ext := make([]byte, size-len(b))
		fillRandom(rng, ext)
		return append(b, ext...)
	}
}

// assembled returns what Assemble reconstructs from db's spool.
func assembled(t testing.TB, db *DB) ([]byte, *manifest.Manifest) {
	t.Helper()
	var buf bytes.Buffer
	if s, err := OpenDir(db.Dir()).Staged(); err == nil && s != nil {
		buf.Grow(int(s.Manifest.Size))
	}
	m, err := Assemble(db.Dir(), &buf)
	if err != nil {
		t.Fatalf("Assemble(%s)=%v, want nil", db.Dir(), err)
	}
	return buf.Bytes(), m
}

// assertExact checks that the spool reassembles the database exactly.
func assertExact(t testing.TB, db *DB, fake *fakeSource) *manifest.Manifest {
	t.Helper()
	got, m := assembled(t, db)
	if want := fake.bytes(); !bytes.Equal(got, want) {
		t.Fatalf("Assemble() gave %d bytes, want the %d-byte file: %s", len(got), len(want), firstDiff(got, want))
	}
	return m
}

func firstDiff(got, want []byte) string {
	for i := 0; i < min(len(got), len(want)); i++ {
		if got[i] != want[i] {
			return fmt.Sprintf("first difference at offset %d (chunk %d)", i, i/cs)
		}
	}
	return "one is a prefix of the other"
}

func stagedManifest(t testing.TB, db *DB) *manifest.Manifest {
	t.Helper()
	s, err := OpenDir(db.Dir()).Staged()
	if err != nil || s == nil {
		t.Fatalf("Staged()=%v, %v, want a snapshot", s, err)
	}
	return s.Manifest
}

// names lists a directory; a missing directory has no names.
func names(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = e.Name()
	}
	return out
}

// assertStagingReferenced checks that every staged chunk is referenced by
// the staged manifest.
func assertStagingReferenced(t testing.TB, db *DB) {
	t.Helper()
	m := stagedManifest(t, db)
	for _, name := range names(t, db.StagingChunksDir()) {
		fp, err := manifest.ParseFingerprint(name)
		if err != nil {
			t.Fatalf("staging/chunks/%s: %v", name, err)
		}
		referenced := false
		for i, c := range m.Chunks {
			if _, inline := m.Inline[uint32(i)]; c == fp && !inline {
				referenced = true
			}
		}
		if !referenced {
			t.Fatalf("staging/chunks/%s is not referenced by the staged manifest", name)
		}
	}
}

func must[T any](v T, _ error) T { return v }

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// spoolBytes sums the sizes of the regular files under dir, counting each
// inode once (published chunks are hard links).
func spoolBytes(t testing.TB, dir string) int64 {
	t.Helper()
	type key struct{ dev, ino uint64 }
	seen := make(map[key]bool)
	var total int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		k := key{uint64(st.Dev), st.Ino}
		if !seen[k] {
			seen[k] = true
			total += info.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return total
}

// testDB is one database with its spool, for the common case.
type testDB struct {
	sp    *Spool
	db    *DB
	src   *fakeSource
	rng   *rand.Rand
	fault *faultSwitch
}

// newTestDB creates a database of size bytes (page size 4096, mode 0644)
// and a spool for it with a switchable fault, without snapshotting it.
func newTestDB(t *testing.T, size int, options ...func(*Options)) *testDB {
	t.Helper()
	rng := newRand(t)
	fsw := &faultSwitch{}
	opts := testOptions(t)
	opts.Fault = fsw.fault
	for _, o := range options {
		o(&opts)
	}
	sp := openSpool(t, opts)
	src := newDBFile(t, "test.db", makeDB(rng, size, 4096), 0o644)
	db, err := sp.DB(src.path)
	if err != nil {
		t.Fatalf("DB(%q)=%v, want nil", src.path, err)
	}
	return &testDB{sp: sp, db: db, src: src, rng: rng, fault: fsw}
}

// snapshotted is newTestDB followed by a first, successful transaction.
func snapshotted(t *testing.T, size int) *testDB {
	t.Helper()
	d := newTestDB(t, size)
	mustTxn(t, d.db, d.src, unchanged)
	assertExact(t, d.db, d.src)
	return d
}

// sameFile reports whether a and b are links to one file.
func sameFile(t testing.TB, a, b string) bool {
	t.Helper()
	sa, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	return os.SameFile(sa, sb)
}
