package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
)

// The write-ahead log, as SQLite writes it (https://sqlite.org/fileformat2.html#walformat):
// a 32-byte header, then frames of a 24-byte header and one page. A frame
// belongs to the log while its salts are the header's and its checksum,
// which chains from the header's through every frame before it, is right.
// A frame whose second word is non-zero is a commit: it ends a transaction
// and holds the database's size in pages after it. Only frames up to the
// last valid commit are the database's; those after it belong to a
// transaction in progress, or one rolled back, or an older log.
const (
	walHeaderSize      = 32
	walFrameHeaderSize = 24
	walMagicLE         = 0x377f0682
	walMagicBE         = 0x377f0683
	walVersion         = 3007000
)

// errWALCorrupt is returned when the log changes under a reader that holds
// no lock keeping it still.
var errWALCorrupt = errors.New("spool: the write-ahead log changed while it was read")

// walHeader is the parsed header of a log.
type walHeader struct {
	bigEnd   bool
	pageSize int
	salt     uint64 // salt-1 in the high 32 bits, salt-2 in the low
	ck       [2]uint32
}

// parseWALHeader parses and checks a log's header; ok is false when b is
// not a valid one (SQLite then ignores the log's content).
func parseWALHeader(b []byte) (h walHeader, ok bool) {
	if len(b) < walHeaderSize {
		return h, false
	}
	magic := binary.BigEndian.Uint32(b[0:])
	if magic != walMagicLE && magic != walMagicBE {
		return h, false
	}
	if binary.BigEndian.Uint32(b[4:]) != walVersion {
		return h, false
	}
	ps := int(binary.BigEndian.Uint32(b[8:]))
	if ps < 512 || ps > 65536 || ps&(ps-1) != 0 {
		return h, false
	}
	h.bigEnd = magic&1 == 1
	h.pageSize = ps
	h.salt = uint64(binary.BigEndian.Uint32(b[16:]))<<32 | uint64(binary.BigEndian.Uint32(b[20:]))
	h.ck = walChecksum(h.bigEnd, [2]uint32{}, b[:24])
	if h.ck[0] != binary.BigEndian.Uint32(b[24:]) || h.ck[1] != binary.BigEndian.Uint32(b[28:]) {
		return h, false
	}
	return h, true
}

// walChecksum continues the log's checksum s over b, whose length is a
// multiple of 8: words are read in the byte order the magic names.
func walChecksum(bigEnd bool, s [2]uint32, b []byte) [2]uint32 {
	s0, s1 := s[0], s[1]
	if bigEnd {
		for i := 0; i+8 <= len(b); i += 8 {
			s0 += binary.BigEndian.Uint32(b[i:]) + s1
			s1 += binary.BigEndian.Uint32(b[i+4:]) + s0
		}
	} else {
		for i := 0; i+8 <= len(b); i += 8 {
			s0 += binary.LittleEndian.Uint32(b[i:]) + s1
			s1 += binary.LittleEndian.Uint32(b[i+4:]) + s0
		}
	}
	return [2]uint32{s0, s1}
}

// walIndex is what a process knows of one incarnation of a database's log
// (one salt): for each page, the last committed frame that holds it. It is
// extended, never re-read, as the log grows: a scan reads only the frames
// written since the last one, so that a commit's capture costs what the
// commit wrote. A new salt (the log restarted) starts it over.
type walIndex struct {
	valid   bool // hdr is a valid header
	hdr     walHeader
	mx      int               // frames committed: the last commit is frame mx (1-based)
	ck      [2]uint32         // the checksum after frame mx
	nPages  uint32            // the database's size in pages after frame mx
	latest  map[uint32]uint32 // page -> its last committed frame
	frames  []uint32          // page of each committed frame, frames[i] for frame i+1
	scanned atomic.Int64      // bytes of frames read and checksummed, for Stats
	// headerRead counts the bytes pagesAfter read, for Stats.
	headerRead atomic.Int64
	restarts   int // times the index started over

	// pages holds the content of recently committed pages, as the scan
	// read them (the checksum needs every byte): a capture then copies
	// them instead of reading the log again. Bounded by walCacheMax; a
	// page not held, or held at an older frame, is read from the log.
	pages  map[uint32]cachedPage
	blocks []*[]byte // where pages' content is kept: walBlock bytes each, the last being filled
	used   int       // bytes of the last block handed out
}

