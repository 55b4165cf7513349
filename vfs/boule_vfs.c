/*
** The "boule" VFS: SQLite's unix VFS, plus change tracking for replication.
**
** Journals, temp files, and databases that are not replicated are opened
** straight through the unix VFS: SQLite then calls unix's own methods and
** this file is never on their path. Only main database files that are
** replicated get the wrapper methods below, and those forward every call to
** the unix file, in C. The wrapper adds three things:
**
**   - before the first write of a transaction, it captures the database
**     header, size and ctime, and marks the transaction in flight in the
**     spool's txn marker, a control block shared by the writing processes
**     (spool/ctl.go);
**   - every write and truncate sets bits in a bitmap of dirty 64 KiB chunks;
**   - when a write lock is released (xUnlock to SHARED or NONE), it first
**     downgrades to SHARED, then makes ONE call into Go, bouleGoSnapshot,
**     which copies what the transaction changed while SQLite's SHARED lock
**     keeps every writer out (a persister stages it later, off the commit
**     path), and only then releases the lock further.
**
** The same source builds three ways: linked into a Go program next to
** another SQLite (default), as a loadable extension that reaches SQLite
** through the sqlite3_api_routines table (BOULE_EXTENSION), and inside a
** static archive for C programs (also the default mode).
*/
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BOULE_DEFINE_API
#include "boule_sqlite.h"
#ifdef BOULE_EXTENSION
SQLITE_EXTENSION_INIT1
#endif

#include "boule_vfs.h"

/* Implemented in Go (package vfs, callbacks.go). */
extern uint64_t bouleGoOpen(char *zPath, uint64_t **pTxn, uint64_t *pOwner);
extern int bouleGoSnapshot(uint64_t handle, void *file, uint64_t *dirty,
                           int64_t nWords, BoulePre *pre, int flags);
extern void bouleGoClose(uint64_t handle);
extern int bouleGoFlush(uint64_t handle, int inWrite);
extern int bouleGoCaptureWAL(uint64_t handle, void *file, void *wal, int flags);
extern void bouleGoWALReset(uint64_t handle, void *file, void *wal, const void *hdr, int eager);
extern void bouleGoWALStage(uint64_t handle, void *file, void *wal);
extern void bouleGoWALGone(char *zPath);
extern void bouleGoHoldReads(uint64_t handle);
extern void bouleGoReleaseReads(uint64_t handle);

#define BOULE_TEMPNAME_MAX 512 /* tempdirs longer than 480 bytes are refused */

_Static_assert(sizeof(uint64_t) == 8, "bitmap words are 64 bits");
_Static_assert(BOULE_CHUNK_SIZE == 65536, "chunks are 64 KiB");

typedef struct BouleFile {
  sqlite3_file base;   /* pMethods == &boule_io_methods */
  sqlite3_file *real;  /* the unix file, stored right after this struct */
  uint64_t handle;     /* Go-side handle (never 0 for a wrapped file) */
  const char *zPath;   /* owned by SQLite until xClose */
  uint64_t *txnWord;   /* the txn word of the spool's mapped marker, or NULL */
  uint64_t owner;      /* this process, as the marker names it */
  int eLock;           /* lock level currently held */
  int txnActive;       /* pre-transaction state captured */
  int preOk;           /* pre holds valid data */
  int forceFull;       /* a rebuild is required */
  int unknown;         /* spool not checked since open */
  int anyDirty;        /* at least one bit set */
  int flushOnClose;    /* PRAGMA boule_flush_replication_data=1 */
  BoulePre pre;
  uint64_t *dirty;     /* bitmap of dirty chunk indexes */
  int64_t nWords;      /* allocated words in dirty */
  int64_t hiWord;      /* one past the highest word that may be non-zero */
  int64_t nDirty;      /* chunks the transaction dirtied, so far */
  struct BouleCopy *copies; /* copies of the chunks it writes (copy_write) */
  int64_t nCopySlots;  /* slots in copies: 0 or a power of two */
  int64_t nCopies;     /* slots in use */
  /* WAL mode. A main file's log, opened by the same connection, is
  ** wrapped too (boule_wal_methods): its frames are what transactions
  ** write, and the main file is written only by checkpoints. */
  struct BouleFile *wal;  /* main: its open log, or NULL */
  struct BouleFile *main; /* log: its main database file */
  struct BouleFile *next, *prev; /* main: the list of open main files */
  int walWrote;           /* main: frames written since the last capture */
  int walLocked;          /* main: this connection holds the log's write lock */
  int readsHeld;          /* main: the persister's reads are held (bLock) */
  const volatile unsigned char *shm0; /* main: the shm's first region, or NULL */
  struct FrameRun *run;   /* log: the frames this connection wrote, or NULL */
} BouleFile;

sqlite3_vfs *boule_unix_vfs; /* the unix VFS, found by boule_register */
#define unix_vfs boule_unix_vfs
static sqlite3_vfs boule_vfs;
static const sqlite3_io_methods boule_io_methods;
static const sqlite3_io_methods boule_wal_methods;
static void remove_main(BouleFile *p);
static void release_reads(BouleFile *p);
static int64_t go_calls;
static char *temp_dir; /* config "tempdir"; NULL means unix's default */

int64_t boule_go_calls(void) { return __atomic_load_n(&go_calls, __ATOMIC_RELAXED); }

void boule_count_go_call(void) { __atomic_add_fetch(&go_calls, 1, __ATOMIC_RELAXED); }


/* ---- dirty bitmap -------------------------------------------------------- */

static int mark_dirty(BouleFile *p, int64_t first, int64_t last) {
  /* Marks chunks first..last inclusive. */
  int64_t needWords = (last >> 6) + 1;
  if (first < 0 || last < first) return SQLITE_OK;
  if (needWords > p->nWords) {
    int64_t n = p->nWords ? p->nWords : 16;
    uint64_t *d;
    while (n < needWords) n *= 2;
    d = sqlite3_realloc64(p->dirty, (sqlite3_uint64)n * sizeof(uint64_t));
    if (d == 0) return SQLITE_NOMEM;
    memset(d + p->nWords, 0, (size_t)(n - p->nWords) * sizeof(uint64_t));
    p->dirty = d;
    p->nWords = n;
  }
  for (int64_t i = first; i <= last; i++) {
    uint64_t bit = (uint64_t)1 << (i & 63);
    if ((p->dirty[i >> 6] & bit) == 0) p->nDirty++;
    p->dirty[i >> 6] |= bit;
  }
  if (needWords > p->hiWord) p->hiWord = needWords;
  p->anyDirty = 1;
  return SQLITE_OK;
}

static int is_dirty(const BouleFile *p, int64_t i) {
  return (i >> 6) < p->hiWord && (p->dirty[i >> 6] & ((uint64_t)1 << (i & 63))) != 0;
}

static void copy_clear(BouleFile *p);

static void clear_dirty(BouleFile *p) {
  if (p->hiWord > 0) memset(p->dirty, 0, (size_t)p->hiWord * sizeof(uint64_t));
  p->hiWord = 0;
  p->anyDirty = 0;
  p->nDirty = 0;
  copy_clear(p);
}

/* ---- copies of the chunks a large transaction writes --------------------- */
/*
** At its commit, a transaction's dirty chunks are read back from the file
** (Go's capture, under SQLite's lock). For a large one that read is most
** of what boule adds to the commit: about 2.5 ms per 4 MiB here, reading
** pages the kernel has only just been given. So once a transaction has
** dirtied more than BOULE_COPY_AFTER chunks, bWrite also copies what it
** writes to each chunk it dirties from then on into a 64 KiB buffer,
** noting the 512-byte sectors it wrote whole. At the commit, Go takes the
** buffers of the chunks written whole (boule_copy_take), reading nothing,
** and frees them once staged (boule_copy_free).
**
** A copy equals the file: it holds what the last successful write of each
** of its sectors wrote, all within one transaction, under its write lock,
** through this file. A chunk dirtied before its copy began is never
** copied; a failed write, a write across two chunks, and a truncate drop
** the copies of the chunks they touch, for the rest of the transaction
** (the slot stays, without a buffer). Small transactions copy nothing.
** The bytes of all copies in the process are bounded by copy_limit (the
** capture budget, boule_set_copy_limit); past it, chunks are read back.
*/
#define BOULE_COPY_AFTER 8
#define BOULE_SECTOR_SHIFT 9

