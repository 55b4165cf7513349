package spool

import (
	"bytes"
	"encoding/binary"
	"slices"
	"testing"
)

// memWAL is a log in memory, built frame by frame as SQLite writes one.
type memWAL struct {
	b        []byte
	pageSize int
	bigEnd   bool
	salt     [2]uint32
	ck       [2]uint32
}

func newMemWAL(pageSize int, salt1, salt2 uint32) *memWAL {
	w := &memWAL{pageSize: pageSize, bigEnd: true, salt: [2]uint32{salt1, salt2}}
	w.restart(salt1, salt2)
	return w
}

// restart writes a new header over the start of the log, as SQLite does,
// leaving the old frames after it.
func (w *memWAL) restart(salt1, salt2 uint32) {
	h := make([]byte, walHeaderSize)
	binary.BigEndian.PutUint32(h[0:], walMagicBE)
	binary.BigEndian.PutUint32(h[4:], walVersion)
	binary.BigEndian.PutUint32(h[8:], uint32(w.pageSize))
	binary.BigEndian.PutUint32(h[16:], salt1)
	binary.BigEndian.PutUint32(h[20:], salt2)
	w.ck = walChecksum(w.bigEnd, [2]uint32{}, h[:24])
	binary.BigEndian.PutUint32(h[24:], w.ck[0])
	binary.BigEndian.PutUint32(h[28:], w.ck[1])
	w.salt = [2]uint32{salt1, salt2}
	if len(w.b) < walHeaderSize {
		w.b = make([]byte, walHeaderSize)
	}
	copy(w.b, h)
	w.b = w.b[:max(len(w.b), walHeaderSize)]
}

// frame writes frame n (1-based) for page pg filled with fill; commit is
// the database size in pages for a commit frame, 0 otherwise.
func (w *memWAL) frame(n int, pg, commit uint32, fill byte) {
	fs := walFrameHeaderSize + w.pageSize
	off := walHeaderSize + (n-1)*fs
	for len(w.b) < off+fs {
		w.b = append(w.b, 0)
	}
	fr := w.b[off : off+fs]
	binary.BigEndian.PutUint32(fr[0:], pg)
	binary.BigEndian.PutUint32(fr[4:], commit)
	binary.BigEndian.PutUint32(fr[8:], w.salt[0])
	binary.BigEndian.PutUint32(fr[12:], w.salt[1])
	for i := walFrameHeaderSize; i < fs; i++ {
		fr[i] = fill
	}
	w.ck = walChecksum(w.bigEnd, w.ck, fr[:8])
	w.ck = walChecksum(w.bigEnd, w.ck, fr[walFrameHeaderSize:])
	binary.BigEndian.PutUint32(fr[16:], w.ck[0])
	binary.BigEndian.PutUint32(fr[20:], w.ck[1])
}

func (w *memWAL) ReadAt(p []byte, off int64) (int, error) { return copy(p, w.b[off:]), nil }
func (w *memWAL) Size() (int64, error)                    { return int64(len(w.b)), nil }

