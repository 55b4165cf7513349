package vfs

/*
#include <stdint.h>
#include <stdlib.h>
#include "boule_vfs.h"
#include "boule_snapshot.h"
*/
import "C"

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"strings"
	"time"
	"unsafe"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/spool"
)

// The C and Go halves agree on the sizes they share: the build fails on a
// mismatch (an array length may not be negative).
var (
	_ [C.BOULE_CHUNK_SIZE - manifest.ChunkSize]struct{}
	_ [manifest.ChunkSize - C.BOULE_CHUNK_SIZE]struct{}
	_ [C.BOULE_HEADER_SIZE - spool.HeaderSize]struct{}
	_ [spool.HeaderSize - C.BOULE_HEADER_SIZE]struct{}
	_ [C.BOULE_CTL_SINCE_FROM_TXN - spool.CtlSinceFromTxn]struct{}
	_ [spool.CtlSinceFromTxn - C.BOULE_CTL_SINCE_FROM_TXN]struct{}
	_ [C.BOULE_CTL_COMMITTED_FROM_TXN - spool.CtlCommittedFromTxn]struct{}
	_ [spool.CtlCommittedFromTxn - C.BOULE_CTL_COMMITTED_FROM_TXN]struct{}
	_ [C.BOULE_CTL_OWNER_FROM_TXN - spool.CtlOwnerFromTxn]struct{}
	_ [spool.CtlOwnerFromTxn - C.BOULE_CTL_OWNER_FROM_TXN]struct{}
	_ [C.BOULE_CTL_PERSISTED_FROM_TXN - spool.CtlPersistedFromTxn]struct{}
	_ [spool.CtlPersistedFromTxn - C.BOULE_CTL_PERSISTED_FROM_TXN]struct{}
	_ [C.BOULE_CTL_STATE_FROM_TXN - spool.CtlStateFromTxn]struct{}
	_ [spool.CtlStateFromTxn - C.BOULE_CTL_STATE_FROM_TXN]struct{}
	_ [C.BOULE_CTL_WALMODE_FROM_TXN - spool.CtlWALModeFromTxn]struct{}
	_ [spool.CtlWALModeFromTxn - C.BOULE_CTL_WALMODE_FROM_TXN]struct{}
	_ [C.BOULE_CTL_WALLAZY_FROM_TXN - spool.CtlWALLazyFromTxn]struct{}
	_ [spool.CtlWALLazyFromTxn - C.BOULE_CTL_WALLAZY_FROM_TXN]struct{}
)

// cSource reads the main database file through the VFS's own handle. It is
// valid only during bouleGoSnapshot, but for ReturnLent.
type cSource struct{ file unsafe.Pointer }

// Lend hands over the copy C made of chunk i as the transaction wrote it
// (boule_vfs.c, copy_write), if it holds all n bytes: C memory, which the
// spool gives back with ReturnLent.
func (s cSource) Lend(i, n int) []byte {
	b := C.boule_copy_take(s.file, C.int64_t(i), C.int(n))
	if b == nil {
		return nil
	}
	return unsafe.Slice((*byte)(b), manifest.ChunkSize)[:n:n]
}

// ReturnLent frees a buffer Lend handed over. It uses no file: it is
// valid at any time.
func (cSource) ReturnLent(b []byte) { C.boule_copy_free(unsafe.Pointer(unsafe.SliceData(b))) }

// CopiedBytes reports the bytes of C's copies of chunks written, lent or
// not, in the process: tests use it to see copies made and freed.
func CopiedBytes() int64 { return int64(C.boule_copy_used()) }

// CopiesLent reports how many of C's copies of chunks the spool took
// instead of reading the chunks back, since the process started.
func CopiesLent() int64 { return int64(C.boule_copy_lent()) }

// setCopyLimit bounds the bytes of C's copies of chunks written by large
// transactions to the capture budget: beyond it, a capture reads chunks
// back from the file instead.
func setCopyLimit(n int64) { C.boule_set_copy_limit(C.int64_t(n)) }

