package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/mattn/go-sqlite3"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/replicate"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/vfs"
)

// loadConfig reads --config, else BOULE_CONFIG.
func loadConfig(g *globals) (config.Config, error) {
	src := g.config
	if src == "" {
		src = os.Getenv(config.EnvVar)
	}
	cfg, err := config.Load(src)
	if err != nil {
		return cfg, usageError{err.Error()}
	}
	cfg.Logger = g.logger
	return cfg, nil
}

// uploader builds an uploader for the configuration's targets.
func uploader(ctx context.Context, cfg config.Config, g *globals) (*replicate.Uploader, error) {
	targets, err := vfs.Targets(ctx, cfg)
	if err != nil {
		return nil, usageError{err.Error()}
	}
	up, err := replicate.NewUploader(replicate.UploaderOptions{Targets: targets, Rate: cfg.Rate(), Logger: g.logger})
	if err != nil {
		return nil, usagef("%v (set replication_targets with --config or %s)", err, config.EnvVar)
	}
	return up, nil
}

// listSpool lists the databases spooled in this boot under dir. A
// directory that is not a spool fails, as a missing one does (exit 1:
// found by looking); a spool with nothing for this boot is not an error,
// but is said on stderr, so that an empty result is not mistaken for a
// check that found nothing wrong.
func listSpool(g *globals, cmd, dir string) ([]spool.DBDir, error) {
	dbs, err := spool.List(dir)
	if errors.Is(err, spool.ErrNotSpool) {
		return nil, fmt.Errorf("%w; want a replication_spooling_dir", err)
	}
	if err != nil {
		return nil, err
	}
	if len(dbs) == 0 {
		fmt.Fprintf(g.stderr, "vfsctl %s: nothing spooled for this boot in %s (normal after a reboot, until a database is written)\n", cmd, dir)
	}
	return dbs, nil
}

