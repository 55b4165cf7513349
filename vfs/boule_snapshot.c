/*
** The "boule_snapshot" VFS: read-only replicas of databases replicated by
** Boule, served from snapshots in the replication stores.
**
** It shares the unix VFS that boule_vfs.c finds (boule_unix_vfs), and
** boule_register must run first.
**
** Main database files are served from a BouleView: the snapshot's chunks,
** mapped into memory by Go. xRead, xFileSize, xLock and xUnlock run in C;
** the only per-read path into Go is a chunk that is not held
** (bouleGoSnapChunk): once per chunk per snapshot while the replica fits
** in the process's bounds, and again for a chunk Go let go since (see
** boule_snapshot.h for how a read and an eviction stay out of each
** other's way). A connection changes
** snapshot only between transactions: at the NONE->SHARED lock when
** auto-refresh is on and the replica has a newer one, or through the
** refresh pragmas, which refuse to run while a lock is held.
**
** Every other file (temp databases, sorter and statement journals) is a
** plain unix file on local disk.
*/

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "boule_snapshot.h"

#define unix_vfs boule_unix_vfs

#define BOULE_SCHEME "boule://"
#define VERNEUIL_SCHEME "verneuil://" /* Verneuil's name for it, an alias */
#define BOULE_SNAP_MAXPATH 4608 /* "verneuil://" + 255-byte host + 4096-byte path */

typedef struct SnapFile {
  sqlite3_file base;    /* pMethods == &snap_io_methods */
  uint64_t conn;        /* Go handle */
  BouleView *view;      /* the snapshot this connection reads */
  uint64_t *newestGen;  /* replica's newest generation (atomic) */
  uint64_t *readSeq;    /* odd while a read uses a chunk's bytes (Go's) */
  int autoRefresh;
  int eLock;
} SnapFile;

static sqlite3_vfs snap_vfs;
static const sqlite3_io_methods snap_io_methods;

static int is_replica_name(const char *z) {
  return z != 0 && (strncmp(z, BOULE_SCHEME, sizeof(BOULE_SCHEME) - 1) == 0 ||
                    strncmp(z, VERNEUIL_SCHEME, sizeof(VERNEUIL_SCHEME) - 1) == 0);
}

/* Takes the view and flags Go returned. */
static void snap_take(SnapFile *p, const BouleSnapOut *out) {
  p->view = out->view;
  p->autoRefresh = out->autoRefresh;
}

static int sClose(sqlite3_file *f) {
  SnapFile *p = (SnapFile *)f;
  boule_count_go_call();
  bouleGoSnapClose(p->conn);
  p->view = 0;
  return SQLITE_OK;
}

/* When two snapshots a connection switches between have the same header
** bytes 24..39, the pager would keep the old snapshot's cached pages: it
** trusts its cache while the file change counter (offset 24) is unchanged.
** Go then patches the new view: reads of the change counter and of its
** copy, the version-valid-for number (offset 92), return view->patch
** instead, the same in both places, so the header stays self-consistent
** and the pager drops its cache. This happens only in that rare case (a
** database recreated or restored at its path); otherwise replicas read
** exactly the source's bytes. */
static void patch_counter(BouleView *v, unsigned char *out, int64_t off, int64_t n) {
  static const int64_t at[2] = {24, 92};
  uint32_t x = __atomic_load_n(&v->patch, __ATOMIC_ACQUIRE);
  unsigned char be[4] = {(unsigned char)(x >> 24), (unsigned char)(x >> 16), (unsigned char)(x >> 8), (unsigned char)x};
  for (int k = 0; k < 2; k++) {
    for (int64_t j = 0; j < 4; j++) {
      int64_t pos = at[k] + j;
      if (pos >= off && pos < off + n) out[pos - off] = be[j];
    }
  }
}

/* How many times a read asks Go for a chunk that is let go again before
** the read gets to it, before it fails: only memory bounds far too small
** for the readers under way can get there. */
#define SNAP_MAX_LOADS 8

