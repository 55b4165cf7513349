package dir

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/fsutil"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/internal/localfs"
)

// Subdirectories of a directory store.
const (
	dirChunks    = "chunks"
	dirManifests = "manifests"
	dirVersions  = "versions"
	dirTmp       = "tmp"
)

// Retention of manifest versions in a directory store: at most
// maxVersions are kept, and versions older than versionMaxAge are
// deleted unless they are among the newest minVersions.
const (
	maxVersions   = 1000
	minVersions   = 10
	versionMaxAge = 7 * 24 * time.Hour
	// staleTmpAge is the age beyond which the first put of a process
	// removes temporary files left behind by a crash.
	staleTmpAge = 24 * time.Hour
)

// versionIDLen is the length of a directory store's version IDs: Unix
// nanoseconds, zero-padded to 20 digits.
const versionIDLen = 20

// Store is a store.Store in a directory of the local file system, laid out
// like a pair of buckets (see doc/FORMAT.md):
//
//	<root>/chunks/<chunk key>
//	<root>/manifests/<manifest key>
//	<root>/versions/<manifest key>/<version ID>
//	<root>/tmp/
//
// Every write goes to a temporary file in tmp/ that is then renamed into
// place, so readers never see a partial blob.
//
// Files and directories are at most as readable as the database they hold
// data of (the put's context says which, WithSourcePerm), within the
// umask; a chunk or pack that databases of different modes share, and a
// directory they share, keeps the narrowest access any of them asked for.
// Every file is opened without blocking and checked to be a regular file
// before it is read.
type Store struct {
	// mu orders this process's manifest puts where flock(2) cannot
	// (lockDir).
	mu   sync.Mutex
	root string
	// now is the clock for version IDs, touches and pruning.
	now func() time.Time
	// swept: the first put has removed stale temporary files. Readers
	// never do: they change nothing in a store.
	swept sync.Once
}

var (
	_ store.Store       = (*Store)(nil)
	_ store.Conditional = (*Store)(nil)
)

// New returns a store rooted at path, a directory; its
// subdirectories are created on demand. It removes temporary files left
// over by crashed writers. A path that exists but is not a directory is
// an error; a missing one is not, but operations fail with ErrPermanent
// until it exists.
func New(path string) (*Store, error) {
	root, err := filepath.Abs(path)
	if err != nil {
		return nil, &store.Error{Op: "dir open", Target: path, Detail: err.Error(), Kind: store.ErrPermanent, Err: err}
	}
	s := &Store{root: root, now: time.Now}
	// A missing root is not an error yet: a store that is not there yet
	// (a late mount) must not keep the VFS from registering. Until it
	// appears, every operation fails with ErrPermanent naming it; the
	// store never creates its root itself.
	if fi, err := os.Stat(root); err == nil {
		if !fi.IsDir() {
			return nil, &store.Error{Op: "dir open", Target: root, Detail: "not a directory", Kind: store.ErrPermanent}
		}
	}
	return s, nil
}

// SetClock replaces the clock that dates the versions the store keeps,
// for tests of point-in-time restores under clock skew. Nil restores
// time.Now.
func (s *Store) SetClock(now func() time.Time) {
	if now == nil {
		now = time.Now
	}
	s.now = now
}

// String implements store.Store: "dir:" and the store's root.
func (s *Store) String() string { return "dir:" + s.root }

// Root returns the store's root directory.
func (s *Store) Root() string { return s.root }

func (s *Store) chunkPath(fp manifest.Fingerprint) string {
	return s.objectPath(store.ChunkKey(fp))
}

func (s *Store) manifestPath(key string) string {
	return filepath.Join(s.root, dirManifests, filepath.FromSlash(key))
}

func (s *Store) versionDir(key string) string {
	return filepath.Join(s.root, dirVersions, filepath.FromSlash(key))
}

// PutChunk implements store.Store.
func (s *Store) PutChunk(ctx context.Context, fp manifest.Fingerprint, data []byte) error {
	return s.putObject(ctx, "dir put chunk", store.ChunkKey(fp), store.EncodeBlob(data))
}

// PutPack implements store.Store: packs live in the chunks directory, under
// their keys.
func (s *Store) PutPack(ctx context.Context, id manifest.Fingerprint, blob []byte) error {
	return s.putObject(ctx, "dir put pack", store.PackKey(id), blob)
}