typedef struct BouleCopy {
  int64_t chunk;      /* -1: the slot is empty */
  unsigned char *buf; /* BOULE_CHUNK_SIZE bytes; NULL once taken or dropped */
  uint64_t cover[(BOULE_CHUNK_SIZE >> BOULE_SECTOR_SHIFT) / 64]; /* sectors written whole */
} BouleCopy;

static int64_t copy_used;  /* bytes of copies in the process, atomic */
static int64_t copy_lent;  /* copies taken by Go since the process started, atomic */
static int64_t copy_limit; /* atomic; 0 until Go sets it */

void boule_set_copy_limit(int64_t n) { __atomic_store_n(&copy_limit, n, __ATOMIC_RELAXED); }

int64_t boule_copy_used(void) { return __atomic_load_n(&copy_used, __ATOMIC_RELAXED); }

int64_t boule_copy_lent(void) { return __atomic_load_n(&copy_lent, __ATOMIC_RELAXED); }

/* Buffers freed are kept for the next copies, up to BOULE_COPY_KEEP
** bytes: a buffer fresh from malloc costs a page fault per 4 KiB at its
** first write, about as much as the read back it saves. The list is
** linked through the buffers' first bytes, under a spin lock held for a
** push or a pop. */
#define BOULE_COPY_KEEP (16 << 20)
static void *copy_free_list;
static int64_t copy_free_bytes;
static char copy_free_lock;

static void copy_lock(void) {
  while (__atomic_test_and_set(&copy_free_lock, __ATOMIC_ACQUIRE)) sched_yield();
}

static void copy_unlock(void) { __atomic_clear(&copy_free_lock, __ATOMIC_RELEASE); }

static unsigned char *copy_alloc(void) {
  void *buf;
  copy_lock();
  buf = copy_free_list;
  if (buf != 0) {
    memcpy(&copy_free_list, buf, sizeof(void *));
    copy_free_bytes -= BOULE_CHUNK_SIZE;
  }
  copy_unlock();
  return buf != 0 ? buf : malloc(BOULE_CHUNK_SIZE);
}

void boule_copy_free(void *buf) {
  int kept = 0;
  if (buf == 0) return;
  copy_lock();
  if (copy_free_bytes + BOULE_CHUNK_SIZE <= BOULE_COPY_KEEP &&
      copy_free_bytes + BOULE_CHUNK_SIZE <= __atomic_load_n(&copy_limit, __ATOMIC_RELAXED)) {
    memcpy(buf, &copy_free_list, sizeof(void *));
    copy_free_list = buf;
    copy_free_bytes += BOULE_CHUNK_SIZE;
    kept = 1;
  }
  copy_unlock();
  if (!kept) free(buf);
  __atomic_sub_fetch(&copy_used, BOULE_CHUNK_SIZE, __ATOMIC_RELAXED);
}

static int64_t copy_hash(int64_t chunk, int64_t nSlots) {
  return (int64_t)(((uint64_t)chunk * 0x9E3779B97F4A7C15ull) >> 32) & (nSlots - 1);
}

static BouleCopy *copy_find(BouleFile *p, int64_t chunk) {
  if (p->nCopies == 0) return 0;
  for (int64_t h = copy_hash(chunk, p->nCopySlots);; h = (h + 1) & (p->nCopySlots - 1)) {
    BouleCopy *c = &p->copies[h];
    if (c->chunk == chunk) return c;
    if (c->chunk < 0) return 0;
  }
}

/* A slot for chunk, with a buffer, or NULL (out of memory, or over the
** process's bound). */
static BouleCopy *copy_new(BouleFile *p, int64_t chunk) {
  BouleCopy *c;
  int64_t limit = __atomic_load_n(&copy_limit, __ATOMIC_RELAXED);
  if (__atomic_add_fetch(&copy_used, BOULE_CHUNK_SIZE, __ATOMIC_RELAXED) > limit) {
    __atomic_sub_fetch(&copy_used, BOULE_CHUNK_SIZE, __ATOMIC_RELAXED);
    return 0;
  }
  if (2 * (p->nCopies + 1) > p->nCopySlots) {
    int64_t n = p->nCopySlots ? 2 * p->nCopySlots : 64;
    BouleCopy *t = malloc((size_t)n * sizeof(BouleCopy));
    if (t == 0) {
      __atomic_sub_fetch(&copy_used, BOULE_CHUNK_SIZE, __ATOMIC_RELAXED);
      return 0;
    }
    for (int64_t i = 0; i < n; i++) t[i].chunk = -1;
    for (int64_t i = 0; i < p->nCopySlots; i++) {
      int64_t h;
      if (p->copies[i].chunk < 0) continue;
      for (h = copy_hash(p->copies[i].chunk, n); t[h].chunk >= 0; h = (h + 1) & (n - 1)) {
      }
      t[h] = p->copies[i];
    }
    free(p->copies);
    p->copies = t;
    p->nCopySlots = n;
  }
  for (int64_t h = copy_hash(chunk, p->nCopySlots);; h = (h + 1) & (p->nCopySlots - 1)) {
    c = &p->copies[h];
    if (c->chunk < 0) break;
  }
  c->buf = copy_alloc();
  if (c->buf == 0) {
    __atomic_sub_fetch(&copy_used, BOULE_CHUNK_SIZE, __ATOMIC_RELAXED);
    return 0;
  }
  c->chunk = chunk;
  memset(c->cover, 0, sizeof(c->cover));
  p->nCopies++;
  return c;
}

/* Drops the copy of c's chunk for the rest of the transaction. */
static void copy_drop(BouleCopy *c) {
  boule_copy_free(c->buf);
  c->buf = 0;
}

/* Frees the copies Go did not take, at the end of a transaction. A large
** table is freed too, so that idle connections hold nothing. */
static void copy_clear(BouleFile *p) {
  if (p->nCopies == 0) return;
  for (int64_t i = 0; i < p->nCopySlots; i++) {
    if (p->copies[i].chunk >= 0) copy_drop(&p->copies[i]);
    p->copies[i].chunk = -1;
  }
  p->nCopies = 0;
  if (p->nCopySlots > 64) {
    free(p->copies);
    p->copies = 0;
    p->nCopySlots = 0;
  }
}

/* Called by bWrite after the write (rc is its result); fresh: the chunk
** was not dirty before it. */
static void copy_write(BouleFile *p, const void *buf, int n, sqlite3_int64 off, int fresh, int rc) {
  int64_t first = off >> BOULE_CHUNK_SHIFT, last = (off + n - 1) >> BOULE_CHUNK_SHIFT;
  int64_t rel, lo, hi;
  BouleCopy *c;
  if (first != last) {
    for (int64_t i = first; i <= last; i++) {
      if ((c = copy_find(p, i)) != 0) copy_drop(c);
    }
    return;
  }
  c = copy_find(p, first);
  if (c == 0) {
    if (!fresh || rc != SQLITE_OK || p->nDirty <= BOULE_COPY_AFTER || p->forceFull) return;
    if ((c = copy_new(p, first)) == 0) return;
  }
  if (c->buf == 0) return;
  if (rc != SQLITE_OK) {
    copy_drop(c);
    return;
  }
  rel = off & (BOULE_CHUNK_SIZE - 1);
  memcpy(c->buf + rel, buf, (size_t)n);
  lo = (rel + (1 << BOULE_SECTOR_SHIFT) - 1) >> BOULE_SECTOR_SHIFT;
  hi = (rel + n) >> BOULE_SECTOR_SHIFT;
  for (int64_t s = lo; s < hi; s++) c->cover[s >> 6] |= (uint64_t)1 << (s & 63);
}