func TestWALIndexScan(t *testing.T) {
	const ps = 1024
	w := newMemWAL(ps, 7, 9)
	w.frame(1, 3, 0, 'a')
	w.frame(2, 5, 6, 'b') // commit: 6 pages
	w.frame(3, 3, 0, 'c') // a transaction in progress
	var x walIndex
	if err := x.scan(w); err != nil {
		t.Fatal(err)
	}
	if x.mx != 2 || x.nPages != 6 || x.latest[3] != 1 || x.latest[5] != 2 {
		t.Fatalf("after one commit: mx=%d nPages=%d latest=%v; want 2, 6, page 3 in frame 1, page 5 in 2", x.mx, x.nPages, x.latest)
	}

	// The transaction commits; the next scan reads only what follows.
	w.frame(4, 1, 6, 'd')
	scanned := x.scanned.Load()
	if err := x.scan(w); err != nil {
		t.Fatal(err)
	}
	if x.mx != 4 || x.latest[3] != 3 || x.latest[1] != 4 {
		t.Fatalf("after the second commit: mx=%d latest=%v; want 4, page 3 in frame 3", x.mx, x.latest)
	}
	if got, want := x.scanned.Load()-scanned, int64(2*(ps+walFrameHeaderSize)); got != want {
		t.Fatalf("the second scan read %d bytes, want %d (the two new frames)", got, want)
	}
	if got := x.pagesSince(2); len(got) != 2 || got[0] != 3 || got[1] != 1 {
		t.Fatalf("pagesSince(2)=%v, want [3 1]", got)
	}

	// A torn frame (bad checksum) ends the log, as do the frames after it.
	w.frame(5, 2, 0, 'e')
	w.frame(6, 4, 6, 'f')
	w.b[walHeaderSize+4*(ps+walFrameHeaderSize)+walFrameHeaderSize+10] ^= 1
	if err := x.scan(w); err != nil {
		t.Fatal(err)
	}
	if x.mx != 4 {
		t.Fatalf("after a torn frame: mx=%d, want 4", x.mx)
	}

	// A restart: new salts, the old frames after the new ones are
	// another log's and end it.
	restarts := x.restarts
	w.restart(8, 10)
	w.frame(1, 2, 6, 'g')
	if err := x.scan(w); err != nil {
		t.Fatal(err)
	}
	if x.restarts != restarts+1 || x.mx != 1 || len(x.latest) != 1 || x.latest[2] != 1 {
		t.Fatalf("after a restart: restarts +%d, mx=%d latest=%v; want +1, 1, page 2 in frame 1", x.restarts-restarts, x.mx, x.latest)
	}

	// A log whose header is not valid has no frames.
	w.b[0] ^= 0xff
	if err := x.scan(w); err != nil {
		t.Fatal(err)
	}
	if x.valid || x.mx != 0 {
		t.Fatalf("with a bad header: valid=%v mx=%d, want no log", x.valid, x.mx)
	}
}

// memSource is a database file in memory.
type memSource []byte

func (m memSource) ReadAt(p []byte, off int64) (int, error) { return copy(p, m[off:]), nil }
func (m memSource) Size() (int64, error)                    { return int64(len(m)), nil }
func (m memSource) Reserved() (bool, error)                 { return false, nil }

// TestLogicalSource: the file with each page's last committed frame over
// it, at the size of the last commit, zeros where neither has the page.
func TestLogicalSource(t *testing.T) {
	const ps = 1024
	file := memSource(bytes.Repeat([]byte{'.'}, 4*ps)) // pages 1-4
	w := newMemWAL(ps, 1, 2)
	w.frame(1, 2, 0, 'x')
	w.frame(2, 6, 6, 'y') // grows to 6 pages; page 5 in neither
	w.frame(3, 2, 6, 'z') // page 2 again
	w.frame(4, 1, 0, 'u') // not committed
	var x walIndex
	if err := x.scan(w); err != nil {
		t.Fatal(err)
	}
	src := newLogicalSource(file, w, &x)
	got, err := src.FullImage()
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Join([][]byte{
		bytes.Repeat([]byte{'.'}, ps), bytes.Repeat([]byte{'z'}, ps),
		bytes.Repeat([]byte{'.'}, 2*ps), make([]byte, ps), bytes.Repeat([]byte{'y'}, ps),
	}, nil)
	if !bytes.Equal(got, want) {
		t.Fatalf("logical image differs from the expected at %d (%d bytes, want %d)", firstDiffBytes(got, want), len(got), len(want))
	}
	// The same from the log itself, with no page held in memory.
	x.shed()
	if got, err := newLogicalSource(file, w, &x).FullImage(); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("logical image read from the log differs (%v)", err)
	}
	// An unaligned read across pages.
	part := make([]byte, 100)
	if _, err := src.ReadAt(part, 2*ps-50); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(part, want[2*ps-50:2*ps+50]) {
		t.Fatalf("unaligned read=%q, want %q", part, want[2*ps-50:2*ps+50])
	}
}