// GetPack implements store.Store.
func (s *Store) GetPack(ctx context.Context, id manifest.Fingerprint) ([]byte, error) {
	return s.getObject(ctx, "dir get pack", store.PackKey(id), manifest.MaxPackSize)
}

// ReadPack implements store.PackReader: the pack file is read into
// alloc's buffer, of the file's size.
func (s *Store) ReadPack(ctx context.Context, id manifest.Fingerprint, alloc func(size int) ([]byte, error)) ([]byte, error) {
	key := store.PackKey(id)
	return s.readInto(ctx, "dir read pack", key, s.objectPath(key), manifest.MaxPackSize, alloc)
}

// ReadPackRange implements store.PackRangeReader with a pread of the
// pack file.
func (s *Store) ReadPackRange(ctx context.Context, id manifest.Fingerprint, off, length int, dst []byte) ([]byte, error) {
	const op = "dir read pack range"
	key := store.PackKey(id)
	if err := ctx.Err(); err != nil {
		return nil, s.err(op, key, err)
	}
	path := s.objectPath(key)
	f, fi, err := fsutil.Open(path)
	if err != nil {
		if errors.Is(err, fsutil.ErrNotRegular) {
			err = fmt.Errorf("%w: %w", store.ErrCorrupt, err)
		}
		return nil, s.err(op, key, err)
	}
	defer f.Close()
	if int64(off)+int64(length) > fi.Size() {
		return nil, s.err(op, key, fmt.Errorf("range %d+%d past the pack's %d bytes: %w", off, length, fi.Size(), store.ErrCorrupt))
	}
	if cap(dst) < length {
		dst = make([]byte, length)
	}
	dst = dst[:length]
	if _, err := f.ReadAt(dst, int64(off)); err != nil {
		return nil, s.err(op, key, fmt.Errorf("read %s: %w", path, err))
	}
	return dst, nil
}

// ReadManifestBlob implements store.BlobReader: the manifest file, as
// stored, is read into alloc's buffer, of the file's size.
func (s *Store) ReadManifestBlob(ctx context.Context, key string, alloc func(size int) ([]byte, error)) ([]byte, error) {
	const op = "dir read manifest"
	if err := store.CheckManifestKey(key); err != nil {
		return nil, s.keyErr(op, key, err)
	}
	return s.readInto(ctx, op, key, s.manifestPath(key), store.MaxManifestDecoded, alloc)
}

// ReadBase implements store.BlobReader: the base file is read into
// alloc's buffer, of the file's size.
func (s *Store) ReadBase(ctx context.Context, id manifest.Fingerprint, size int64, alloc func(size int) ([]byte, error)) ([]byte, error) {
	key := store.BaseKey(id)
	return s.readInto(ctx, "dir read base", key, s.objectPath(key), size, alloc)
}

// readInto reads the file at path, that of key and at most limit bytes,
// into the buffer alloc returns for its size.
func (s *Store) readInto(ctx context.Context, op, key, path string, limit int64, alloc func(size int) ([]byte, error)) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, s.err(op, key, err)
	}
	b, err := readFileInto(path, limit, alloc)
	if err != nil {
		return nil, s.err(op, key, err)
	}
	return b, nil
}

// TouchPack implements store.Store, as TouchChunk.
func (s *Store) TouchPack(ctx context.Context, id manifest.Fingerprint) error {
	return s.touchObject(ctx, "dir touch pack", store.PackKey(id))
}

// PutBase implements store.Store: bases live in the chunks directory,
// under their keys.
func (s *Store) PutBase(ctx context.Context, id manifest.Fingerprint, blob []byte) error {
	return s.putObject(ctx, "dir put base", store.BaseKey(id), blob)
}

// GetBase implements store.Store.
func (s *Store) GetBase(ctx context.Context, id manifest.Fingerprint, size int64) ([]byte, error) {
	return s.getObject(ctx, "dir get base", store.BaseKey(id), size)
}

// TouchBase implements store.Store, as TouchChunk.
func (s *Store) TouchBase(ctx context.Context, id manifest.Fingerprint) error {
	return s.touchObject(ctx, "dir touch base", store.BaseKey(id))
}