func (s cSource) ReadAt(p []byte, off int64) (int, error) {
	return readPieces(p, off, func(buf unsafe.Pointer, n C.int, off C.int64_t) C.int {
		return C.boule_file_read(s.file, buf, n, off)
	})
}

func (s cSource) Size() (int64, error) {
	return fileSize(func(n *C.int64_t) C.int { return C.boule_file_size(s.file, n) })
}

// readPieces fills p from offset off with read, a C read whose length is
// an int: larger reads (a whole image, for validation) go in pieces. A
// failure is an SQLite error code.
func readPieces(p []byte, off int64, read func(buf unsafe.Pointer, n C.int, off C.int64_t) C.int) (int, error) {
	for done := 0; done < len(p); {
		n := min(len(p)-done, 1<<30)
		if rc := read(unsafe.Pointer(&p[done]), C.int(n), C.int64_t(off+int64(done))); rc != 0 {
			return done, sqliteError("read", int(rc))
		}
		done += n
	}
	return len(p), nil
}

// fileSize returns the size that size, a C call returning an SQLite error
// code, reports.
func fileSize(size func(n *C.int64_t) C.int) (int64, error) {
	var n C.int64_t
	if rc := size(&n); rc != 0 {
		return 0, sqliteError("size", int(rc))
	}
	return int64(n), nil
}

func (s cSource) Reserved() (bool, error) {
	var out C.int
	if rc := C.boule_file_reserved(s.file, &out); rc != 0 {
		return false, sqliteError("check reserved lock", int(rc))
	}
	return out != 0, nil
}

//export bouleGoOpen
func bouleGoOpen(zPath *C.char, pTxn **C.uint64_t, pOwner *C.uint64_t) (h C.uint64_t) {
	defer guard("bouleGoOpen", "the database is not replicated", &h, 0, nil)
	enter("bouleGoOpen")
	c, err := openConn(C.GoString(zPath))
	if c == nil || err != nil {
		return 0
	}
	// The marker the transactions of this connection mark themselves in.
	// Without it (no spool directory yet, a full disk), every transaction
	// rebuilds, and the snapshot says why.
	if w, err := c.db.Ctl(); err == nil {
		*pTxn = (*C.uint64_t)(w)
	} else {
		c.rt.log.Warn("vfs: the spool's txn marker cannot be mapped; every transaction snapshots the whole database until it can",
			logKeyDB, c.db.Path(), logKeyErr, err)
	}
	*pOwner = C.uint64_t(spool.Self())
	return C.uint64_t(c.handle)
}

//export bouleGoSnapshot
func bouleGoSnapshot(h C.uint64_t, file unsafe.Pointer, dirty *C.uint64_t, nWords C.int64_t, pre *C.BoulePre, flags C.int) (rc C.int) {
	defer guard("bouleGoSnapshot", "the transaction committed, replication of it did not", &rc, 1, nil)
	enter("bouleGoSnapshot")
	c := lookupConn(uint64(h))
	if c == nil {
		return 1
	}
	ch := spool.Change{
		Wrote: flags&C.BOULE_SNAP_WROTE != 0,
		Force: flags&C.BOULE_SNAP_FORCE != 0,
		PreOK: flags&C.BOULE_SNAP_PRE_OK != 0,
	}
	if ch.PreOK {
		copy(ch.PreHeader[:], unsafe.Slice((*byte)(unsafe.Pointer(&pre.header[0])), spool.HeaderSize))
		ch.PreSize = int64(pre.size)
		ch.PreCtime = time.Unix(int64(pre.ctime_sec), int64(pre.ctime_nsec)).UTC()
	}
	if nWords > 0 {
		ch.Dirty = unsafe.Slice((*uint64)(unsafe.Pointer(dirty)), int(nWords))
	}
	err := c.db.Capture(withFull(c, cSource{file}), ch)
	c.setSnapErr(err)
	if err != nil {
		return 1
	}
	return 0
}

// cWAL reads a database's log through the VFS's own handle. It is valid
// only during the call from C that gave it.
type cWAL struct{ cSource }

