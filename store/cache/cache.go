package cache

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/fsutil"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/internal/localfs"
)

// Store is a chunk cache in a local directory, shared by the processes
// of a host: the uploader fills it as it uploads, and read replicas look in
// it before the network. Chunks are stored raw (uncompressed, so they can
// be mapped into memory) under <dir>/<shard>/<fingerprint>, or the chunks
// of a pack together in a slab (slab.go), and verified against their
// fingerprint when read. It holds at most about capacity chunks: when a
// shard outgrows its share, its least recently used files are evicted
// until it is back within nine tenths of it (reads refresh a file's
// modification time; a slab counts for its chunks). Each process counts
// what it adds and lists a shard when its count goes over the share, and
// at least once every sixty-fourth of the share it adds, for the files
// other processes added: a shard holds at most its share plus a
// sixty-fourth of it per other process adding to it at the same time.
//
// A cache belongs to one user. Its directories are created 0700 and its
// files are read-only, at most as readable as the database they came from
// (WithSourcePerm; owner only when the put does not say), within the
// umask. Every file is opened without blocking, checked to be a regular
// file, and verified; it is mapped into memory only when nobody but its
// user can change it (OpenChunk), and read into memory otherwise.
//
// It is a [store.Cache]: a store.Store for chunks only, that holds no packs
// and no manifests.
type Store struct {
	dir      string
	shards   int
	perShard int

	relist int // list a shard after this many additions at most

	mu      sync.Mutex
	private map[int]bool       // shards whose mode narrowShard checked
	count   map[int]shardCount // what this process knows of each shard
	listed  int64              // shard listings so far; for tests

	indexes slabIndexes // of the slabs read last
}

// shardCount is a shard's file count as last listed, plus what this
// process added since.
type shardCount struct {
	files int // as listed, plus added since
	added int // added since the last listing
}

// New returns a cache in dir with numShards subdirectories
// (zero means 1) and room for about capacity chunks.
func New(dir string, numShards int, capacity int64) (*Store, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("cache: local cache directory %q must be absolute", dir)
	}
	if numShards <= 0 {
		numShards = 1
	}
	if capacity <= 0 {
		return nil, fmt.Errorf("cache: local cache %s: capacity must be at least 1 chunk", dir)
	}
	per := int((capacity + int64(numShards) - 1) / int64(numShards))
	per = max(per, 1)
	return &Store{dir: filepath.Clean(dir), shards: numShards, perShard: per, relist: max(per/64, 1),
		private: map[int]bool{}, count: map[int]shardCount{}}, nil
}

var _ store.Store = (*Store)(nil)

// Capacity is about how many chunks the cache holds at most.
func (c *Store) Capacity() int64 { return int64(c.perShard) * int64(c.shards) }

// HasChunk reports whether the cache has a regular file for chunk fp. It
// neither reads nor verifies it: for a prefetch deciding what to fetch.
func (c *Store) HasChunk(fp manifest.Fingerprint) bool {
	fi, err := os.Lstat(c.Path(fp))
	return err == nil && fi.Mode().IsRegular()
}

// Dir is the cache directory.
func (c *Store) Dir() string { return c.dir }

// Shards is the number of shard directories that Path spreads chunks
// over.
func (c *Store) Shards() int { return c.shards }

// ChunkCache marks the cache as a store.Cache.
func (c *Store) ChunkCache() {}

var _ store.Cache = (*Store)(nil)

// String implements store.Store: "local:" and the cache directory.
func (c *Store) String() string { return "local:" + c.dir }

func (c *Store) shard(fp manifest.Fingerprint) int { return shardOf(fp, c.shards) }

// shardDir is the directory of shard s.
func (c *Store) shardDir(s int) string {
	return strings.TrimSuffix(string(appendShard([]byte(strings.TrimSuffix(c.dir, "/")), s)), "/")
}

// shardOf is the shard, of n, that holds fp: its first two bytes modulo n.
func shardOf(fp manifest.Fingerprint, n int) int {
	return int(uint16(fp[0])<<8|uint16(fp[1])) % n
}

// Path is where the chunk fp lives in the cache, if it is there.
func (c *Store) Path(fp manifest.Fingerprint) string { return ChunkPath(c.dir, c.shards, fp) }