// putObject writes blob under key in the chunks directory.
//
// Objects are shared by every database that holds the same bytes: one
// already there keeps the narrowest of its mode and the one asked for.
func (s *Store) putObject(ctx context.Context, op, key string, blob []byte) error {
	if err := ctx.Err(); err != nil {
		return s.err(op, key, err)
	}
	src := store.SourcePerm(ctx)
	perm := store.FilePerm(src)
	dst := s.objectPath(key)
	if fi, err := os.Lstat(dst); err == nil && fi.Mode().IsRegular() {
		perm &= fi.Mode().Perm() | 0o400
	}
	tmp, err := s.writeTemp(blob, perm)
	if err != nil {
		return s.err(op, key, err)
	}
	defer os.Remove(tmp)
	dir, _ := path.Split(key)
	if err := s.mkdirs(store.DirPerm(src), append([]string{dirChunks}, strings.Split(strings.TrimSuffix(dir, "/"), "/")...)...); err != nil {
		return s.err(op, key, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return s.err(op, key, err)
	}
	return nil
}

// objectPath returns the path of the object under key in the chunks
// directory.
func (s *Store) objectPath(key string) string {
	return filepath.Join(s.root, dirChunks, filepath.FromSlash(key))
}

// getObject reads the object under key in the chunks directory, which
// must be a regular file of at most limit bytes.
func (s *Store) getObject(ctx context.Context, op, key string, limit int64) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, s.err(op, key, err)
	}
	blob, err := readFileMax(s.objectPath(key), limit)
	if err != nil {
		return nil, s.err(op, key, err)
	}
	return blob, nil
}

// GetChunk implements store.Store.
func (s *Store) GetChunk(ctx context.Context, fp manifest.Fingerprint) ([]byte, error) {
	const op = "dir get chunk"
	key := store.ChunkKey(fp)
	blob, err := s.getObject(ctx, op, key, store.MaxChunkBlob)
	if err != nil {
		return nil, err
	}
	data, err := store.DecodeChunk(fp, blob)
	if err != nil {
		return nil, s.err(op, key, err)
	}
	return data, nil
}

// TouchChunk implements store.Store: it sets the chunk file's access and
// modification times to now.
func (s *Store) TouchChunk(ctx context.Context, fp manifest.Fingerprint) error {
	return s.touchObject(ctx, "dir touch chunk", store.ChunkKey(fp))
}

func (s *Store) touchObject(ctx context.Context, op, key string) error {
	if err := ctx.Err(); err != nil {
		return s.err(op, key, err)
	}
	now := s.now()
	if err := os.Chtimes(s.objectPath(key), now, now); err != nil {
		return s.err(op, key, err)
	}
	return nil
}

// PutManifest implements store.Store. Besides replacing the latest manifest, it
// keeps the new one as a version, a hard link to the same file (a copy
// where links are not supported), and prunes old versions.
func (s *Store) PutManifest(ctx context.Context, key string, data []byte) error {
	_, err := s.putManifest(ctx, "dir put manifest", key, data, nil)
	return err
}

// ConditionalPuts implements store.Conditional: a directory store always
// honours conditional puts.
func (s *Store) ConditionalPuts() bool { return true }

// PutManifestIf implements store.Conditional. A manifest's entity tag is
// the BLAKE3-256 of its stored blob, in hex (manifestTag). Every put of a
// manifest, conditional or not, holds an exclusive flock(2) on the
// manifest's version directory from reading the latest to renaming the
// new one into place, so the test and the swap are one step for every
// process of the host (for this process only, on a file system without
// flock(2)). Puts are synchronous: one that returned is the latest until
// the next, and none lands late.
func (s *Store) PutManifestIf(ctx context.Context, key string, data []byte, etag string) (string, error) {
	const op = "dir put manifest if"
	return s.putManifest(ctx, op, key, data, func(cur []byte, err error) error {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if etag == "" {
				return nil
			}
			return &store.Error{Op: op, Key: key, Target: s.root, Kind: store.ErrPrecondition,
				Detail: "precondition failed: no manifest is stored, want the one tagged " + etag}
		case err != nil:
			return s.err(op, key, err)
		case etag == "":
			return &store.Error{Op: op, Key: key, Target: s.root, Kind: store.ErrPrecondition,
				Detail: "precondition failed: a manifest is stored, want none"}
		case manifestTag(cur) != etag:
			return &store.Error{Op: op, Key: key, Target: s.root, Kind: store.ErrPrecondition,
				Detail: "precondition failed: the stored manifest is not the one tagged " + etag}
		}
		return nil
	})
}

