package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// usageError is a command-line or configuration problem: exit code 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

type command struct {
	name, args, summary string
	run                 func(ctx context.Context, g *globals, args []string) error
}

var commands = []command{
	{"flush", "[--json] SPOOL_DIR", "upload everything spooled under SPOOL_DIR; exit 1 if anything fails", cmdFlush},
	{"sync", "DB", "upload a fresh snapshot of DB (written through boule or not) and print its manifest name", cmdSync},
	{"status", "[--json] SPOOL_DIR", "show replication lag, pending bytes, calls and errors per database", cmdStatus},
	{"restore", "[--hostname H] [--at TIME] [--out FILE [--force]] [--concurrency N] (SOURCE | --source-path PATH | --manifest URI|FILE)", "write a replicated database (or an older version) to a file", cmdRestore},
	{"manifest", "[--hostname H] [--at TIME] [--json] [--out FILE] SOURCE", "fetch the manifest of a replicated database", cmdManifest},
	{"manifest-name", "[--hostname H] SOURCE", "print the key of a database's manifest", cmdManifestName},
	{"ls-versions", "[--hostname H] [--json] SOURCE", "list the points in time a database can be restored to", cmdLsVersions},
	{"ls", "[--hostname H | --all] [--json]", "list the databases a store holds", cmdLs},
	{"verify", "[--hostname H] [--at TIME] [--json] (SOURCE | --manifest URI|FILE)", "check every chunk of a manifest is in every target and matches its fingerprint", cmdVerify},
	{"shell", "[--hostname H] [--executable sqlite3] [--vfs LIB] (SOURCE | --manifest URI|FILE) [-- SQLITE3_ARGS...]", "open the sqlite3 shell on a read replica", cmdShell},
}

// globals are the options before the command.
type globals struct {
	config string
	log    string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	logger *slog.Logger
}

// stopGrace is how long a command may take to stop after SIGTERM or
// SIGINT cancelled its context, before vfsctl exits without it: every
// command ends within a second of the signal, even one stuck in a call
// that no context reaches (a busy SQLite lock, a read of a --config
// pipe, a hung network file system).
const stopGrace = 700 * time.Millisecond

func main() {
	os.Exit(runUntilSignal(os.Args[1:], os.Stdout, os.Stderr))
}

// runUntilSignal runs the command until it ends, or until stopGrace after
// the first SIGTERM or SIGINT; a second one kills vfsctl at once.
func runUntilSignal(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, stdout, stderr) }()
	select {
	case code := <-done:
		return code
	case <-ctx.Done():
	}
	stop() // the next signal has its default effect
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	select {
	case code := <-done:
		return code
	case <-t.C:
		fmt.Fprintf(stderr, "vfsctl: interrupted; exiting without waiting for the command to stop\n")
		return exitFail
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g := &globals{stdin: os.Stdin, stdout: stdout, stderr: stderr}
	fs := flag.NewFlagSet("vfsctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&g.config, "config", "", "configuration JSON or @/path/to/file.json (default: $BOULE_CONFIG, else $VERNEUIL_CONFIG)")
	fs.StringVar(&g.log, "log", "warn", "log level on stderr: debug, info, warn or error")
	fs.Usage = func() { usage(fs) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.log)); err != nil {
		fmt.Fprintf(stderr, "vfsctl: --log %q: want debug, info, warn or error\n", g.log)
		return exitUsage
	}
	g.logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if fs.NArg() == 0 {
		usage(fs)
		return exitUsage
	}
	name := fs.Arg(0)
	for _, c := range commands {
		if c.name != name {
			continue
		}
		err := c.run(ctx, g, fs.Args()[1:])
		var ue usageError
		switch {
		case err == nil:
			return exitOK
		case errors.Is(err, flag.ErrHelp):
			return exitOK
		case errors.As(err, &ue):
			fmt.Fprintf(stderr, "vfsctl %s: %v\n", name, err)
			return exitUsage
		default:
			fmt.Fprintf(stderr, "vfsctl %s: %v\n", name, err)
			return exitFail
		}
	}
	fmt.Fprintf(stderr, "vfsctl: unknown command %q\n", name)
	usage(fs)
	return exitUsage
}

func usage(fs *flag.FlagSet) {
	w := fs.Output()
	fmt.Fprintln(w, "usage: vfsctl [--config JSON|@FILE] [--log LEVEL] COMMAND [ARGS]")
	fmt.Fprintln(w, "\nCommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %s %s\n        %s\n", c.name, c.args, c.summary)
	}
	fmt.Fprintln(w, "\nGlobal options:")
	fs.PrintDefaults()
	fmt.Fprintln(w, "\nExit codes: 0 success, 1 the operation failed, 2 bad usage or configuration.")
	fmt.Fprintln(w, "Run 'vfsctl COMMAND --help' for a command's options.")
}

// subcommand parses a command's own flags; it reports flag.ErrHelp after
// printing help for --help.
func subcommand(g *globals, name, argsUsage, summary string, args []string, define func(*flag.FlagSet)) (*flag.FlagSet, error) {
	fs := flag.NewFlagSet("vfsctl "+name, flag.ContinueOnError)
	fs.SetOutput(g.stderr)
	if define != nil {
		define(fs)
	}
	fs.Usage = func() {
		fmt.Fprintf(g.stderr, "usage: vfsctl %s %s\n\n%s\n", name, argsUsage, summary)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usagef("%v", err)
	}
	return fs, nil
}

// uriPath escapes a path for a file: URI (sync's sql.Open, shell's .open):
// the characters SQLite's URI parser gives a meaning to, controls, and the
// space and quote the sqlite3 shell's argument parser would split on.
func uriPath(p string) string {
	var b strings.Builder
	for i := range len(p) {
		c := p[i]
		if c < 0x20 || c == 0x7f || strings.IndexByte("%?#&=' \"", c) >= 0 {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
