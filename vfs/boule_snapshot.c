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
** other's way), unless Go vouched for the chunk's file in the chunk
** cache: then C reads the file (snap_read_file). A connection changes
** snapshot only between transactions: at the NONE->SHARED lock when
** auto-refresh is on and the replica has a newer one, or through the
** refresh pragmas, which refuse to run while a lock is held.
**
** Every other file (temp databases, sorter and statement journals) is a
** plain unix file on local disk.
*/

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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
  int fd;               /* a chunk's cache file (snap_read_file), or -1 */
  int64_t fdChunk;      /* the chunk of view whose file fd is */
  int64_t fdOff;        /* where fdChunk starts in it (a slab's), or 0 */
  unsigned char *buf;   /* BOULE_CHUNK_SIZE bytes, or NULL until needed */
  int buffered;         /* buf holds fdChunk's bytes (fd open) */
  int64_t lastChunk;    /* the chunk the last read from a file was in */
} SnapFile;

static sqlite3_vfs snap_vfs;
static const sqlite3_io_methods snap_io_methods;

static int is_replica_name(const char *z) {
  return z != 0 && (strncmp(z, BOULE_SCHEME, sizeof(BOULE_SCHEME) - 1) == 0 ||
                    strncmp(z, VERNEUIL_SCHEME, sizeof(VERNEUIL_SCHEME) - 1) == 0);
}

/* Closes the connection's chunk file, if any. */
static void snap_drop_file(SnapFile *p) {
  if (p->fd >= 0) close(p->fd);
  p->fd = -1;
  p->buffered = 0;
}

/* Takes the view and flags Go returned. */
static void snap_take(SnapFile *p, const BouleSnapOut *out) {
  /* The file belongs to a chunk of the view: another view (which may
  ** even be at the old one's address, once that is freed) is another
  ** snapshot. */
  if (out->view != p->view) snap_drop_file(p);
  p->view = out->view;
  p->autoRefresh = out->autoRefresh;
}

/*
** Chunks read from their cache files.
**
** A chunk that Go does not hold (its pointer is NULL) may still have a
** stamp: Go mapped it from a cache file it had verified, or wrote that
** file itself from verified bytes (Binding.OnFile in package snapshot),
** and recorded the file's inode and change time. A file with that
** stamp, on the cache's device, still holds those bytes: any write,
** truncation, chmod or replacement changes the change time or the inode
** (except one by the owner within the same clock tick). So C opens the
** file at the chunk's path in the cache (cache.Store.Path: the cache
** directory, the shard as three digits, the fingerprint in hex) without
** following a symbolic link or blocking, and reads from it only if it is
** a regular file of this process's effective user, with no write bit,
** of the chunk's size, and with that stamp: the rule by which Go maps a
** cache file (OpenChunk, loadCached). The bytes then are the verified
** ones, and nobody but the file's owner (who could as well change a
** mapping of it) can change them while the file is open. A file evicted
** from the cache while it is open stays readable through the open file;
** one evicted before is missing, and the read asks Go, as it does for
** any file that does not match.
**
** A connection keeps the file of the last chunk it read this way open
** (one descriptor per connection) and reads it with pread: nothing is
** mapped, so no count of mappings or memory bound is involved, and a
** scan of a replica larger than what the process may hold costs an open
** and an fstat per chunk, not a call into Go. A read in the chunk the
** connection's last file read was in, or in the next one, as a scan's
** are, reads the whole chunk into the connection's buffer (64 KiB,
** allocated on first use), and the chunk's next reads copy from there:
** one pread per chunk rather than one per page (a system call costs
** about a microsecond on the benchmark's virtual machine, as much as
** copying the page). Other reads pread just what they need.
**
** Stamps live in pages of BOULE_VIEW_PAGE, allocated as stamps are set,
** at most stamp_pages_max pages in the process (Go sets it from the
** memory limit). Go sets them, and C after it refreshes a file's times;
** all of it under stamp_mu, which a read takes only to open a file
** (an open costs microseconds; the lock, uncontended, nanoseconds).
*/
static pthread_mutex_t stamp_mu = PTHREAD_MUTEX_INITIALIZER;
static int64_t stamp_pages_used;    /* under stamp_mu */
static int64_t stamp_pages_max = 4; /* under stamp_mu */