static int sRead(sqlite3_file *f, void *buf, int amt, sqlite3_int64 off) {
  SnapFile *p = (SnapFile *)f;
  BouleView *v = p->view;
  unsigned char *out = (unsigned char *)buf;
  int64_t avail, done = 0;
  uint64_t seq = __atomic_load_n(p->readSeq, __ATOMIC_RELAXED); /* even; only this thread writes it */

  if (off < 0 || amt < 0) return SQLITE_IOERR_READ;
  avail = off >= v->size ? 0 : (v->size - off < amt ? v->size - off : amt);
  while (done < avail) {
    int64_t pos = off + done;
    int64_t ci = pos >> BOULE_CHUNK_SHIFT;
    int64_t co = pos & (BOULE_CHUNK_SIZE - 1);
    int64_t clen = v->size - (ci << BOULE_CHUNK_SHIFT);
    int64_t n;
    const unsigned char *c;
    int loads = 0;
    for (;;) {
      /* Odd before the pointer is loaded: Go, having cleared a pointer,
      ** sees the odd number and waits for the even one before it unmaps. */
      __atomic_store_n(p->readSeq, ++seq, __ATOMIC_SEQ_CST);
      c = boule_view_chunk(v, ci);
      if (c != 0) break;
      __atomic_store_n(p->readSeq, ++seq, __ATOMIC_RELEASE);
      if (loads++ == SNAP_MAX_LOADS) return SQLITE_IOERR_READ;
      /* The slow path: Go fetches (or finds in the cache), verifies and
      ** maps the chunk. */
      boule_count_go_call();
      int rc = bouleGoSnapChunk(v->handle, ci);
      if (rc != SQLITE_OK) return rc;
    }
    {
      uint32_t *used = boule_view_used(__atomic_load_n(&v->pages[ci >> BOULE_VIEW_PAGE_SHIFT], __ATOMIC_ACQUIRE), ci);
      if (__atomic_load_n(used, __ATOMIC_RELAXED) == 0) __atomic_store_n(used, 1, __ATOMIC_RELAXED);
    }
    if (clen > BOULE_CHUNK_SIZE) clen = BOULE_CHUNK_SIZE;
    n = clen - co;
    if (n > avail - done) n = avail - done;
    memcpy(out + done, c + co, (size_t)n);
    __atomic_store_n(p->readSeq, ++seq, __ATOMIC_RELEASE);
    done += n;
  }
  if (__atomic_load_n(&v->patched, __ATOMIC_ACQUIRE)) patch_counter(v, out, off, avail);
  /* A snapshot of a database in WAL mode is what a full checkpoint leaves:
  ** its header says WAL (bytes 18 and 19 are 2). Read as a rollback
  ** database, the reading SQLite needs no log and no shm for it. */
  for (int64_t pos = 18; pos <= 19; pos++) {
    if (pos >= off && pos < off + avail && out[pos - off] == 2) out[pos - off] = 1;
  }
  if (avail < amt) {
    memset(out + avail, 0, (size_t)(amt - avail));
    return SQLITE_IOERR_SHORT_READ;
  }
  return SQLITE_OK;
}

static int sWrite(sqlite3_file *f, const void *buf, int n, sqlite3_int64 off) {
  (void)f; (void)buf; (void)n; (void)off;
  return SQLITE_READONLY;
}

static int sTruncate(sqlite3_file *f, sqlite3_int64 size) {
  (void)f; (void)size;
  return SQLITE_READONLY;
}

static int sSync(sqlite3_file *f, int flags) {
  (void)f; (void)flags;
  return SQLITE_OK;
}

static int sFileSize(sqlite3_file *f, sqlite3_int64 *size) {
  *size = ((SnapFile *)f)->view->size;
  return SQLITE_OK;
}

static int sLock(sqlite3_file *f, int level) {
  SnapFile *p = (SnapFile *)f;
  if (level > SQLITE_LOCK_SHARED) return SQLITE_READONLY;
  if (p->eLock == SQLITE_LOCK_NONE && level == SQLITE_LOCK_SHARED && p->autoRefresh &&
      __atomic_load_n(p->newestGen, __ATOMIC_ACQUIRE) != p->view->gen) {
    /* A new transaction, and the process has a newer snapshot. */
    BouleSnapOut out;
    memset(&out, 0, sizeof(out));
    boule_count_go_call();
    if (bouleGoSnapAdopt(p->conn, &out) == SQLITE_OK) snap_take(p, &out);
  }
  if (level > p->eLock) p->eLock = level;
  return SQLITE_OK;
}

static int sUnlock(sqlite3_file *f, int level) {
  SnapFile *p = (SnapFile *)f;
  if (level < p->eLock) p->eLock = level;
  return SQLITE_OK;
}

static int sCheckReservedLock(sqlite3_file *f, int *out) {
  /* Nobody writes a snapshot. Reporting a reserved lock also tells the
  ** pager not to look for a hot journal, which cannot exist. */
  (void)f;
  *out = 1;
  return SQLITE_OK;
}

static int sFileControl(sqlite3_file *f, int op, void *arg) {
  SnapFile *p = (SnapFile *)f;
  switch (op) {
    case SQLITE_FCNTL_PRAGMA: {
      char **a = (char **)arg;
      BouleSnapOut out;
      int rc;
      /* verneuil_snapshot_* are Verneuil's names for the same pragmas. */
      if (a[1] == 0 || (sqlite3_strnicmp(a[1], "boule_snapshot", 14) != 0 &&
                        sqlite3_strnicmp(a[1], "verneuil_snapshot", 17) != 0)) {
        return SQLITE_NOTFOUND;
      }
      memset(&out, 0, sizeof(out));
      out.autoRefresh = p->autoRefresh;
      boule_count_go_call();
      rc = bouleGoSnapPragma(p->conn, a[1], a[2], p->eLock != SQLITE_LOCK_NONE, &out);
      if (rc == SQLITE_NOTFOUND) return rc;
      if (rc == SQLITE_OK) snap_take(p, &out);
      out.msg[sizeof(out.msg) - 1] = 0;
      a[0] = sqlite3_mprintf("%s", out.msg);
      if (a[0] == 0) return SQLITE_NOMEM;
      return rc;
    }
    case SQLITE_FCNTL_VFSNAME:
      *(char **)arg = sqlite3_mprintf("%s", snap_vfs.zName);
      return SQLITE_OK;
    case SQLITE_FCNTL_HAS_MOVED:
      *(int *)arg = 0;
      return SQLITE_OK;
    case SQLITE_FCNTL_LOCKSTATE:
      *(int *)arg = p->eLock;
      return SQLITE_OK;
  }
  return SQLITE_NOTFOUND;
}

