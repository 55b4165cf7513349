/*
** Internal interface between the C half of the boule VFS (boule_vfs.c) and
** its Go half (package vfs), and what the boule_snapshot VFS shares with it
** (boule_snapshot.h builds on this header). Not part of the public API: see
** boule.h.
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

/* The word of the txn marker (spool/ctl.go) that holds the time of the
** oldest commit the staged snapshot lacks, counted in words from the txn
** word. */
#define BOULE_CTL_SINCE_FROM_TXN 5

/* The words of the txn marker that a commit in WAL mode takes its
** generation with, when its process's persister has a read of the log
** queued already (spool's captureLazy, ctlWALLazy), also counted in words
** from the txn word. */
#define BOULE_CTL_COMMITTED_FROM_TXN 1
#define BOULE_CTL_OWNER_FROM_TXN 2
#define BOULE_CTL_PERSISTED_FROM_TXN 3
#define BOULE_CTL_STATE_FROM_TXN 4
#define BOULE_CTL_WALMODE_FROM_TXN 255
#define BOULE_CTL_WALLAZY_FROM_TXN 263

/* Flags passed to bouleGoSnapshot. */
#define BOULE_SNAP_WROTE 0x01   /* the transaction wrote or truncated the file */
#define BOULE_SNAP_FORCE 0x02   /* incremental update is unsafe: rebuild */
#define BOULE_SNAP_PRE_OK 0x04  /* the pre-transaction state below is valid */
#define BOULE_SNAP_EAGER 0x08   /* WAL: read the log now (no other connection can) */

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

/* The frames of a log its connection wrote, in order, as checked against
** the committed log when it took the log's write lock: their salts, page
** size, first frame (*lo) and up to max of their pages. Returns how many
** there are (0: none known). Only valid during bouleGoWALReset. */
int64_t boule_wal_run(void *wal, unsigned char salt[8], uint32_t *szPage, int64_t *lo, uint32_t *pages, int64_t max);

/* Size of the main database file. Only valid during bouleGoSnapshot. */
int boule_file_size(void *file, int64_t *size);

/* Whether any connection holds RESERVED or more on the main database file.
** Only valid during bouleGoSnapshot. */
int boule_file_reserved(void *file, int *out);

/* Copies of the chunks a large transaction wrote, made as it wrote them
** (boule_vfs.c, copy_write). boule_copy_take hands over the copy of chunk
** if its first n bytes were all written, or returns NULL; only valid during
** bouleGoSnapshot. Its buffer is freed with boule_copy_free, from any
** thread, at any time. boule_set_copy_limit bounds the bytes of all copies
** in the process (0, the default, copies nothing); boule_copy_used reports
** them. */
void *boule_copy_take(void *file, int64_t chunk, int n);
void boule_copy_free(void *buf);
void boule_set_copy_limit(int64_t n);
int64_t boule_copy_used(void);
int64_t boule_copy_lent(void); /* copies taken, since the process started */

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

/* A persister's own connection to a WAL database, in a read transaction
** (boule_vfs.c), and reads of unix files. */
int boule_wal_lock(const char *zPath, int busyMs, void **ppDb, void **ppFile, void **ppWal);
void boule_wal_unlock(void *db, void *file);
int boule_raw_read(void *file, void *buf, int n, int64_t off);
int boule_raw_size(void *file, int64_t *size);

/* Test and benchmark counters: how often C called into Go, from either
** VFS (boule_snapshot.c counts its calls too). */
int64_t boule_go_calls(void);
void boule_count_go_call(void);

#endif /* BOULE_VFS_H */
