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
	"runtime/debug"
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

// flagError is a bad value of a command's flag: exit code 2, and the
// command's usage line after the error, as for the values the flag
// parser refuses.
type flagError struct{ msg string }

func (e flagError) Error() string { return e.msg }

// flagErrorf formats a flagError: "--NAME VALUE: want WHAT", as every
// bad flag value is reported.
func flagErrorf(format string, args ...any) error { return flagError{fmt.Sprintf(format, args...)} }

// shortUsage prints the usage line of command name, and where its
// options are described, after an error in its flags.
func shortUsage(w io.Writer, name, argsUsage string) {
	fmt.Fprintf(w, "usage: vfsctl %s %s\nRun 'vfsctl help %s' for its options.\n", name, argsUsage, name)
}

type command struct {
	name, args, summary string
	run                 func(ctx context.Context, g *globals, args []string) error
}

var commands = []command{
	{"flush", "[--json] SPOOL_DIR", "upload everything spooled under SPOOL_DIR; exit 1 if anything fails", cmdFlush},
	{"sync", "[--full] [--optimize] DB", "upload a fresh snapshot of DB (written through boule or not) and print its manifest name; --full repairs a damaged store", cmdSync},
	{"status", "[--json] [--max-lag DURATION] [--watch] SPOOL_DIR", "show replication lag, pending bytes, uploader, calls and errors per database; exit 1 if any is blocked, not replicated or lags more than --max-lag", cmdStatus},
	{"metrics", "[--listen ADDR] SPOOL_DIR", "print the replication metrics of SPOOL_DIR in Prometheus' text format, or serve them on ADDR/metrics", cmdMetrics},
	{"restore", "[--hostname H] [--at TIME] [--out FILE [--force]] [--concurrency N] (SOURCE | --source-path PATH | --manifest URI|FILE)", "write a replicated database (or an older version) to a file", cmdRestore},
	{"manifest", "[--hostname H] [--at TIME] [--json] [--out FILE [--force]] SOURCE", "fetch the manifest of a replicated database", cmdManifest},
	{"manifest-name", "[--hostname H] SOURCE", "print the key of a database's manifest", cmdManifestName},
	{"ls-versions", "[--hostname H] [--json] SOURCE", "list the points in time a database can be restored to", cmdLsVersions},
	{"ls", "[--hostname H | --all] [--json]", "list the databases a store holds", cmdLs},
	{"verify", "[--hostname H] [--at TIME] [--json] (SOURCE | --manifest URI|FILE)", "check every chunk of a manifest is in every target and matches its fingerprint", cmdVerify},
	{"shell", "[--hostname H] [--executable sqlite3] [--vfs LIB] (SOURCE | --manifest URI|FILE) [-- SQLITE3_ARGS...]", "open the sqlite3 shell on a read replica", cmdShell},
	{"help", "[COMMAND]", "show the usage of vfsctl, or of COMMAND", nil}, // run by run
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

// logLevels are the values of --log; "off" logs nothing.
var logLevels = map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}

// newLogger returns the logger of --log level on w.
func newLogger(level string, w io.Writer) (*slog.Logger, error) {
	if level == "off" {
		return slog.New(slog.DiscardHandler), nil
	}
	l, ok := logLevels[level]
	if !ok {
		return nil, usagef("--log %q: want off, error, warn, info or debug", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// errUsageShown is returned when a command's flags were wrong, and the
// error and the command's usage already printed.
var errUsageShown = errors.New("usage shown")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g := &globals{stdin: os.Stdin, stdout: stdout, stderr: stderr}
	fs := flag.NewFlagSet("vfsctl", flag.ContinueOnError)
	const configHelp = "configuration JSON or @/path/to/file.json (default: $BOULE_CONFIG, else $VERNEUIL_CONFIG)"
	const logHelp = "log level on stderr: off, error, warn, info or debug"
	fs.StringVar(&g.config, "config", "", configHelp)
	fs.StringVar(&g.config, "c", "", shortFor+"config")
	fs.StringVar(&g.log, "log", "warn", logHelp)
	fs.StringVar(&g.log, "l", "warn", shortFor+"log")
	version := fs.Bool("version", false, "print vfsctl's version and commit, and exit")
	fs.SetOutput(io.Discard) // errors are printed once, below
	fs.Usage = func() {}
	err := fs.Parse(args)
	fs.SetOutput(stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		usage(fs, stdout)
		return exitOK
	case err != nil:
		fmt.Fprintf(stderr, "vfsctl: %v\n", err)
		fmt.Fprintf(stderr, "%sRun 'vfsctl --help' for the commands and options.\n", usageLines)
		return exitUsage
	case *version:
		fmt.Fprintln(stdout, versionLine(debug.ReadBuildInfo()))
		return exitOK
	}
	logger, err := newLogger(g.log, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "vfsctl: %v\n", err)
		return exitUsage
	}
	g.logger = logger
	if fs.NArg() == 0 {
		usage(fs, stderr)
		return exitUsage
	}
	name, rest := fs.Arg(0), fs.Args()[1:]
	if name == "help" {
		return help(ctx, g, fs, rest)
	}
	c, ok := findCommand(name)
	if !ok {
		fmt.Fprintf(stderr, "vfsctl: unknown command %q\n", name)
		usage(fs, stderr)
		return exitUsage
	}
	err = c.run(ctx, g, rest)
	var ue usageError
	var fe flagError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.Is(err, errUsageShown):
		return exitUsage
	case errors.As(err, &fe):
		fmt.Fprintf(stderr, "vfsctl %s: %v\n", name, err)
		shortUsage(stderr, c.name, c.args)
		return exitUsage
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "vfsctl %s: %v\n", name, err)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "vfsctl %s: %v\n", name, err)
		return exitFail
	}
}