/* Drops the copies of the chunks at and past size's. */
static void copy_truncate(BouleFile *p, sqlite3_int64 size) {
  int64_t from = size >> BOULE_CHUNK_SHIFT;
  for (int64_t i = 0; p->nCopies > 0 && i < p->nCopySlots; i++) {
    if (p->copies[i].chunk >= from) copy_drop(&p->copies[i]);
  }
}

void *boule_copy_take(void *file, int64_t chunk, int n) {
  BouleFile *p = (BouleFile *)file;
  BouleCopy *c = copy_find(p, chunk);
  int sectors = n >> BOULE_SECTOR_SHIFT;
  void *buf;
  if (c == 0 || c->buf == 0 || n <= 0 || n > BOULE_CHUNK_SIZE || (n & ((1 << BOULE_SECTOR_SHIFT) - 1)) != 0) {
    return 0;
  }
  for (int w = 0; w * 64 < sectors; w++) {
    int k = sectors - w * 64;
    uint64_t need = k >= 64 ? ~(uint64_t)0 : ((uint64_t)1 << k) - 1;
    if ((c->cover[w] & need) != need) return 0;
  }
  buf = c->buf;
  c->buf = 0;
  __atomic_add_fetch(&copy_lent, 1, __ATOMIC_RELAXED);
  return buf;
}

/* ---- transaction start --------------------------------------------------- */