// GetManifestTag implements store.Conditional.
func (s *Store) GetManifestTag(ctx context.Context, key string) ([]byte, string, error) {
	const op = "dir get manifest"
	var tag string
	data, err := s.readManifestFile(ctx, op, key, s.manifestPath(key), func(blob []byte) { tag = manifestTag(blob) })
	if err != nil {
		return nil, "", err
	}
	return data, tag, nil
}

// manifestTag is the entity tag of a stored manifest blob.
func manifestTag(blob []byte) string {
	return manifest.Sum(blob).String()
}

// putManifest stores data under key, with its version, under the lock of
// the manifest's version directory; cond, if not nil, is first given the
// blob stored now (or the error reading it) and may refuse the put. It
// returns the new blob's entity tag.
func (s *Store) putManifest(ctx context.Context, op, key string, data []byte, cond func([]byte, error) error) (string, error) {
	if err := store.CheckManifestKey(key); err != nil {
		return "", s.keyErr(op, key, err)
	}
	if err := ctx.Err(); err != nil {
		return "", s.err(op, key, err)
	}
	blob := store.EncodeManifestBlob(data)
	src := store.SourcePerm(ctx)
	perm := store.FilePerm(src)
	tmp, err := s.writeTemp(blob, perm)
	if err != nil {
		return "", s.err(op, key, err)
	}
	defer os.Remove(tmp)

	hostPart, namePart, _ := strings.Cut(key, "/")
	if err := s.mkdirs(store.DirPerm(src), dirVersions, hostPart, namePart); err != nil {
		return "", s.err(op, key, err)
	}
	vdir := s.versionDir(key)
	unlock, err := s.lockDir(vdir)
	if err != nil {
		return "", s.err(op, key, err)
	}
	defer unlock()
	if cond != nil {
		if err := cond(readFileMax(s.manifestPath(key), store.MaxManifestDecoded)); err != nil {
			return "", err
		}
	}
	ids, err := s.versionIDs(vdir)
	if err != nil {
		return "", s.err(op, key, err)
	}
	id, err := s.addVersion(vdir, tmp, blob, perm, ids)
	if err != nil {
		return "", s.err(op, key, err)
	}
	ns, _ := parseVersionID(id)
	ids = append(ids, ns) // the largest, so ids stays sorted

	if err := s.mkdirs(store.DirPerm(src), dirManifests, hostPart); err != nil {
		return "", s.err(op, key, err)
	}
	if err := os.Rename(tmp, s.manifestPath(key)); err != nil {
		return "", s.err(op, key, err)
	}
	s.prune(vdir, ids)
	return manifestTag(blob), nil
}

// lockDir takes an exclusive flock(2) on the directory dir, for every
// process of the host (and every goroutine: each opens dir anew), and
// returns its release. On a file system without flock(2) it takes the
// store's own mutex instead, which orders the puts of this process only.
func (s *Store) lockDir(dir string) (func(), error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err == nil {
		return func() { f.Close() }, nil
	}
	f.Close()
	if errors.Is(err, syscall.ENOLCK) || errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS) {
		s.mu.Lock()
		return s.mu.Unlock, nil
	}
	return nil, &fs.PathError{Op: "flock", Path: dir, Err: err}
}

// addVersion links tmp into vdir under a version ID later than every ID
// in ids (sorted) and than the clock, and returns that ID. The ID orders
// the versions; after a version named by a writer whose clock ran ahead,
// it is later than the clock, and ManifestVersions takes the version's
// time from its file's modification time instead. Where it must copy
// instead of link, the copy has mode perm.
func (s *Store) addVersion(vdir, tmp string, blob []byte, perm fs.FileMode, ids []int64) (string, error) {
	now := s.now()
	// The version's time, whatever its name.
	_ = os.Chtimes(tmp, now, now)
	ns := now.UnixNano()
	if n := len(ids); n > 0 && ids[n-1] >= ns {
		ns = ids[n-1] + 1
	}
	for range 100 {
		id := formatVersionID(ns)
		err := os.Link(tmp, filepath.Join(vdir, id))
		if err == nil {
			return id, nil
		}
		if errors.Is(err, fs.ErrExist) {
			ns++ // another writer took this ID
			continue
		}
		// No hard links here (some network and FUSE file systems): copy.
		vtmp, werr := s.writeTemp(blob, perm)
		if werr != nil {
			return "", werr
		}
		if _, serr := os.Lstat(filepath.Join(vdir, id)); serr == nil {
			os.Remove(vtmp)
			ns++
			continue
		}
		_ = os.Chtimes(vtmp, now, now)
		if rerr := os.Rename(vtmp, filepath.Join(vdir, id)); rerr != nil {
			os.Remove(vtmp)
			return "", rerr
		}
		return id, nil
	}
	return "", errors.New("could not allocate a version ID")
}

