package rawvfs

/*
#cgo CFLAGS: -I${SRCDIR}/../../vfs
#include <stdlib.h>
#include <string.h>
#include "sqlite3.h"

static int raw_open(const char *vfsName, const char *zName, sqlite3_file **out) {
  sqlite3_vfs *vfs = sqlite3_vfs_find(vfsName);
  sqlite3_file *f;
  int outFlags = 0, rc;
  *out = 0;
  if (vfs == 0) return SQLITE_NOTFOUND;
  f = calloc(1, (size_t)vfs->szOsFile);
  if (f == 0) return SQLITE_NOMEM;
  rc = vfs->xOpen(vfs, zName, f, SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_READWRITE, &outFlags);
  if (rc != SQLITE_OK) {
    if (f->pMethods) f->pMethods->xClose(f);
    free(f);
    return rc;
  }
  *out = f;
  return SQLITE_OK;
}

static int raw_close(sqlite3_file *f) {
  int rc = f->pMethods ? f->pMethods->xClose(f) : SQLITE_OK;
  free(f);
  return rc;
}

static int raw_lock(sqlite3_file *f, int level) { return f->pMethods->xLock(f, level); }
static int raw_unlock(sqlite3_file *f, int level) { return f->pMethods->xUnlock(f, level); }
static int raw_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 off) { return f->pMethods->xWrite(f, b, n, off); }
static int raw_truncate(sqlite3_file *f, sqlite3_int64 size) { return f->pMethods->xTruncate(f, size); }
static int raw_sync(sqlite3_file *f) { return f->pMethods->xSync(f, SQLITE_SYNC_NORMAL); }
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// The lock levels of xLock and xUnlock.
const (
	LockNone      = C.SQLITE_LOCK_NONE
	LockShared    = C.SQLITE_LOCK_SHARED
	LockReserved  = C.SQLITE_LOCK_RESERVED
	LockExclusive = C.SQLITE_LOCK_EXCLUSIVE
)

// File is a main database file open through a VFS.
type File struct {
	f    *C.sqlite3_file
	name *C.char // from sqlite3_create_filename: URI lookups need one
	path string
}

// Open opens the main database file at path through the VFS vfsName, read
// and write, as SQLite would for a connection.
func Open(vfsName, path string) (*File, error) {
	cv := C.CString(vfsName)
	defer C.free(unsafe.Pointer(cv))
	cp := C.CString(path)
	defer C.free(unsafe.Pointer(cp))
	empty := C.CString("")
	defer C.free(unsafe.Pointer(empty))
	name := C.sqlite3_create_filename(cp, empty, empty, 0, nil)
	if name == nil {
		return nil, fmt.Errorf("rawvfs: open %s: out of memory", path)
	}
	var f *C.sqlite3_file
	if rc := C.raw_open(cv, name, &f); rc != C.SQLITE_OK {
		C.sqlite3_free_filename(name)
		return nil, fmt.Errorf("rawvfs: open %s through %s: SQLite code %d", path, vfsName, int(rc))
	}
	return &File{f: f, name: name, path: path}, nil
}

func (f *File) check(op string, rc C.int) error {
	if rc != C.SQLITE_OK {
		return fmt.Errorf("rawvfs: %s %s: SQLite code %d", op, f.path, int(rc))
	}
	return nil
}

// Lock raises the file's lock to level.
func (f *File) Lock(level int) error { return f.check("lock", C.raw_lock(f.f, C.int(level))) }

// Unlock lowers the file's lock to level.
func (f *File) Unlock(level int) error { return f.check("unlock", C.raw_unlock(f.f, C.int(level))) }

// WriteAt writes b at off.
func (f *File) WriteAt(b []byte, off int64) error {
	if len(b) == 0 {
		return nil
	}
	return f.check("write", C.raw_write(f.f, unsafe.Pointer(&b[0]), C.int(len(b)), C.sqlite3_int64(off)))
}

// Truncate sets the file's size.
func (f *File) Truncate(size int64) error {
	return f.check("truncate", C.raw_truncate(f.f, C.sqlite3_int64(size)))
}

// Sync syncs the file.
func (f *File) Sync() error { return f.check("sync", C.raw_sync(f.f)) }

// Close closes the file.
func (f *File) Close() error {
	err := f.check("close", C.raw_close(f.f))
	C.sqlite3_free_filename(f.name)
	f.f, f.name = nil, nil
	return err
}
