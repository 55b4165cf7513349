package vfs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/upload"
)

// flushTimeout bounds a flush requested through the pragma or on close.
const flushTimeout = 10 * time.Minute

// ErrNoTargets is returned by the flush functions when the configuration
// has no replication target to upload to.
var ErrNoTargets = errors.New("vfs: no replication targets are configured")

// ErrNotReplicated is returned by Flush for a database this process has
// not opened through boule with replication enabled.
var ErrNotReplicated = errors.New("vfs: database is not replicated by this process")

// newUploader builds the targets of cfg and an uploader for them, or
// returns nil when cfg has no target to upload to.
func newUploader(cfg Config, targets []store.Target, log *slog.Logger) (*upload.Uploader, error) {
	stores := 0
	for _, t := range targets {
		if !t.Cache {
			stores++
		}
	}
	if stores == 0 {
		return nil, nil
	}
	return upload.New(upload.Options{
		Targets: targets,
		Rate:    cfg.Rate(),
		// The pace on stores with conditional puts; the others keep
		// the old gap, or the pace when it is longer.
		ConditionalGap: cfg.ManifestPace(),
		ManifestGap:    max(upload.DefaultManifestGap, cfg.ManifestPace()),
		PackChunks:     cfg.PackChunks,
		// pack_chunks 1 is for readers older than packs: older than
		// format v2 manifests too.
		WholeManifests: cfg.PackChunks == 1,
		Logger:         log,
		Restage:        Restage,
		// A replica opened in this process after a flush sees it.
		OnManifest: func(hostname, path string) {
			if rt := current.Load(); rt != nil && rt.reader != nil {
				rt.reader.Stale(hostname, path)
			}
		},
	})
}

// Targets opens the stores of cfg's replication targets (store.Open).
func Targets(ctx context.Context, cfg Config) ([]store.Target, error) {
	return store.Open(ctx, cfg, store.OpenOptions{})
}

func flushDB(ctx context.Context, rt *runtime, db *spool.DB) error {
	if cur := current.Load(); cur != nil && cur.spool == rt.spool {
		rt = cur // flush with the configuration in force
	}
	if rt.up == nil {
		return ErrNoTargets
	}
	return rt.up.FlushSource(ctx, db.Dir(), db.Path())
}

// Flush synchronously uploads everything spooled for the database at path
// (opened through boule by this process) to every replication target.
func Flush(ctx context.Context, path string) error {
	rt := current.Load()
	if rt == nil || rt.spool == nil {
		return ErrNotReplicated
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("vfs: flush %s: %w", path, err)
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	db, err := rt.spool.DB(abs)
	if err != nil {
		return err
	}
	return flushDB(ctx, rt, db)
}

// FlushAll synchronously uploads everything spooled for every database
// this process has opened through boule.
func FlushAll(ctx context.Context) error {
	rt := current.Load()
	if rt == nil || rt.spool == nil {
		return ErrNotReplicated
	}
	if rt.up == nil {
		return ErrNoTargets
	}
	return rt.up.FlushAll(ctx)
}

// ReplicationStatus reports, for each database this process replicates,
// its lag, pending bytes, calls, failures and last error.
func ReplicationStatus() []upload.Status {
	rt := current.Load()
	if rt == nil || rt.up == nil {
		return nil
	}
	return rt.up.Status()
}

// TargetStats reports the store calls made to each replication target
// (attempts, retries, failures, bytes), by target name.
func TargetStats() map[string]store.Stats {
	rt := current.Load()
	if rt == nil || rt.up == nil {
		return nil
	}
	return rt.up.TargetStats()
}