func firstDiffBytes(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestWALIndexPagesAfter: the pages of the frames after a position, from
// the index where it knows them and from frame headers past it, stopping
// at the first frame of another log; a superset of the committed ones
// (a transaction in progress counts), read without changing the index.
func TestWALIndexPagesAfter(t *testing.T) {
	const ps = 1024
	w := newMemWAL(ps, 7, 9)
	w.frame(1, 3, 0, 'a')
	w.frame(2, 5, 6, 'b') // commit
	var x walIndex
	if err := x.scan(w); err != nil {
		t.Fatal(err)
	}
	w.frame(3, 8, 8, 'c') // commit, not scanned
	w.frame(4, 2, 0, 'd') // in progress
	h, _ := parseWALHeader(w.b)
	mx, scanned := x.mx, x.scanned.Load()

	tests := []struct {
		name      string
		from      int
		wantPages []uint32
		wantLast  int
	}{
		{"from the start", 0, []uint32{3, 5, 8, 2}, 4},
		{"from the index's last commit", 2, []uint32{8, 2}, 4},
		{"from a frame the index lacks", 3, []uint32{2}, 4},
		{"past the end", 6, nil, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pages, last, err := x.pagesAfter(w, h, tt.from)
			if err != nil || !slices.Equal(pages, tt.wantPages) || last != tt.wantLast {
				t.Fatalf("pagesAfter(%d)=%v, %d, %v; want %v, %d", tt.from, pages, last, err, tt.wantPages, tt.wantLast)
			}
		})
	}
	if x.mx != mx || x.scanned.Load() != scanned {
		t.Fatalf("pagesAfter changed the index: mx %d -> %d, scanned %d -> %d", mx, x.mx, scanned, x.scanned.Load())
	}

	// A restart: the new log's frames, then the old log's after them.
	w.restart(8, 1)
	w.frame(1, 9, 9, 'e')
	h2, _ := parseWALHeader(w.b)
	if pages, last, err := x.pagesAfter(w, h2, 0); err != nil || !slices.Equal(pages, []uint32{9}) || last != 1 {
		t.Fatalf("pagesAfter(0) of the restarted log=%v, %d, %v; want [9], 1 (the index is the old log's; the old frames end it)", pages, last, err)
	}
}

// pagedWAL is a log whose writer knows the pages of some of its frames
// (a FramePager), and that counts the bytes read from it.
type pagedWAL struct {
	*memWAL
	salt  uint64
	lo    int
	pages []uint32
	read  int
}

func (w *pagedWAL) FramePages() (uint64, int, int, []uint32) {
	return w.salt, w.pageSize, w.lo, w.pages
}

func (w *pagedWAL) ReadAt(p []byte, off int64) (int, error) {
	w.read += len(p)
	return w.memWAL.ReadAt(p, off)
}

// TestWALIndexPagesAfterFramePager: a restart's carry takes the pages of
// the frames the connection wrote from it, and reads from the log only
// the frames it does not know, and one frame header to see the log end:
// not the whole log, which cost 1 ms of the commit that restarted it.
func TestWALIndexPagesAfterFramePager(t *testing.T) {
	const ps = 1024
	const n = 200
	w := newMemWAL(ps, 7, 9)
	var all []uint32
	for i := 1; i <= n; i++ {
		pg := uint32(i*7%50 + 1)
		var commit uint32
		if i%4 == 0 {
			commit = 60
		}
		w.frame(i, pg, commit, byte(i))
		all = append(all, pg)
	}
	// Frames of an older log after the end (another salt).
	w2 := newMemWAL(ps, 6, 3)
	for i := 1; i <= n+20; i++ {
		w2.frame(i, 99, 0, 'x')
	}
	copy(w2.b, w.b)
	w.b = w2.b
	h, _ := parseWALHeader(w.b)
	salt := uint64(7)<<32 | 9
	fs := walFrameHeaderSize + ps

	tests := []struct {
		name     string
		salt     uint64
		pageSize int
		lo       int
		known    []uint32 // the pager's frames, from lo
		from     int
		maxRead  int
	}{
		{"every frame known", salt, ps, 1, all, 0, walFrameHeaderSize},
		{"from a position inside", salt, ps, 1, all, 120, walFrameHeaderSize},
		{"a run that starts later: the frames before it read", salt, ps, 51, all[50:], 0, 50*fs + walFrameHeaderSize},
		{"a run that ends early: the frames after it read", salt, ps, 1, all[:150], 0, 1 << 20},
		{"another log's run: ignored", salt + 1, ps, 1, all, 0, 1 << 30},
		{"another page size: ignored", salt, 2 * ps, 1, all, 0, 1 << 30},
		{"a run from a frame past the index's", salt, ps, 10, all[9:], 5, 4*fs + walFrameHeaderSize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pw := &pagedWAL{memWAL: w, salt: tt.salt, lo: tt.lo, pages: tt.known}
			var x walIndex
			pages, last, err := x.pagesAfter(pw, h, tt.from)
			if err != nil || !slices.Equal(pages, all[tt.from:]) || last != n {
				t.Fatalf("pagesAfter(%d)=%v, %d, %v; want %v, %d", tt.from, pages, last, err, all[tt.from:], n)
			}
			if pw.read > tt.maxRead {
				t.Fatalf("pagesAfter(%d) read %d bytes of the log, want at most %d", tt.from, pw.read, tt.maxRead)
			}
		})
	}
}