// cachedPage is a page's content at frame.
type cachedPage struct {
	frame uint32
	data  []byte
}

// walCacheMax bounds the page content a walIndex keeps, per database,
// while a capture holds it: shed drops it when the capture is done, so
// that a database at rest keeps none (a process may replicate thousands).
const walCacheMax = 8 << 20

// walBlock is the size of the blocks the cache keeps pages in: a whole
// number of pages of any size SQLite allows (at most 64 KiB).
const walBlock = 1 << 20

// walBlocks are the cache's blocks, shared by the databases of the
// process: a capture takes them as its scan reads pages and gives them
// back when it is done (shed), so that a large transaction's pages land
// in memory already faulted in, not in fresh allocations the collector
// then has to sweep.
var walBlocks = sync.Pool{New: func() any { b := make([]byte, walBlock); return &b }}

// walBufSize is the size of the log's read buffers: reads of whole
// frames, at most 1 MiB of them.
const walBufSize = 1 << 20

// walBufs are the read buffers of scans, shared by the databases of the
// process rather than one held by each.
var walBufs = sync.Pool{New: func() any { b := make([]byte, walBufSize); return &b }}

func getWALBuf() *[]byte  { return walBufs.Get().(*[]byte) }
func putWALBuf(b *[]byte) { walBufs.Put(b) }

// shed drops the page content the index holds, once the capture that
// needed it is done; the frames and pages it knows stay.
func (x *walIndex) shed() {
	x.pages = nil
	x.rewind(0, 0)
}

// slot returns room for a page of ps bytes in the cache's blocks, or nil
// when they hold walCacheMax already. Slots are handed out in order, so
// that a scan can give back those of a transaction it did not see end
// (rewind).
func (x *walIndex) slot(ps int) []byte {
	if len(x.blocks) == 0 || x.used+ps > walBlock {
		if (len(x.blocks)+1)*walBlock > walCacheMax {
			return nil
		}
		x.blocks = append(x.blocks, walBlocks.Get().(*[]byte))
		x.used = 0
	}
	b := (*x.blocks[len(x.blocks)-1])[x.used : x.used+ps : x.used+ps]
	x.used += ps
	return b
}

// rewind gives back the slots handed out since len(x.blocks) was n and
// x.used was used; the blocks they emptied go back to the pool. Nothing
// may read a slot given back.
func (x *walIndex) rewind(n, used int) {
	for i := n; i < len(x.blocks); i++ {
		walBlocks.Put(x.blocks[i])
		x.blocks[i] = nil
	}
	x.blocks = x.blocks[:n]
	x.used = used
}

// walFile is a log as the VFS reads it.
type walFile interface {
	io.ReaderAt
	Size() (int64, error)
}

// shrunk reports whether the log f now ends before end: a TRUNCATE
// checkpoint ran under a read that does not keep the log still (a
// persister's read transaction that began with the log checkpointed
// whole), and a read past the new end failed short.
func shrunk(f walFile, end int64) bool {
	n, err := f.Size()
	return err == nil && n < end
}

func (x *walIndex) reset(h walHeader, valid bool) {
	x.valid = valid
	x.hdr = h
	x.mx = 0
	x.ck = h.ck
	x.nPages = 0
	x.latest = map[uint32]uint32{}
	x.frames = x.frames[:0]
	x.restarts++
	x.pages = map[uint32]cachedPage{}
	x.rewind(0, 0)
}

// cached returns the content of page pg at its last committed frame, if
// the index holds it.
func (x *walIndex) cached(pg uint32) []byte {
	c, ok := x.pages[pg]
	if !ok || c.frame != x.latest[pg] {
		return nil
	}
	return c.data
}

