package spool

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/zeebo/blake3"

	"github.com/boule-vfs/boule/internal/fsutil"
)

// Log attribute keys.
const (
	logKeyDB    = "db"
	logKeySpool = "spool"
	logKeyErr   = "err"
)

const (
	maxSourcePath = 4096 // the manifest's limit
	bootDirPrefix = "boule-v2."
	// oldBootDirPrefix names the boot directories of the spool's first
	// format, whose txn marker was text. An earlier version of boule may
	// still use one of the current boot (a rolling deploy): only those of
	// other boots are deleted.
	oldBootDirPrefix = "boule-v1."
	// maxShortName is the longest mangled path kept whole. Longer paths get
	// a hashed name of hashedNameLen bytes, so the two forms never collide
	// and every name fits NAME_MAX (255).
	maxShortName  = 200
	hashedKeepLen = 80
	hashedNameLen = hashedKeepLen + 1 + 64 + 1 + hashedKeepLen
)

// ValidateMax is the largest database Options.Validate is given: SQLite's
// test suite makes sparse files of several GB (bigfile, walbig), and each
// check holds several copies of the database in memory.
const ValidateMax = 1 << 30

// Options configure a [Spool].
type Options struct {
	// Dir is the replication_spooling_dir. Required.
	Dir string
	// Perm is the mode of Dir when it has to be created. Zero means 0o700;
	// 0o700 is always added.
	Perm fs.FileMode
	// Hostname recorded in manifests. Empty means os.Hostname.
	Hostname string
	// BootID overrides the kernel boot id, for tests. Empty means read
	// /proc/sys/kernel/random/boot_id.
	BootID string
	// Logger receives errors and state changes, never per-page events.
	// Nil means slog.Default().
	Logger *slog.Logger
	// Notify, when set, is called after each snapshot is published with the
	// database's spool directory. It must not block.
	Notify func(dir string)
	// Fault, when set, is called before each filesystem step with the step's
	// name and path; a non-nil result makes the step fail with it. For
	// tests that inject faults at exact points.
	Fault func(op, path string) error
	// CompactFloor is the fewest bytes of superseded chunks that the
	// segments of a database's staging keep before a snapshot compacts
	// them, when an eighth of the database is fewer (segment.go). Zero
	// means 4 MiB. For tests that need compactions of small databases.
	CompactFloor int64
	// Generator is recorded in manifests. Empty means "boule".
	Generator string
	// Validate, when set, is called after each snapshot is staged with
	// the database it must be, byte for byte, when the source could give
	// it (a FullSource): for builds that check every snapshot (the
	// conformance suite). gen is the generation staged; the staged
	// snapshot may have moved on by the time Validate reads it.
	Validate func(d *DB, gen uint64, want []byte)
	// Databases larger than ValidateMax are not validated.
	// CaptureMemory bounds the bytes that commits have captured and the
	// persisters not staged yet, for all the databases of the spool: a
	// commit that would go over it waits. Zero means DefaultCaptureMemory;
	// negative means no captures: every commit is snapshotted while
	// SQLite holds its lock, as before captures existed.
	CaptureMemory int64
	// PersistGap is the squash window of persisters: each stages at most
	// once per gap, unless a flush or a close waits, or the capture
	// budget is half used. Zero means DefaultPersistGap; negative, none.
	PersistGap time.Duration
	// OpenWAL, when set, opens a connection of its own to the database
	// at path, in a read transaction (see WALReader). Persisters use it
	// to read the log for commits captured lazily (see DB.CaptureWAL);
	// without it every WAL commit reads at its capture. It returns an
	// error wrapping ErrNotWAL when the database has no log.
	OpenWAL func(path string) (*WALReader, error)
}

// Spool is the replication buffer under one replication_spooling_dir.
type Spool struct {
	opts    Options
	root    string // Dir
	bootDir string // Dir/boule-v1.<boot id>
	log     *slog.Logger
	host    string

	mu  sync.Mutex
	dbs map[string]*DB

	cleanOnce sync.Once
	cleanDone chan struct{}

	budget *budget // captured bytes not staged yet (capture.go)

	sweepMu    sync.Mutex
	sweptAllAt time.Time // when sweepAll last ran
}