func findCommand(name string) (command, bool) {
	for _, c := range commands {
		if c.name == name && c.run != nil {
			return c, true
		}
	}
	return command{}, false
}

// help prints, on standard output, the usage of vfsctl, or of the command
// args names (the command's own --help).
func help(ctx context.Context, g *globals, fs *flag.FlagSet, args []string) int {
	switch len(args) {
	case 0:
		usage(fs, g.stdout)
		return exitOK
	case 1:
		if a := args[0]; a == "-h" || a == "-help" || a == "--help" {
			fmt.Fprintln(g.stdout, "usage: vfsctl help [COMMAND]\n\nShows the usage of vfsctl, or that of COMMAND (as COMMAND --help does).")
			return exitOK
		}
	default:
		fmt.Fprintf(g.stderr, "vfsctl help: want at most one COMMAND, got %d arguments\n", len(args))
		return exitUsage
	}
	c, ok := findCommand(args[0])
	if !ok {
		fmt.Fprintf(g.stderr, "vfsctl help: unknown command %q\n", args[0])
		usage(fs, g.stderr)
		return exitUsage
	}
	h := *g
	h.stderr = g.stdout // a command prints its usage on stderr
	if err := c.run(ctx, &h, []string{"--help"}); !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(g.stderr, "vfsctl help %s: %v\n", c.name, err)
		return exitFail
	}
	return exitOK
}

// versionLine describes the build: the module's version ("(devel)" when
// built from a checkout), the commit and whether the tree was modified,
// and the Go version.
func versionLine(bi *debug.BuildInfo, ok bool) string {
	if !ok {
		return "vfsctl: no build information (not built with module support)"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, when, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			when = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = ", modified"
			}
		}
	}
	commit := "commit unknown"
	if rev != "" {
		commit = "commit " + rev
		if when != "" {
			commit += " of " + when
		}
		commit += modified
	}
	path := bi.Main.Path
	if path == "" {
		path = bi.Path
	}
	return fmt.Sprintf("vfsctl %s %s (%s, %s)", path, v, commit, bi.GoVersion)
}

// usageLines are the usage lines of vfsctl.
const usageLines = "usage: vfsctl [-c|--config JSON|@FILE] [-l|--log LEVEL] COMMAND [ARGS]\n" +
	"       vfsctl --version\n"

func usage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprint(w, usageLines)
	fmt.Fprintln(w, "\nCommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %s %s\n        %s\n", c.name, c.args, c.summary)
	}
	fmt.Fprintln(w, "\nGlobal options, before COMMAND:")
	printFlags(w, fs)
	fmt.Fprintln(w, "\nExit codes: 0 success, 1 the operation failed, 2 bad usage or configuration.")
	fmt.Fprintln(w, "Run 'vfsctl help COMMAND' or 'vfsctl COMMAND --help' for a command's options.")
	fmt.Fprintln(w, "A command's options may come before or after its arguments; after \"--\", all are arguments.")
}

// shortFor is how the usage of a short flag starts, followed by the
// long flag it stands for: printFlags shows them together.
const shortFor = "short for --"

// printFlags prints the flags of fs as flag.PrintDefaults does, but with
// two dashes, as the usage lines spell them ("--config"; Go's flag
// package takes one or two), and a short flag beside its long one
// ("-c, --config").
func printFlags(w io.Writer, fs *flag.FlagSet) {
	short := map[string]string{} // long name: short name
	fs.VisitAll(func(f *flag.Flag) {
		if long, ok := strings.CutPrefix(f.Usage, shortFor); ok {
			short[long] = f.Name
		}
	})
	fs.VisitAll(func(f *flag.Flag) {
		if strings.HasPrefix(f.Usage, shortFor) {
			return
		}
		name := "--" + f.Name
		if s, ok := short[f.Name]; ok {
			name = "-" + s + ", " + name
		}
		kind, usage := flag.UnquoteUsage(f)
		if kind != "" {
			name += " " + kind
		}
		switch f.DefValue {
		case "", "0", "0s", "false":
		default:
			if kind == "string" {
				usage += fmt.Sprintf(" (default %q)", f.DefValue)
			} else {
				usage += fmt.Sprintf(" (default %v)", f.DefValue)
			}
		}
		fmt.Fprintf(w, "  %s\n    \t%s\n", name, strings.ReplaceAll(usage, "\n", "\n    \t"))
	})
}

