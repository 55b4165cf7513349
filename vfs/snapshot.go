package vfs

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/boule-vfs/boule/internal/fsutil"
	"github.com/boule-vfs/boule/restore"
	"github.com/boule-vfs/boule/snapshot"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/cache"
)

// SnapshotName is the name of the read-replica VFS.
const SnapshotName = "boule_snapshot"

const (
	// DefaultChunkCacheCapacity is the size, in 64 KiB chunks, of the
	// chunk cache in the temp directory that replicas use when no "local"
	// target is configured: 16384 chunks, 1 GiB.
	DefaultChunkCacheCapacity = 16384
	defaultChunkCacheShards   = 16
)

// ReadStores opens the stores that replicas and restores read from
// (store.OpenForReading).
func ReadStores(ctx context.Context, cfg Config) ([]store.Store, error) {
	return store.OpenForReading(ctx, cfg)
}

// newReader builds the snapshot reader for cfg: the remote stores behind
// the read limiter, the local cache (or a temp-dir cache), and the
// read_only directories.
func newReader(cfg Config, targets []store.Target, log *slog.Logger) (*snapshot.Reader, error) {
	remote, c := store.ForReading(targets)
	lc, _ := c.(*cache.Store)
	var ro []snapshot.ReadOnlyDir
	for _, t := range cfg.ReplicationTargets {
		if t.ReadOnly != nil {
			ro = append(ro, snapshot.ReadOnlyDir{Dir: t.ReadOnly.Directory, Shards: int(t.ReadOnly.NumShards)})
		}
	}
	if lc == nil {
		dir, err := tempChunkCache(cfg.Tempdir)
		if err != nil {
			log.Warn("vfs: replicas will keep chunks in memory only", logKeyErr, err)
		} else if lc, err = cache.New(dir, defaultChunkCacheShards, DefaultChunkCacheCapacity); err != nil {
			return nil, fmt.Errorf("vfs: chunk cache: %w", err)
		}
	}
	stampBudget(cfg.ReplicaMemoryLimit)
	return snapshot.NewReader(snapshot.Options{
		Remote:   remote,
		Cache:    lc,
		ReadOnly: ro,
		Policy:   cfg.SnapshotLoadingPolicy,
		Logger:   log,
		Quiesce:  quiesce,
		OnRoom:   setMapRoom,

		MemoryLimit:     cfg.ReplicaMemoryLimit,
		MaxMappedChunks: cfg.ReplicaMaxMappedChunks,

		OnReplicaGone: replicaGone,
	}), nil
}

// tempChunkCache returns the per-user chunk cache directory under the
// temp directory, creating it private to the user. It refuses a directory
// that someone else owns or that is a symlink.
func tempChunkCache(tempdir string) (string, error) {
	if tempdir == "" {
		tempdir = os.TempDir()
	}
	dir := filepath.Join(tempdir, fmt.Sprintf("boule-chunks-%d", os.Getuid()))
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return "", fmt.Errorf("chunk cache %s: %w", dir, err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return "", fmt.Errorf("chunk cache %s: %w", dir, err)
	}
	uid, ok := fsutil.Owner(fi)
	switch {
	case !fi.IsDir():
		return "", fmt.Errorf("chunk cache %s: not a directory private to this user: it is %s", dir, fsutil.FileKind(fi.Mode()))
	case !ok:
		return "", fmt.Errorf("chunk cache %s: not a directory private to this user: its owner is unknown", dir)
	case uid != os.Getuid():
		// Someone else made it first: a name under the temp directory
		// anyone can take.
		return "", fmt.Errorf("chunk cache %s: not a directory private to this user: it belongs to user %d", dir, uid)
	case fi.Mode().Perm()&0o077 != 0:
		return "", fmt.Errorf("chunk cache %s: not a directory private to this user: its mode is %v", dir, fi.Mode().Perm())
	}
	return dir, nil
}

// Reader returns the snapshot reader in force: the one new
// boule_snapshot connections use.
func Reader() *snapshot.Reader {
	if rt := current.Load(); rt != nil {
		return rt.reader
	}
	return nil
}

// openReplica is the Go side of a boule_snapshot open.
func openReplica(ctx context.Context, name string) (*snapshot.Conn, error) {
	rt := current.Load()
	if rt == nil || rt.reader == nil {
		return nil, fmt.Errorf("vfs: %s is not configured", SnapshotName)
	}
	return rt.reader.Open(ctx, name)
}

// Restore writes the newest snapshot of the replica name ("boule://HOST/
// abs/path", or a manifest file) to the file out, atomically, with every
// chunk verified, using the configuration in force. It replaces a file at
// out, but not a database in use (see restore.File).
func Restore(ctx context.Context, name, out string) error {
	rt := current.Load()
	if rt == nil || rt.reader == nil {
		return fmt.Errorf("vfs: restore %s: boule is not registered", name)
	}
	return rt.reader.Restore(ctx, name, out, restore.Options{Replace: true})
}