// flushJSON is one line of vfsctl flush --json.
type flushJSON struct {
	Source string `json:"source"`
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`
}

func cmdFlush(ctx context.Context, g *globals, args []string) error {
	var asJSON bool
	fs, err := subcommand(g, "flush", "[--json] SPOOL_DIR",
		"Uploads everything spooled under SPOOL_DIR (a replication_spooling_dir) in this\nboot to the configured targets, and exits 1 with a message if anything fails,\nor if SPOOL_DIR does not look like a spool.", args,
		func(fs *flag.FlagSet) { fs.BoolVar(&asJSON, "json", false, "print JSON instead of a table") })
	if err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("want exactly one SPOOL_DIR, got %d arguments", fs.NArg())
	}
	cfg, err := loadConfig(g)
	if err != nil {
		return err
	}
	// The configuration first: its errors stand whatever the directory.
	up, err := uploader(ctx, cfg, g)
	if err != nil {
		return err
	}
	defer up.Close()
	dbs, err := listSpool(g, "flush", fs.Arg(0))
	if err != nil {
		return err
	}
	var failed []error
	results := make([]flushJSON, 0, len(dbs))
	for _, d := range dbs {
		if err := up.Flush(ctx, d.Dir); err != nil {
			failed = append(failed, fmt.Errorf("%s: %w", d.Source, err))
			results = append(results, flushJSON{Source: d.Source, Error: err.Error()})
			if !asJSON {
				fmt.Fprintf(g.stdout, "FAILED  %s\n", d.Source)
			}
			continue
		}
		results = append(results, flushJSON{Source: d.Source, OK: true})
		if !asJSON {
			fmt.Fprintf(g.stdout, "ok      %s\n", d.Source)
		}
	}
	if asJSON {
		if err := writeJSON(g.stdout, results); err != nil {
			return err
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d databases not flushed:\n%w", len(failed), len(dbs), errors.Join(failed...))
	}
	return nil
}

// How long sync waits for another process's lock on the database, and
// how long at a time SQLite's busy handler, which no context reaches, may
// wait.
const (
	syncBusyWait = 10 * time.Second
	syncBusyStep = 100 * time.Millisecond
)

func cmdSync(ctx context.Context, g *globals, args []string) error {
	fs, err := subcommand(g, "sync", "DB",
		"Uploads a fresh snapshot of the database file DB, whether or not it was written\nthrough boule, and prints its manifest name. Opens DB read-only.", args, nil)
	if err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("want exactly one DB, got %d arguments", fs.NArg())
	}
	cfg, err := loadConfig(g)
	if err != nil {
		return err
	}
	path, err := filepath.Abs(fs.Arg(0))
	if err != nil {
		return err
	}
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	if st, err := os.Stat(path); err != nil {
		return fmt.Errorf("database %s: %w", path, err)
	} else if !st.Mode().IsRegular() {
		return fmt.Errorf("database %s: not a regular file", path)
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
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err == nil && mode == "wal" {
		return fmt.Errorf("%s is in WAL mode, which this version does not replicate", path)
	}
	if err := vfs.Flush(ctx, path); err != nil {
		if errors.Is(err, vfs.ErrNoTargets) {
			return usagef("%v (set replication_targets with --config or %s)", err, config.EnvVar)
		}
		return err
	}
	key, err := replicate.ManifestKey(vfs.Spool().Hostname(), path)
	if err != nil {
		return err
	}
	fmt.Fprintln(g.stdout, key)
	return nil
}

// statusJSON is one line of vfsctl status --json.
type statusJSON struct {
	Source       string  `json:"source"`
	SpoolDir     string  `json:"spool_dir"`
	LagSeconds   float64 `json:"lag_seconds"`
	PendingBytes int64   `json:"pending_bytes"`
	Uploads      int64   `json:"uploads"`
	Chunks       int64   `json:"chunks"`
	Calls        int64   `json:"calls"`
	Failures     int64   `json:"failures"`
	LastUpload   string  `json:"last_upload,omitempty"`
	LastError    string  `json:"last_error,omitempty"`
	Blocked      bool    `json:"blocked"`
}

func cmdStatus(ctx context.Context, g *globals, args []string) error {
	var asJSON bool
	fs, err := subcommand(g, "status", "[--json] SPOOL_DIR",
		"Shows, for each database spooled under SPOOL_DIR in this boot, its replication lag\n(the age of the oldest commit not yet in the store), the bytes waiting, and the\nuploader's calls, failures and last error. Exits 1 if SPOOL_DIR does not look\nlike a spool.", args,
		func(fs *flag.FlagSet) { fs.BoolVar(&asJSON, "json", false, "print JSON instead of a table") })
	if err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("want exactly one SPOOL_DIR, got %d arguments", fs.NArg())
	}
	dbs, err := listSpool(g, "status", fs.Arg(0))
	if err != nil {
		return err
	}
	now := time.Now()
	out := make([]statusJSON, 0, len(dbs))
	for _, d := range dbs {
		s, err := replicate.ReadStatus(d.Dir, now)
		if err != nil {
			return err
		}
		j := statusJSON{
			Source: s.Source, SpoolDir: d.Dir, LagSeconds: s.Lag.Seconds(), PendingBytes: s.PendingBytes,
			Uploads: s.Uploads, Chunks: s.Chunks, Calls: s.Calls, Failures: s.Failures,
			LastError: s.LastError, Blocked: s.Blocked,
		}
		if !s.LastUpload.IsZero() {
			j.LastUpload = s.LastUpload.UTC().Format(time.RFC3339)
		}
		if j.Source == "" {
			j.Source = d.Source
		}
		out = append(out, j)
	}
	if asJSON {
		return writeJSON(g.stdout, out)
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tLAG\tPENDING\tUPLOADS\tCALLS\tFAILURES\tLAST UPLOAD\tLAST ERROR")
	for _, s := range out {
		last := s.LastUpload
		if last == "" {
			last = "never"
		}
		lag := "-"
		if s.LagSeconds > 0 {
			lag = (time.Duration(s.LagSeconds * float64(time.Second))).Round(time.Millisecond).String()
		}
		errText := s.LastError
		if s.Blocked {
			errText = "BLOCKED: " + errText
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", s.Source, lag, s.PendingBytes, s.Uploads, s.Calls, s.Failures, last, errText)
	}
	return tw.Flush()
}