/* Marks a transaction in flight in the spool's txn marker (spool/ctl.go):
** the txn word takes this process's owner ID, and the time of the oldest
** commit the staged snapshot lacks is set if it was not. Reports whether
** the word held another owner, a writer that died in a transaction (no
** live writer can hold the EXCLUSIVE lock this write comes with), or
** whether there is no marker: either way the staged state cannot be
** trusted and the transaction rebuilds. No system call but the clock's. */
static int set_marker(BouleFile *p) {
  uint64_t old, zero = 0;
  struct timespec now;
  if (p->txnWord == 0) return 1;
  old = __atomic_exchange_n(p->txnWord, p->owner, __ATOMIC_SEQ_CST);
  if (clock_gettime(CLOCK_REALTIME, &now) == 0) {
    __atomic_compare_exchange_n(p->txnWord + BOULE_CTL_SINCE_FROM_TXN, &zero,
                                (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec, 0,
                                __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  }
  return old != 0;
}

/* Called before the first write or truncate of a transaction. Captures what
** the spool needs to decide whether an incremental update is safe, and sets
** the marker that tells every process a transaction is in flight (so that a
** crash before its snapshot forces a rebuild). Any failure here only forces
** a rebuild: it never fails the user's write. */
static void begin_txn(BouleFile *p) {
  struct stat st;
  sqlite3_int64 sz = 0;

  p->txnActive = 1;
  p->preOk = 0;
  memset(&p->pre, 0, sizeof(p->pre));
  if (p->real->pMethods->xFileSize(p->real, &sz) != SQLITE_OK) {
    p->forceFull = 1;
  } else {
    p->pre.size = sz;
    if (sz >= BOULE_HEADER_SIZE) {
      if (p->real->pMethods->xRead(p->real, p->pre.header, BOULE_HEADER_SIZE, 0) != SQLITE_OK) {
        p->forceFull = 1;
      }
    }
    if (stat(p->zPath, &st) != 0) {
      p->forceFull = 1;
    } else {
      p->pre.ctime_sec = (int64_t)st.st_ctim.tv_sec;
      p->pre.ctime_nsec = (int64_t)st.st_ctim.tv_nsec;
    }
    if (!p->forceFull) p->preOk = 1;
  }
  if (set_marker(p)) p->forceFull = 1;
}

/* Calls Go once, while SQLite holds (at least) SHARED. Errors are Go's to
** report; the user's transaction has already committed. */
static void snapshot(BouleFile *p) {
  int flags = 0;
  if (p->txnActive || p->anyDirty) flags |= BOULE_SNAP_WROTE;
  if (p->forceFull) flags |= BOULE_SNAP_FORCE;
  if (p->preOk) flags |= BOULE_SNAP_PRE_OK;
  boule_count_go_call();
  bouleGoSnapshot(p->handle, p, p->dirty, p->hiWord, &p->pre, flags);
  clear_dirty(p);
  p->txnActive = 0;
  p->preOk = 0;
  p->forceFull = 0;
  p->unknown = 0;
}

/* Takes a generation for a commit in WAL mode without entering Go, and
** reports whether it did: only while this process's persister has a read
** of the log queued and not begun (ctlWALLazy names this process; spool's
** captureLazy), which stages the commit, and only in the states in which
** Go would leave the commit to it (replicating, or a rebuild or a failed
** snapshot due, at a known position in the log). The generation is the
** one takeGenLocked gives. A persister that took its queue meanwhile
** cleared the word first: the word read again after the generation tells
** whether its read comes after this commit, or whether Go must queue
** another. No system call but the clock's. */
static int capture_wal_lazy(BouleFile *p) {
  uint64_t *w = p->txnWord, st, cur, gen;
  struct timespec now;
  uint64_t zero = 0;
  if (w == 0) return 0;
  if (__atomic_load_n(w + BOULE_CTL_WALLAZY_FROM_TXN, __ATOMIC_SEQ_CST) != p->owner) return 0;
  st = __atomic_load_n(w + BOULE_CTL_STATE_FROM_TXN, __ATOMIC_SEQ_CST);
  if (st != 0 && st != 'R' && st != 'F') return 0;
  if (__atomic_load_n(w + BOULE_CTL_WALMODE_FROM_TXN, __ATOMIC_SEQ_CST) == 0) return 0;
  /* The persister's read takes its generation with plain stores, under
  ** a lock of Go's: a compare-and-swap never moves committed back. */
  __atomic_store_n(w + BOULE_CTL_OWNER_FROM_TXN, p->owner, __ATOMIC_SEQ_CST);
  cur = __atomic_load_n(w + BOULE_CTL_COMMITTED_FROM_TXN, __ATOMIC_SEQ_CST);
  do {
    uint64_t ps = __atomic_load_n(w + BOULE_CTL_PERSISTED_FROM_TXN, __ATOMIC_SEQ_CST);
    gen = (cur > ps ? cur : ps) + 1;
  } while (!__atomic_compare_exchange_n(w + BOULE_CTL_COMMITTED_FROM_TXN, &cur, gen, 0,
                                        __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
  if (clock_gettime(CLOCK_REALTIME, &now) == 0) {
    __atomic_compare_exchange_n(w + BOULE_CTL_SINCE_FROM_TXN, &zero,
                                (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec, 0,
                                __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  }
  return __atomic_load_n(w + BOULE_CTL_WALLAZY_FROM_TXN, __ATOMIC_SEQ_CST) == p->owner;
}

/* Captures the commits of the log, while this connection holds the log's
** write lock (or, in exclusive locking mode, the database's): one call
** into Go, which reads the frames written since the last capture, unless
** a read of the log is queued already (capture_wal_lazy). */
static void capture_wal(BouleFile *p, int flags) {
  p->walWrote = 0;
  p->unknown = 0;
  if (p->wal == 0) return;
  if (flags == BOULE_SNAP_WROTE && capture_wal_lazy(p)) return;
  boule_count_go_call();
  bouleGoCaptureWAL(p->handle, p, p->wal, flags);
}

/* ---- the pages of the frames a connection wrote -------------------------- */

/* A restart of the log on the commit path carries the chunks its frames
** changed over to the persister (spool's carryRestart), and needs the
** page of each frame since the staged position: read from the old log,
** that is a read of the whole log (4 MiB for SQLite's default 1,000
** frames), about 1 ms of the commit that restarts it. A connection that
** wrote those frames has seen each page number go by already: SQLite
** writes a frame as its 24-byte header and then its page, each a write
** of its own (walWriteOneFrame).
**
** A FrameRun is the frames one connection wrote in order, lo to hi, with
** one log's salts: for each, its page and the checksum its header ends
** with. It is trusted only as the committed log: when the connection
** takes the log's write lock, the wal-index header (the first 48 bytes of
** the shm, https://sqlite.org/walformat.html) names the last committed
** frame (mxFrame), its checksum and the salts, all of them written by the
** writer that committed it. The run is cut back to mxFrame when it holds
** that frame with that checksum (a rollback of frames it wrote: the log's
** cumulative checksum chains every frame before), and dropped otherwise
** (another connection wrote since, the log restarted). Anything else
** written over the run's frames drops it too. A restart reads only the
** frames the run does not hold. */
typedef struct FrameRun {
  unsigned char salt[8];  /* the log's salts, as in its header */
  uint32_t szPage;
  int64_t lo, hi;         /* frames lo..hi (1-based); hi < lo: empty */
  int64_t cap;
  uint32_t *pgno;         /* pgno[k-lo] is frame k's page */
  uint32_t (*cksum)[2];   /* cksum[k-lo]: the checksum in frame k's header */
  int64_t pendOff;        /* a frame header written at pendOff, page to follow; -1 none */
  unsigned char pend[24];
} FrameRun;

/* At most this many frames are remembered (1.5 MiB): a longer run is
** dropped, and its restart reads the log. */
#define FRAME_RUN_MAX (128 * 1024)

static uint32_t get_be32(const unsigned char *b) {
  return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
}

/* Runs longer than this many frames give their arrays back when dropped
** (a restart, a truncation): a connection idle after a large log keeps
** 24 KiB at most, and one of SQLite's default 1,000-frame logs reuses
** its arrays from log to log. */
#define FRAME_RUN_KEEP 2048

static void run_drop(FrameRun *r) {
  if (r) {
    r->lo = 1;
    r->hi = 0;
    if (r->cap > FRAME_RUN_KEEP) {
      sqlite3_free(r->pgno);
      sqlite3_free(r->cksum);
      r->pgno = 0;
      r->cksum = 0;
      r->cap = 0;
    }
  }
}

/* Records the frame whose header (hdr) and page (szPage bytes) were just
** written at off (the header's offset). */
static void run_frame(BouleFile *w, const unsigned char *hdr, int64_t off, int szPage) {
  FrameRun *r = w->run;
  int64_t k;
  if (szPage < 512 || szPage > 65536 || off < 32 || (off - 32) % (szPage + 24) != 0) {
    run_drop(r);
    return;
  }
  k = (off - 32) / (szPage + 24) + 1;
  if (r->hi < r->lo || k != r->hi + 1 || memcmp(r->salt, hdr + 8, 8) != 0 || r->szPage != (uint32_t)szPage) {
    memcpy(r->salt, hdr + 8, 8);
    r->szPage = (uint32_t)szPage;
    r->lo = k;
    r->hi = k - 1;
  }
  if (r->hi - r->lo + 1 >= r->cap) {
    int64_t n = r->cap ? 2 * r->cap : 1024;
    uint32_t *pg;
    uint32_t(*ck)[2];
    if (n > FRAME_RUN_MAX) {
      run_drop(r);
      return;
    }
    pg = sqlite3_realloc64(r->pgno, n * sizeof(*pg));
    if (pg) r->pgno = pg;
    ck = pg ? sqlite3_realloc64(r->cksum, n * sizeof(*ck)) : 0;
    if (ck) r->cksum = ck;
    if (!pg || !ck) {
      run_drop(r);
      return;
    }
    r->cap = n;
  }
  r->hi = k;
  r->pgno[k - r->lo] = get_be32(hdr);
  r->cksum[k - r->lo][0] = get_be32(hdr + 16);
  r->cksum[k - r->lo][1] = get_be32(hdr + 20);
}

/* Sees a write of n bytes at off to the log of a replicated database,
** before it is made. */
static void run_write(BouleFile *w, const void *buf, int n, int64_t off) {
  FrameRun *r = w->run;
  if (r == 0) {
    r = w->run = sqlite3_malloc(sizeof(FrameRun));
    if (r == 0) return;
    memset(r, 0, sizeof(*r));
    r->pendOff = -1;
    run_drop(r);
  }
  if (n == 24 && off >= 32) {
    memcpy(r->pend, buf, 24);
    r->pendOff = off;
    return;
  }
  if (r->pendOff >= 0 && off == r->pendOff + 24) {
    run_frame(w, r->pend, r->pendOff, n);
  } else if (off < 32 || r->hi < r->lo || r->szPage == 0 ||
             (off - 32) % (r->szPage + 24) != 24 || n != (int)r->szPage) {
    /* Not the page of a frame alone (which rewrites a page in place, its
    ** header unchanged): a new header, or something unforeseen. */
    run_drop(r);
  }
  r->pendOff = -1;
}

/* Checks the run of main file m's log against the committed log, just
** after m took the log's write lock: see FrameRun. */
static void run_check(BouleFile *m) {
  FrameRun *r = m->wal ? m->wal->run : 0;
  const volatile unsigned char *h = m->shm0;
  uint32_t mx, ck[2], ver;
  if (r == 0 || r->hi < r->lo) return;
  if (h == 0) {
    run_drop(r);
    return;
  }
  /* WalIndexHdr, in native byte order: iVersion at 0, isInit at 12,
  ** mxFrame at 16, aFrameCksum at 24, aSalt at 32 (the bytes of the
  ** log's header). */
  memcpy(&ver, (const void *)h, 4);
  memcpy(&mx, (const void *)(h + 16), 4);
  memcpy(ck, (const void *)(h + 24), 8);
  if (ver != 3007000 || h[12] == 0 || memcmp((const void *)(h + 32), r->salt, 8) != 0 ||
      mx < r->lo || mx > r->hi || r->cksum[mx - r->lo][0] != ck[0] || r->cksum[mx - r->lo][1] != ck[1]) {
    run_drop(r);
    return;
  }
  r->hi = mx;
}

/* Copies out the run of log file wal: its salts (as in the log's header)
** and page size, its first frame, and up to max pages (frames lo to
** lo+*n-1). Returns the number of frames it holds (0: none). Only valid
** during bouleGoWALReset. */
int64_t boule_wal_run(void *wal, unsigned char salt[8], uint32_t *szPage, int64_t *lo, uint32_t *pages, int64_t max) {
  BouleFile *w = (BouleFile *)wal;
  FrameRun *r = w->run;
  int64_t n;
  if (r == 0 || r->hi < r->lo) return 0;
  n = r->hi - r->lo + 1;
  memcpy(salt, r->salt, 8);
  *szPage = r->szPage;
  *lo = r->lo;
  if (pages) memcpy(pages, r->pgno, (size_t)(n < max ? n : max) * sizeof(uint32_t));
  return n;
}

/* ---- helpers called from Go during bouleGoSnapshot ----------------------- */

int boule_file_read(void *file, void *buf, int n, int64_t off) {
  BouleFile *p = (BouleFile *)file;
  return p->real->pMethods->xRead(p->real, buf, n, off);
}

int boule_file_size(void *file, int64_t *size) {
  BouleFile *p = (BouleFile *)file;
  sqlite3_int64 sz = 0;
  int rc = p->real->pMethods->xFileSize(p->real, &sz);
  *size = sz;
  return rc;
}

int boule_file_reserved(void *file, int *out) {
  BouleFile *p = (BouleFile *)file;
  return p->real->pMethods->xCheckReservedLock(p->real, out);
}

/* ---- re-staging, for flushes ---------------------------------------------- */

/* Brings the spool of the database at zPath up to date with the file, for
** a flush that found its staged snapshot missing, failed or unfinished:
** opens the database through boule (never creating it), and runs the
** check snapshot of a connection's first transaction while a read
** transaction holds SHARED, so that no writer can change the file
** meanwhile. In WAL mode SQLite keeps SHARED for as long as the connection
** is open, and the check would only run at close: it runs here, explicitly.
** On success *ppDb is the open connection, which the caller closes with
** boule_restage_close once it has read the snapshot's result from Go, and
** *pHandle the Go handle of its main file (0 when boule does not replicate
** it). On failure zErr holds SQLite's message. */
int boule_restage_open(const char *zPath, int busyMs, void **ppDb, uint64_t *pHandle, char *zErr, int nErr) {
  sqlite3 *db = 0;
  sqlite3_file *f = 0;
  int rc;
  *ppDb = 0;
  *pHandle = 0;
  if (nErr > 0) zErr[0] = 0;
  rc = sqlite3_open_v2(zPath, &db, SQLITE_OPEN_READWRITE, "boule");
  if (rc == SQLITE_OK) rc = sqlite3_busy_timeout(db, busyMs);
  if (rc == SQLITE_OK) rc = sqlite3_exec(db, "BEGIN; SELECT count(*) FROM sqlite_master", 0, 0, 0);
  if (rc == SQLITE_OK) rc = sqlite3_file_control(db, "main", SQLITE_FCNTL_FILE_POINTER, &f);
  if (rc == SQLITE_OK && f != 0 && f->pMethods == &boule_io_methods) {
    BouleFile *p = (BouleFile *)f;
    if (p->wal != 0) {
      /* WAL mode: the check reads the log, which only its write lock
      ** keeps still. Taken here, beside SQLite, and released at once. */
      /* Bounded by the clock, not by counting sleeps: a 1 ms sleep takes
      ** longer, and counting them overshot busyMs by a third. */
      sqlite3_int64 start = 0, now = 0;
      unix_vfs->xCurrentTimeInt64(unix_vfs, &start);
      while ((rc = p->real->pMethods->xShmLock(p->real, 0, 1, SQLITE_SHM_LOCK | SQLITE_SHM_EXCLUSIVE)) == SQLITE_BUSY &&
             unix_vfs->xCurrentTimeInt64(unix_vfs, &now) == SQLITE_OK && now - start < busyMs) {
        unix_vfs->xSleep(unix_vfs, 1000);
      }
      if (rc != SQLITE_OK) {
        if (nErr > 0) sqlite3_snprintf(nErr, zErr, "the write lock of its log stayed busy for %d ms", busyMs);
        sqlite3_close(db);
        return rc;
      }
      capture_wal(p, 0);
      p->real->pMethods->xShmLock(p->real, 0, 1, SQLITE_SHM_UNLOCK | SQLITE_SHM_EXCLUSIVE);
    } else if (p->unknown && p->eLock >= SQLITE_LOCK_SHARED) {
      snapshot(p);
    }
    *pHandle = p->handle;
  }
  if (rc == SQLITE_OK) rc = sqlite3_exec(db, "COMMIT", 0, 0, 0);
  if (rc != SQLITE_OK) {
    if (nErr > 0) sqlite3_snprintf(nErr, zErr, "%s", db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    sqlite3_close(db);
    *pHandle = 0;
    return rc;
  }
  *ppDb = db;
  return SQLITE_OK;
}

void boule_restage_close(void *db) { sqlite3_close((sqlite3 *)db); }

/* ---- the persister's own connection, for lazy captures ------------------- */

/* Opens a connection of its own to the database at zPath, through unix
** (never boule: it replicates nothing and captures nothing), in a read
** transaction: while it lasts, the log does not restart (unless it was
** checkpointed whole when the transaction began: the caller checks the
** log's salts after reading), and checkpoints do not write the pages the
** log does not hold. Writers go on. *ppFile and *ppWal are unix's files
** for the database and the log, read with boule_raw_read. Its close is
** SQLite's: if it is the last connection (the application closed the
** database meanwhile), it checkpoints and deletes the log, as the
** application's close would have, rather than leave a log and a shm
** behind; the position in the log is then lost, and the next capture
** rebuilds. Returns SQLITE_NOTFOUND when the database has no log open
** (not in WAL mode). */
int boule_wal_lock(const char *zPath, int busyMs, void **ppDb, void **ppFile, void **ppWal) {
  sqlite3 *db = 0;
  sqlite3_file *f = 0, *w = 0;
  int rc;
  *ppDb = *ppFile = *ppWal = 0;
  rc = sqlite3_open_v2(zPath, &db, SQLITE_OPEN_READWRITE, "unix");
  if (rc == SQLITE_OK) rc = sqlite3_busy_timeout(db, busyMs);
  if (rc == SQLITE_OK) rc = sqlite3_exec(db, "BEGIN; SELECT count(*) FROM sqlite_master", 0, 0, 0);
  if (rc == SQLITE_OK) rc = sqlite3_file_control(db, "main", SQLITE_FCNTL_FILE_POINTER, &f);
  if (rc == SQLITE_OK) rc = sqlite3_file_control(db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &w);
  if (rc == SQLITE_OK && (f == 0 || w == 0 || w->pMethods == 0)) rc = SQLITE_NOTFOUND;
  if (rc != SQLITE_OK) {
    sqlite3_close(db);
    return rc;
  }
  *ppDb = db;
  *ppFile = f;
  *ppWal = w;
  return SQLITE_OK;
}

/* Ends what boule_wal_lock began. */
void boule_wal_unlock(void *db, void *file) {
  (void)file;
  sqlite3_exec((sqlite3 *)db, "COMMIT", 0, 0, 0);
  sqlite3_close((sqlite3 *)db);
}

int boule_raw_read(void *file, void *buf, int n, int64_t off) {
  sqlite3_file *f = (sqlite3_file *)file;
  return f->pMethods->xRead(f, buf, n, off);
}

int boule_raw_size(void *file, int64_t *size) {
  sqlite3_file *f = (sqlite3_file *)file;
  sqlite3_int64 sz = 0;
  int rc = f->pMethods->xFileSize(f, &sz);
  *size = sz;
  return rc;
}

/* ---- io methods for replicated main database files ----------------------- */

static int bClose(sqlite3_file *f) {
  BouleFile *p = (BouleFile *)f;
  int rc = p->real->pMethods ? p->real->pMethods->xClose(p->real) : SQLITE_OK;
  release_reads(p);
  remove_main(p);
  if (p->wal) p->wal->main = 0;
  p->wal = 0;
  if (p->flushOnClose) bouleGoFlush(p->handle, 0);
  bouleGoClose(p->handle);
  sqlite3_free(p->dirty);
  p->dirty = 0;
  copy_clear(p);
  free(p->copies);
  p->copies = 0;
  p->nCopySlots = 0;
  p->txnWord = 0;
  return rc;
}

static int bRead(sqlite3_file *f, void *buf, int n, sqlite3_int64 off) {
  BouleFile *p = (BouleFile *)f;
  return p->real->pMethods->xRead(p->real, buf, n, off);
}

static int bWrite(sqlite3_file *f, const void *buf, int n, sqlite3_int64 off) {
  BouleFile *p = (BouleFile *)f;
  int rc, fresh;
  /* With a log open, only checkpoints write the file: they copy what the
  ** log's captures hold already. */
  if (p->wal) return p->real->pMethods->xWrite(p->real, buf, n, off);
  if (!p->txnActive) begin_txn(p);
  fresh = n > 0 && !is_dirty(p, off >> BOULE_CHUNK_SHIFT);
  if (n > 0 && mark_dirty(p, off >> BOULE_CHUNK_SHIFT, (off + n - 1) >> BOULE_CHUNK_SHIFT) != SQLITE_OK) {
    p->forceFull = 1; /* out of memory for the bitmap: rebuild instead */
  }
  rc = p->real->pMethods->xWrite(p->real, buf, n, off);
  if (n > 0) copy_write(p, buf, n, off, fresh, rc);
  return rc;
}

static int bTruncate(sqlite3_file *f, sqlite3_int64 size) {
  BouleFile *p = (BouleFile *)f;
  sqlite3_int64 old = 0;
  if (p->wal) return p->real->pMethods->xTruncate(p->real, size);
  if (!p->txnActive) begin_txn(p);
  if (p->real->pMethods->xFileSize(p->real, &old) != SQLITE_OK) {
    p->forceFull = 1;
  } else {
    sqlite3_int64 lo = old < size ? old : size;
    sqlite3_int64 hi = old < size ? size : old;
    if (hi > lo && mark_dirty(p, lo >> BOULE_CHUNK_SHIFT, (hi - 1) >> BOULE_CHUNK_SHIFT) != SQLITE_OK) {
      p->forceFull = 1;
    }
  }
  p->anyDirty = 1;
  copy_truncate(p, size);
  return p->real->pMethods->xTruncate(p->real, size);
}

static int bSync(sqlite3_file *f, int flags) {
  BouleFile *p = (BouleFile *)f;
  return p->real->pMethods->xSync(p->real, flags);
}

static int bFileSize(sqlite3_file *f, sqlite3_int64 *size) {
  BouleFile *p = (BouleFile *)f;
  return p->real->pMethods->xFileSize(p->real, size);
}

/* An EXCLUSIVE lock asked for with the log open is how SQLite's last
** connection in WAL mode finds out that it is the last, before it
** checkpoints the log and deletes it (wClose stages it first). The
** persister's reads of the log, through connections of its own, are held
** meanwhile: one open then would be the last instead, and delete the log
** unstaged. (Exclusive locking mode holds the lock until the close; its
** captures need no persister reads.) */
static void release_reads(BouleFile *p) {
  if (p->readsHeld) {
    p->readsHeld = 0;
    boule_count_go_call();
    bouleGoReleaseReads(p->handle);
  }
}

static int bLock(sqlite3_file *f, int level) {
  BouleFile *p = (BouleFile *)f;
  int rc;
  if (level == SQLITE_LOCK_EXCLUSIVE && p->wal && !p->readsHeld) {
    p->readsHeld = 1;
    boule_count_go_call();
    bouleGoHoldReads(p->handle);
  }
  rc = p->real->pMethods->xLock(p->real, level);
  if (rc != SQLITE_OK && level == SQLITE_LOCK_EXCLUSIVE) release_reads(p);
  if (rc == SQLITE_OK && level > p->eLock) p->eLock = level;
  /* unix keeps the PENDING lock it took for a failed EXCLUSIVE request;
  ** SQLite drops it by unlocking to SHARED, which must then reach unix. */
  if (rc != SQLITE_OK && level == SQLITE_LOCK_EXCLUSIVE && p->eLock < SQLITE_LOCK_PENDING) {
    p->eLock = SQLITE_LOCK_PENDING;
  }
  return rc;
}

static int bUnlock(sqlite3_file *f, int level) {
  BouleFile *p = (BouleFile *)f;
  int rc;
  if (level <= SQLITE_LOCK_SHARED && p->eLock > SQLITE_LOCK_SHARED &&
      (p->txnActive || p->anyDirty || p->unknown)) {
    /* End of a write transaction: keep SHARED while the snapshot runs, so
    ** readers proceed and the next writer waits only for EXCLUSIVE. */
    rc = p->real->pMethods->xUnlock(p->real, SQLITE_LOCK_SHARED);
    if (rc != SQLITE_OK) return rc;
    p->eLock = SQLITE_LOCK_SHARED;
    snapshot(p);
  } else if (level == SQLITE_LOCK_NONE && p->eLock == SQLITE_LOCK_SHARED && p->unknown) {
    /* First transaction since open, a read: bring the spool up to date
    ** with a database that may have been written without us. */
    snapshot(p);
  }
  if (level < p->eLock) {
    rc = p->real->pMethods->xUnlock(p->real, level);
    if (rc != SQLITE_OK) return rc;
    p->eLock = level;
  }
  if (level < SQLITE_LOCK_EXCLUSIVE) release_reads(p);
  return SQLITE_OK;
}

static int bCheckReservedLock(sqlite3_file *f, int *out) {
  BouleFile *p = (BouleFile *)f;
  return p->real->pMethods->xCheckReservedLock(p->real, out);
}

/* Parses a pragma's boolean argument as SQLite does: on/off, yes/no,
** true/false, or a number. Returns -1 when it is none of these. */
static int parse_bool(const char *z) {
  static const char *yes[] = {"1", "on", "yes", "true"};
  static const char *no[] = {"0", "off", "no", "false"};
  for (unsigned i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
    if (sqlite3_stricmp(z, yes[i]) == 0) return 1;
    if (sqlite3_stricmp(z, no[i]) == 0) return 0;
  }
  return -1;
}

static int bFileControl(sqlite3_file *f, int op, void *arg) {
  BouleFile *p = (BouleFile *)f;
  if (op == SQLITE_FCNTL_COMMIT_PHASETWO && p->walWrote) {
    /* A commit to the log whose write lock was not taken through the
    ** shm (exclusive locking mode): no other connection can reach the
    ** database until this one lets go of it. */
    capture_wal(p, BOULE_SNAP_WROTE | BOULE_SNAP_EAGER);
  }
  if (op == SQLITE_FCNTL_PRAGMA) {
    char **a = (char **)arg;
    /* verneuil_flush_replication_data is Verneuil's name for the same
    ** pragma, kept so that its users' SQL runs unchanged. */
    if (a[1] && (sqlite3_stricmp(a[1], "boule_flush_replication_data") == 0 ||
                 sqlite3_stricmp(a[1], "verneuil_flush_replication_data") == 0)) {
      const char *v = a[2];
      if (v == 0 || sqlite3_stricmp(v, "now") == 0 || sqlite3_stricmp(v, "force") == 0 || strcmp(v, "2") == 0) {
        /* Flush now: upload everything this database has spooled. Inside
        ** a transaction that has written the file, the marker is this
        ** transaction's, and re-staging would wait for its own lock: Go
        ** says so and fails. */
        a[0] = sqlite3_mprintf("%d", bouleGoFlush(p->handle, p->txnActive || p->walLocked || p->walWrote) ? 1 : 0);
      } else {
        int b = parse_bool(v);
        if (b < 0) {
          a[0] = sqlite3_mprintf("boule_flush_replication_data: want 0, 1 or no argument, got '%s'", v);
          return SQLITE_ERROR;
        }
        a[0] = sqlite3_mprintf("%d", p->flushOnClose);
        p->flushOnClose = b;
      }
      return a[0] ? SQLITE_OK : SQLITE_NOMEM;
    }
  }
  return p->real->pMethods->xFileControl(p->real, op, arg);
}

static int bSectorSize(sqlite3_file *f) {
  BouleFile *p = (BouleFile *)f;
  return p->real->pMethods->xSectorSize(p->real);
}

static int bDeviceCharacteristics(sqlite3_file *f) {
  BouleFile *p = (BouleFile *)f;
  return p->real->pMethods->xDeviceCharacteristics(p->real);
}

static int bShmMap(sqlite3_file *f, int pg, int sz, int extend, void volatile **pp) {
  BouleFile *p = (BouleFile *)f;
  int rc = p->real->pMethods->xShmMap(p->real, pg, sz, extend, pp);
  if (rc == SQLITE_OK && pg == 0 && sz >= 136) p->shm0 = (const volatile unsigned char *)*pp;
  return rc;
}

static int bShmLock(sqlite3_file *f, int offset, int n, int flags) {
  BouleFile *p = (BouleFile *)f;
  /* Slot 0 is the log's write lock: a write transaction ends when it is
  ** released, and its commit, if any, is captured just before. */
  int rc;
  if (offset == 0 && n == 1 && flags == (SQLITE_SHM_UNLOCK | SQLITE_SHM_EXCLUSIVE)) {
    if (p->walWrote) capture_wal(p, BOULE_SNAP_WROTE);
    p->walLocked = 0;
  }
  rc = p->real->pMethods->xShmLock(p->real, offset, n, flags);
  if (rc == SQLITE_OK && offset == 0 && n == 1 && flags == (SQLITE_SHM_LOCK | SQLITE_SHM_EXCLUSIVE)) {
    p->walLocked = 1;
    run_check(p);
  }
  return rc;
}

static void bShmBarrier(sqlite3_file *f) {
  BouleFile *p = (BouleFile *)f;
  p->real->pMethods->xShmBarrier(p->real);
}

static int bShmUnmap(sqlite3_file *f, int deleteFlag) {
  BouleFile *p = (BouleFile *)f;
  p->shm0 = 0;
  return p->real->pMethods->xShmUnmap(p->real, deleteFlag);
}

static int bFetch(sqlite3_file *f, sqlite3_int64 off, int amt, void **pp) {
  BouleFile *p = (BouleFile *)f;
  return p->real->pMethods->xFetch(p->real, off, amt, pp);
}

static int bUnfetch(sqlite3_file *f, sqlite3_int64 off, void *ptr) {
  BouleFile *p = (BouleFile *)f;
  return p->real->pMethods->xUnfetch(p->real, off, ptr);
}

static const sqlite3_io_methods boule_io_methods = {
    3, bClose, bRead, bWrite, bTruncate, bSync, bFileSize, bLock, bUnlock,
    bCheckReservedLock, bFileControl, bSectorSize, bDeviceCharacteristics,
    bShmMap, bShmLock, bShmBarrier, bShmUnmap, bFetch, bUnfetch};

/* ---- io methods for the logs of replicated databases ---------------------- */

static int wClose(sqlite3_file *f) {
  BouleFile *p = (BouleFile *)f;
  if (p->main && p->main->eLock >= SQLITE_LOCK_EXCLUSIVE) {
    /* The last connection, done checkpointing: the log may be deleted
    ** next. What it holds beyond the staged snapshot is staged now. */
    boule_count_go_call();
    bouleGoWALStage(p->main->handle, p->main, p);
  }
  if (p->main) p->main->wal = 0;
  p->main = 0;
  if (p->run) {
    sqlite3_free(p->run->pgno);
    sqlite3_free(p->run->cksum);
    sqlite3_free(p->run);
    p->run = 0;
  }
  return p->real->pMethods ? p->real->pMethods->xClose(p->real) : SQLITE_OK;
}

/* A write at offset 0 is a new header: the log restarts. Go checks, while
** the old log is still there to read, that its commits were captured.
** Without the shm's write lock (exclusive locking mode), captures are
** eager, and so is the check. */
static int wWrite(sqlite3_file *f, const void *buf, int n, sqlite3_int64 off) {
  BouleFile *p = (BouleFile *)f;
  if (p->main) {
    if (off == 0 && n >= 32) {
      boule_count_go_call();
      bouleGoWALReset(p->main->handle, p->main, p, buf, !p->main->walLocked);
    }
    p->main->walWrote = 1;
    run_write(p, buf, n, off);
  }
  return p->real->pMethods->xWrite(p->real, buf, n, off);
}

static int wTruncate(sqlite3_file *f, sqlite3_int64 size) {
  BouleFile *p = (BouleFile *)f;
  if (p->main && size < 32) {
    boule_count_go_call();
    bouleGoWALReset(p->main->handle, p->main, p, 0, !p->main->walLocked);
  }
  run_drop(p->run);
  return p->real->pMethods->xTruncate(p->real, size);
}

static int wLock(sqlite3_file *f, int level) {
  BouleFile *p = (BouleFile *)f;
  return p->real->pMethods->xLock(p->real, level);
}

static int wUnlock(sqlite3_file *f, int level) {
  BouleFile *p = (BouleFile *)f;
  return p->real->pMethods->xUnlock(p->real, level);
}

static int wFileControl(sqlite3_file *f, int op, void *arg) {
  BouleFile *p = (BouleFile *)f;
  return p->real->pMethods->xFileControl(p->real, op, arg);
}

static const sqlite3_io_methods boule_wal_methods = {
    3, wClose, bRead, wWrite, wTruncate, bSync, bFileSize, wLock, wUnlock,
    bCheckReservedLock, wFileControl, bSectorSize, bDeviceCharacteristics,
    bShmMap, bShmLock, bShmBarrier, bShmUnmap, bFetch, bUnfetch};

/* The replicated main files open in this process, for open_wal to find
** the one a log belongs to. Under mains_mutex. */
static BouleFile *mains;

/* A spin lock, not an SQLite mutex: SQLite may run single-threaded, and
** its test suite counts the mutexes a VFS allocates. Held for a list walk. */
static char mains_lock;

static void mains_enter(void) {
  while (__atomic_test_and_set(&mains_lock, __ATOMIC_ACQUIRE)) sched_yield();
}

static void mains_leave(void) { __atomic_clear(&mains_lock, __ATOMIC_RELEASE); }

static void add_main(BouleFile *p) {
  mains_enter();
  p->prev = 0;
  p->next = mains;
  if (mains) mains->prev = p;
  mains = p;
  mains_leave();
}

static void remove_main(BouleFile *p) {
  mains_enter();
  if (p->prev) p->prev->next = p->next;
  else if (mains == p) mains = p->next;
  if (p->next) p->next->prev = p->prev;
  p->next = p->prev = 0;
  mains_leave();
}

/* Finds the main file the log zName belongs to: one whose name plus
** "-wal" is zName and that has no log open. SQLite's pager keeps the
** log's name in the same allocation as the database's, just after it:
** the main file whose name precedes zName there is the connection's own.
** Otherwise (a VFS shim that builds its own names), the newest such main
** file. sqlite3_database_file_object is not used: given a name that is
** not the pager's, its behaviour is undefined. */
static BouleFile *find_main(const char *zName) {
  size_t n = strlen(zName);
  BouleFile *found = 0;
  if (n <= 4 || strcmp(zName + n - 4, "-wal") != 0) return 0;
  mains_enter();
  for (BouleFile *p = mains; p; p = p->next) {
    uintptr_t a = (uintptr_t)p->zPath, z = (uintptr_t)zName;
    if (p->wal != 0 || strlen(p->zPath) != n - 4 || strncmp(p->zPath, zName, n - 4) != 0) continue;
    if (z > a && z - a < 65536) {
      found = p;
      break;
    }
    if (found == 0) found = p;
  }
  mains_leave();
  return found;
}

/* Opens the log of a replicated main file, wrapped, and links the two. */
static int open_wal(const char *zName, sqlite3_file *f, int flags, int *outFlags) {
  BouleFile *p = (BouleFile *)f;
  BouleFile *m = find_main(zName);
  int rc;
  if (m == 0) {
    return unix_vfs->xOpen(unix_vfs, zName, f, flags, outFlags);
  }
  memset(p, 0, sizeof(*p));
  p->real = (sqlite3_file *)((char *)f + ROUND8(sizeof(BouleFile)));
  p->zPath = zName;
  rc = unix_vfs->xOpen(unix_vfs, zName, p->real, flags, outFlags);
  if (rc != SQLITE_OK) {
    p->base.pMethods = 0;
    return rc;
  }
  p->main = m;
  p->main->wal = p;
  p->base.pMethods = &boule_wal_methods;
  return SQLITE_OK;
}

/* ---- VFS methods --------------------------------------------------------- */

static int bOpen(sqlite3_vfs *vfs, const char *zName, sqlite3_file *f, int flags, int *outFlags) {
  BouleFile *p = (BouleFile *)f;
  uint64_t handle = 0;
  uint64_t *txnWord = 0;
  uint64_t owner = 0;
  int rc;
  (void)vfs;

  /* Only named main databases with normal locking are replicated. With
  ** nolock or immutable, SQLite's locks cannot order our snapshots. */
  if ((flags & SQLITE_OPEN_WAL) && zName) return open_wal(zName, f, flags, outFlags);
  if ((flags & SQLITE_OPEN_MAIN_DB) && zName && !(flags & SQLITE_OPEN_DELETEONCLOSE) &&
      !sqlite3_uri_boolean(zName, "nolock", 0) && !sqlite3_uri_boolean(zName, "immutable", 0)) {
    handle = bouleGoOpen((char *)zName, &txnWord, &owner);
  }
  if (handle == 0) {
    /* Not replicated: the file is a plain unix file, methods and all. */
    const char *zDir = __atomic_load_n(&temp_dir, __ATOMIC_ACQUIRE);
    if (zName == 0 && zDir != 0 && (flags & SQLITE_OPEN_DELETEONCLOSE)) {
      /* A nameless temp file: name it in the configured tempdir. unix
      ** unlinks DELETEONCLOSE files as soon as they are open, but keeps a
      ** pointer to the name, so it lives in the file's own memory: the
      ** last BOULE_TEMPNAME_MAX bytes of szOsFile, after the unix file. */
      char *zTemp = (char *)f + boule_vfs.szOsFile - BOULE_TEMPNAME_MAX;
      unsigned char r[12];
      unix_vfs->xRandomness(unix_vfs, (int)sizeof(r), (char *)r);
      sqlite3_snprintf(BOULE_TEMPNAME_MAX, zTemp,
                       "%s/etilqs_boule_%02x%02x%02x%02x%02x%02x%02x%02x%02x%02x%02x%02x", zDir,
                       r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11]);
      return unix_vfs->xOpen(unix_vfs, zTemp, f, flags, outFlags);
    }
    return unix_vfs->xOpen(unix_vfs, zName, f, flags, outFlags);
  }

  memset(p, 0, sizeof(*p));
  p->real = (sqlite3_file *)((char *)f + ROUND8(sizeof(BouleFile)));
  p->handle = handle;
  p->zPath = zName;
  p->unknown = 1;
  p->txnWord = txnWord;
  p->owner = owner;
  rc = unix_vfs->xOpen(unix_vfs, zName, p->real, flags, outFlags);
  if (rc != SQLITE_OK) {
    bouleGoClose(handle);
    p->base.pMethods = 0; /* SQLite will not call xClose */
    return rc;
  }
  p->base.pMethods = &boule_io_methods;
  add_main(p);
  return SQLITE_OK;
}

static int bDelete(sqlite3_vfs *vfs, const char *zName, int syncDir) {
  int rc;
  size_t n = zName ? strlen(zName) : 0;
  (void)vfs;
  if (n > 4 && strcmp(zName + n - 4, "-wal") == 0) {
    /* The last connection checkpointed the log whole and deletes it: the
    ** database file alone is the database now. Go checks, while the log
    ** is there to read, that its commits were captured. */
    boule_count_go_call();
    bouleGoWALGone((char *)zName);
  }
  rc = unix_vfs->xDelete(unix_vfs, zName, syncDir);
  return rc;
}

static int bAccess(sqlite3_vfs *vfs, const char *zName, int flags, int *out) {
  (void)vfs;
  return unix_vfs->xAccess(unix_vfs, zName, flags, out);
}

static int bFullPathname(sqlite3_vfs *vfs, const char *zName, int n, char *out) {
  (void)vfs;
  return unix_vfs->xFullPathname(unix_vfs, zName, n, out);
}

static void *bDlOpen(sqlite3_vfs *vfs, const char *zPath) {
  (void)vfs;
  return unix_vfs->xDlOpen(unix_vfs, zPath);
}

static void bDlError(sqlite3_vfs *vfs, int n, char *zErr) {
  (void)vfs;
  unix_vfs->xDlError(unix_vfs, n, zErr);
}

static void (*bDlSym(sqlite3_vfs *vfs, void *h, const char *z))(void) {
  (void)vfs;
  return unix_vfs->xDlSym(unix_vfs, h, z);
}

static void bDlClose(sqlite3_vfs *vfs, void *h) {
  (void)vfs;
  unix_vfs->xDlClose(unix_vfs, h);
}

static int bRandomness(sqlite3_vfs *vfs, int n, char *out) {
  (void)vfs;
  return unix_vfs->xRandomness(unix_vfs, n, out);
}

static int bSleep(sqlite3_vfs *vfs, int us) {
  (void)vfs;
  return unix_vfs->xSleep(unix_vfs, us);
}

static int bCurrentTime(sqlite3_vfs *vfs, double *out) {
  (void)vfs;
  return unix_vfs->xCurrentTime(unix_vfs, out);
}

static int bGetLastError(sqlite3_vfs *vfs, int n, char *out) {
  (void)vfs;
  return unix_vfs->xGetLastError ? unix_vfs->xGetLastError(unix_vfs, n, out) : 0;
}

static int bCurrentTimeInt64(sqlite3_vfs *vfs, sqlite3_int64 *out) {
  (void)vfs;
  return unix_vfs->xCurrentTimeInt64(unix_vfs, out);
}

static int bSetSystemCall(sqlite3_vfs *vfs, const char *z, sqlite3_syscall_ptr fn) {
  (void)vfs;
  return unix_vfs->xSetSystemCall(unix_vfs, z, fn);
}

static sqlite3_syscall_ptr bGetSystemCall(sqlite3_vfs *vfs, const char *z) {
  (void)vfs;
  return unix_vfs->xGetSystemCall(unix_vfs, z);
}

static const char *bNextSystemCall(sqlite3_vfs *vfs, const char *z) {
  (void)vfs;
  return unix_vfs->xNextSystemCall(unix_vfs, z);
}

int boule_set_tempdir(const char *dir) {
  char *copy = 0;
  if (dir && strlen(dir) > BOULE_TEMPNAME_MAX - 32) return SQLITE_TOOBIG;
  if (dir && dir[0]) {
    copy = sqlite3_mprintf("%s", dir);
    if (copy == 0) return SQLITE_NOMEM;
  }
  /* Another thread may be reading the old string in bOpen: leak it rather
  ** than free it under that thread. Reconfiguration is rare. */
  __atomic_store_n(&temp_dir, copy, __ATOMIC_RELEASE);
  return SQLITE_OK;
}

void boule_forward_vfs(sqlite3_vfs *v) {
  v->xDlOpen = bDlOpen;
  v->xDlError = bDlError;
  v->xDlSym = bDlSym;
  v->xDlClose = bDlClose;
  v->xRandomness = bRandomness;
  v->xSleep = bSleep;
  v->xCurrentTime = bCurrentTime;
  v->xGetLastError = bGetLastError;
  v->xCurrentTimeInt64 = bCurrentTimeInt64;
  v->xSetSystemCall = bSetSystemCall;
  v->xGetSystemCall = bGetSystemCall;
  v->xNextSystemCall = bNextSystemCall;
}

int boule_register(int make_default) {
  if (unix_vfs == 0) {
    sqlite3_vfs *u = sqlite3_vfs_find("unix");
    if (u == 0) return SQLITE_ERROR;
    if (u->iVersion < 3) return SQLITE_ERROR;
    boule_vfs.iVersion = 3;
    boule_vfs.szOsFile = (int)(ROUND8(sizeof(BouleFile)) + ROUND8((size_t)u->szOsFile) + BOULE_TEMPNAME_MAX);
    boule_vfs.mxPathname = u->mxPathname;
    boule_vfs.zName = "boule";
    boule_vfs.xOpen = bOpen;
    boule_vfs.xDelete = bDelete;
    boule_vfs.xAccess = bAccess;
    boule_vfs.xFullPathname = bFullPathname;
    boule_forward_vfs(&boule_vfs);
    unix_vfs = u;
  }
  return sqlite3_vfs_register(&boule_vfs, make_default);
}

#ifdef BOULE_EXTENSION
/* Implemented in Go (package vfs, ext.go): registers both VFSes from
** BOULE_CONFIG. Returns 0, or an SQLite code with *pzErr set to a message
** allocated with malloc. */
extern int bouleGoExtInit(char **pzErr);

/* Entry point of the loadable extension: ".load libboule" finds it by name. */
int sqlite3_boule_init(sqlite3 *db, char **pzErrMsg, const sqlite3_api_routines *pApi) {
  char *zErr = 0;
  int rc;
  (void)db;
  SQLITE_EXTENSION_INIT2(pApi);
  if (sqlite3_libversion_number() < 3031000) {
    *pzErrMsg = sqlite3_mprintf("boule: SQLite 3.31.0 or later is required, this is %s", sqlite3_libversion());
    return SQLITE_ERROR;
  }
  rc = bouleGoExtInit(&zErr);
  if (rc != SQLITE_OK) {
    *pzErrMsg = sqlite3_mprintf("boule: %s", zErr ? zErr : "initialization failed");
    free(zErr);
    return rc;
  }
  return SQLITE_OK_LOAD_PERMANENTLY;
}
#endif
