package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/restore"
	"github.com/boule-vfs/boule/snapshot"
	"github.com/boule-vfs/boule/store"
)

// sourceArgs is the one parser of the database a command reads: SOURCE,
// the first argument after the flags (a database path on its host, or a
// boule:// name), with --hostname; or, for the commands that set
// withManifest, --manifest (a boule:// name or a manifest file); or, for
// restore, --source-path, another spelling of SOURCE that older scripts
// use.
type sourceArgs struct {
	// What the command takes besides SOURCE and --hostname.
	withManifest   bool // --manifest
	withSourcePath bool // --source-path
	// trailing: the arguments after SOURCE (all of them, with --manifest)
	// are the command's own (shell's sqlite3 arguments); otherwise there
	// must be none.
	trailing bool

	host, manifest, sourcePath string // the flags' values
}

// sourceCommand parses the arguments of a command that reads the source
// a names: its own flags (those define adds, if not nil) and the source
// flags, then the source. It returns the source, and the arguments after
// it for a trailing command.
func sourceCommand(g *globals, name, argsUsage, summary string, args []string, a sourceArgs, define func(*flag.FlagSet)) (source, []string, error) {
	fs, err := parseCommand(g, name, argsUsage, summary, args, a.trailing, func(fs *flag.FlagSet) {
		a.define(fs)
		if define != nil {
			define(fs)
		}
	})
	if err != nil {
		return source{}, nil, err
	}
	return a.source(fs.Args())
}

// define adds the source flags to a command's flag set.
func (a *sourceArgs) define(fs *flag.FlagSet) {
	fs.StringVar(&a.host, "hostname", "", "the source's host (default: this one)")
	if a.withManifest {
		fs.StringVar(&a.manifest, "manifest", "", "boule://HOST/abs/path, or a manifest file")
	}
	if a.withSourcePath {
		fs.StringVar(&a.sourcePath, "source-path", "", "the source database's absolute path on its host: the same as SOURCE")
	}
}

// source returns the source that the flags and args (what is left after
// the flags) name, and, for a trailing command, the arguments after it.
func (a *sourceArgs) source(args []string) (source, []string, error) {
	var named []string // what names the source, of SOURCE, --source-path and --manifest
	positional, rest := args, []string(nil)
	if a.trailing {
		positional, rest = nil, args
		if a.manifest == "" && a.sourcePath == "" && len(args) > 0 {
			positional, rest = args[:1], args[1:]
		}
		if len(rest) > 0 && rest[0] == "--" {
			rest = rest[1:]
		}
	}
	if len(positional) > 1 {
		return source{}, nil, usagef("want exactly one SOURCE, got %d arguments", len(positional))
	}
	if len(positional) == 1 {
		named = append(named, "SOURCE")
	}
	if a.sourcePath != "" {
		named = append(named, "--source-path")
	}
	if a.manifest != "" {
		named = append(named, "--manifest")
	}
	switch {
	case len(named) == 0 && a.withManifest:
		return source{}, nil, usagef("want one SOURCE or --manifest")
	case len(named) == 0:
		return source{}, nil, usagef("want exactly one SOURCE, got 0 arguments")
	case len(named) == 2:
		return source{}, nil, usagef("give %s or %s, not both", named[0], named[1])
	case len(named) > 2:
		return source{}, nil, usagef("give one of %s", strings.Join(named, ", "))
	case a.manifest != "" && a.host != "":
		return source{}, nil, usagef("give SOURCE with --hostname, or --manifest, not both")
	case a.manifest != "":
		src, err := manifestSource(a.manifest)
		return src, rest, err
	case a.sourcePath != "":
		src, err := parseSource(a.sourcePath, a.host)
		return src, rest, err
	}
	src, err := parseSource(positional[0], a.host)
	return src, rest, err
}

func defaultHostname() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "localhost"
}

// source is a database to read from the stores: a manifest key, or a
// manifest file.
type source struct {
	host, path string // when key is set
	key        string
	file       string // a manifest file
}

func (s source) String() string {
	if s.file != "" {
		return s.file
	}
	return snapshot.Scheme + s.host + s.path
}

