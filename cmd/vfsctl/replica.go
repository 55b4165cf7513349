package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/fanout"
	"github.com/boule-vfs/boule/internal/fsutil"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/restore"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/cache"
	"github.com/boule-vfs/boule/upload"
	"golang.org/x/term"
)

// readStores builds the stores to read from, as replicas do: the local
// cache first, then the remote targets behind the read limiter, with
// bounded retries, so that a store that is down fails a command in
// seconds.
func readStores(ctx context.Context, g *globals) ([]store.Store, error) {
	cfg, err := loadConfig(g)
	if err != nil {
		return nil, err
	}
	stores, err := store.OpenForReading(ctx, cfg)
	if err != nil {
		return nil, usageError{err.Error()}
	}
	if len(manifestStores(stores)) == 0 {
		return nil, usagef("no replication target to read from (set replication_targets with --config or %s)", config.EnvVar)
	}
	return stores, nil
}

// fetchSource parses at (unless empty), builds the read stores and
// fetches src's manifest with its encoding.
func fetchSource(ctx context.Context, g *globals, src source, at string) (*manifest.Manifest, []byte, []store.Store, error) {
	var when time.Time
	if at != "" {
		var err error
		if when, err = parseTime(at, time.Now()); err != nil {
			return nil, nil, nil, err
		}
	}
	stores, err := readStores(ctx, g)
	if err != nil {
		return nil, nil, nil, err
	}
	m, raw, err := src.fetch(ctx, stores, when)
	if err != nil {
		return nil, nil, nil, err
	}
	return m, raw, stores, nil
}

// writeJSON prints v as indented JSON, for --json.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// manifestStores are the stores that hold manifests: not the caches.
func manifestStores(stores []store.Store) []store.Store {
	var out []store.Store
	for _, s := range stores {
		if _, ok := s.(*cache.Store); !ok {
			out = append(out, s)
		}
	}
	return out
}