// TestWALIndexCacheSlots: the scan keeps committed pages in the blocks of
// its cache, hands back the slots of a transaction it did not see end,
// keeps no more than walCacheMax, and gives every block back when the
// capture is done; what a source reads is the log's content throughout.
func TestWALIndexCacheSlots(t *testing.T) {
	const ps = 1024
	file := memSource(bytes.Repeat([]byte{'.'}, 4*ps))
	w := newMemWAL(ps, 1, 2)
	w.frame(1, 1, 0, 'a')
	w.frame(2, 2, 0, 'b')
	w.frame(3, 1, 4, 'c') // commit: page 1 twice, the later wins
	w.frame(4, 3, 0, 'd') // not committed yet
	var x walIndex
	if err := x.scan(w); err != nil {
		t.Fatal(err)
	}
	if len(x.blocks) != 1 || x.used != 3*ps {
		t.Fatalf("after a commit of 3 frames and one frame more: %d blocks, %d bytes used; want 1 and %d", len(x.blocks), x.used, 3*ps)
	}
	if got := x.cached(1); !bytes.Equal(got, bytes.Repeat([]byte{'c'}, ps)) {
		t.Fatalf("page 1 cached as %.8q..., want its last frame's", got)
	}
	if x.cached(3) != nil {
		t.Fatal("page 3 of a transaction not committed is cached")
	}
	w.frame(5, 4, 4, 'e') // commits frame 4 with it
	if err := x.scan(w); err != nil {
		t.Fatal(err)
	}
	if x.used != 5*ps {
		t.Fatalf("after the next commit: %d bytes used, want %d", x.used, 5*ps)
	}
	want := bytes.Join([][]byte{
		bytes.Repeat([]byte{'c'}, ps), bytes.Repeat([]byte{'b'}, ps),
		bytes.Repeat([]byte{'d'}, ps), bytes.Repeat([]byte{'e'}, ps),
	}, nil)
	if got, err := newLogicalSource(file, w, &x).FullImage(); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("logical image from the cache differs at %d (%v)", firstDiffBytes(got, want), err)
	}
	x.shed()
	if len(x.blocks) != 0 || x.used != 0 || x.cached(1) != nil {
		t.Fatalf("after shed: %d blocks, %d bytes used", len(x.blocks), x.used)
	}

	// One transaction larger than the cache: it keeps walCacheMax, and
	// the pages past it are read from the log.
	const big = 1 << 16
	n := walCacheMax/big + 20
	w = newMemWAL(big, 3, 4)
	want = nil
	for i := 1; i <= n; i++ {
		commit := uint32(0)
		if i == n {
			commit = uint32(n)
		}
		w.frame(i, uint32(i), commit, byte(i))
		want = append(want, bytes.Repeat([]byte{byte(i)}, big)...)
	}
	x = walIndex{}
	if err := x.scan(w); err != nil {
		t.Fatal(err)
	}
	if held := len(x.blocks) * walBlock; held != walCacheMax || len(x.pages) != walCacheMax/big {
		t.Fatalf("a %d-page transaction holds %d bytes of blocks, %d pages; want %d bytes, %d pages", n, held, len(x.pages), walCacheMax, walCacheMax/big)
	}
	if got, err := newLogicalSource(memSource(nil), w, &x).FullImage(); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("logical image of a transaction larger than the cache differs at %d (%v)", firstDiffBytes(got, want), err)
	}
	x.shed()
}