void boule_snap_stamp_budget(int64_t pages) {
  pthread_mutex_lock(&stamp_mu);
  stamp_pages_max = pages;
  pthread_mutex_unlock(&stamp_mu);
}

int boule_view_set_stamp(BouleView *v, int64_t i, uint64_t ino, int64_t ctime, uint64_t slab, int64_t size,
                         int64_t off) {
  BouleStamp *page;
  int ok = 1;
  if (v->stamps == 0 || i < 0 || i >= v->nChunks || ctime == 0 || size < 0 || size > UINT32_MAX || off < 0 ||
      off > size)
    return 0;
  pthread_mutex_lock(&stamp_mu);
  page = v->stamps[i >> BOULE_VIEW_PAGE_SHIFT];
  if (page == 0 && stamp_pages_used < stamp_pages_max &&
      (page = calloc(BOULE_VIEW_PAGE, sizeof(BouleStamp))) != 0) {
    stamp_pages_used++;
    v->stamps[i >> BOULE_VIEW_PAGE_SHIFT] = page;
  }
  if (page != 0) {
    BouleStamp *s = &page[i & (BOULE_VIEW_PAGE - 1)];
    s->ino = ino;
    s->ctime = ctime;
    s->slab = slab;
    s->size = (uint32_t)size;
    s->off = (uint32_t)off;
  } else {
    ok = 0;
  }
  pthread_mutex_unlock(&stamp_mu);
  return ok;
}

void boule_view_free_stamps(BouleView *v) {
  int64_t n = (v->nChunks + BOULE_VIEW_PAGE - 1) / BOULE_VIEW_PAGE;
  if (v->stamps == 0) return;
  pthread_mutex_lock(&stamp_mu);
  for (int64_t k = 0; k < n; k++) {
    if (v->stamps[k] != 0) {
      free(v->stamps[k]);
      v->stamps[k] = 0;
      stamp_pages_used--;
    }
  }
  pthread_mutex_unlock(&stamp_mu);
}

/* Loads chunk ci's stamp into *out; 0 if it has none. */
static int stamp_load(BouleView *v, int64_t ci, BouleStamp *out) {
  BouleStamp *page;
  if (v->stamps == 0) return 0;
  pthread_mutex_lock(&stamp_mu);
  page = v->stamps[ci >> BOULE_VIEW_PAGE_SHIFT];
  if (page != 0) *out = page[ci & (BOULE_VIEW_PAGE - 1)];
  pthread_mutex_unlock(&stamp_mu);
  return page != 0 && out->ctime != 0;
}

/* After a read refreshed the times of a slab, stamped *old, whose change
** time is now ctime: the chunks around ci stamped with the same slab
** (a pack's chunks are neighbours in the database, mostly) follow, so
** that their next reads do not ask Go for want of the old change time. */
static void stamp_follow_slab(BouleView *v, int64_t ci, const BouleStamp *old, int64_t ctime) {
  int64_t lo = ci > 256 ? ci - 256 : 0, hi = ci + 256 < v->nChunks ? ci + 256 : v->nChunks;
  if (v->stamps == 0 || old->slab == 0) return;
  pthread_mutex_lock(&stamp_mu);
  for (int64_t k = lo; k < hi; k++) {
    BouleStamp *page = v->stamps[k >> BOULE_VIEW_PAGE_SHIFT], *s;
    if (page == 0) {
      k |= BOULE_VIEW_PAGE - 1;
      continue;
    }
    s = &page[k & (BOULE_VIEW_PAGE - 1)];
    if (s->ino == old->ino && s->ctime == old->ctime && s->slab == old->slab) s->ctime = ctime;
  }
  pthread_mutex_unlock(&stamp_mu);
}

