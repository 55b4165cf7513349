// Package snapshot serves read replicas of databases replicated by Boule:
// it finds their manifests, fetches, verifies, caches and maps their
// chunks, and decides which snapshot each connection sees. One [Reader]
// serves a process; it shares [Replica] values, their [Snapshot] values
// and the chunks' mappings among every [Conn], within the memory bounds
// of [Options].
//
// It is the pure-Go half of the read-only "boule_snapshot" VFS, whose C
// half (vfs/boule_snapshot.c, wired up in package vfs) serves every read
// from the mapped chunks and enters Go only when a chunk is not mapped
// yet, at open and close, for the freshness pragmas, and when a
// connection adopts a newer snapshot. doc/DESIGN.md, "Read replicas: the
// boule_snapshot VFS", describes the protocol.
//
// It owns the names of replicas, "boule://HOST/abs/path" (or Verneuil's
// "verneuil://HOST/abs/path") or the path of a manifest file, with
// [ParseName], [CutScheme], [CheckHostname] and [CheckPath]; and what a
// process keeps of its replicas' chunks: the pool that bounds chunks
// mapped and copied, the slabs chunks are copied into, the pack buffers,
// and manifests in file-backed memory.
//
// Package vfs and cmd/vfsctl import it. It is pure Go, without cgo or
// SQLite, so that it is tested without them. It must not import the
// uploader, the spool or package vfs, and spells no object key, blob
// encoding or manifest format: it reaches stores only through package
// store's API, the chunk cache through package store/cache (whose
// [cache.ChunkPath] also finds chunks in read_only directories), and
// decodes manifests through package manifest.
package snapshot
