package vfs

/*
#include <stdint.h>
#include <stdlib.h>
#include "boule_snapshot.h"
*/
import "C"

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	goruntime "runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/snapshot"
)

// view is the C side of one snapshot: the BouleView C reads, filled in as
// chunks get mapped, freed when the snapshot is released.
type view struct {
	c    *C.BouleView
	s    *snapshot.Snapshot
	once sync.Once
	pin  goruntime.Pinner // the manifest's fingerprints, which C reads (fps)
}

var (
	snapMu     sync.Mutex
	snapConns  = map[uint64]*snapshot.Conn{}
	views      = map[uint64]*view{}
	viewOf     = map[*snapshot.Snapshot]*view{}
	newestGens = map[*snapshot.Replica]*C.uint64_t{}
	readSeqs   = map[uint64]*C.uint64_t{} // by connection handle
	nextSnapH  uint64
)

// quiesce waits until every read of a replica that was under way when it
// was called is done with the chunk bytes it loaded (see
// boule_snapshot.h): the reader's Options.Quiesce. A read takes
// microseconds (a copy of at most a page), and never calls Go while it
// holds chunk bytes, so holding snapMu meanwhile (which keeps the
// sequence numbers from being freed) blocks nothing that a read needs.
func quiesce() {
	snapMu.Lock()
	defer snapMu.Unlock()
	for _, w := range readSeqs {
		p := (*uint64)(unsafe.Pointer(w))
		seq := atomic.LoadUint64(p)
		for spins := 0; seq&1 == 1 && atomic.LoadUint64(p) == seq; spins++ {
			if spins < 100 {
				goruntime.Gosched()
			} else {
				time.Sleep(10 * time.Microsecond)
			}
		}
	}
}

// viewSlotBytes is the size of one chunk's slots in a page of a view: its
// pointer and its "used" flag (see BouleView).
const viewSlotBytes = C.size_t(unsafe.Sizeof(uintptr(0)) + 4)

// viewFor returns the C view of s, creating and binding it on first use.
func viewFor(s *snapshot.Snapshot) *view {
	snapMu.Lock()
	v, ok := viewOf[s]
	if !ok {
		nextSnapH++
		v = &view{s: s}
		v.c = (*C.BouleView)(C.calloc(1, C.size_t(unsafe.Sizeof(C.BouleView{}))))
		pages := C.calloc(C.size_t(max(viewPages(len(s.M.Chunks)), 1)), C.size_t(unsafe.Sizeof(uintptr(0))))
		if v.c == nil || pages == nil {
			C.free(unsafe.Pointer(v.c))
			C.free(pages)
			snapMu.Unlock()
			panic("out of memory for a replica view") // recovered by the export's guard
		}
		v.c.size = C.int64_t(s.M.Size)
		v.c.nChunks = C.int64_t(len(s.M.Chunks))
		v.c.handle = C.uint64_t(nextSnapH)
		v.c.gen = C.uint64_t(s.Gen())
		v.c.pages = (***C.uchar)(pages)
		v.files()
		views[nextSnapH] = v
		viewOf[s] = v
	}
	snapMu.Unlock()
	v.once.Do(func() {
		pages := unsafe.Slice((*unsafe.Pointer)(unsafe.Pointer(v.c.pages)), max(viewPages(int(v.c.nChunks)), 1))
		h := uint64(v.c.handle)
		s.Bind(snapshot.Binding{OnChunk: func(i int, b []byte) {
			// Called under the snapshot's lock: one caller at a time.
			page := atomic.LoadPointer(&pages[i/viewPage])
			if page == nil {
				if page = C.calloc(viewPage, viewSlotBytes); page == nil {
					// C finds no pointer and fails the read: no
					// panic here, which may run in the prefetch.
					logger().Error("vfs: out of memory for a page of a replica view")
					return
				}
				atomic.StorePointer(&pages[i/viewPage], page)
			}
			// b is mapped outside the Go heap: C may keep the pointer
			// until OnEvict, and use it until quiesce returns.
			slots := unsafe.Slice((*uintptr)(page), viewPage)
			atomic.StoreUintptr(&slots[i%viewPage], uintptr(unsafe.Pointer(&b[0])))
		}, OnEvict: func(i int) {
			if page := atomic.LoadPointer(&pages[i/viewPage]); page != nil {
				slots := unsafe.Slice((*uintptr)(page), viewPage)
				atomic.StoreUintptr(&slots[i%viewPage], 0)
			}
		}, Used: func(i int) bool {
			page := atomic.LoadPointer(&pages[i/viewPage])
			if page == nil {
				return false
			}
			used := unsafe.Slice((*uint32)(unsafe.Add(page, viewPage*unsafe.Sizeof(uintptr(0)))), viewPage)
			return atomic.SwapUint32(&used[i%viewPage], 0) != 0
		}, OnFile: func(i int, st snapshot.FileStamp) {
			// Called under the snapshot's lock.
			// A chunk's own file has the chunk's size; a slab
			// holds it at st.Off.
			n := int64(manifest.ChunkLen(s.M.Size, i))
			if v.c.stamps != nil && st.Dev == uint64(v.c.cacheDev) && (st.Slab == 0 && st.Size == n || st.Slab != 0 && st.Off >= 0 && st.Off+n <= st.Size && st.Size <= math.MaxUint32) {
				C.boule_view_set_stamp(v.c, C.int64_t(i), C.uint64_t(st.Ino), C.int64_t(st.Ctime), C.uint64_t(st.Slab), C.int64_t(st.Size), C.int64_t(st.Off))
			}
		}, OnClose: func() {
			snapMu.Lock()
			delete(views, h)
			delete(viewOf, s)
			snapMu.Unlock()
			for _, p := range pages {
				C.free(p)
			}
			C.boule_view_free_stamps(v.c)
			C.free(unsafe.Pointer(v.c.stamps))
			C.free(unsafe.Pointer(v.c.cacheDir))
			v.pin.Unpin()
			C.free(unsafe.Pointer(v.c.pages))
			C.free(unsafe.Pointer(v.c))
		}})
	})
	return v
}