static int64_t ctime_ns(const struct stat *st) {
  return (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
}

/* How old a cache file's mtime may be before a read refreshes it, in
** seconds: the cache evicts the least recently used files by mtime (Go's
** touchAge). A variable only so that a test can see a refresh without
** waiting a minute. */
int boule_snap_touch_age = 60;

/* See boule_snap_set_map_room. */
static int snap_map_room = 1;

void boule_snap_set_map_room(int room) { __atomic_store_n(&snap_map_room, room, __ATOMIC_RELAXED); }

/* Opens chunk ci's cache file, of clen bytes, if it is the one stamped
** *s (see above). Returns the descriptor, or -1. */
static int snap_open_chunk(BouleView *v, int64_t ci, int64_t clen, const BouleStamp *s) {
  static const char hex[] = "0123456789abcdef";
  char path[4096 + 80];
  const unsigned char *fp;
  size_t dl;
  int fd, n;
  int64_t want;
  struct stat st;
  if (v->fps == 0 || v->cacheDir == 0 || v->cacheShards <= 0) return -1;
  dl = strlen(v->cacheDir);
  if (dl > 4096) return -1;
  if (s->slab != 0) {
    /* A slab: named by its key, in the shard of its pack, which the
    ** key's first two bytes give as a chunk's fingerprint does. */
    int shard = (int)((s->slab >> 48) % (uint64_t)v->cacheShards);
    n = snprintf(path, sizeof(path), "%s/%03d/%016llx.slab", v->cacheDir, shard, (unsigned long long)s->slab);
    if (n < 0 || (size_t)n >= sizeof(path)) return -1;
    want = s->size;
    if ((int64_t)s->off + clen > (int64_t)s->size) return -1;
  } else {
    fp = v->fps + (size_t)ci * 32;
    n = snprintf(path, sizeof(path) - 66, "%s/%03d/", v->cacheDir, ((fp[0] << 8) | fp[1]) % v->cacheShards);
    if (n < 0 || (size_t)n >= sizeof(path) - 66) return -1;
    for (int k = 0; k < 32; k++) {
      path[n++] = hex[fp[k] >> 4];
      path[n++] = hex[fp[k] & 15];
    }
    path[n] = 0;
    want = clen;
  }
  fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return -1;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 0222) != 0 ||
      st.st_size != want || (uint64_t)st.st_dev != v->cacheDev || (uint64_t)st.st_ino != s->ino ||
      ctime_ns(&st) != s->ctime) {
    close(fd);
    return -1;
  }
  if (time(0) - st.st_mtim.tv_sec >= boule_snap_touch_age && futimens(fd, 0) == 0 && fstat(fd, &st) == 0 &&
      (uint64_t)st.st_ino == s->ino && st.st_size == want) {
    /* Read: a use, which the cache's eviction goes by. Only the times
    ** changed, and with them the change time, which the stamp follows. */
    stamp_follow_slab(v, ci, s, ctime_ns(&st));
    boule_view_set_stamp(v, ci, s->ino, ctime_ns(&st), s->slab, s->size, s->off);
  }
  return fd;
}

