// Package cache is the local chunk cache: a store that keeps chunks one
// file each, sharded, within a capacity, evicting the least recently used.
// Uploads fill it on the way; replicas read from it first and map its
// files when nobody but their own user can change them. It registers
// itself with store.Open for "local" targets.
//
// It owns the cache's layout (raw chunks, unencoded so that they can be
// mapped, under <dir>/<shard>/<fingerprint>), its capacity and eviction,
// and the decision whether a file may be mapped ([Store.OpenChunk]). It is
// a store.Cache: it holds no packs and no manifests, and leaves keys and
// encodings to the stores that do.
package cache