// files gives C what it needs to read the chunks of v that are not held
// from their cache files (snap_read_file in boule_snapshot.c): the
// manifest's fingerprints, pinned, the cache's directory, shards and
// device, and an array for pages of stamps. Without a cache, or if any
// of it cannot be had, C asks Go for every chunk not held.
func (v *view) files() {
	dir, shards := v.s.CacheFiles()
	if dir == "" || shards <= 0 || len(v.s.M.Chunks) == 0 {
		return
	}
	var st syscall.Stat_t
	if syscall.Stat(dir, &st) != nil {
		return
	}
	stamps := C.calloc(C.size_t(viewPages(len(v.s.M.Chunks))), C.size_t(unsafe.Sizeof(uintptr(0))))
	cdir := C.CString(dir)
	if stamps == nil || cdir == nil {
		C.free(stamps)
		C.free(unsafe.Pointer(cdir))
		return
	}
	v.pin.Pin(&v.s.M.Chunks[0])
	v.c.fps = (*C.uchar)(unsafe.Pointer(&v.s.M.Chunks[0]))
	v.c.cacheDir = cdir
	v.c.cacheShards = C.int(shards)
	v.c.cacheDev = C.uint64_t(st.Dev)
	v.c.stamps = (**C.BouleStamp)(stamps)
}

// stampBudget sets how many pages of stamps (BOULE_VIEW_PAGE chunks'
// cache files each, 64 KiB) the process's views may hold: enough for a
// 1024th of the memory limit in chunks, as many as the reader keeps
// records of the files it wrote (16 GiB of chunks, 8 MiB of stamps of 32
// bytes, at the default limit), and at least 4 pages.
func stampBudget(memoryLimit int64) {
	if memoryLimit <= 0 {
		memoryLimit = snapshot.DefaultMemoryLimit
	}
	C.boule_snap_stamp_budget(C.int64_t(max(4, memoryLimit/1024/viewPage)))
}

// mapped returns the address C reads chunk i of v at, 0 if it asks Go.
func (v *view) mapped(i int) uintptr {
	return uintptr(unsafe.Pointer(C.boule_view_chunk(v.c, C.int64_t(i))))
}

// viewPage is the number of chunk pointers in a page of a view (see
// BouleView).
const viewPage = C.BOULE_VIEW_PAGE

// viewPages is the number of pages of chunk pointers a view of n chunks
// has.
func viewPages(n int) int {
	return (n + viewPage - 1) / viewPage
}