/* Reads n bytes at co of chunk ci (clen bytes) of v into out from the
** chunk's cache file, if Go stamped it and the file there has that stamp.
** Returns 0 if it did not: the read asks Go. */
/* Reads n bytes at off of fd into out; 0 if it cannot (a short file,
** which cannot happen to a file nobody else can change: Go will see). */
static int pread_all(int fd, unsigned char *out, int64_t n, int64_t off) {
  while (n > 0) {
    ssize_t r = pread(fd, out, (size_t)n, off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return 0;
    out += r;
    off += r;
    n -= r;
  }
  return 1;
}

static int snap_read_file(SnapFile *p, BouleView *v, int64_t ci, int64_t clen, unsigned char *out, int64_t co, int64_t n) {
  int saved = errno;
  int sequential = ci == p->lastChunk || ci == p->lastChunk + 1;
  if (p->fd >= 0 && p->fdChunk == ci && p->buffered) {
    memcpy(out, p->buf + co, (size_t)n);
    p->lastChunk = ci;
    return 1;
  }
  if (p->fd < 0 || p->fdChunk != ci) {
    BouleStamp s;
    int fd;
    if (!stamp_load(v, ci, &s)) return 0;
    fd = snap_open_chunk(v, ci, clen, &s);
    if (fd < 0) {
      errno = saved;
      return 0;
    }
    snap_drop_file(p);
    p->fd = fd;
    p->fdChunk = ci;
    p->fdOff = s.slab != 0 ? (int64_t)s.off : 0;
  }
  if (sequential && p->buf == 0) p->buf = malloc(BOULE_CHUNK_SIZE);
  if (sequential && p->buf != 0) {
    if (!pread_all(p->fd, p->buf, clen, p->fdOff)) {
      snap_drop_file(p);
      errno = saved;
      return 0;
    }
    p->buffered = 1;
    memcpy(out, p->buf + co, (size_t)n);
  } else if (!pread_all(p->fd, out, n, p->fdOff + co)) {
    snap_drop_file(p);
    errno = saved;
    return 0;
  }
  p->lastChunk = ci;
  return 1;
}

static int sClose(sqlite3_file *f) {
  SnapFile *p = (SnapFile *)f;
  snap_drop_file(p);
  free(p->buf);
  p->buf = 0;
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

/* Returns rc, the code of a read that failed in Go (a store that failed,
** a chunk that did not match), with errno cleared: SQLite reports errno
** (unix's xGetLastError) with an I/O error as its cause, and whatever
** system call last failed in this thread, unrelated to the read, would
** read as the reason; Go logged the real one. As sOpen does. */
static int snap_read_failed(int rc) {
  errno = 0;
  return rc;
}

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
    if (clen > BOULE_CHUNK_SIZE) clen = BOULE_CHUNK_SIZE;
    n = clen - co;
    if (n > avail - done) n = avail - done;
    for (;;) {
      /* Odd before the pointer is loaded: Go, having cleared a pointer,
      ** sees the odd number and waits for the even one before it unmaps. */
      __atomic_store_n(p->readSeq, ++seq, __ATOMIC_SEQ_CST);
      c = boule_view_chunk(v, ci);
      if (c != 0) break;
      __atomic_store_n(p->readSeq, ++seq, __ATOMIC_RELEASE);
      /* Not held: from its cache file, if Go vouched for one, once the
      ** process holds as many chunks as it may; until then Go maps it, and
      ** the reads after this one are from memory. */
      if (!__atomic_load_n(&snap_map_room, __ATOMIC_RELAXED) && snap_read_file(p, v, ci, clen, out + done, co, n)) break;
      if (loads++ == SNAP_MAX_LOADS) return snap_read_failed(SQLITE_IOERR_READ);
      /* The slow path: Go fetches (or finds in the cache), verifies and
      ** maps the chunk. */
      boule_count_go_call();
      int rc = bouleGoSnapChunk(v->handle, ci);
      if (rc != SQLITE_OK) return snap_read_failed(rc);
    }
    if (c != 0) {
      uint32_t *used = boule_view_used(__atomic_load_n(&v->pages[ci >> BOULE_VIEW_PAGE_SHIFT], __ATOMIC_ACQUIRE), ci);
      if (__atomic_load_n(used, __ATOMIC_RELAXED) == 0) __atomic_store_n(used, 1, __ATOMIC_RELAXED);
      memcpy(out + done, c + co, (size_t)n);
      __atomic_store_n(p->readSeq, ++seq, __ATOMIC_RELEASE);
    }
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
  p->fd = -1;
  p->lastChunk = -2;
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
