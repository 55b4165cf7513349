/*
** Internal interface between the C half of the boule_snapshot VFS
** (boule_snapshot.c) and its Go half (package vfs, snapcallbacks.go). Not
** part of the public API: see boule.h.
**
** The contract: SQLite calls into C for every read; C calls into Go once
** per chunk per snapshot (bouleGoSnapChunk), plus at open, close, pragmas,
** and when a connection adopts a newer snapshot.
*/
#ifndef BOULE_SNAPSHOT_H
#define BOULE_SNAPSHOT_H

#include <stdint.h>

#include "boule_vfs.h" /* the unix VFS, forwarders, chunk size */

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

/* Implemented in Go (package vfs, snapcallbacks.go). Each returns an SQLite
** code; a panic in Go returns the function's failure code. */
int bouleGoSnapOpen(char *zName, int flags, BouleSnapOut *out);
int bouleGoSnapChunk(uint64_t view, int64_t i);
int bouleGoSnapAdopt(uint64_t conn, BouleSnapOut *out);
int bouleGoSnapPragma(uint64_t conn, char *zName, char *zArg, int locked, BouleSnapOut *out);
void bouleGoSnapClose(uint64_t conn);

#endif /* BOULE_SNAPSHOT_H */