func (x *walIndex) frameSize() int64 { return int64(x.hdr.pageSize) + walFrameHeaderSize }

// frameOffset is where frame n (1-based) starts in the log.
func (x *walIndex) frameOffset(n int) int64 {
	return walHeaderSize + int64(n-1)*x.frameSize()
}

// scan brings the index up to the log's last valid commit. It reads the
// header, starts over when its salt or page size changed (or the log is
// empty or not valid), and reads the frames after the last commit it
// knows.
func (x *walIndex) scan(f walFile) error {
	size, err := f.Size()
	if err != nil {
		return fmt.Errorf("spool: size of the write-ahead log: %w", err)
	}
	var hb [walHeaderSize]byte
	var h walHeader
	ok := false
	if size >= walHeaderSize {
		if _, err := f.ReadAt(hb[:], 0); err != nil {
			if shrunk(f, walHeaderSize) {
				return errWALMoved
			}
			return fmt.Errorf("spool: read the write-ahead log's header: %w", err)
		}
		h, ok = parseWALHeader(hb[:])
	}
	if !ok {
		if x.valid || x.latest == nil {
			x.reset(walHeader{}, false)
		}
		return nil
	}
	if !x.valid || h.salt != x.hdr.salt || h.pageSize != x.hdr.pageSize || h.bigEnd != x.hdr.bigEnd {
		x.reset(h, true)
	}
	fs := x.frameSize()
	// A restarted log keeps its old length: what follows the new frames
	// is an older log's, which the salts end. Reads start small and grow,
	// so that a commit of a few pages reads a few frames, not the file.
	maxBatch := max(1, int((1<<20)/fs))
	batch := min(8, maxBatch)
	rb := getWALBuf()
	defer putWALBuf(rb)
	ck := x.ck
	// The pages of the transaction being read, and where the cache holds
	// their content (nil: it is full). The cache keeps a page only once
	// its transaction's commit frame is read; the slots of one still
	// being written go back at the end (the next scan reads it again).
	var pending []uint32
	var slots [][]byte
	keep, keepUsed := len(x.blocks), x.used
	defer func() { x.rewind(keep, keepUsed) }()
	ps := x.hdr.pageSize
	next := x.mx + 1
	for ; ; batch = min(2*batch, maxBatch) {
		off := x.frameOffset(next)
		if off+fs > size {
			return nil
		}
		n := min(int64(batch), (size-off)/fs)
		buf := (*rb)[:n*fs]
		if _, err := f.ReadAt(buf, off); err != nil {
			if shrunk(f, off+int64(len(buf))) {
				return errWALMoved
			}
			return fmt.Errorf("spool: read the write-ahead log at %d: %w", off, err)
		}
		x.scanned.Add(int64(len(buf)))
		for i := int64(0); i < n; i++ {
			fr := buf[i*fs : (i+1)*fs]
			pg := binary.BigEndian.Uint32(fr[0:])
			commit := binary.BigEndian.Uint32(fr[4:])
			salt := uint64(binary.BigEndian.Uint32(fr[8:]))<<32 | uint64(binary.BigEndian.Uint32(fr[12:]))
			if pg == 0 || salt != x.hdr.salt {
				return nil
			}
			ck = walChecksum(x.hdr.bigEnd, ck, fr[:8])
			ck = walChecksum(x.hdr.bigEnd, ck, fr[walFrameHeaderSize:])
			if ck[0] != binary.BigEndian.Uint32(fr[16:]) || ck[1] != binary.BigEndian.Uint32(fr[20:]) {
				return nil
			}
			slot := x.slot(ps)
			copy(slot, fr[walFrameHeaderSize:])
			pending = append(pending, pg)
			slots = append(slots, slot)
			if commit != 0 {
				if x.pages == nil {
					x.pages = map[uint32]cachedPage{}
				}
				for j, p := range pending {
					fno := uint32(x.mx + 1 + j)
					x.latest[p] = fno
					if slots[j] != nil {
						// A slot the page held before is left
						// unused until the capture ends.
						x.pages[p] = cachedPage{frame: fno, data: slots[j]}
					}
				}
				x.frames = append(x.frames, pending...)
				x.mx += len(pending)
				x.ck = ck
				x.nPages = commit
				pending, slots = pending[:0], slots[:0]
				keep, keepUsed = len(x.blocks), x.used
			}
			next++
		}
	}
}

