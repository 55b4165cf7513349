/*
** Internal interface between the C half of the boule_snapshot VFS
** (boule_snapshot.c) and its Go half (package vfs, snapcallbacks.go). Not
** part of the public API: see boule.h.
**
** The contract: SQLite calls into C for every read; C calls into Go when
** a chunk is not held (bouleGoSnapChunk): once per chunk per snapshot while
** the process's memory bounds hold the replica, again after the chunk was
** let go. Plus at open, close, pragmas, and when a connection adopts a
** newer snapshot.
**
** Go lets a chunk go (evicts it) by clearing its entry in every view, then
** waiting until each connection's read sequence number (readSeq), if odd,
** has moved on, and only then unmapping it. A read makes its sequence
** number odd (sequentially consistent) before it loads a chunk pointer, and
** even again when it is done with the bytes, and never calls Go while it
** is odd: so no read copies from a chunk once it is unmapped.
**
** A chunk that is not held but whose cache file Go vouched for (a
** BouleStamp: Go mapped the chunk from that file, verified, or wrote the
** file itself from verified bytes) is read by C from the file, with
** pread, without calling Go, for as long as the file opened at the
** chunk's path in the cache has that stamp: see snap_read_file.
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
** fills the pages and their entries atomically as chunks get mapped,
** clears entries as chunks are let go, and frees it when no connection
** reads the snapshot any more. Chunk i's bytes are
** pages[i >> BOULE_VIEW_PAGE_SHIFT][i & (BOULE_VIEW_PAGE - 1)]. A page is
** BOULE_VIEW_PAGE pointers followed by BOULE_VIEW_PAGE uint32_t "used"
** flags, which reads set and Go's clock clears (boule_view_used). */
/* A cache file that holds a chunk's verified bytes, as Go last saw it:
** inode and change time (ns), on the view's cacheDev; ctime 0 when
** there is none. Under a lock of boule_snapshot.c's
** (boule_view_set_stamp). */
typedef struct BouleStamp {
  uint64_t ino;
  int64_t ctime;
  uint64_t slab; /* the slab's key (its file's name), or 0: the chunk's own file */
  uint32_t size; /* a slab's file size (under 9 MiB); a chunk's own file has the chunk's */
  uint32_t off;  /* the chunk's offset in its slab */
} BouleStamp;

typedef struct BouleView {
  int64_t size;                  /* database size in bytes */
  int64_t nChunks;               /* chunks in the snapshot */
  uint64_t handle;               /* Go handle, for bouleGoSnapChunk */
  uint64_t gen;                  /* the snapshot's generation in its replica */
  const unsigned char ***pages;  /* pages of mapped chunk bytes; a NULL page
                                 ** or entry: ask Go */
  uint32_t patch;                /* if patched: the change counter reads return */
  int patched;                   /* set by Go (atomic), see boule_snapshot.c */
  /* The chunks' cache files, set by Go before the view is used. */
  const unsigned char *fps;      /* nChunks fingerprints of 32 bytes (the
                                 ** manifest's, pinned), or NULL */
  const char *cacheDir;          /* the chunk cache directory, or NULL */
  int cacheShards;               /* its shard directories */
  uint64_t cacheDev;             /* the device its files are on */
  BouleStamp **stamps;           /* pages of BOULE_VIEW_PAGE stamps, a NULL
                                 ** page until one of its stamps is set */
} BouleView;

/* The mapped bytes of chunk ci of v, or NULL: ask Go. Outside a read
** (readSeq even), the bytes may be unmapped at any time. */
static inline const unsigned char *boule_view_chunk(BouleView *v, int64_t ci) {
  const unsigned char **page = __atomic_load_n(&v->pages[ci >> BOULE_VIEW_PAGE_SHIFT], __ATOMIC_ACQUIRE);
  if (page == 0) return 0;
  return __atomic_load_n(&page[ci & (BOULE_VIEW_PAGE - 1)], __ATOMIC_SEQ_CST);
}

/* The "used" flag of chunk ci, in a page that exists. */
static inline uint32_t *boule_view_used(const unsigned char **page, int64_t ci) {
  return (uint32_t *)(page + BOULE_VIEW_PAGE) + (ci & (BOULE_VIEW_PAGE - 1));
}

/* What Go returns to C when a connection opens, adopts a snapshot, or runs
** a pragma. */
typedef struct BouleSnapOut {
  uint64_t conn;          /* Go handle of the connection */
  BouleView *view;        /* the snapshot the connection reads */
  uint64_t *newestGen;    /* the replica's newest generation, bumped by Go */
  uint64_t *readSeq;      /* the connection's read sequence number */
  int autoRefresh;        /* adopt the newest snapshot at each transaction */
  char msg[512];          /* pragma result or error message */
} BouleSnapOut;

/* Registers the "boule_snapshot" VFS. Returns an SQLite code. */
int boule_snapshot_register(void);

/* Records that chunk i of v is in the cache file stamped ino, ctime on
** v->cacheDev (Go's Binding.OnFile): its own file if slab is 0, otherwise
** at off in the slab named slab, of size bytes. Returns 0 when the process's pages of stamps are
** all in use (boule_snap_stamp_budget): the chunk is then read through Go
** when it is not held. v->stamps must hold (nChunks + BOULE_VIEW_PAGE -
** 1) / BOULE_VIEW_PAGE pointers. */
int boule_view_set_stamp(BouleView *v, int64_t i, uint64_t ino, int64_t ctime, uint64_t slab, int64_t size,
                         int64_t off);

/* Frees v's pages of stamps, when no connection reads v any more. */
void boule_view_free_stamps(BouleView *v);

/* Sets how many pages of stamps (BOULE_VIEW_PAGE stamps each) the
** process's views may hold at once. */
void boule_snap_stamp_budget(int64_t pages);

/* Implemented in Go (package vfs, snapcallbacks.go). Each returns an SQLite
** code; a panic in Go returns the function's failure code. */
int bouleGoSnapOpen(char *zName, int flags, BouleSnapOut *out);
int bouleGoSnapChunk(uint64_t view, int64_t i);
int bouleGoSnapAdopt(uint64_t conn, BouleSnapOut *out);
int bouleGoSnapPragma(uint64_t conn, char *zName, char *zArg, int locked, BouleSnapOut *out);
void bouleGoSnapClose(uint64_t conn);

/* Whether the process may hold more chunks mapped (set by Go): while it
** may, a chunk not held is mapped through Go, and read from memory after,
** rather than read from its cache file at each read. */
void boule_snap_set_map_room(int room);

/* How old, in seconds, a cache file's mtime may be before a read from C
** refreshes it (60, as Go's; tests lower it). */
extern int boule_snap_touch_age;

#endif /* BOULE_SNAPSHOT_H */