// ChunkPath is where a cache laid out in dir over shards shard
// directories keeps chunk fp, as a file of its own: dir/<shard>/<fp>, or
// dir/<fp> when shards is 0 or less (a directory seeded by hand). Readers
// of a directory this package does not open (a read-only seed) find
// chunks through it.
func ChunkPath(dir string, shards int, fp manifest.Fingerprint) string {
	b := make([]byte, 0, len(dir)+1+3+1+2*manifest.FingerprintSize)
	b = append(b, strings.TrimSuffix(dir, "/")...)
	if shards > 0 {
		b = appendShard(b, shardOf(fp, shards))
	} else {
		b = append(b, '/')
	}
	return string(hex.AppendEncode(b, fp[:]))
}

// PutChunk stores data under fp, atomically, unless it is already there:
// then it only takes away from the file's mode what the database (ctx,
// WithSourcePerm) does not give, if the file is this user's.
func (c *Store) PutChunk(ctx context.Context, fp manifest.Fingerprint, data []byte) error {
	_, err := c.PutChunkFile(ctx, fp, data)
	return err
}

// PutChunkFile is PutChunk, and returns the status of the file it
// created, taken after the file was renamed into place; nil when the
// file was there already (its contents are then not data's, as far as
// the caller knows). A caller that verified data can recognize the file
// later by its device, inode and change time (see snapshot's loadCached).
func (c *Store) PutChunkFile(ctx context.Context, fp manifest.Fingerprint, data []byte) (fs.FileInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, c.fail("put chunk", fp.String(), nil, err)
	}
	p := c.Path(fp)
	perm := store.FilePerm(store.SourcePerm(ctx))
	sdir := filepath.Dir(p)
	c.narrowShard(c.shard(fp), sdir)
	if fi, err := os.Lstat(p); err == nil {
		if cur := fi.Mode().Perm(); fi.Mode().IsRegular() && cur&^perm != 0 && localfs.OwnedByMe(fi) {
			_ = os.Chmod(p, cur&perm)
		}
		return nil, nil
	}
	// 0700 whatever the umask lets through: another user must not be
	// able to list the cache, nor to change it under a reader.
	if err := os.MkdirAll(sdir, 0o700); err != nil {
		return nil, c.fail("put chunk", fp.String(), nil, err)
	}
	// Not synced: a cached chunk that a crash damaged is verified,
	// deleted and fetched again.
	tmp, err := localfs.WriteTemp(sdir, tempPrefix, data, perm, false)
	if err == nil {
		if err = os.Rename(tmp, p); err != nil {
			_ = os.Remove(tmp)
		}
	}
	if err != nil {
		return nil, c.fail("put chunk", fp.String(), nil, err)
	}
	c.noteAdded(c.shard(fp), 1)
	fi, err := os.Lstat(p)
	if err != nil || !fi.Mode().IsRegular() {
		return nil, nil // cached, but gone or replaced already
	}
	return fi, nil
}

// GetChunk reads and verifies the chunk fp; ErrNotFound when absent. A
// corrupt file is deleted and reported as ErrCorrupt.
func (c *Store) GetChunk(ctx context.Context, fp manifest.Fingerprint) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, c.fail("get chunk", fp.String(), nil, err)
	}
	p := c.Path(fp)
	data, err := fsutil.ReadFileMax(p, manifest.ChunkSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, c.fail("get chunk", fp.String(), store.ErrNotFound, nil)
	}
	if errors.Is(err, fsutil.ErrNotRegular) {
		// Not something this cache wrote: report it, leave it.
		return nil, c.fail("get chunk", fp.String(), store.ErrCorrupt, err)
	}
	if errors.Is(err, fsutil.ErrTooLarge) {
		data = nil // a chunk is never larger: deleted as corrupt below
	} else if err != nil {
		return nil, c.fail("get chunk", fp.String(), nil, err)
	}
	if data == nil || manifest.Sum(data) != fp {
		_ = os.Remove(p)
		return nil, c.fail("get chunk", fp.String(), store.ErrCorrupt, nil)
	}
	now := time.Now()
	_ = os.Chtimes(p, now, now)
	return data, nil
}

// PutPack implements store.Store: a cache holds chunks one file each, never
// packs; the uploader puts a pack's chunks into caches one by one.
func (c *Store) PutPack(ctx context.Context, id manifest.Fingerprint, blob []byte) error {
	return c.fail("put pack", id.String(), store.ErrPermanent, errors.New("a chunk cache holds no packs"))
}

// GetPack implements store.Store: always ErrNotFound.
func (c *Store) GetPack(ctx context.Context, id manifest.Fingerprint) ([]byte, error) {
	return nil, c.fail("get pack", id.String(), store.ErrNotFound, nil)
}

// TouchPack implements store.Store: always ErrNotFound.
func (c *Store) TouchPack(ctx context.Context, id manifest.Fingerprint) error {
	return c.fail("touch pack", id.String(), store.ErrNotFound, nil)
}

