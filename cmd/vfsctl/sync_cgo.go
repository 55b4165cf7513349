//go:build cgo

package main

// What needs SQLite and boule's C VFS: sync, and the re-staging a flush
// may need. The pure-Go build has sync_nocgo.go instead.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/mattn/go-sqlite3"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/vfs"
)

// restager returns a Restage hook that registers boule on the spool root
// (without targets: the flush uploads) the first time it is needed.
func restager(cfg config.Config, root string) func(ctx context.Context, dir, source string) error {
	var once sync.Once
	var regErr error
	return func(ctx context.Context, dir, source string) error {
		once.Do(func() {
			c := cfg
			c.ReplicationSpoolingDir = root
			c.ReplicationTargets = nil
			c.MakeDefault = false
			if err := vfs.Register(c); err != nil {
				regErr = fmt.Errorf("register boule on %s to re-stage databases: %w", root, err)
			}
		})
		if regErr != nil {
			return regErr
		}
		return vfs.Restage(ctx, dir, source)
	}
}

// How long sync waits for another process's lock on the database, and
// how long at a time SQLite's busy handler, which no context reaches, may
// wait.
const (
	syncBusyWait = 10 * time.Second
	syncBusyStep = 100 * time.Millisecond
)

// syncDB uploads a fresh snapshot of the database arg, read through boule,
// and prints its manifest name. With full, the spool first forgets what it
// uploaded (spool.Invalidate), so that the snapshot is staged and uploaded
// whole: every chunk again, in new packs.
func syncDB(ctx context.Context, g *globals, arg string, full bool) error {
	cfg, err := loadConfig(g)
	if err != nil {
		return err
	}
	path, err := syncPath(arg)
	if err != nil {
		return err
	}
	if cfg.ReplicationSpoolingDir == "" {
		tmp, err := os.MkdirTemp("", "vfsctl-spool-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		cfg.ReplicationSpoolingDir = tmp
	}
	cfg.MakeDefault = false
	if err := vfs.Register(cfg); err != nil {
		return usageError{err.Error()}
	}
	// The uploader and the spool are this command's: they stop with it,
	// rather than write to the spool after it returns (vfsctl runs in
	// tests' processes too).
	defer func() { _ = vfs.Register(vfs.Config{}) }()
	if full {
		if err := forgetUploads(ctx, path); err != nil {
			return err
		}
	}
	// A read transaction through boule brings the spool up to date with
	// the file: its first transaction checks, and rebuilds if stale. The
	// path is escaped, or a %, ? or # in it would name another file.
	//
	// SQLite's busy handler does not see the context: it waits at most
	// syncBusyStep at a time, and the loop below waits up to syncBusyWait
	// for a writer's lock, so that a signal ends the wait at once.
	db, err := sql.Open("sqlite3", fmt.Sprintf("file:%s?vfs=boule&mode=ro&_busy_timeout=%d", uriPath(path), syncBusyStep.Milliseconds()))
	if err != nil {
		return err
	}
	defer db.Close()
	var n int
	for deadline := time.Now().Add(syncBusyWait); ; {
		err := db.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema").Scan(&n)
		var se sqlite3.Error
		if errors.As(err, &se) && se.Code == sqlite3.ErrBusy && ctx.Err() == nil && time.Now().Before(deadline) {
			continue
		}
		if cerr := ctx.Err(); cerr != nil && err != nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		break
	}
	// In WAL mode a connection keeps its SHARED lock on the file while it
	// is open, and boule checks the file against the spool when it lets go
	// of it: at the close. Without it, a database replaced behind boule's
	// back (restored in place) would be flushed as the spool last saw it.
	if err := db.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	stopProgress := func() {}
	if isTerminal(g.stderr) {
		stopProgress = syncProgress(g, path)
	}
	err = vfs.Flush(ctx, path)
	stopProgress()
	if err != nil {
		if errors.Is(err, vfs.ErrNoTargets) {
			return usagef("%v (set replication_targets with --config or %s)", err, config.EnvVar)
		}
		return err
	}
	key, err := store.ManifestKey(vfs.Spool().Hostname(), path)
	if err != nil {
		return err
	}
	fmt.Fprintln(g.stdout, key)
	return nil
}

// forgetUploads makes the spool of the database path forget what it
// uploaded, and its next transaction stage every chunk again; the
// uploaders of live writers see it at their next upload, and forget too.
// It holds the upload lock, waiting for an upload under way, so that none
// straddles the invalidation. A database this host never spooled has
// nothing to forget.
func forgetUploads(ctx context.Context, path string) error {
	d, err := vfs.Spool().DB(path)
	if err != nil {
		return err
	}
	sp := spool.OpenDir(d.Dir())
	if !sp.Exists() {
		return nil
	}
	unlock, err := sp.LockUpload(ctx, true)
	if err != nil {
		return fmt.Errorf("forget what was uploaded of %s: %w", path, err)
	}
	defer unlock()
	if err := sp.Invalidate(); err != nil {
		return fmt.Errorf("forget what was uploaded of %s: %w", path, err)
	}
	return nil
}

// syncProgress draws a progress bar of the upload of path's spool on
// stderr, from the bytes waiting in it, until stop is called.
func syncProgress(g *globals, path string) (stop func()) {
	db, err := vfs.Spool().DB(path)
	if err != nil {
		return func() {}
	}
	sp := spool.OpenDir(db.Dir())
	update, finish := progressBar(g.stderr, "sync")
	var total int64
	poll := func() {
		_, pending := sp.Lag(sp.UploadedID(), time.Now())
		total = max(total, pending)
		update(total-pending, total)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			poll()
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
		poll()
		finish()
	}
}