//export bouleGoCaptureWAL
func bouleGoCaptureWAL(h C.uint64_t, file, wal unsafe.Pointer, flags C.int) (rc C.int) {
	defer guard("bouleGoCaptureWAL", "the transaction committed, replication of it did not", &rc, 1, nil)
	enter("bouleGoCaptureWAL")
	c := lookupConn(uint64(h))
	if c == nil {
		return 1
	}
	err := c.db.CaptureWAL(cSource{file}, cWAL{cSource{wal}}, flags&C.BOULE_SNAP_WROTE != 0, flags&C.BOULE_SNAP_FORCE != 0, flags&C.BOULE_SNAP_EAGER != 0)
	c.setSnapErr(err)
	if err != nil {
		return 1
	}
	return 0
}

//export bouleGoWALReset
func bouleGoWALReset(h C.uint64_t, file, wal unsafe.Pointer, hdr unsafe.Pointer, eager C.int) {
	defer guardVoid("bouleGoWALReset", "the next transaction rebuilds the snapshot")
	enter("bouleGoWALReset")
	c := lookupConn(uint64(h))
	if c == nil {
		return
	}
	var b []byte
	if hdr != nil {
		b = C.GoBytes(hdr, 32)
	}
	c.db.WALReset(cSource{file}, resetWAL{cWAL{cSource{wal}}}, b, eager != 0)
}

// resetWAL is the log during bouleGoWALReset, which knows the pages of
// the frames its connection wrote (boule_wal_run).
type resetWAL struct{ cWAL }

var _ spool.FramePager = resetWAL{}

func (w resetWAL) FramePages() (salt uint64, pageSize, lo int, pages []uint32) {
	var s [8]C.uchar
	var ps C.uint32_t
	var first C.int64_t
	n := C.boule_wal_run(w.file, &s[0], &ps, &first, nil, 0)
	if n <= 0 {
		return 0, 0, 0, nil
	}
	pages = make([]uint32, n)
	n = C.boule_wal_run(w.file, &s[0], &ps, &first, (*C.uint32_t)(unsafe.Pointer(&pages[0])), n)
	return binary.BigEndian.Uint64(C.GoBytes(unsafe.Pointer(&s[0]), 8)), int(ps), int(first), pages[:n]
}

//export bouleGoHoldReads
func bouleGoHoldReads(h C.uint64_t) {
	defer guardVoid("bouleGoHoldReads", "a persister may read the log while the connection closes")
	enter("bouleGoHoldReads")
	if c := lookupConn(uint64(h)); c != nil {
		c.db.HoldReads()
	}
}

//export bouleGoReleaseReads
func bouleGoReleaseReads(h C.uint64_t) {
	defer guardVoid("bouleGoReleaseReads", "")
	enter("bouleGoReleaseReads")
	if c := lookupConn(uint64(h)); c != nil {
		c.db.ReleaseReads()
	}
}

//export bouleGoWALStage
func bouleGoWALStage(h C.uint64_t, file, wal unsafe.Pointer) {
	defer guardVoid("bouleGoWALStage", "the next transaction rebuilds the snapshot")
	enter("bouleGoWALStage")
	if c := lookupConn(uint64(h)); c != nil {
		c.db.WALStage(cSource{file}, cWAL{cSource{wal}})
	}
}

// rawFile reads a unix file of SQLite's, for the persister's connection
// (lockWAL).
type rawFile struct{ file unsafe.Pointer }

func (s rawFile) ReadAt(p []byte, off int64) (int, error) {
	return readPieces(p, off, func(buf unsafe.Pointer, n C.int, off C.int64_t) C.int {
		return C.boule_raw_read(s.file, buf, n, off)
	})
}

func (s rawFile) Size() (int64, error) {
	return fileSize(func(n *C.int64_t) C.int { return C.boule_raw_size(s.file, n) })
}

func (s rawFile) Reserved() (bool, error) { return true, nil }

// lockWALBusy bounds how long a persister's connection waits to begin its
// read transaction (SQLite's busy handler: a recovery or a checkpoint
// under way); the writer's own commit wakes it again anyway.
const lockWALBusy = 5 * time.Second