// parseSource turns SOURCE (a database path or a boule:// name) and
// --hostname into a source. Relative paths are made absolute, and symlinks
// resolved when the file exists here, as the writer does.
func parseSource(arg, host string) (source, error) {
	if _, ok := snapshot.CutScheme(arg); ok {
		src, err := snapshot.ParseName(arg)
		if err != nil {
			return source{}, usageError{err.Error()}
		}
		if host != "" && src.Hostname != "" && host != src.Hostname {
			return source{}, usagef("--hostname %q contradicts the host in %s", host, arg)
		}
		if src.Hostname == "" {
			src.Hostname = host
		}
		arg, host = src.Path, src.Hostname
	} else if !filepath.IsAbs(arg) {
		abs, err := absReal(arg)
		if err != nil {
			return source{}, err
		}
		arg = abs
	}
	if host == "" {
		host = defaultHostname()
	}
	if err := snapshot.CheckHostname(host); err != nil {
		return source{}, usageError{err.Error()}
	}
	if err := snapshot.CheckPath(arg); err != nil {
		return source{}, usageError{err.Error()}
	}
	key, err := store.ManifestKey(host, arg)
	if err != nil {
		return source{}, usageError{err.Error()}
	}
	return source{host: host, path: arg, key: key}, nil
}

// manifestSource parses --manifest: a boule:// name or a manifest file,
// which must be a regular file (opening a named pipe would block, and a
// device such as /dev/zero never ends).
func manifestSource(arg string) (source, error) {
	if _, ok := snapshot.CutScheme(arg); ok {
		return parseSource(arg, "")
	}
	st, err := os.Stat(arg)
	if err != nil {
		return source{}, fmt.Errorf("manifest file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return source{}, usagef("--manifest %s is not a regular file; want a manifest file saved by vfsctl manifest --out, or a %sHOST/path name", arg, snapshot.Scheme)
	}
	return source{file: arg}, nil
}

// fetch returns the source's manifest and its encoding: from the file,
// the version at at (unless at is zero), or the newest. A fetched
// manifest must describe the host and path it was fetched for. The
// encoding is nil for a manifest file: nothing prints it, and a second
// copy of a manifest can cost gigabytes.
func (s source) fetch(ctx context.Context, stores []store.Store, at time.Time) (*manifest.Manifest, []byte, error) {
	if s.file != "" {
		if !at.IsZero() {
			return nil, nil, usagef("--at needs a database, not a manifest file")
		}
		// The snapshot VFS's reader of manifest files: it refuses what is
		// not a regular file, and caps the size before reading.
		r := snapshot.NewReader(snapshot.Options{})
		defer r.Close()
		m, err := r.Manifest(ctx, s.file)
		if err != nil {
			return nil, nil, err
		}
		return m, nil, nil
	}
	ms := manifestStores(stores)
	var m *manifest.Manifest
	var raw []byte
	var err error
	if !at.IsZero() {
		if m, raw, _, err = restore.ManifestAt(ctx, ms, s.key, at); err != nil {
			return nil, nil, fmt.Errorf("%s: %w%s", s, unprefixed{err, "restore: "}, notFoundHint(err))
		}
	} else if m, raw, err = store.FetchManifest(ctx, ms, s.key); err != nil {
		return nil, nil, fmt.Errorf("%s (manifest %s): %w%s", s, s.key, err, notFoundHint(err))
	}
	// As the snapshot VFS checks: a manifest stored under another
	// database's key (a copy, a hash collision of a long path, tampering)
	// must not pass for it.
	if m.Hostname != s.host || m.SourcePath != s.path {
		return nil, nil, fmt.Errorf("%s: manifest %s describes %s%s%s instead: %w",
			s, s.key, snapshot.Scheme, m.Hostname, m.SourcePath, manifest.ErrInvalid)
	}
	return m, raw, nil
}

// unprefixed is err with prefix taken off the start of each of its lines
// (errors.Join puts one per error): restore.ManifestAt's errors start
// with the name of their package, restore, which reads as the command
// that failed when they follow "vfsctl verify: " or "vfsctl manifest: ".
type unprefixed struct {
	err    error
	prefix string
}

func (e unprefixed) Error() string {
	lines := strings.Split(e.err.Error(), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimPrefix(l, e.prefix)
	}
	return strings.Join(lines, "\n")
}

func (e unprefixed) Unwrap() error { return e.err }

// notFoundHint is what to add to err, the error of fetching a source's
// manifest or listing its versions, when every store said it has none:
// how to find the names the store has, and --hostname, since a source is
// looked up under this host unless told.
func notFoundHint(err error) string {
	// The stores' errors, joined (store.FetchManifest, ManifestAt,
	// ls-versions); a manifest found but whose base is not is one error.
	j, ok := err.(interface{ Unwrap() []error })
	if !ok || len(j.Unwrap()) == 0 {
		return ""
	}
	for _, e := range j.Unwrap() {
		if !errors.Is(e, store.ErrNotFound) {
			return ""
		}
	}
	return " (vfsctl ls lists the databases stored for this host, vfsctl ls --all those of every host; " +
		"give --hostname HOST for a database written on another host)"
}