// newestGen returns the C word that mirrors rep's newest generation.
func newestGen(rep *snapshot.Replica) *C.uint64_t {
	snapMu.Lock()
	defer snapMu.Unlock()
	g, ok := newestGens[rep]
	if !ok {
		// One word per replica, until the reader forgets the replica
		// (replicaGone).
		g = (*C.uint64_t)(C.calloc(1, 8))
		if g == nil {
			panic("out of memory for a replica") // recovered by the export's guard
		}
		newestGens[rep] = g
		w := (*uint64)(unsafe.Pointer(g))
		rep.OnNewest(func(gen uint64) { atomic.StoreUint64(w, gen) })
		atomic.StoreUint64(w, rep.Gen())
	}
	return g
}

// replicaGone frees the word of a replica the reader forgot. Nothing
// refers to it any more: the reader forgets only a replica with no
// connection (so no C file holds the word) and no fetch under way (so
// no new snapshot will be announced to it).
func replicaGone(rep *snapshot.Replica) {
	snapMu.Lock()
	g, ok := newestGens[rep]
	delete(newestGens, rep)
	snapMu.Unlock()
	if ok {
		C.free(unsafe.Pointer(g))
	}
}

// setMsg copies s into out's message buffer, truncated.
func setMsg(out *C.BouleSnapOut, s string) {
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&out.msg[0])), len(out.msg))
	n := copy(buf[:len(buf)-1], s)
	buf[n] = 0
}

func fillOut(out *C.BouleSnapOut, c *snapshot.Conn) {
	out.view = viewFor(c.Snapshot()).c
	out.autoRefresh = 0
	if c.AutoRefresh() {
		out.autoRefresh = 1
	}
}

func lookupSnapConn(h C.uint64_t) *snapshot.Conn {
	snapMu.Lock()
	defer snapMu.Unlock()
	return snapConns[uint64(h)]
}

//export bouleGoSnapOpen
func bouleGoSnapOpen(zName *C.char, flags C.int, out *C.BouleSnapOut) (rc C.int) {
	defer guard("bouleGoSnapOpen", "the replica does not open", &rc, C.SQLITE_CANTOPEN,
		func(msg string) { setMsg(out, "panic: "+msg) })
	enter("bouleGoSnapOpen")
	name := C.GoString(zName)
	if flags&C.SQLITE_OPEN_READWRITE != 0 && flags&C.SQLITE_OPEN_CREATE == 0 {
		// mode=rw asks for a writable database, which a replica is not.
		// (The default, read-write-create, is downgraded to read-only.)
		msg := "replicas are read-only: open with mode=ro"
		logger().Error("vfs: cannot open replica", logKeyDB, name, logKeyErr, msg)
		setMsg(out, msg)
		return C.SQLITE_CANTOPEN
	}
	c, err := openReplica(context.Background(), name)
	if err != nil {
		logger().Error("vfs: cannot open replica", logKeyDB, name, logKeyErr, err)
		setMsg(out, err.Error())
		return sqliteCode(err, C.SQLITE_CANTOPEN)
	}
	registered := false
	defer func() {
		if !registered {
			c.Close() // fillOut panicked: nothing refers to c
		}
	}()
	out.newestGen = newestGen(c.Replica())
	fillOut(out, c)
	// A cache line of its own: only this connection's reads write it.
	seq := (*C.uint64_t)(C.calloc(1, 64))
	if seq == nil {
		panic("out of memory for a replica connection") // recovered by the guard; c closed above
	}
	snapMu.Lock()
	nextSnapH++
	h := nextSnapH
	snapConns[h] = c
	readSeqs[h] = seq
	snapMu.Unlock()
	out.readSeq = seq
	registered = true
	out.conn = C.uint64_t(h)
	return C.SQLITE_OK
}

//export bouleGoSnapChunk
func bouleGoSnapChunk(vh C.uint64_t, i C.int64_t) (rc C.int) {
	defer guard("bouleGoSnapChunk", "the read fails", &rc, C.SQLITE_IOERR_READ, nil)
	enter("bouleGoSnapChunk")
	snapMu.Lock()
	v := views[uint64(vh)]
	snapMu.Unlock()
	if v == nil {
		return C.SQLITE_IOERR_READ
	}
	if err := v.s.Load(context.Background(), int(i)); err != nil {
		logger().Error("vfs: replica read failed", logKeyDB, v.s.M.SourcePath, "chunk", int64(i), logKeyErr, err)
		return sqliteCode(err, C.SQLITE_IOERR_READ)
	}
	return C.SQLITE_OK
}