// pagesAfter returns the pages of the frames of log f (whose header is
// h) after frame from, and the log's last frame, as far as the frame
// headers say: every frame with h's salts counts, committed or not, and
// no checksum is computed. Frames the index holds for h's log are taken
// from it; only the headers of the others are read, and x does not
// change. The result is a superset of the pages committed after from:
// what a restart's carry needs, quickly, on the commit path (a carried
// chunk that did not change costs a read, nothing more). When f is a
// FramePager, the frames it wrote are not read either: only the header
// of the frame after them, to see that the log ends there.
func (x *walIndex) pagesAfter(f walFile, h walHeader, from int) (pages []uint32, last int, err error) {
	size, err := f.Size()
	if err != nil {
		return nil, 0, fmt.Errorf("spool: size of the write-ahead log: %w", err)
	}
	next := from + 1
	if x.valid && x.hdr == h && from < x.mx {
		pages = append(pages, x.pagesSince(from)...)
		next = x.mx + 1
	}
	// The frames the writer knows, lo to lo+len(run)-1, when they are
	// this log's and some are still to be had.
	var lo int
	var run []uint32
	if fp, ok := f.(FramePager); ok {
		salt, ps, first, known := fp.FramePages()
		if salt == h.salt && ps == h.pageSize && first >= 1 && first+len(known) > next {
			lo, run = first, known
		}
	}
	fs := int64(h.pageSize) + walFrameHeaderSize
	maxBatch := max(1, int((1<<20)/fs))
	last = next - 1
	probe := false
	var rb *[]byte
	for {
		if run != nil && next >= lo {
			pages = append(pages, run[next-lo:]...)
			next = lo + len(run)
			last = next - 1
			run = nil
			// The log most likely ends there: one frame header says so,
			// before a read of whole frames.
			probe = true
		}
		off := walHeaderSize + int64(next-1)*fs
		if off+fs > size {
			return pages, last, nil
		}
		if probe {
			var hb [walFrameHeaderSize]byte
			x.headerRead.Add(walFrameHeaderSize)
			if _, err := f.ReadAt(hb[:], off); err != nil {
				return nil, 0, fmt.Errorf("spool: read the write-ahead log at %d: %w", off, err)
			}
			if pg, salt := frameHeader(hb[:]); pg == 0 || salt != h.salt {
				return pages, last, nil
			}
			probe = false
		}
		n := min(int64(maxBatch), (size-off)/fs)
		if run != nil {
			n = min(n, int64(lo-next)) // up to the frames the writer knows
		}
		if rb == nil {
			rb = getWALBuf()
			defer putWALBuf(rb)
		}
		buf := (*rb)[:n*fs]
		x.headerRead.Add(n * fs)
		if _, err := f.ReadAt(buf, off); err != nil {
			return nil, 0, fmt.Errorf("spool: read the write-ahead log at %d: %w", off, err)
		}
		for i := int64(0); i < n; i++ {
			pg, salt := frameHeader(buf[i*fs:])
			if pg == 0 || salt != h.salt {
				if run != nil {
					// The writer wrote frames of this log after these:
					// its pages count too (a superset is correct).
					pages = append(pages, run...)
					last = lo + len(run) - 1
				}
				return pages, last, nil
			}
			pages = append(pages, pg)
			last = next
			next++
		}
	}
}

// frameHeader returns the page and the salts a frame header names.
func frameHeader(b []byte) (pg uint32, salt uint64) {
	return binary.BigEndian.Uint32(b[0:]), binary.BigEndian.Uint64(b[8:])
}

// pagesSince returns the pages of the committed frames after frame from.
func (x *walIndex) pagesSince(from int) []uint32 {
	if from >= x.mx {
		return nil
	}
	return x.frames[max(from, 0):x.mx]
}