// parseTime parses --at: RFC 3339, Unix seconds, or a negative duration
// from now such as -90m.
func parseTime(v string, now time.Time) (time.Time, error) {
	if strings.HasPrefix(v, "-") {
		if d, err := time.ParseDuration(v); err == nil {
			return now.Add(d), nil
		}
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if f, err := strconv.ParseFloat(v, 64); err == nil && f > 0 {
		sec := int64(f)
		return time.Unix(sec, int64((f-float64(sec))*1e9)), nil
	}
	return time.Time{}, flagErrorf("--at %q: want RFC 3339 (2026-11-23T17:00:00Z), Unix seconds, or a duration ago (-90m)", v)
}

// isTerminal reports whether w is a terminal, for progress bars and the
// refusal to print a database on one. Other character devices, such as
// /dev/null, are not.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// outPerm is the mode of a file written with --out from m, read for src:
// a manifest records none, so the source database's permission bits when
// it is on this host and src named it (less the group's, unless its group
// is this process's), and 0600 otherwise (a manifest
// file, which may name any file of this host). Both are less the umask
// when the file is created.
func outPerm(src source, m *manifest.Manifest) fs.FileMode {
	if src.key != "" && m.Hostname == defaultHostname() && m.SourcePath == src.path {
		if st, err := os.Stat(m.SourcePath); err == nil && st.Mode().IsRegular() {
			return fsutil.CopyPerm(st) & 0o666
		}
	}
	return 0o600
}

// progressBar draws a progress bar on w, at most ten times a second, from
// the first update on: finish draws it last, and draws nothing if nothing
// was updated (the command refused, or failed, before it started).
func progressBar(w io.Writer, label string) (update func(done, total int64), finish func()) {
	start := time.Now()
	var last time.Time
	draw := func(done, total int64) {
		pct := 100.0
		if total > 0 {
			pct = 100 * float64(done) / float64(total)
		}
		const width = 30
		n := int(pct / 100 * width)
		rate := float64(done) / max(time.Since(start).Seconds(), 1e-3) / 1e6
		unit, shift := "MiB", 20
		if total < 1<<20 {
			unit, shift = "KiB", 10
		}
		fmt.Fprintf(w, "\r%s [%s%s] %5.1f%% %d/%d %s %.0f MB/s ", label,
			strings.Repeat("=", n), strings.Repeat(" ", width-n), pct, done>>shift, total>>shift, unit, rate)
	}
	var lastDone, lastTotal int64
	started := false
	update = func(done, total int64) {
		lastDone, lastTotal, started = done, total, true
		if now := time.Now(); now.Sub(last) >= 100*time.Millisecond {
			last = now
			draw(done, total)
		}
	}
	finish = func() {
		if !started {
			return
		}
		draw(lastDone, lastTotal)
		fmt.Fprintln(w)
	}
	return update, finish
}

func cmdRestore(ctx context.Context, g *globals, args []string) error {
	var out, at string
	var conc int
	var force bool
	src, _, err := sourceCommand(g, "restore", "[--hostname H] [--at TIME] [--out FILE [--force]] [--concurrency N] (SOURCE | --source-path PATH | --manifest URI|FILE)",
		"Writes the replicated database SOURCE (a path or a boule:// name) to --out\n"+
			"(default: standard output), every chunk verified against its fingerprint.\n"+
			"--source-path PATH is another spelling of SOURCE. The file appears atomically:\n"+
			"a failed restore leaves nothing at --out. It refuses an existing --out unless\n"+
			"--force, and even then a database that has a journal, WAL or shm file, or that\n"+
			"a process has open or locked. The file gets the source database's permission\n"+
			"bits when the source is on this host, 0600 otherwise, less the umask. With\n"+
			"--at, restores the newest version stored at or before TIME, or the newest of\n"+
			"all when TIME is at or after its creation (see ls-versions).", args, sourceArgs{withManifest: true, withSourcePath: true},
		func(fs *flag.FlagSet) {
			fs.StringVar(&out, "out", "", "output file (default: standard output)")
			fs.BoolVar(&force, "force", false, "replace an existing --out (never a database in use)")
			fs.StringVar(&at, "at", "", "point in time: RFC 3339, Unix seconds, or a duration ago (-1h)")
			fs.IntVar(&conc, "concurrency", restore.DefaultConcurrency, "chunks fetched at once")
		})
	if err != nil {
		return err
	}
	if conc < 1 || conc > 256 {
		return flagErrorf("--concurrency %d: want 1 to 256", conc)
	}
	toFile := out != "" && out != "-"
	if force && !toFile {
		return usagef("--force needs --out FILE")
	}
	if toFile {
		if err := checkOutFile(out, force); err != nil {
			return err
		}
	} else if isTerminal(g.stdout) {
		return usagef("refusing to write a database to a terminal; use --out FILE or a pipe")
	}
	m, _, stores, err := fetchSource(ctx, g, src, at)
	if err != nil {
		return err
	}
	if at == "" {
		warnUnflushed(g, m, "restore", "restores")
	}
	opts := restore.Options{Concurrency: conc, Replace: force, Perm: outPerm(src, m)}
	if isTerminal(g.stderr) {
		update, finish := progressBar(g.stderr, "restore")
		opts.Progress = update
		defer finish()
	}
	if !toFile {
		return restore.Write(ctx, stores, m, g.stdout, opts)
	}
	return outFileError(restore.File(ctx, stores, m, out, opts))
}

// checkOutFile checks --out FILE of restore or manifest before anything
// is fetched: its directory must exist, anything there must be a regular
// file, and, without force, nothing may be there at all.
// restore.WriteFile checks again, and also refuses a database in use,
// even with force.
func checkOutFile(out string, force bool) error {
	// Else the error would name the temp file that could not be made in it.
	dir := filepath.Dir(out)
	switch st, err := os.Stat(dir); {
	case errors.Is(err, fs.ErrNotExist):
		return usagef("directory %s of --out does not exist", dir)
	case err != nil:
		return fmt.Errorf("directory of --out: %w", err)
	case !st.IsDir():
		return usagef("%s, the directory of --out, is %s, not a directory", dir, restore.FileKind(st.Mode()))
	}
	if err := checkOut(out); err != nil {
		return err
	}
	if _, err := os.Lstat(out); err == nil && !force {
		return usagef("--out %s exists; refusing to replace it (give --force to replace it; see doc/OPERATIONS.md, \"Restores\")", out)
	}
	return nil
}

// outFileError is the error of restore.File or restore.WriteFile writing
// --out: a usage error when what it refused appeared after checkOutFile
// (a file, or something other than a regular file), the error as it is
// otherwise (a database in use, a journal next to it, a failure).
func outFileError(err error) error {
	if errors.Is(err, restore.ErrNotRegularFile) || errors.Is(err, restore.ErrOutputExists) {
		return usageError{err.Error()}
	}
	return err
}

// warnUnflushed says on stderr when this host's spool holds commits of
// the database that m, the newest version stored, lacks: a restore made
// before they are uploaded does not have them, a verify does not check
// them, and nothing else would say so. cmd is the command, and did what
// it does with m ("restores", "verifies").
func warnUnflushed(g *globals, m *manifest.Manifest, cmd, did string) {
	if host, err := os.Hostname(); err != nil || m.Hostname != host {
		return
	}
	src := g.config
	if src == "" {
		src = config.FromEnv(os.LookupEnv, slog.New(slog.DiscardHandler))
	}
	cfg, err := config.Load(src)
	if err != nil || cfg.ReplicationSpoolingDir == "" {
		return
	}
	d, ok := spool.DirOf(cfg.ReplicationSpoolingDir, m.SourcePath)
	if !ok {
		return
	}
	s, err := upload.ReadStatus(d.Path(), time.Now())
	if err != nil || (s.Lag <= 0 && s.PendingBytes <= 0) {
		return
	}
	why := ""
	if s.Blocked {
		why = " (uploads are BLOCKED: vfsctl status says why)"
	}
	fmt.Fprintf(g.stderr, "vfsctl %s: warning: this host's spool holds commits of %s that the store does not have yet (%d bytes pending, the oldest %s old)%s: "+
		"this %s the newest version stored, without them; run vfsctl flush %s first to include them\n",
		cmd, m.SourcePath, s.PendingBytes, s.Lag.Round(time.Millisecond), why, did, cfg.ReplicationSpoolingDir)
}

// checkOut returns a usage error when something other than a regular file
// is at --out: the atomic rename would replace a named pipe, a device or a
// symbolic link (as root, /dev/null) rather than write into it.
func checkOut(path string) error {
	st, err := fsutil.Irregular(path)
	if err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	if st == nil {
		return nil
	}
	kind, hint := restore.FileKind(st.Mode()), ""
	switch {
	case st.Mode()&fs.ModeSymlink != 0:
		hint = " (give the path it points to)"
	case !st.IsDir():
		hint = " (to write into it, leave out --out and redirect standard output)"
	}
	return usagef("--out %s is %s, not a regular file; refusing to replace it%s", path, kind, hint)
}

func cmdManifestName(ctx context.Context, g *globals, args []string) error {
	src, _, err := sourceCommand(g, "manifest-name", "[--hostname H] SOURCE",
		"Prints the key under which the manifest of the database SOURCE (a path or a\nboule:// name) is stored. No network access.", args, sourceArgs{}, nil)
	if err != nil {
		return err
	}
	fmt.Fprintln(g.stdout, src.key)
	return nil
}

// manifestJSON is vfsctl manifest --json, which writeManifestJSON
// streams.
type manifestJSON struct {
	manifestHeadJSON
	Chunks []string `json:"chunks"`
	Inline []uint32 `json:"inline_chunks"`
}

// manifestHeadJSON is the fields of manifestJSON before the chunks.
type manifestHeadJSON struct {
	Key           string `json:"key,omitempty"`
	Hostname      string `json:"hostname"`
	SourcePath    string `json:"source_path"`
	Generator     string `json:"generator"`
	Size          int64  `json:"size"`
	PageSize      uint32 `json:"page_size"`
	ChangeCounter uint32 `json:"change_counter"`
	VersionID     string `json:"version_id"`
	SourceCtime   string `json:"source_ctime"`
	Created       string `json:"created"`
}

// writeManifestJSON writes m as indented JSON to w, as json.MarshalIndent
// with "  " would the header fields followed by "chunks", the
// fingerprints in hex, and "inline_chunks", the indexes of the inline
// chunks, in increasing order. It streams the chunks: what it holds does
// not grow with them.
func writeManifestJSON(w io.Writer, key string, m *manifest.Manifest) error {
	head, err := json.MarshalIndent(manifestHeadJSON{
		Key: key, Hostname: m.Hostname, SourcePath: m.SourcePath, Generator: m.Generator,
		Size: m.Size, PageSize: m.PageSize, ChangeCounter: m.ChangeCounter,
		VersionID:   fmt.Sprintf("%x", m.VersionID),
		SourceCtime: m.SourceCtime.UTC().Format(time.RFC3339Nano),
		Created:     m.Created.UTC().Format(time.RFC3339Nano),
	}, "", "  ")
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	bw.Write(head[:len(head)-len("\n}")])
	bw.WriteString(",\n  \"chunks\": [")
	var line [len("\n    \"\",") + 2*manifest.FingerprintSize]byte
	for i, fp := range m.Chunks {
		b := append(line[:0], "\n    \""...)
		b = hex.AppendEncode(b, fp[:])
		b = append(b, '"')
		if i < len(m.Chunks)-1 {
			b = append(b, ',')
		}
		bw.Write(b)
	}
	if len(m.Chunks) > 0 {
		bw.WriteString("\n  ")
	}
	bw.WriteString("],\n  \"inline_chunks\": [")
	inline := slices.Sorted(maps.Keys(m.Inline))
	for i, k := range inline {
		bw.WriteString("\n    ")
		bw.WriteString(strconv.FormatUint(uint64(k), 10))
		if i < len(inline)-1 {
			bw.WriteByte(',')
		}
	}
	if len(inline) > 0 {
		bw.WriteString("\n  ")
	}
	bw.WriteString("]\n}\n")
	return bw.Flush()
}

func cmdManifest(ctx context.Context, g *globals, args []string) error {
	var out, at string
	var asJSON, force bool
	src, _, err := sourceCommand(g, "manifest", "[--hostname H] [--at TIME] [--json] [--out FILE [--force]] SOURCE",
		"Fetches the manifest of the database SOURCE (a path or a boule:// name) and\n"+
			"writes it, as the binary manifest of doc/FORMAT.md, to --out or standard\n"+
			"output; with --json, prints it decoded instead. --out is written as restore\n"+
			"writes it: the file appears atomically, and a failure leaves nothing there.\n"+
			"It refuses an existing --out unless --force, and even then a database that\n"+
			"has a journal, WAL or shm file, or that a process has open or locked.", args, sourceArgs{},
		func(fs *flag.FlagSet) {
			fs.StringVar(&out, "out", "", "output file (default: standard output)")
			fs.BoolVar(&force, "force", false, "replace an existing --out (never a database in use)")
			fs.StringVar(&at, "at", "", "the version stored at or before this time (see restore)")
			fs.BoolVar(&asJSON, "json", false, "print the decoded manifest as JSON")
		})
	if err != nil {
		return err
	}
	toFile := out != "" && out != "-"
	if force && !toFile {
		return usagef("--force needs --out FILE")
	}
	if toFile {
		if err := checkOutFile(out, force); err != nil {
			return err
		}
	}
	m, data, _, err := fetchSource(ctx, g, src, at)
	if err != nil {
		return err
	}
	var write func(w io.Writer) error
	if asJSON {
		data = nil // streamed from m, which is all it needs
		write = func(w io.Writer) error { return writeManifestJSON(w, src.key, m) }
	} else {
		if v, err := manifest.FormatVersion(data); err == nil && v != 1 {
			// A head is of no use without its base: write the manifest it
			// stands for, whole, as format v1, which reads alone.
			if data, err = m.MarshalBinary(); err != nil {
				return err
			}
		}
		write = func(w io.Writer) error {
			_, err := w.Write(data)
			return err
		}
	}
	if !toFile {
		if !asJSON && isTerminal(g.stdout) {
			return usagef("refusing to write a binary manifest to a terminal; use --out FILE, a pipe, or --json")
		}
		return write(g.stdout)
	}
	// The manifest holds the first chunk of the database inline: it is
	// as private as the database.
	return outFileError(restore.WriteFile(out, restore.Options{Replace: force, Perm: outPerm(src, m)}, write))
}

// versionJSON is one line of vfsctl ls-versions --json. Stored is the
// store's time for the version, Created the time its manifest says the
// snapshot was taken, by the writer's clock ("" with Error when the
// version could not be read).
type versionJSON struct {
	ID      string `json:"id"`
	Stored  string `json:"stored"`
	Created string `json:"created"`
	Latest  bool   `json:"latest"`
	Error   string `json:"error,omitempty"`
}

// versionMemory bounds what ls-versions holds of the versions it reads at
// once, as far as the first tells: as many as fit, up to 8, each read
// and decoded whole (the manifest and its decoding).
const versionMemory = 256 << 20

// versionCreated reads the creation time of each version in vs of the
// manifest under key in s into out: the first alone, then the others a
// few at once, as many as versionMemory holds of the first's size, one
// at a time when it is larger.
func versionCreated(ctx context.Context, s store.Store, key string, vs []store.Version, out []versionJSON) {
	var bases store.BaseMemo // versions share their bases
	read := func(i int) int64 {
		b, err := s.GetManifestVersion(ctx, key, vs[i].ID)
		size := int64(len(b))
		var m *manifest.Manifest
		if err == nil {
			m, err = store.DecodeManifest(ctx, s, b, &bases)
		}
		if err != nil {
			out[i].Error = err.Error()
			return size
		}
		out[i].Created = m.Created.UTC().Format(time.RFC3339Nano)
		return size + int64(len(m.Chunks))*manifest.FingerprintSize
	}
	if len(vs) == 0 {
		return
	}
	size := read(0)
	n := int(min(8, max(1, versionMemory/max(size, 1))))
	fanout.Each(n, len(vs)-1, func(i int) bool {
		read(i + 1)
		return true
	})
}

// s3Unversioned is the version ID S3 gives an object stored while its
// bucket's versioning was off (store.Version).
const s3Unversioned = "null"

// unversioned reports whether vs are the versions of a store that keeps
// none: a single object stored without versioning.
func unversioned(vs []store.Version) bool {
	return len(vs) == 1 && vs[0].ID == s3Unversioned
}

func cmdLsVersions(ctx context.Context, g *globals, args []string) error {
	var asJSON bool
	src, _, err := sourceCommand(g, "ls-versions", "[--hostname H] [--json] SOURCE",
		"Lists the kept versions of the manifest of the database SOURCE, newest first:\n"+
			"the points in time restore --at can go back to. STORED is the store's time\n"+
			"for each, CREATED the time the writer's clock gave its snapshot. S3 keeps\n"+
			"versions when the manifest bucket has versioning enabled; a dir store keeps\n"+
			"its own.", args, sourceArgs{},
		func(fs *flag.FlagSet) {
			fs.BoolVar(&asJSON, "json", false, "print JSON instead of a table")
		})
	if err != nil {
		return err
	}
	stores, err := readStores(ctx, g)
	if err != nil {
		return err
	}
	var errs []error
	for _, s := range manifestStores(stores) {
		vs, err := s.ManifestVersions(ctx, src.key)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out := make([]versionJSON, len(vs))
		for i, v := range vs {
			out[i] = versionJSON{ID: v.ID, Stored: v.LastModified.UTC().Format(time.RFC3339Nano), Latest: v.IsLatest}
		}
		versionCreated(ctx, s, src.key, vs, out)
		if unversioned(vs) {
			// S3 lists the one object a bucket without versioning keeps.
			fmt.Fprintf(g.stderr, "vfsctl ls-versions: versioning is off in %s (or was when this manifest was last written): it keeps only the latest version, and restore --at cannot go back further (see doc/OPERATIONS.md)\n", s)
		}
		if asJSON {
			return writeJSON(g.stdout, out)
		}
		tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "STORED\tCREATED\tVERSION\tLATEST")
		for _, v := range out {
			latest, created, id := "", v.Created, v.ID
			if v.Latest {
				latest = "*"
			}
			if v.Error != "" {
				created = "? (" + v.Error + ")"
			}
			if id == s3Unversioned {
				id = "- (versioning off)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.Stored, created, id, latest)
		}
		return tw.Flush()
	}
	err = errors.Join(errs...)
	return fmt.Errorf("%s (manifest %s): %w%s", src, src.key, err, notFoundHint(err))
}

// lsJSON is one line of vfsctl ls --json.
type lsJSON struct {
	Hostname string `json:"hostname"`
	Path     string `json:"path"`
	Key      string `json:"key"`
	Updated  string `json:"updated"`
	Bytes    int64  `json:"manifest_bytes"`
}

func cmdLs(ctx context.Context, g *globals, args []string) error {
	var host string
	var all, asJSON bool
	fs, err := subcommand(g, "ls", "[--hostname H | --all] [--json]",
		"Lists the databases the first replication target holds, by host and path, with\nthe time of their last update.", args,
		func(fs *flag.FlagSet) {
			fs.StringVar(&host, "hostname", "", "list this host's databases (default: this one)")
			fs.BoolVar(&all, "all", false, "list every host's databases")
			fs.BoolVar(&asJSON, "json", false, "print JSON instead of a table")
		})
	if err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("unexpected arguments %q", fs.Args())
	}
	if all && host != "" {
		return usagef("give --hostname or --all, not both")
	}
	prefix := ""
	if !all {
		if host == "" {
			host = defaultHostname()
		}
		if prefix, err = store.HostPrefix(host); err != nil {
			return usageError{err.Error()}
		}
	}
	stores, err := readStores(ctx, g)
	if err != nil {
		return err
	}
	ms := manifestStores(stores)
	infos, err := ms[0].ListManifests(ctx, prefix)
	if err != nil {
		return err
	}
	out := make([]lsJSON, 0, len(infos))
	for _, in := range infos {
		h, p, hashed, err := store.ParseManifestKey(in.Key)
		if err != nil {
			g.logger.Warn("vfsctl: skipping a key that is not a manifest key", "key", in.Key, "err", err)
			continue
		}
		if hashed {
			// Too long to fit a key: the manifest has the real names.
			if m, _, err := store.FetchManifest(ctx, ms[:1], in.Key); err == nil {
				h, p = m.Hostname, m.SourcePath
			}
		}
		out = append(out, lsJSON{Hostname: h, Path: p, Key: in.Key, Updated: in.LastModified.UTC().Format(time.RFC3339), Bytes: in.Size})
	}
	if asJSON {
		return writeJSON(g.stdout, out)
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tPATH\tUPDATED")
	for _, o := range out {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", o.Hostname, o.Path, o.Updated)
	}
	return tw.Flush()
}
