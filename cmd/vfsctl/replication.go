package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

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
	opts := upload.Options{Targets: targets, Rate: cfg.Rate(), Logger: g.logger,
		ConditionalGap: cfg.ManifestPace(), ManifestGap: max(upload.DefaultManifestGap, cfg.ManifestPace())}
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
		if err := syscall.Access(dir, 2 /* W_OK */); errors.Is(err, syscall.EROFS) {
			return nil, fmt.Errorf("%s is on a read-only file system: no writer can spool its commits there, and none is replicated", dir)
		}
		fmt.Fprintf(g.stderr, "vfsctl %s: nothing spooled for this boot in %s: normal after a reboot, until a database is written; "+
			"if databases were written since, their writers could not create the spool there (can their user write %s? their logs say)\n", cmd, dir, dir)
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
	dir, err = oneArgCommand(g, name, "[--json]", "SPOOL_DIR", summary, args,
		func(fs *flag.FlagSet) { fs.BoolVar(&asJSON, "json", false, "print JSON instead of a table") })
	return dir, asJSON, err
}

// oneArgCommand is subcommand for a command that takes exactly one
// argument, which its usage calls argName after flagsUsage: it returns
// that argument, and more or fewer is a usage error.
func oneArgCommand(g *globals, name, flagsUsage, argName, summary string, args []string, define func(*flag.FlagSet)) (string, error) {
	fs, err := subcommand(g, name, flagsUsage+" "+argName, summary, args, define)
	if err != nil {
		return "", err
	}
	if fs.NArg() != 1 {
		return "", usagef("want exactly one %s, got %d arguments", argName, fs.NArg())
	}
	return fs.Arg(0), nil
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
