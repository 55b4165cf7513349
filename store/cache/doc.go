// Package cache is the local chunk cache: a store that keeps chunks one
// file each, sharded, within a capacity, evicting the least recently used.
// Uploads fill it on the way; replicas read from it first and map its
// files when nobody but their own user can change them. It registers
// itself with store.Open for "local" targets.
package cache