//export bouleGoSnapAdopt
func bouleGoSnapAdopt(h C.uint64_t, out *C.BouleSnapOut) (rc C.int) {
	defer guard("bouleGoSnapAdopt", "the connection keeps its snapshot", &rc, C.SQLITE_ERROR, nil)
	enter("bouleGoSnapAdopt")
	c := lookupSnapConn(h)
	if c == nil {
		return C.SQLITE_ERROR
	}
	switchSnapshot(c, func() error { c.Adopt(); return nil })
	fillOut(out, c)
	return C.SQLITE_OK
}

// switchSnapshot runs change, which may move c to another snapshot, and
// makes sure SQLite notices a move: if the new snapshot's header bytes
// 24..39 read the same as the old one's, SQLite would keep the old
// snapshot's pages, so the new view's change counter is patched (see
// patch_counter in boule_snapshot.c).
func switchSnapshot(c *snapshot.Conn, change func() error) error {
	old := c.Snapshot()
	oldHdr, ok := presentedHeader(old)
	err := change()
	if s := c.Snapshot(); ok && s != old {
		v := viewFor(s)
		for k := uint32(1); ; k++ {
			hdr, ok := presentedHeader(s)
			if !ok || hdr != oldHdr {
				break
			}
			orig := binary.BigEndian.Uint32(hdr[:4])
			if atomic.LoadInt32((*int32)(unsafe.Pointer(&v.c.patched))) != 0 {
				orig = origCounter(s)
			}
			atomic.StoreUint32((*uint32)(unsafe.Pointer(&v.c.patch)), orig^(uint32(s.Gen())*2654435761+k*40503|1))
			atomic.StoreInt32((*int32)(unsafe.Pointer(&v.c.patched)), 1)
		}
	}
	return err
}

// presentedHeader returns header bytes 24..39 as the view of s presents
// them to SQLite, or false when there is no such header.
func presentedHeader(s *snapshot.Snapshot) ([16]byte, bool) {
	var hdr [16]byte
	if s.M.Size < 100 {
		return hdr, false
	}
	if err := s.ReadAt(context.Background(), hdr[:], 24); err != nil {
		return hdr, false
	}
	v := viewFor(s)
	if atomic.LoadInt32((*int32)(unsafe.Pointer(&v.c.patched))) != 0 {
		binary.BigEndian.PutUint32(hdr[:4], atomic.LoadUint32((*uint32)(unsafe.Pointer(&v.c.patch))))
	}
	return hdr, true
}

// origCounter is s's own change counter.
func origCounter(s *snapshot.Snapshot) uint32 {
	var b [4]byte
	if s.M.Size < 28 || s.ReadAt(context.Background(), b[:], 24) != nil {
		return 0
	}
	return binary.BigEndian.Uint32(b[:])
}

//export bouleGoSnapPragma
func bouleGoSnapPragma(h C.uint64_t, zName, zArg *C.char, locked C.int, out *C.BouleSnapOut) (rc C.int) {
	defer guard("bouleGoSnapPragma", "the pragma fails", &rc, C.SQLITE_ERROR,
		func(msg string) { setMsg(out, "panic: "+msg) })
	enter("bouleGoSnapPragma")
	c := lookupSnapConn(h)
	if c == nil {
		setMsg(out, "unknown connection")
		return C.SQLITE_ERROR
	}
	name := strings.ToLower(C.GoString(zName))
	arg, hasArg := "", zArg != nil
	if hasArg {
		arg = strings.TrimSpace(C.GoString(zArg))
	}
	res, err := snapPragma(c, name, arg, hasArg, locked != 0)
	if err != nil {
		setMsg(out, err.Error())
		return sqliteCode(err, C.SQLITE_ERROR)
	}
	setMsg(out, res)
	fillOut(out, c)
	return C.SQLITE_OK
}

// errNotSnapPragma is snapPragma's error for a pragma it does not know:
// SQLITE_NOTFOUND tells SQLite to look for it elsewhere.
var errNotSnapPragma = withCode(C.SQLITE_NOTFOUND, errors.New("vfs: not a boule_snapshot pragma"))