// Open prepares the spool under opts.Dir: it creates the directory and the
// current boot's subdirectory, and deletes, in the background, state left by
// earlier boots. It does not fail when the directory cannot be created yet:
// snapshots retry, and the error is logged and returned by [Spool.Check].
func Open(opts Options) (*Spool, error) {
	if opts.Dir == "" || !filepath.IsAbs(opts.Dir) {
		return nil, fmt.Errorf("spool: replication_spooling_dir %q must be an absolute path", opts.Dir)
	}
	boot := opts.BootID
	if boot == "" {
		b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBootID, err)
		}
		boot = strings.TrimSpace(string(b))
	}
	if boot == "" || strings.ContainsAny(boot, "/\x00") || boot == "." || boot == ".." {
		return nil, fmt.Errorf("%w: bad boot id %q", ErrBootID, boot)
	}
	host := opts.Hostname
	if host == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "localhost"
		}
		host = h
	}
	if opts.Generator == "" {
		opts.Generator = "boule"
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if opts.CaptureMemory == 0 {
		opts.CaptureMemory = DefaultCaptureMemory
	}
	if opts.PersistGap == 0 {
		opts.PersistGap = DefaultPersistGap
	}
	s := &Spool{
		opts:      opts,
		budget:    newBudget(opts.CaptureMemory),
		root:      filepath.Clean(opts.Dir),
		log:       log,
		host:      host,
		dbs:       make(map[string]*DB),
		cleanDone: make(chan struct{}),
	}
	s.bootDir = filepath.Join(s.root, bootDirPrefix+boot)
	if err := s.Check(); err != nil {
		s.log.Warn("spool: spool directory not usable yet; replication waits for it", logKeySpool, s.root, logKeyErr, err)
	}
	return s, nil
}

// Root is the replication_spooling_dir.
func (s *Spool) Root() string { return s.root }

// BootDir is the directory holding this boot's state.
func (s *Spool) BootDir() string { return s.bootDir }

// Hostname is the host name recorded in manifests.
func (s *Spool) Hostname() string { return s.host }

// Check creates the spool directories if needed and reports whether they
// are usable. On success it also starts, once, the background deletion of
// earlier boots' state.
func (s *Spool) Check() error {
	perm := (s.opts.Perm | 0o700) & 0o777
	if err := s.fault("mkdir", s.root); err != nil {
		return fmt.Errorf("spool: create %s: %w", s.root, err)
	}
	if err := os.MkdirAll(s.root, perm); err != nil {
		return fmt.Errorf("spool: create %s: %w", s.root, err)
	}
	if err := s.fault("mkdir", s.bootDir); err != nil {
		return fmt.Errorf("spool: create %s: %w", s.bootDir, err)
	}
	if err := checkBootDir(s.bootDir); err != nil {
		return err
	}
	s.cleanOnce.Do(func() { go s.removeOldBoots() })
	return nil
}