// PutBase implements store.Store: a cache holds no manifest bases.
func (c *Store) PutBase(ctx context.Context, id manifest.Fingerprint, blob []byte) error {
	return c.fail("put base", id.String(), store.ErrPermanent, errors.New("a chunk cache holds no manifest bases"))
}

// GetBase implements store.Store: always ErrNotFound.
func (c *Store) GetBase(ctx context.Context, id manifest.Fingerprint, size int64) ([]byte, error) {
	return nil, c.fail("get base", id.String(), store.ErrNotFound, nil)
}

// TouchBase implements store.Store: always ErrNotFound.
func (c *Store) TouchBase(ctx context.Context, id manifest.Fingerprint) error {
	return c.fail("touch base", id.String(), store.ErrNotFound, nil)
}

// TouchChunk refreshes the chunk's time, so eviction spares it.
func (c *Store) TouchChunk(ctx context.Context, fp manifest.Fingerprint) error {
	if err := ctx.Err(); err != nil {
		return c.fail("touch chunk", fp.String(), nil, err)
	}
	now := time.Now()
	if err := os.Chtimes(c.Path(fp), now, now); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return c.fail("touch chunk", fp.String(), store.ErrNotFound, nil)
		}
		return c.fail("touch chunk", fp.String(), nil, err)
	}
	return nil
}

func (c *Store) noManifests(op, key string) error { return c.fail(op, key, store.ErrNotFound, nil) }

// fail describes a failed cache operation; kind is a sentinel or nil.
func (c *Store) fail(op, key string, kind, cause error) error {
	e := &store.Error{Op: "local cache " + op, Key: key, Target: c.dir, Kind: kind, Err: cause}
	switch {
	case kind == store.ErrNotFound:
		e.Detail = "not found"
	case kind == store.ErrCorrupt && cause != nil:
		e.Detail = cause.Error()
	case kind == store.ErrCorrupt:
		e.Detail = "cached chunk does not match its fingerprint (deleted)"
	case cause != nil:
		e.Detail = cause.Error()
	default:
		e.Detail = "failed"
	}
	return e
}

// PutManifest is not supported: a cache holds chunks only.
func (c *Store) PutManifest(ctx context.Context, key string, data []byte) error {
	e := c.fail("put manifest", key, store.ErrPermanent, nil)
	e.(*store.Error).Detail = "a local cache holds no manifests"
	return e
}

// GetManifest always reports ErrNotFound.
func (c *Store) GetManifest(ctx context.Context, key string) ([]byte, error) {
	return nil, c.noManifests("get manifest", key)
}

// ListManifests lists nothing.
func (c *Store) ListManifests(ctx context.Context, prefix string) ([]store.ManifestInfo, error) {
	return nil, nil
}

// ManifestVersions lists nothing.
func (c *Store) ManifestVersions(ctx context.Context, key string) ([]store.Version, error) {
	return nil, nil
}

// GetManifestVersion always reports ErrNotFound.
func (c *Store) GetManifestVersion(ctx context.Context, key, versionID string) ([]byte, error) {
	return nil, c.noManifests("get manifest version", key)
}

// tempPrefix begins the names of the files being written.
const tempPrefix = ".tmp-"

// noteAdded counts a new file of chunks chunks in shard s, and lists the shard (evicting
// if it is over its share of the capacity) when this process's count goes
// over the share, or when it added a sixty-fourth of the share since the
// last listing: other processes sharing the cache add files this
// process's count does not see. Listing the shard at every addition, as
// an earlier version did, made an addition cost a stat of every file of
// the shard: a cold scan of a 1 GiB replica spent most of its time there.
//
// A slab counts for its chunks (n).
func (c *Store) noteAdded(s, chunks int) {
	c.mu.Lock()
	n, known := c.count[s]
	n.files += chunks
	n.added += chunks
	c.count[s] = n
	c.mu.Unlock()
	if known && n.files <= c.perShard && n.added < c.relist {
		return
	}
	c.evict(s)
}