// snapPragma runs one boule_snapshot_* pragma for c and returns its result
// or its error (SQLITE_ERROR unless marked with another code).
// Verneuil's names for them (verneuil_snapshot_*) are aliases.
func snapPragma(c *snapshot.Conn, name, arg string, hasArg, locked bool) (string, error) {
	if rest, ok := strings.CutPrefix(name, "verneuil_snapshot_"); ok {
		name = "boule_snapshot_" + rest
	}
	switch name {
	case "boule_snapshot_ctime":
		return formatTime(c.Snapshot().M.SourceCtime), nil
	case "boule_snapshot_updated":
		return formatTime(c.Snapshot().Fetched()), nil
	case "boule_snapshot_refresh":
		mode := snapshot.RefreshCached
		if hasArg {
			switch b, ok := parseBool(arg); {
			case arg == "2" || strings.HasPrefix(strings.ToLower(arg), "force"):
				mode = snapshot.RefreshForce
			case ok && b:
				mode = snapshot.RefreshFetch
			case ok:
			default:
				return "", fmt.Errorf("boule_snapshot_refresh: want 0, 1, 2 or force, got %q", arg)
			}
		}
		if locked {
			return "", withCode(C.SQLITE_LOCKED, errors.New("boule_snapshot_refresh: a replica may not be refreshed inside a transaction"))
		}
		if err := switchSnapshot(c, func() error { return c.Refresh(context.Background(), mode) }); err != nil {
			// SQLITE_ERROR whatever the store said: the connection
			// keeps reading the snapshot it had, which is intact.
			return "", withCode(C.SQLITE_ERROR, fmt.Errorf("boule_snapshot_refresh: %w", err))
		}
		return formatTime(c.Snapshot().Fetched()), nil
	case "boule_snapshot_async_reload":
		if locked {
			return "", withCode(C.SQLITE_LOCKED, errors.New("boule_snapshot_async_reload: a replica may not be refreshed inside a transaction"))
		}
		var switched bool
		_ = switchSnapshot(c, func() error { switched = c.AsyncReload(); return nil })
		return boolString(switched), nil
	case "boule_snapshot_auto_refresh":
		prev := c.AutoRefresh()
		if hasArg {
			b, ok := parseBool(arg)
			if !ok {
				return "", fmt.Errorf("boule_snapshot_auto_refresh: want a boolean, got %q", arg)
			}
			c.SetAutoRefresh(b)
		}
		return boolString(prev), nil
	}
	return "", errNotSnapPragma
}

func boolString(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// parseBool parses a pragma boolean as SQLite does.
func parseBool(s string) (v, ok bool) {
	switch strings.ToLower(s) {
	case "1", "on", "yes", "true":
		return true, true
	case "0", "off", "no", "false":
		return false, true
	}
	return false, false
}

// formatTime formats t as Verneuil's pragmas do: "<sec>.<9-digit ns>".
func formatTime(t time.Time) string {
	return fmt.Sprintf("%d.%09d", t.Unix(), t.Nanosecond())
}

//export bouleGoSnapClose
func bouleGoSnapClose(h C.uint64_t) {
	defer guardVoid("bouleGoSnapClose", "")
	enter("bouleGoSnapClose")
	snapMu.Lock()
	c := snapConns[uint64(h)]
	delete(snapConns, uint64(h))
	seq := readSeqs[uint64(h)]
	delete(readSeqs, uint64(h))
	snapMu.Unlock()
	C.free(unsafe.Pointer(seq)) // SQLite reads no more through this connection
	if c != nil {
		c.Close()
	}
}

// setSnapTouchAge sets how old, in seconds, a cache file's mtime may be
// before a read from C refreshes it, and returns the previous value.
// Tests lower it to see a refresh without waiting a minute.
func setSnapTouchAge(seconds int) int {
	old := int(C.boule_snap_touch_age)
	C.boule_snap_touch_age = C.int(seconds)
	return old
}

// setMapRoom tells C whether the process may hold more chunks mapped
// (snapshot.Options.OnRoom): while it may, C asks Go to map a chunk it
// would otherwise read from its cache file at each read.
func setMapRoom(room bool) {
	v := C.int(0)
	if room {
		v = 1
	}
	C.boule_snap_set_map_room(v)
}