// WaitCleaned waits until the deletion of earlier boots' state has finished
// (or ctx is done). For tests and tools.
func (s *Spool) WaitCleaned(ctx context.Context) error {
	select {
	case <-s.cleanDone:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// removeOldBoots deletes the state of other boots. They describe a machine
// that has since restarted: their snapshots may be torn, and every database
// opened in this boot is snapshotted again from scratch.
func (s *Spool) removeOldBoots() {
	defer close(s.cleanDone)
	entries, err := fsutil.ReadDir(s.root)
	if err != nil {
		s.log.Warn("spool: cannot list old boots", logKeySpool, s.root, logKeyErr, err)
		return
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, bootDirPrefix) && !strings.HasPrefix(name, oldBootDirPrefix) && !strings.HasPrefix(name, ".del.") {
			continue
		}
		p := filepath.Join(s.root, name)
		if p == s.bootDir || name == oldBootDirPrefix+strings.TrimPrefix(filepath.Base(s.bootDir), bootDirPrefix) {
			continue
		}
		// Rename first so that nothing in this boot can mistake a
		// half-deleted tree for live state.
		victim := p
		if !strings.HasPrefix(name, ".del.") {
			victim = filepath.Join(s.root, ".del."+name)
			if err := os.Rename(p, victim); err != nil {
				s.log.Warn("spool: cannot retire old boot", logKeySpool, p, logKeyErr, err)
				continue
			}
		}
		if err := os.RemoveAll(victim); err != nil {
			s.log.Warn("spool: cannot delete old boot", logKeySpool, victim, logKeyErr, err)
		}
	}
}

// DB returns the spool state of the database at sourcePath, an absolute
// path (the VFS passes SQLite's full pathname). Connections to one database
// in one process share it. It does no I/O.
func (s *Spool) DB(sourcePath string) (*DB, error) {
	if !filepath.IsAbs(sourcePath) || strings.ContainsRune(sourcePath, 0) {
		return nil, fmt.Errorf("spool: source path %q must be absolute", sourcePath)
	}
	// Refuse what a manifest cannot carry, rather than fail every snapshot.
	if !utf8.ValidString(sourcePath) || len(sourcePath) > maxSourcePath {
		return nil, fmt.Errorf("spool: source path %q cannot be replicated: manifests hold UTF-8 paths of at most %d bytes", sourcePath, maxSourcePath)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.dbs[sourcePath]; ok {
		return d, nil
	}
	d := newDB(s, sourcePath)
	s.dbs[sourcePath] = d
	return d, nil
}

// DBs returns the databases this process has opened.
func (s *Spool) DBs() []*DB {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*DB, 0, len(s.dbs))
	for _, d := range s.dbs {
		out = append(out, d)
	}
	return out
}

func (s *Spool) fault(op, path string) error {
	if s.opts.Fault == nil {
		return nil
	}
	return s.opts.Fault(op, path)
}

// DirOf returns the directory of the database at source (an absolute
// path) in the spool root, in the current boot, and whether it exists.
func DirOf(root, source string) (Dir, bool) {
	boot, err := BootDirFor(root)
	if err != nil {
		return Dir{}, false
	}
	d := OpenDir(filepath.Join(boot, MangleName(source)))
	return d, d.Exists()
}

// MangleName returns the spool directory name for an absolute source path.
// Short names are an invertible escape of the path ('/' becomes '#'; '#',
// '%' and bytes outside a safe set are percent-encoded); paths whose escape
// exceeds 200 bytes keep 80 bytes from each end around a BLAKE3 hash of the
// whole path. Two distinct paths never share a name.
func MangleName(path string) string {
	var b strings.Builder
	for i := 0; i < len(path); i++ {
		c := path[i]
		switch {
		case c == '/':
			b.WriteByte('#')
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '.', c == '_', c == '-', c == '+', c == ',', c == '=', c == '@', c == '~':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	name := b.String()
	if len(name) <= maxShortName {
		return name
	}
	sum := blake3.Sum256([]byte(path))
	return fmt.Sprintf("%s^%x^%s", name[:hashedKeepLen], sum, name[len(name)-hashedKeepLen:])
}

// UnmangleName inverts MangleName for short names. It reports false for
// hashed names, whose source path is in the directory's "source" file.
func UnmangleName(name string) (string, bool) {
	if len(name) > maxShortName {
		return "", false
	}
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch c {
		case '#':
			b.WriteByte('/')
		case '%':
			if i+2 >= len(name) {
				return "", false
			}
			var v byte
			if _, err := fmt.Sscanf(name[i+1:i+3], "%02X", &v); err != nil {
				return "", false
			}
			b.WriteByte(v)
			i += 2
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), true
}

// Scratch files are written whole and published within milliseconds; one
// that stays in tmp/ is what a process left when it died mid-write.
const (
	// staleTemp is the age past which any scratch file is a leftover.
	staleTemp = time.Minute
	// orphanTemp is the age past which a scratch file of a process that
	// is gone is a leftover. It is not zero only for spools shared across
	// pid namespaces, where a live writer's pid may name no process here:
	// deleting its file would fail its snapshot, to be retried, and lose
	// nothing.
	orphanTemp = 2 * time.Second
)

// removeStaleTemps deletes the leftovers in a database's tmp/: every
// scratch file older than staleTemp, and those older than orphanTemp of a
// process that is gone, or of an earlier process with this one's pid (a
// container's program restarts with the same pid). This process's own
// files, and those of live processes, may be being written: they stay.
func removeStaleTemps(dir string, now time.Time) {
	entries, err := fsutil.ReadDir(dir)
	if err != nil {
		return
	}
	self := os.Getpid()
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			continue
		}
		// Either way: a file dated in the future (the clock was stepped
		// back since) would otherwise stay until the clock caught up.
		age := now.Sub(info.ModTime()).Abs()
		if age < staleTemp {
			pid, inc, ok := tempOwner(e.Name())
			if !ok || age < orphanTemp {
				continue
			}
			if pid == self && inc == incarnation || pid != self && processExists(pid) {
				continue
			}
		}
		_ = os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}

// sweepAllEvery is the least time between two sweeps of every database's
// tmp/ by one process.
const sweepAllEvery = 10 * time.Second

// sweepAll deletes the leftovers of dead processes in the tmp/ of every
// database of the boot directory (removeStaleTemps), at most once per
// sweepAllEvery: when a snapshot fails for want of room, the leftovers
// filling the filesystem may be another database's, one that no process
// opens any more. It takes no database's spool lock: it deletes only the
// files of processes that are gone, and those a minute old.
func (s *Spool) sweepAll(now time.Time) {
	s.sweepMu.Lock()
	defer s.sweepMu.Unlock()
	if !s.sweptAllAt.IsZero() && now.Sub(s.sweptAllAt).Abs() < sweepAllEvery {
		return
	}
	s.sweptAllAt = now
	entries, err := fsutil.ReadDir(s.bootDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.IsDir() {
			removeStaleTemps(filepath.Join(s.bootDir, e.Name(), tmpDir), now)
		}
	}
}

// processExists reports whether a process pid exists (a zombie counts),
// whoever owns it.
func processExists(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// tempOwner returns the process id and the incarnation in a scratch name
// that uniqueName made (after the control block's "ctl." prefix, if
// any): "<pid>.<nanoseconds>.<incarnation><random>".
func tempOwner(name string) (pid int, inc string, ok bool) {
	parts := strings.SplitN(strings.TrimPrefix(name, ctlTempPrefix), ".", 4)
	if len(parts) < 3 || parts[0] == "" || parts[0][0] < '1' || parts[0][0] > '9' || len(parts[2]) < len(incarnation) {
		return 0, "", false
	}
	pid, err := strconv.Atoi(parts[0])
	if err != nil {
		return 0, "", false
	}
	if _, err := strconv.ParseUint(parts[1], 10, 64); err != nil {
		return 0, "", false
	}
	return pid, parts[2][:len(incarnation)], true
}

// DBDir is a database's spool directory found by [List].
type DBDir struct {
	Dir    string // the spool directory
	Source string // the source database path ("" if unknown)
}

// BootDirFor returns the current boot's directory under root.
func BootDirFor(root string) (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBootID, err)
	}
	return filepath.Join(root, bootDirPrefix+strings.TrimSpace(string(b))), nil
}

// List returns the databases spooled under root in the current boot.
//
// A root with no directory for the current boot is a valid, empty spool
// (after a reboot, until a process opens a database, there is nothing to
// upload) as long as it looks like a replication_spooling_dir: it is
// empty (made, but not used yet), or it holds a boot directory
// ("boule-v1.*") of an earlier boot. Any other directory, or a file, is
// not a spool: List returns an error wrapping [ErrNotSpool] naming it.
func List(root string) ([]DBDir, error) {
	boot, err := BootDirFor(root)
	if err != nil {
		return nil, err
	}
	entries, err := fsutil.ReadDir(boot)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil, checkRoot(root)
	}
	if err != nil {
		return nil, fmt.Errorf("spool: list %s: %w", boot, err)
	}
	var out []DBDir
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		d := DBDir{Dir: filepath.Join(boot, e.Name())}
		if b, err := fsutil.ReadFile(filepath.Join(d.Dir, sourceFile)); err == nil {
			d.Source = string(b)
		} else if p, ok := UnmangleName(e.Name()); ok {
			d.Source = p
		}
		out = append(out, d)
	}
	return out, nil
}