// prune deletes the versions that the retention rules drop. ids holds
// every version ID in vdir, in increasing order.
func (s *Store) prune(vdir string, ids []int64) {
	n := len(ids)
	drop := max(n-maxVersions, 0)
	cutoff := s.now().Add(-versionMaxAge).UnixNano()
	for drop < n-minVersions && ids[drop] < cutoff {
		drop++
	}
	for _, ns := range ids[:drop] {
		_ = os.Remove(filepath.Join(vdir, formatVersionID(ns)))
	}
}

// GetManifest implements store.Store.
func (s *Store) GetManifest(ctx context.Context, key string) ([]byte, error) {
	return s.getManifestFile(ctx, "dir get manifest", key, s.manifestPath(key))
}

// GetManifestVersion implements store.Store. An empty versionID means the
// latest manifest.
func (s *Store) GetManifestVersion(ctx context.Context, key, versionID string) ([]byte, error) {
	const op = "dir get manifest version"
	if versionID == "" {
		return s.getManifestFile(ctx, op, key, s.manifestPath(key))
	}
	if _, ok := parseVersionID(versionID); !ok {
		return nil, &store.Error{Op: op, Key: key, Target: s.root, Kind: store.ErrNotFound,
			Detail: fmt.Sprintf("version %q: not a directory store version ID", versionID)}
	}
	return s.getManifestFile(ctx, op, key, filepath.Join(s.versionDir(key), versionID))
}

func (s *Store) getManifestFile(ctx context.Context, op, key, path string) ([]byte, error) {
	return s.readManifestFile(ctx, op, key, path, nil)
}