// openWAL is spool.Options.OpenWAL: a connection of the persister's own,
// through unix, in a read transaction.
func openWAL(path string) (*spool.WALReader, error) {
	// Only while the database is open here: a connection of the
	// persister's own to a database closed meanwhile would make its log
	// and shm anew, and leave them.
	connMu.Lock()
	open := false
	for _, c := range conns {
		if c.db.Path() == path {
			open = true
			break
		}
	}
	connMu.Unlock()
	if !open {
		return nil, fmt.Errorf("vfs: %s is closed: %w", path, spool.ErrNotWAL)
	}
	if _, err := os.Lstat(path + "-wal"); err != nil {
		return nil, fmt.Errorf("vfs: %s: %w", path, spool.ErrNotWAL)
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var db, file, wal unsafe.Pointer
	rc := C.boule_wal_lock(cpath, C.int(lockWALBusy.Milliseconds()), &db, &file, &wal)
	switch {
	case rc == C.SQLITE_NOTFOUND:
		return nil, fmt.Errorf("vfs: %s: %w", path, spool.ErrNotWAL)
	case rc != 0:
		return nil, fmt.Errorf("vfs: read %s's log: %w", path, sqliteError("open", int(rc)))
	}
	return &spool.WALReader{
		DB:    rawFile{file},
		WAL:   rawFile{wal},
		Close: func() { C.boule_wal_unlock(db, file) },
	}, nil
}

//export bouleGoWALGone
func bouleGoWALGone(zPath *C.char) {
	defer guardVoid("bouleGoWALGone", "the next transaction rebuilds the snapshot")
	enter("bouleGoWALGone")
	p := C.GoString(zPath)
	db := strings.TrimSuffix(p, "-wal")
	connMu.Lock()
	var d *spool.DB
	for _, c := range conns {
		if c.db.Path() == db {
			d = c.db
			break
		}
	}
	connMu.Unlock()
	if d != nil {
		d.WALGone()
	}
}

//export bouleGoFlush
func bouleGoFlush(h C.uint64_t, inWrite C.int) (ok C.int) {
	defer guard("bouleGoFlush", "the flush failed", &ok, 0, nil)
	enter("bouleGoFlush")
	c := lookupConn(uint64(h))
	if c == nil {
		return 0
	}
	if inWrite != 0 {
		c.rt.log.Error("vfs: flush failed: PRAGMA boule_flush_replication_data ran inside a write transaction (it has written to the database, or holds its log's write lock); commit it first",
			logKeyDB, c.db.Path())
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
	defer cancel()
	if err := flushDB(ctx, c.rt, c.db); err != nil {
		c.rt.log.Error("vfs: flush failed", logKeyDB, c.db.Path(), logKeyErr, err)
		return 0
	}
	return 1
}

//export bouleGoClose
func bouleGoClose(h C.uint64_t) {
	defer guardVoid("bouleGoClose", "")
	enter("bouleGoClose")
	closeConn(uint64(h))
}

// GoCalls reports how many times the C VFSes have called into Go since
// the process started: boule for each transaction's snapshot, and
// boule_snapshot for each chunk a read finds not held, and at open, close,
// pragmas and snapshot changes. Benchmarks and tests use it to show that
// Go is entered once per transaction, and never per page of a replica
// whose chunks are held.
func GoCalls() int64 { return int64(C.boule_go_calls()) }

func registerC(makeDefault bool) int {
	d := C.int(0)
	if makeDefault {
		d = 1
	}
	if rc := C.boule_register(d); rc != 0 {
		return int(rc)
	}
	return int(C.boule_snapshot_register())
}

func setTempdir(dir string) error {
	var cs *C.char
	if dir != "" {
		cs = C.CString(dir)
		defer C.free(unsafe.Pointer(cs))
	}
	if rc := C.boule_set_tempdir(cs); rc != 0 {
		return fmt.Errorf("vfs: tempdir %q: %w", dir, sqliteError("set tempdir", int(rc)))
	}
	return nil
}