// subcommand parses a command's own flags; it reports flag.ErrHelp after
// printing help for --help.
func subcommand(g *globals, name, argsUsage, summary string, args []string, define func(*flag.FlagSet)) (*flag.FlagSet, error) {
	return parseCommand(g, name, argsUsage, summary, args, false, define)
}

// parseCommand parses a command's arguments: its flags, wherever they
// are, and the arguments that are not flags, which it leaves as the flag
// set's Args. After "--", everything is an argument. With trailing, so
// is everything after the first argument (shell's sqlite3 arguments).
//
// A wrong flag prints its error, then the command's usage line, and
// returns errUsageShown; --help prints the usage and returns
// flag.ErrHelp.
func parseCommand(g *globals, name, argsUsage, summary string, args []string, trailing bool, define func(*flag.FlagSet)) (*flag.FlagSet, error) {
	fs := flag.NewFlagSet("vfsctl "+name, flag.ContinueOnError)
	if define != nil {
		define(fs)
	}
	printUsage := func() {
		fs.SetOutput(g.stderr)
		fmt.Fprintf(g.stderr, "usage: vfsctl %s %s\n\n%s\n", name, argsUsage, summary)
		printFlags(g.stderr, fs)
	}
	flags, positional := splitArgs(fs, args, trailing)
	fs.SetOutput(io.Discard) // the error is printed once, below
	fs.Usage = func() {}
	var err error
	var bad []string
	for _, f := range flags {
		// One at a time, to know which was wrong.
		if err = fs.Parse(f); err != nil {
			bad = f
			break
		}
	}
	fs.Usage = printUsage
	switch {
	case errors.Is(err, flag.ErrHelp):
		printUsage()
		return nil, err
	case err != nil:
		fmt.Fprintf(g.stderr, "vfsctl %s: %v\n", name, explainFlag(fs, bad, err))
		shortUsage(g.stderr, name, argsUsage)
		return nil, errUsageShown
	}
	// The arguments: after "--", Parse takes them all as they are.
	if err := fs.Parse(append([]string{"--"}, positional...)); err != nil {
		return nil, usagef("%v", err)
	}
	fs.SetOutput(g.stderr)
	return fs, nil
}

// explainFlag returns, for the error the flag parser returned for the
// flag f (its argument, and its value if separate), the error in the
// words of usagef's: "--NAME "VALUE": want WHAT". It returns err itself
// for an undefined flag or a missing value, which the parser's words
// say well enough.
func explainFlag(fs *flag.FlagSet, f []string, err error) error {
	name := strings.TrimPrefix(strings.TrimPrefix(f[0], "-"), "-")
	name, value, hasValue := strings.Cut(name, "=")
	if !hasValue && len(f) == 2 {
		value, hasValue = f[1], true
	}
	fl := fs.Lookup(name)
	if fl == nil || !hasValue {
		return err
	}
	getter, ok := fl.Value.(flag.Getter)
	if !ok {
		return err
	}
	var want string
	switch getter.Get().(type) {
	case time.Duration:
		want = "a duration, such as 90s, 5m or 1h30m"
	case int, int64, uint, uint64:
		want = "a whole number"
	case float64:
		want = "a number"
	case bool:
		want = "true or false"
	default:
		return err
	}
	return fmt.Errorf("--%s %q: want %s", name, value, want)
}

// splitArgs sorts args into flags, each with its value if it takes one
// as the next argument, and the other arguments, in order, so that flags
// may follow the arguments ("verify SOURCE --json"). After "--", or with
// trailing after the first argument, the rest are arguments (with
// trailing, "--" stays, for the command to see).
func splitArgs(fs *flag.FlagSet, args []string, trailing bool) (flags [][]string, positional []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			if trailing {
				return flags, append(positional, args[i:]...)
			}
			return flags, append(positional, args[i+1:]...)
		}
		if len(a) < 2 || a[0] != '-' {
			if trailing {
				return flags, append(positional, args[i:]...)
			}
			positional = append(positional, a)
			continue
		}
		flags = append(flags, []string{a})
		name := strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
		if strings.Contains(name, "=") {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			continue // Parse says so
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			continue
		}
		if i+1 < len(args) {
			i++
			flags[len(flags)-1] = append(flags[len(flags)-1], args[i])
		}
	}
	return flags, positional
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