// readManifestFile reads and decodes the manifest blob at path, first
// giving it to seen if that is not nil.
func (s *Store) readManifestFile(ctx context.Context, op, key, path string, seen func(blob []byte)) ([]byte, error) {
	if err := store.CheckManifestKey(key); err != nil {
		return nil, s.keyErr(op, key, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, s.err(op, key, err)
	}
	blob, err := readFileMax(path, store.MaxManifestDecoded)
	if err != nil {
		return nil, s.err(op, key, err)
	}
	if seen != nil {
		seen(blob)
	}
	data, err := store.DecodeManifestBlob(blob)
	if err != nil {
		return nil, s.err(op, key, err)
	}
	return data, nil
}

// ListManifests implements store.Store. It reads only the host directories
// that can hold keys starting with prefix.
func (s *Store) ListManifests(ctx context.Context, prefix string) ([]store.ManifestInfo, error) {
	const op = "dir list manifests"
	if err := ctx.Err(); err != nil {
		return nil, s.err(op, prefix, err)
	}
	base := filepath.Join(s.root, dirManifests)
	hosts, err := readDirNames(base)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && s.rootExists() {
			return nil, nil // nothing stored yet
		}
		return nil, s.err(op, prefix, err)
	}
	var out []store.ManifestInfo
	for _, h := range hosts {
		hp := h + "/"
		if !strings.HasPrefix(hp, prefix) && !strings.HasPrefix(prefix, hp) {
			continue
		}
		names, err := readDirNames(filepath.Join(base, h))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				continue
			}
			return nil, s.err(op, prefix, err)
		}
		for _, n := range names {
			key := hp + n
			if !strings.HasPrefix(key, prefix) || store.CheckManifestKey(key) != nil {
				continue
			}
			fi, err := os.Stat(filepath.Join(base, h, n))
			if err != nil || !fi.Mode().IsRegular() {
				continue
			}
			out = append(out, store.ManifestInfo{Key: key, LastModified: fi.ModTime(), Size: fi.Size()})
		}
		if err := ctx.Err(); err != nil {
			return nil, s.err(op, prefix, err)
		}
	}
	slices.SortFunc(out, func(a, b store.ManifestInfo) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// ManifestVersions implements store.Store. A manifest written without a version
// (by hand, say) is listed as one version with an empty ID.
func (s *Store) ManifestVersions(ctx context.Context, key string) ([]store.Version, error) {
	const op = "dir list manifest versions"
	if err := store.CheckManifestKey(key); err != nil {
		return nil, s.keyErr(op, key, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, s.err(op, key, err)
	}
	vdir := s.versionDir(key)
	ids, err := s.versionIDs(vdir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, s.err(op, key, err)
	}
	latest, lerr := os.Stat(s.manifestPath(key))
	if len(ids) == 0 {
		if lerr != nil {
			return nil, s.err(op, key, lerr)
		}
		return []store.Version{{LastModified: latest.ModTime(), IsLatest: true}}, nil
	}
	out := make([]store.Version, len(ids))
	found := false
	for i := range ids {
		ns := ids[len(ids)-1-i]
		id := formatVersionID(ns)
		out[i] = store.Version{ID: id, LastModified: time.Unix(0, ns)}
		fi, err := os.Stat(filepath.Join(vdir, id))
		if err != nil {
			continue
		}
		// A version's name orders it, and is its time unless a writer
		// whose clock ran ahead named the one before it (addVersion then
		// names it just after that one): the file's modification time,
		// set when it was written, is then the earlier and the truer.
		if mt := fi.ModTime(); mt.Before(out[i].LastModified) {
			out[i].LastModified = mt
		}
		if lerr == nil && !found && os.SameFile(fi, latest) {
			out[i].IsLatest = true
			found = true
		}
	}
	if lerr == nil && !found {
		// Versions copied rather than linked: the newest is the latest.
		out[0].IsLatest = true
	}
	return out, nil
}

// versionIDs returns the version IDs in vdir, as integers, in increasing
// order. Other files are ignored.
func (s *Store) versionIDs(vdir string) ([]int64, error) {
	names, err := readDirNames(vdir)
	if err != nil {
		return nil, err
	}
	ids := make([]int64, 0, len(names))
	for _, n := range names {
		if ns, ok := parseVersionID(n); ok {
			ids = append(ids, ns)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

func formatVersionID(ns int64) string {
	return fmt.Sprintf("%0*d", versionIDLen, ns)
}

func parseVersionID(id string) (int64, bool) {
	if len(id) != versionIDLen {
		return 0, false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < '0' || id[i] > '9' {
			return 0, false
		}
	}
	ns, err := strconv.ParseInt(id, 10, 64)
	return ns, err == nil && ns >= 0
}

// writeTemp writes blob to a new file in tmp/ with mode perm (less what
// the umask takes away), synced, and returns its path. tmp/ itself is
// private to the store's owner.
func (s *Store) writeTemp(blob []byte, perm fs.FileMode) (string, error) {
	if err := s.mkdirs(0o700, dirTmp); err != nil {
		return "", err
	}
	s.swept.Do(s.removeStaleTemps)
	return localfs.WriteTemp(filepath.Join(s.root, dirTmp), "put-", blob, perm, true)
}

// mkdirs creates the directories root/elem[0], root/elem[0]/elem[1], …
// that do not exist yet, with mode perm less the umask, and narrows those
// that exist to at most perm's read and search bits (narrowDir). Unlike
// os.MkdirAll it never creates the root itself: a missing root (an
// unmounted file system, say) is an error.
func (s *Store) mkdirs(perm fs.FileMode, elem ...string) error {
	dir := s.root
	for _, e := range elem {
		dir = filepath.Join(dir, e)
		err := os.Mkdir(dir, perm)
		if errors.Is(err, fs.ErrExist) {
			localfs.NarrowDir(dir, perm)
		} else if err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) rootExists() bool {
	fi, err := os.Stat(s.root)
	return err == nil && fi.IsDir()
}

// removeStaleTemps removes the temporary files of puts (put-*) that a
// crash left in tmp/ more than staleTmpAge ago. It touches nothing else:
// not a tmp/ that is a symbolic link or that another user owns, and, in
// it, only regular files, by name relative to the directory it opened, so
// that nothing a store's writer put there can send it elsewhere.
func (s *Store) removeStaleTemps() {
	dir := filepath.Join(s.root, dirTmp)
	fi, err := os.Lstat(dir)
	if err != nil || !fi.IsDir() || !localfs.OwnedByMe(fi) {
		return
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return
	}
	defer r.Close()
	if rfi, err := r.Stat("."); err != nil || !os.SameFile(fi, rfi) {
		return // replaced since the Lstat
	}
	names, err := readRootNames(r)
	if err != nil {
		return
	}
	cutoff := s.now().Add(-staleTmpAge)
	for _, name := range names {
		if !strings.HasPrefix(name, "put-") {
			continue
		}
		if fi, err := r.Lstat(name); err == nil && fi.Mode().IsRegular() && fi.ModTime().Before(cutoff) {
			_ = r.Remove(name)
		}
	}
}

// readRootNames lists the names in the directory r.
func readRootNames(r *os.Root) ([]string, error) {
	d, err := r.Open(".")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Readdirnames(-1)
}

// readFileMax reads a regular file of at most limit bytes, never
// blocking in open(2) (a named pipe at a key) and never following a
// symbolic link. A file that is not regular, or larger than limit, is
// reported as corrupt, without being read.
func readFileMax(path string, limit int64) ([]byte, error) {
	b, err := fsutil.ReadFileMax(path, limit)
	if errors.Is(err, fsutil.ErrNotRegular) || errors.Is(err, fsutil.ErrTooLarge) {
		return nil, fmt.Errorf("%w: %w", store.ErrCorrupt, err)
	}
	return b, err
}

// readFileInto reads the file at path, a regular file of at most limit
// bytes, into the buffer alloc returns for its size.
func readFileInto(path string, limit int64, alloc func(size int) ([]byte, error)) ([]byte, error) {
	f, fi, err := fsutil.Open(path)
	if err != nil {
		if errors.Is(err, fsutil.ErrNotRegular) {
			return nil, fmt.Errorf("%w: %w", store.ErrCorrupt, err)
		}
		return nil, err
	}
	defer f.Close()
	if fi.Size() > limit {
		return nil, fmt.Errorf("%s is %d bytes, more than the %d it may have: %w", path, fi.Size(), limit, store.ErrCorrupt)
	}
	buf, err := alloc(int(fi.Size()))
	if err != nil {
		return nil, err
	}
	buf = buf[:fi.Size()]
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	// One byte more: a file that grew since its size was read is not
	// the pack it was.
	var more [1]byte
	if n, _ := f.Read(more[:]); n > 0 {
		return nil, fmt.Errorf("%s grew past %d bytes while read: %w", path, fi.Size(), store.ErrCorrupt)
	}
	return buf, nil
}

// readDirNames lists the directory dir, sorted, never blocking in
// open(2).
func readDirNames(dir string) ([]string, error) {
	entries, err := fsutil.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	return names, nil
}

func (s *Store) keyErr(op, key string, err error) error {
	return &store.Error{Op: op, Key: key, Target: s.root, Detail: err.Error(), Kind: store.ErrPermanent, Err: err}
}

// err wraps a file system error, classifying it.
func (s *Store) err(op, key string, err error) error {
	e := &store.Error{Op: op, Key: key, Target: s.root, Err: err}
	var pe *fs.PathError
	detail := err.Error()
	if errors.As(err, &pe) {
		// The path is in the message already via Target and Key.
		detail = pe.Op + " " + pe.Path + ": " + pe.Err.Error()
	}
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		e.Detail = detail
	case errors.Is(err, store.ErrCorrupt):
		e.Kind = store.ErrCorrupt
		e.Detail = detail
	case errors.Is(err, fs.ErrNotExist):
		if !s.rootExists() {
			e.Kind = store.ErrPermanent
			e.Detail = "store directory " + s.root + " does not exist: " + detail
		} else {
			e.Kind = store.ErrNotFound
			e.Detail = "not found"
		}
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS):
		e.Kind = store.ErrPermanent
		e.Detail = "store directory " + s.root + " is not writable or readable: " + detail
	case errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.ENAMETOOLONG), errors.Is(err, syscall.EINVAL),
		errors.Is(err, syscall.EISDIR), errors.Is(err, syscall.ELOOP):
		e.Kind = store.ErrPermanent
		e.Detail = detail
	default:
		// ENOSPC, EIO, EMFILE, ESTALE and the like may clear up.
		e.Retryable = true
		e.Detail = detail
	}
	return e
}

func init() {
	store.RegisterBackend(store.Backend{Name: "dir", Open: func(_ context.Context, t config.Target, _ store.OpenOptions) (store.Store, bool, error) {
		if t.Dir == nil {
			return nil, false, nil
		}
		s, err := New(t.Dir.Path)
		return s, err == nil, err
	}})
}