// logicalSource reads the database as a reader of the log's last commit
// sees it: the file, with each page's last committed frame over it. Its
// size is the commit's; beyond the end of the file, what no frame holds
// reads as zeros. It is valid while the log cannot change: during the
// capture of a commit, with the log's write lock held.
type logicalSource struct {
	db    Source
	wal   io.ReaderAt
	x     *walIndex
	fsize int64 // the file's size, -1 until read
	// upTo, when not 0, is the generation a rebuild read in a read
	// transaction covers: commits after it may have gone on meanwhile,
	// and stay to be staged. 0: the log was kept still, and the rebuild
	// covers every commit so far.
	upTo uint64
	// verify, when not nil, says whether what was read still stands,
	// just before the rebuild's manifest is committed.
	verify func() error
}

func newLogicalSource(db Source, wal io.ReaderAt, x *walIndex) *logicalSource {
	return &logicalSource{db: db, wal: wal, x: x, fsize: -1}
}

func (s *logicalSource) fileSize() (int64, error) {
	if s.fsize < 0 {
		n, err := s.db.Size()
		if err != nil {
			return 0, err
		}
		s.fsize = n
	}
	return s.fsize, nil
}

func (s *logicalSource) Size() (int64, error) {
	if s.x.mx > 0 {
		return int64(s.x.nPages) * int64(s.x.hdr.pageSize), nil
	}
	return s.fileSize()
}

// Reserved: a log's database has no hot journal to care about.
func (s *logicalSource) Reserved() (bool, error) { return true, nil }

func (s *logicalSource) ReadAt(p []byte, off int64) (int, error) {
	end := off + int64(len(p))
	ps := int64(s.x.hdr.pageSize)
	// The file is read only where no committed frame covers the range.
	covered := s.x.mx > 0 && off%ps == 0 && end%ps == 0
	for pg := off / max(ps, 1); covered && pg*ps < end; pg++ {
		covered = s.x.latest[uint32(pg+1)] != 0
	}
	if !covered {
		fsize, err := s.fileSize()
		if err != nil {
			return 0, err
		}
		if off < fsize {
			n := min(end, fsize) - off
			if _, err := s.db.ReadAt(p[:n], off); err != nil {
				return 0, err
			}
			clear(p[n:])
		} else {
			clear(p)
		}
	}
	if s.x.mx == 0 {
		return len(p), nil
	}
	var tmp []byte
	for pg := off / ps; pg*ps < end; pg++ {
		fr, ok := s.x.latest[uint32(pg+1)]
		if !ok {
			continue
		}
		lo, hi := max(pg*ps, off), min((pg+1)*ps, end)
		if c := s.x.cached(uint32(pg + 1)); c != nil {
			copy(p[lo-off:hi-off], c[lo-pg*ps:hi-pg*ps])
			continue
		}
		at := s.x.frameOffset(int(fr)) + walFrameHeaderSize
		if lo == pg*ps && hi == (pg+1)*ps {
			if _, err := s.wal.ReadAt(p[lo-off:hi-off], at); err != nil {
				return 0, fmt.Errorf("spool: read frame %d of the write-ahead log: %w", fr, err)
			}
			continue
		}
		if tmp == nil {
			tmp = make([]byte, ps)
		}
		if _, err := s.wal.ReadAt(tmp, at); err != nil {
			return 0, fmt.Errorf("spool: read frame %d of the write-ahead log: %w", fr, err)
		}
		copy(p[lo-off:hi-off], tmp[lo-pg*ps:hi-pg*ps])
	}
	return len(p), nil
}

// FullImage is the whole logical database, for validation.
func (s *logicalSource) FullImage() ([]byte, error) { return ReadAll(s) }

// ReadAll reads the whole of src, for FullSource implementations.
func ReadAll(src Source) ([]byte, error) {
	n, err := src.Size()
	if err != nil {
		return nil, err
	}
	b := make([]byte, n)
	if n > 0 {
		if _, err := src.ReadAt(b, 0); err != nil {
			return nil, err
		}
	}
	return b, nil
}