// evict lists shard s and, if its files hold more chunks than its share,
// deletes the least recently used files until they hold at most nine
// tenths of it. A file counts for its chunks: one for a chunk's file, a
// slab's for a slab (slabWeight, from its size). Only then are the files'
// times read.
func (c *Store) evict(s int) {
	sdir := c.shardDir(s)
	entries, err := fsutil.ReadDir(sdir)
	c.mu.Lock()
	c.listed++
	c.mu.Unlock()
	if err != nil {
		return
	}
	type file struct {
		name   string
		mod    time.Time
		weight int
	}
	var files []file
	n := 0
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		if !strings.HasSuffix(e.Name(), slabSuffix) && !strings.HasPrefix(e.Name(), tempPrefix) {
			n++ // a chunk's file: weighed without a stat
			files = append(files, file{name: e.Name(), weight: 1})
			continue
		}
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		w := slabWeight(e.Name(), info.Size())
		if strings.HasPrefix(e.Name(), tempPrefix) {
			w = int(max(info.Size()/SlabSlot, 1))
		}
		n += w
		files = append(files, file{e.Name(), info.ModTime(), w})
	}
	if n > c.perShard {
		now := time.Now()
		kept := files[:0]
		n = 0
		for _, f := range files {
			if f.mod.IsZero() {
				info, err := os.Lstat(filepath.Join(sdir, f.name))
				if err != nil || !info.Mode().IsRegular() {
					continue
				}
				f.mod = info.ModTime()
			}
			if strings.HasPrefix(f.name, tempPrefix) && now.Sub(f.mod) < time.Minute {
				continue // being written by another writer; a stale one goes later
			}
			kept = append(kept, f)
			n += f.weight
		}
		files = kept
		sort.Slice(files, func(i, j int) bool { return files[i].mod.Before(files[j].mod) })
		// Another writer may have removed some since the listing: the
		// files still there decide.
		if n > c.perShard {
			target := c.perShard - c.perShard/10
			for _, f := range files {
				if n <= target {
					break
				}
				if os.Remove(filepath.Join(sdir, f.name)) == nil {
					n -= f.weight
				}
			}
		}
	}
	c.mu.Lock()
	c.count[s] = shardCount{files: n}
	c.mu.Unlock()
}

// listings reports how many times a shard was listed; for tests.
func (c *Store) listings() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.listed
}

// narrowShard makes the shard directory sdir 0700 if it is this user's and
// wider (made by an older version, which gave it 0755), once per shard.
func (c *Store) narrowShard(s int, sdir string) {
	c.mu.Lock()
	done := c.private[s]
	c.private[s] = true
	c.mu.Unlock()
	if done {
		return
	}
	if fi, err := os.Lstat(sdir); err == nil && fi.IsDir() && fi.Mode().Perm()&0o077 != 0 && localfs.OwnedByMe(fi) {
		_ = os.Chmod(sdir, fi.Mode().Perm()&0o700)
	}
}

// OpenChunk opens the cache file of chunk fp for reading, without
// blocking in open(2) and without following a symbolic link, and returns
// it with its status. Anything but a regular file is an error wrapping
// fsutil.ErrNotRegular; a missing one wraps fs.ErrNotExist. The caller
// verifies what it reads.
//
// mappable reports whether the file may be mapped into memory and served
// from there after it was verified: nobody but this process's user (and
// root) can change or truncate it. That holds when the open file is owned
// by this process's effective user and has no write bit (changing it
// takes a chmod, which only its owner may do), and every directory from
// the file's up to the cache directory is owned by that user and writable
// by nobody else, so that nobody else can have put it there. Otherwise
// the caller reads the file into memory and serves that copy.
func (c *Store) OpenChunk(fp manifest.Fingerprint) (f *os.File, fi fs.FileInfo, mappable bool, err error) {
	p := c.Path(fp)
	f, fi, err = fsutil.Open(p)
	if err != nil {
		return nil, nil, false, err
	}
	return f, fi, fi.Mode().Perm()&0o222 == 0 && localfs.OwnedByMe(fi) && c.privateDirs(filepath.Dir(p)), nil
}

// privateDirs reports whether dir and each directory above it up to the
// cache directory (inclusive, followed if it is a symbolic link) are owned
// by this process's effective user and not writable by group or others.
func (c *Store) privateDirs(dir string) bool {
	for {
		stat := os.Lstat
		if dir == c.dir {
			stat = os.Stat
		}
		fi, err := stat(dir)
		if err != nil || !fi.IsDir() || fi.Mode().Perm()&0o022 != 0 || !localfs.OwnedByMe(fi) {
			return false
		}
		if dir == c.dir {
			return true
		}
		parent := filepath.Dir(dir)
		if parent == dir || len(parent) < len(c.dir) {
			return false // not under the cache directory
		}
		dir = parent
	}
}

func init() {
	store.RegisterBackend(store.Backend{Name: "local", Open: func(_ context.Context, t config.Target, _ store.OpenOptions) (store.Store, bool, error) {
		if t.Local == nil {
			return nil, false, nil
		}
		s, err := New(t.Local.Directory, int(t.Local.NumShards), int64(t.Local.Capacity))
		return s, err == nil, err
	}})
}