// checkRoot reports whether root, which has no directory for the current
// boot, looks like a spool: an empty directory, or one holding an earlier
// boot's directory.
func checkRoot(root string) error {
	st, err := os.Stat(root)
	if err != nil {
		return fmt.Errorf("spool: %s: %w", root, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("%w: %s is not a directory", ErrNotSpool, root)
	}
	entries, err := fsutil.ReadDir(root)
	if err != nil {
		return fmt.Errorf("spool: list %s: %w", root, err)
	}
	if len(entries) == 0 {
		return nil
	}
	for _, e := range entries {
		if e.IsDir() && (strings.HasPrefix(e.Name(), bootDirPrefix) || strings.HasPrefix(e.Name(), oldBootDirPrefix)) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s holds no %s* boot directory", ErrNotSpool, root, bootDirPrefix)
}

// LockFile is the name, in a database's spool directory, of the lock that
// snapshots and invalidations take (flock(2), exclusive).
const LockFile = "spool.lock"

func openLockFile(p string) (*os.File, error) {
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, lockMode(filepath.Dir(p)))
	if err != nil {
		return nil, fmt.Errorf("spool: open lock %s: %w", p, err)
	}
	return f, nil
}

func flock(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// Invalidate makes the next transaction on the database whose spool
// directory is dir rebuild its snapshot from scratch and stage every chunk
// again: the staged manifest, the snapshots waiting for upload and the
// records of the last upload and of pack placements are deleted, and the
// txn marker is set, and the invalidation token (Dir.Invalidation)
// changes, so that uploaders in every process forget what they knew the
// store to hold. The uploader calls it when the store lacks a chunk the
// last upload relied on, or when the replication targets changed;
// vfsctl sync --full, to repair a damaged store. It takes the spool lock,
// so it cannot interleave with a snapshot in any process; callers hold
// the upload lock (Dir.LockUpload), so that no upload is under way.
func Invalidate(dir string) error {
	f, err := openLockFile(filepath.Join(dir, LockFile))
	if err != nil {
		return err
	}
	defer f.Close()
	if err := flock(f, syscall.LOCK_EX); err != nil {
		return fmt.Errorf("spool: lock %s: %w", dir, err)
	}
	var errs []error
	for _, p := range []string{filepath.Join(dir, stagingDir, manifestFile), filepath.Join(dir, uploadedFile), filepath.Join(dir, packedFile), filepath.Join(dir, baseFile)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, d := range []string{filepath.Join(dir, stagingDir), dir} {
		if err := removeBaseFiles(d, ""); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range []string{filepath.Join(dir, readyDir), filepath.Join(dir, consumingDir)} {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	if c, err := openCtl(filepath.Join(dir, markerFile), filepath.Join(dir, tmpDir), Perm(dir)); err != nil {
		errs = append(errs, err)
	} else {
		c.setState(stateRebuild, nil)
		c.close()
	}
	if err := OpenDir(dir).writeRecord(invalidFile, []byte(uniqueName())); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("spool: invalidate %s: %w", dir, err)
	}
	return nil
}

// Perm returns the permission bits of the database whose spool
// directory is dir: the spool gives its staged manifest the database's
// read bits as of its last snapshot (and its directory the matching r-x
// bits). When neither can be read, the database's owner's only.
func Perm(dir string) fs.FileMode {
	if fi, err := os.Lstat(filepath.Join(dir, stagingDir, manifestFile)); err == nil && fi.Mode().IsRegular() {
		return 0o400 | fi.Mode().Perm()&0o444
	}
	if fi, err := os.Lstat(dir); err == nil && fi.IsDir() {
		return 0o400 | fi.Mode().Perm()&0o444
	}
	return 0o400
}
