package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/upload"
)

// loadConfig reads --config, else BOULE_CONFIG, else VERNEUIL_CONFIG.
func loadConfig(g *globals) (config.Config, error) {
	src := g.config
	if src == "" {
		src = config.FromEnv(os.LookupEnv, g.logger)
	}
	cfg, err := config.Load(src)
	if err != nil {
		return cfg, usageError{err.Error()}
	}
	cfg.Logger = g.logger
	for _, w := range cfg.Warnings() {
		g.logger.Warn(w)
	}
	return cfg, nil
}

// uploader builds an uploader for the configuration's targets. Given a
// spool root, its flushes re-stage databases whose staged snapshot lacks
// committed transactions, through boule registered on that spool.
func uploader(ctx context.Context, cfg config.Config, g *globals, root string) (*upload.Uploader, error) {
	targets, err := store.Open(ctx, cfg, store.OpenOptions{})
	if err != nil {
		return nil, usageError{err.Error()}
	}
	opts := upload.Options{Targets: targets, Rate: cfg.Rate(), Logger: g.logger}
	if root != "" {
		opts.Restage = restager(cfg, root)
	}
	up, err := upload.New(opts)
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

// absReal makes a path absolute, symlinks resolved when it exists, as
// the spool names databases and itself.
func absReal(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	return abs, nil
}

// spoolCommand parses the arguments of a command on a spool: [--json]
// SPOOL_DIR.
func spoolCommand(g *globals, name, summary string, args []string) (dir string, asJSON bool, err error) {
	fs, err := subcommand(g, name, "[--json] SPOOL_DIR", summary, args,
		func(fs *flag.FlagSet) { fs.BoolVar(&asJSON, "json", false, "print JSON instead of a table") })
	if err != nil {
		return "", false, err
	}
	if fs.NArg() != 1 {
		return "", false, usagef("want exactly one SPOOL_DIR, got %d arguments", fs.NArg())
	}
	return fs.Arg(0), asJSON, nil
}

// flushJSON is one line of vfsctl flush --json.
type flushJSON struct {
	Source string `json:"source"`
	OK     bool   `json:"ok"`
	Gone   bool   `json:"gone,omitempty"` // the database no longer exists
	Error  string `json:"error,omitempty"`
}

func cmdFlush(ctx context.Context, g *globals, args []string) error {
	dir, asJSON, err := spoolCommand(g, "flush",
		"Uploads everything spooled under SPOOL_DIR (a replication_spooling_dir) in this\nboot to the configured targets. A database whose last snapshot failed or never\nfinished is snapshotted again first (read through boule, which needs a vfsctl\nbuilt with cgo). Exits 1 with a message if the store does not then hold every\ndatabase's committed state (a failed snapshot, a WAL database, a store error),\nor if SPOOL_DIR does not look like a spool.", args)
	if err != nil {
		return err
	}
	cfg, err := loadConfig(g)
	if err != nil {
		return err
	}
	root, err := absReal(dir)
	if err != nil {
		return err
	}
	// The configuration first: its errors stand whatever the directory.
	up, err := uploader(ctx, cfg, g, root)
	if err != nil {
		return err
	}
	defer up.Close()
	dbs, err := listSpool(g, "flush", root)
	if err != nil {
		return err
	}
	var failed []error
	results := make([]flushJSON, 0, len(dbs))
	for _, d := range dbs {
		err := up.Flush(ctx, d.Dir)
		if errors.Is(err, upload.ErrSourceGone) {
			// Deleted since it was spooled: nothing to flush, and no
			// state of it to vouch for.
			results = append(results, flushJSON{Source: d.Source, Gone: true, Error: err.Error()})
			if !asJSON {
				fmt.Fprintf(g.stdout, "gone    %s\n", d.Source)
			}
			continue
		}
		if err != nil {
			failed = append(failed, err) // it names the database
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
	// NotReplicated: the database's commits cannot reach the store (its
	// snapshots fail, or it is in WAL mode); Problem says why.
	NotReplicated bool   `json:"not_replicated"`
	Problem       string `json:"problem,omitempty"`
}

// state is the STATE column of vfsctl status.
func (s statusJSON) state() string {
	switch {
	case s.NotReplicated:
		return "NOT REPLICATED"
	case s.Blocked:
		return "BLOCKED"
	case s.LastError != "":
		return "failing"
	case s.LagSeconds > 0:
		return "pending"
	}
	return "ok"
}

func cmdStatus(ctx context.Context, g *globals, args []string) error {
	dir, asJSON, err := spoolCommand(g, "status",
		"Shows, for each database spooled under SPOOL_DIR in this boot, its state, its\nreplication lag (the age of the oldest commit not yet in the store, counting\ncommits whose snapshots failed), the bytes waiting, and the uploader's calls,\nfailures and last error. Exits 1 if any database is not replicated (its\nsnapshots fail, or it is in WAL mode) or blocked (a permanent store error), or\nif SPOOL_DIR does not look like a spool.", args)
	if err != nil {
		return err
	}
	dbs, err := listSpool(g, "status", dir)
	if err != nil {
		return err
	}
	now := time.Now()
	out := make([]statusJSON, 0, len(dbs))
	for _, d := range dbs {
		s, err := upload.ReadStatus(d.Dir, now)
		if err != nil {
			return err
		}
		j := statusJSON{
			Source: s.Source, SpoolDir: d.Dir, LagSeconds: s.Lag.Seconds(), PendingBytes: s.PendingBytes,
			Uploads: s.Uploads, Chunks: s.Chunks, Calls: s.Calls, Failures: s.Failures,
			LastError: s.LastError, Blocked: s.Blocked,
			NotReplicated: s.NotReplicated, Problem: s.Problem,
		}
		if !s.LastUpload.IsZero() {
			j.LastUpload = s.LastUpload.UTC().Format(time.RFC3339)
		}
		if j.Source == "" {
			j.Source = d.Source
		}
		out = append(out, j)
	}
	var bad []string
	for _, s := range out {
		if s.NotReplicated || s.Blocked {
			bad = append(bad, s.Source)
		}
	}
	if asJSON {
		if err := writeJSON(g.stdout, out); err != nil {
			return err
		}
	} else if err := statusTable(g, out); err != nil {
		return err
	}
	if len(bad) > 0 {
		return fmt.Errorf("%d of %d databases are not replicated or blocked: %s", len(bad), len(out), strings.Join(bad, ", "))
	}
	return nil
}

func statusTable(g *globals, out []statusJSON) error {
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tSTATE\tLAG\tPENDING\tUPLOADS\tCALLS\tFAILURES\tLAST UPLOAD\tLAST ERROR")
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
		if s.NotReplicated {
			errText = s.Problem
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", s.Source, s.state(), lag, s.PendingBytes, s.Uploads, s.Calls, s.Failures, last, errText)
	}
	return tw.Flush()
}
