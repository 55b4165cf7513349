/*
** Internal interface between the C half of the boule VFS (boule_vfs.c) and
** its Go half (package vfs). Not part of the public API: see boule.h.
**
** The contract: SQLite calls into C for every page; C calls into Go at most
** once per transaction (bouleGoSnapshot), plus once per open and close.
*/
#ifndef BOULE_VFS_H
#define BOULE_VFS_H

#include <stddef.h>
#include <stdint.h>

#include "boule_sqlite.h"

#define ROUND8(x) (((x) + 7) & ~(size_t)7)

/* The unix VFS that both VFSes wrap, found by boule_register. */
extern sqlite3_vfs *boule_unix_vfs;

/* Sets v's methods that only forward to the unix VFS: dynamic loading,
** randomness, sleep, time, errors and system calls. */
void boule_forward_vfs(sqlite3_vfs *v);

#define BOULE_CHUNK_SHIFT 16
#define BOULE_CHUNK_SIZE (1 << BOULE_CHUNK_SHIFT)
#define BOULE_HEADER_SIZE 100

/* Flags passed to bouleGoSnapshot. */
#define BOULE_SNAP_WROTE 0x01   /* the transaction wrote or truncated the file */
#define BOULE_SNAP_FORCE 0x02   /* incremental update is unsafe: rebuild */
#define BOULE_SNAP_PRE_OK 0x04  /* the pre-transaction state below is valid */

/* What the C side captured just before the first write of a transaction. */
typedef struct BoulePre {
  unsigned char header[BOULE_HEADER_SIZE];
  int64_t size;
  int64_t ctime_sec;
  int64_t ctime_nsec;
} BoulePre;

/* Reads n bytes at off from the main database file, through the wrapped
** unix file. Only valid during bouleGoSnapshot. Returns an SQLite code. */
int boule_file_read(void *file, void *buf, int n, int64_t off);

/* Size of the main database file. Only valid during bouleGoSnapshot. */
int boule_file_size(void *file, int64_t *size);

/* Whether any connection holds RESERVED or more on the main database file.
** Only valid during bouleGoSnapshot. */
int boule_file_reserved(void *file, int *out);

/* Registers the "boule" VFS on top of "unix". Safe to call again, e.g. to
** make it the default later. Returns an SQLite code. */
int boule_register(int make_default);

/* Sets the directory for nameless temp files; NULL or "" restores the
** unix default. */
int boule_set_tempdir(const char *dir);

/* Opens the database at zPath through boule and runs a read transaction
** whose check snapshot brings the spool up to date; see boule_vfs.c. */
int boule_restage_open(const char *zPath, int busyMs, void **ppDb, uint64_t *pHandle, char *zErr, int nErr);

/* Closes a connection boule_restage_open opened. */
void boule_restage_close(void *db);

/* Test and benchmark counters: how often C called into Go. */
int64_t boule_go_calls(void);


/* ---- the boule_snapshot VFS (boule_snapshot.c) --------------------------- */

/* A BouleView's chunk pointers come in pages of BOULE_VIEW_PAGE, each
** allocated when one of its chunks is first mapped: the view of a 4 TiB
** snapshot costs 128 KiB, not 512 MiB, until it is read. */
#define BOULE_VIEW_PAGE_SHIFT 12
#define BOULE_VIEW_PAGE (1 << BOULE_VIEW_PAGE_SHIFT)

/* One snapshot of a replica as C reads it. Go allocates it (with calloc),
** fills the pages and their entries atomically as chunks get mapped, and
** frees it when no connection reads the snapshot any more. Chunk i's bytes
** are pages[i >> BOULE_VIEW_PAGE_SHIFT][i & (BOULE_VIEW_PAGE - 1)]. */
typedef struct BouleView {
  int64_t size;                  /* database size in bytes */
  int64_t nChunks;               /* chunks in the snapshot */
  uint64_t handle;               /* Go handle, for bouleGoSnapChunk */
  uint64_t gen;                  /* the snapshot's generation in its replica */
  const unsigned char ***pages;  /* pages of mapped chunk bytes; a NULL page
                                 ** or entry: ask Go */
  uint32_t patch;                /* if patched: the change counter reads return */
  int patched;                   /* set by Go (atomic), see boule_snapshot.c */
} BouleView;

/* The mapped bytes of chunk ci of v, or NULL: ask Go. */
static inline const unsigned char *boule_view_chunk(BouleView *v, int64_t ci) {
  const unsigned char **page = __atomic_load_n(&v->pages[ci >> BOULE_VIEW_PAGE_SHIFT], __ATOMIC_ACQUIRE);
  if (page == 0) return 0;
  return __atomic_load_n(&page[ci & (BOULE_VIEW_PAGE - 1)], __ATOMIC_ACQUIRE);
}

/* What Go returns to C when a connection opens, adopts a snapshot, or runs
** a pragma. */
typedef struct BouleSnapOut {
  uint64_t conn;          /* Go handle of the connection */
  BouleView *view;        /* the snapshot the connection reads */
  uint64_t *newestGen;    /* the replica's newest generation, bumped by Go */
  int autoRefresh;        /* adopt the newest snapshot at each transaction */
  char msg[512];          /* pragma result or error message */
} BouleSnapOut;

/* Registers the "boule_snapshot" VFS. Returns an SQLite code. */
int boule_snapshot_register(void);

#endif /* BOULE_VFS_H */