static int sSectorSize(sqlite3_file *f) {
  (void)f;
  return 512;
}

static int sDeviceCharacteristics(sqlite3_file *f) {
  (void)f;
  return SQLITE_IOCAP_POWERSAFE_OVERWRITE;
}

static const sqlite3_io_methods snap_io_methods = {
    1, sClose, sRead, sWrite, sTruncate, sSync, sFileSize, sLock, sUnlock,
    sCheckReservedLock, sFileControl, sSectorSize, sDeviceCharacteristics,
    0, 0, 0, 0, 0, 0};

static int sOpen(sqlite3_vfs *vfs, const char *zName, sqlite3_file *f, int flags, int *outFlags) {
  SnapFile *p = (SnapFile *)f;
  BouleSnapOut out;
  int rc;
  (void)vfs;

  if (!(flags & SQLITE_OPEN_MAIN_DB)) {
    /* Journals of a replica cannot exist; everything else is local. */
    if (is_replica_name(zName)) return SQLITE_CANTOPEN;
    return unix_vfs->xOpen(unix_vfs, zName, f, flags, outFlags);
  }
  if (zName == 0) return SQLITE_CANTOPEN;
  memset(p, 0, sizeof(*p));
  memset(&out, 0, sizeof(out));
  boule_count_go_call();
  rc = bouleGoSnapOpen((char *)zName, flags, &out);
  if (rc != SQLITE_OK) {
    out.msg[sizeof(out.msg) - 1] = 0;
    sqlite3_log(rc, "boule_snapshot: cannot open %s: %s", zName, out.msg);
    /* SQLite reports errno (unix's xGetLastError) with a failed open, and
    ** whatever system call last failed in this thread, unrelated to why a
    ** replica did not open, would read as its cause. */
    errno = 0;
    return rc;
  }
  p->conn = out.conn;
  p->newestGen = out.newestGen;
  p->readSeq = out.readSeq;
  snap_take(p, &out);
  p->base.pMethods = &snap_io_methods;
  if (outFlags) {
    *outFlags = (flags & ~(SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE)) | SQLITE_OPEN_READONLY;
  }
  return SQLITE_OK;
}

static int sDelete(sqlite3_vfs *vfs, const char *zName, int syncDir) {
  (void)vfs;
  if (is_replica_name(zName)) return SQLITE_IOERR_DELETE_NOENT;
  return unix_vfs->xDelete(unix_vfs, zName, syncDir);
}

static int sAccess(sqlite3_vfs *vfs, const char *zName, int flags, int *out) {
  (void)vfs;
  if (is_replica_name(zName)) {
    /* Asked about a replica's journal or WAL: there is none. */
    *out = 0;
    return SQLITE_OK;
  }
  return unix_vfs->xAccess(unix_vfs, zName, flags, out);
}

static int sFullPathname(sqlite3_vfs *vfs, const char *zName, int n, char *out) {
  (void)vfs;
  if (is_replica_name(zName)) {
    size_t len = strlen(zName);
    if (len >= (size_t)n) return SQLITE_CANTOPEN;
    memcpy(out, zName, len + 1);
    return SQLITE_OK;
  }
  return unix_vfs->xFullPathname(unix_vfs, zName, n, out);
}

int boule_snapshot_register(void) {
  if (unix_vfs == 0) {
    int rc = boule_register(0);
    if (rc != SQLITE_OK) return rc;
  }
  if (snap_vfs.zName == 0) {
    size_t sz = ROUND8(sizeof(SnapFile));
    if ((size_t)unix_vfs->szOsFile > sz) sz = (size_t)unix_vfs->szOsFile;
    snap_vfs.iVersion = 3;
    snap_vfs.szOsFile = (int)sz;
    snap_vfs.mxPathname = BOULE_SNAP_MAXPATH;
    snap_vfs.zName = "boule_snapshot";
    snap_vfs.xOpen = sOpen;
    snap_vfs.xDelete = sDelete;
    snap_vfs.xAccess = sAccess;
    snap_vfs.xFullPathname = sFullPathname;
    boule_forward_vfs(&snap_vfs);
  }
  return sqlite3_vfs_register(&snap_vfs, 0);
}
