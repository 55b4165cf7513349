package vfs

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/time/rate"

	"github.com/boule-vfs/boule/replicate"
	"github.com/boule-vfs/boule/snapshot"
)

// SnapshotName is the name of the read-replica VFS.
const SnapshotName = "boule_snapshot"

// Read-side defaults. Reads are cheap (GETs cost a tenth of PUTs) and a
// cold scan needs many of them, so replicas get their own limiter, far
// above the uploader's 30/s; the retries are bounded so that a store that
// is down fails an open in seconds, not minutes.
const (
	readRequestsPerSecond = 2000
	readBurst             = 200
	readMaxAttempts       = 4
	// DefaultChunkCacheCapacity is the size, in 64 KiB chunks, of the
	// chunk cache in the temp directory that replicas use when no "local"
	// target is configured: 16384 chunks, 1 GiB.
	DefaultChunkCacheCapacity = 16384
	defaultChunkCacheShards   = 16
)

// readSide splits targets for reading: the remote stores, wrapped in one
// read limiter with bounded retries, and the first local cache.
func readSide(targets []replicate.Target) (remote []replicate.Store, cache *replicate.LocalCache) {
	lim := rate.NewLimiter(readRequestsPerSecond, readBurst)
	for _, t := range targets {
		if lc, ok := t.Store.(*replicate.LocalCache); ok {
			if cache == nil {
				cache = lc
			}
			continue
		}
		remote = append(remote, replicate.NewLimited(t.Store, lim, replicate.RetryOptions{MaxAttempts: readMaxAttempts}))
	}
	return remote, cache
}

// ReadStores builds the stores that replicas and restores read from, in
// the order they are tried: the local cache, if cfg has one, then the
// remote targets, behind the read limiter (2000 GETs/s, bursts of 200, at
// most 4 attempts per request). No network call is made.
func ReadStores(ctx context.Context, cfg Config) ([]replicate.Store, error) {
	targets, err := Targets(ctx, cfg)
	if err != nil {
		return nil, err
	}
	remote, cache := readSide(targets)
	if cache == nil {
		return remote, nil
	}
	return append([]replicate.Store{cache}, remote...), nil
}

// newReader builds the snapshot reader for cfg: the remote stores behind
// the read limiter, the local cache (or a temp-dir cache), and the
// read_only directories.
func newReader(cfg Config, targets []replicate.Target, log *slog.Logger) (*snapshot.Reader, error) {
	remote, cache := readSide(targets)
	var ro []snapshot.ReadOnlyDir
	for _, t := range cfg.ReplicationTargets {
		if t.ReadOnly != nil {
			ro = append(ro, snapshot.ReadOnlyDir{Dir: t.ReadOnly.Directory, Shards: int(t.ReadOnly.NumShards)})
		}
	}
	if cache == nil {
		dir, err := tempChunkCache(cfg.Tempdir)
		if err != nil {
			log.Warn("vfs: replicas will keep chunks in memory only", logKeyErr, err)
		} else if cache, err = replicate.NewLocalCache(dir, defaultChunkCacheShards, DefaultChunkCacheCapacity); err != nil {
			return nil, fmt.Errorf("vfs: chunk cache: %w", err)
		}
	}
	return snapshot.NewReader(snapshot.Options{
		Remote:   remote,
		Cache:    cache,
		ReadOnly: ro,
		Policy:   cfg.SnapshotLoadingPolicy,
		Logger:   log,

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
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Getuid() || fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("chunk cache %s: not a directory private to this user", dir)
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
// out, but not a database in use (see replicate.RestoreFile).
func Restore(ctx context.Context, name, out string) error {
	rt := current.Load()
	if rt == nil || rt.reader == nil {
		return fmt.Errorf("vfs: restore %s: boule is not registered", name)
	}
	return rt.reader.Restore(ctx, name, out, replicate.RestoreOptions{Replace: true})
}
