// Package cache is the local chunk cache: a store that keeps chunks in
// files, sharded, within a capacity, evicting the least recently used.
// Uploads fill it on the way, a file per chunk; replicas write the chunks
// they fetch from a pack into one file per pack, a slab ([SlabWriter]);
// replicas read from it first and map its files when nobody but their own
// user can change them. It registers itself with store.Open for "local"
// targets.
//
// It owns the cache's layout (raw chunks, unencoded so that they can be
// mapped, under <dir>/<shard>/<fingerprint>, and slabs under
// <dir>/<shard>/<key>.slab: doc/FORMAT.md), its capacity and eviction,
// and the decision whether a file may be mapped ([Store.OpenChunk],
// [Store.OpenPacked]). It is a store.Cache: it holds no packs and no
// manifests, and leaves keys and encodings to the stores that do.
package cache
