package vfs_test

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store/cache"
	"github.com/boule-vfs/boule/vfs"
)

// largeReplica is a replica about three times larger than the least
// bounds a process may set (16 chunks held, 2 MiB of memory), whose chunk
// cache already holds every chunk, written by another process (so this
// one has no record of the files, and hashes each one once).
type largeReplica struct {
	path     string
	want     string // digest of the source
	chunks   int
	cacheDir string
	slabs    bool // the cache's files are slabs, not a file per chunk
	rep      *sql.DB
}

// layouts are the chunk cache's two layouts: a file per chunk (as the
// uploader writes, and older readers wrote), and a slab per pack (as
// readers write).
var layouts = []struct {
	name  string
	slabs bool
}{{"chunk files", false}, {"slabs", true}}

func newLargeReplica(t *testing.T, slabs bool) *largeReplica {
	t.Helper()
	tg, _ := dirTarget(t)
	e := replEnv(t, tg)
	path, src := e.writer(t, "large.db", "")
	fill(t, src, 3000) // about 3.3 MiB: 52 chunks
	mustFlush(t, path)
	want, err := digest(src)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	l := &largeReplica{path: path, want: want, cacheDir: t.TempDir(), slabs: slabs}
	c, err := cache.New(l.cacheDir, 2, 1<<10)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(data); off += manifest.ChunkSize {
		chunk := data[off:min(off+manifest.ChunkSize, len(data))]
		if !slabs {
			if err := c.PutChunk(context.Background(), manifest.Sum(chunk), chunk); err != nil {
				t.Fatal(err)
			}
		}
		l.chunks++
	}
	if l.chunks < 3*config.MinReplicaMappedChunks {
		t.Fatalf("the replica has %d chunks, want at least %d: it would fit", l.chunks, 3*config.MinReplicaMappedChunks)
	}
	local := config.Target{Local: &config.LocalTarget{Directory: l.cacheDir, NumShards: 2, Capacity: 1 << 10}}
	cfg := vfs.Config{
		ReplicationTargets:     []config.Target{local, tg},
		ReplicaMemoryLimit:     config.MinReplicaMemoryLimit,
		ReplicaMaxMappedChunks: config.MinReplicaMappedChunks,
	}
	if slabs {
		// A first reader reads the replica cold, and writes the
		// cache's slabs (all of them by its Close).
		register(t, cfg)
		rep := openReplica(t, path, "")
		if got, err := digest(rep); err != nil || got != want {
			t.Fatalf("cold read: digest()=%s, %v; want the source's %s", got, err, want)
		}
		rep.Close()
		vfs.Reader().Close()
	}
	register(t, cfg)
	t.Cleanup(vfs.Reader().Close)
	l.rep = openReplica(t, path, "")
	l.rep.SetMaxOpenConns(1)
	return l
}

// check reads the whole replica (two queries, see digest) and compares
// it with the source, and returns the Go calls it took.
func (l *largeReplica) check(t *testing.T) int64 {
	t.Helper()
	calls := vfs.GoCalls()
	got, err := digest(l.rep)
	n := vfs.GoCalls() - calls
	if err != nil {
		t.Fatalf("digest()=%v", err)
	}
	if got != l.want {
		t.Fatalf("digest()=%s, want the source's %s", got, l.want)
	}
	return n
}

// cacheFiles returns the chunk cache's files, which hold every chunk but
// the inline chunk 0.
func (l *largeReplica) cacheFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(l.cacheDir, "*", "*"))
	if err != nil {
		t.Fatal(err)
	}
	if !l.slabs && len(files) < l.chunks-1 {
		t.Fatalf("the cache holds %d files, want %d", len(files), l.chunks)
	}
	if l.slabs {
		slabs := 0
		for _, p := range files {
			if strings.HasSuffix(p, ".slab") {
				slabs++
			}
		}
		if slabs == 0 || len(files) >= l.chunks/2 {
			t.Fatalf("the cache holds %d files, %d of them slabs, for %d chunks; want slabs, a few", len(files), slabs, l.chunks)
		}
	}
	return files
}

// TestReplicaLargerThanHeldReadsFiles: a replica larger than the chunks
// the process may hold is read again, once each chunk has been read from
// its cache file, without a call into Go: C reads the chunks it does not
// hold from the files Go verified. The only calls left are for chunk 0,
// which is inline in the manifest (no file), and is read at the start of
// each of the two queries.
func TestReplicaLargerThanHeldReadsFiles(t *testing.T) {
	for _, lay := range layouts {
		t.Run(lay.name, func(t *testing.T) { testLargerThanHeldReadsFiles(t, lay.slabs) })
	}
}

func testLargerThanHeldReadsFiles(t *testing.T, slabs bool) {
	l := newLargeReplica(t, slabs)
	if slabs {
		l.cacheFiles(t)
	}
	if first := l.check(t); first < int64(l.chunks-config.MinReplicaMappedChunks) {
		t.Errorf("GoCalls() for the first read of %d chunks=%d, want at least %d: were they held already?", l.chunks, first, l.chunks-config.MinReplicaMappedChunks)
	}
	for round := range 2 {
		if got := l.check(t); got > 2 {
			t.Errorf("round %d: GoCalls() for a read of %d chunks=%d, want at most 2 (chunk 0, inline)", round, l.chunks, got)
		}
	}
	if held, _, evicted := vfs.Reader().Held(); evicted == 0 || held > config.MinReplicaMappedChunks {
		t.Errorf("Held()=%d chunks, %d evicted; want at most %d, and some evicted", held, evicted, config.MinReplicaMappedChunks)
	}
}

// TestReplicaReplacedCacheFilesNotRead: a cache file replaced after Go
// verified it (by a file of the same user, mode and size, with other
// bytes, renamed over it) is not read from C: the replica still returns
// the source's data (Go finds the file bad, drops it, and fetches the
// chunk from the store). (A file changed in place is the owner's doing,
// whom the cache trusts: chunks mapped from it would change too.)
func TestReplicaReplacedCacheFilesNotRead(t *testing.T) {
	for _, lay := range layouts {
		t.Run(lay.name, func(t *testing.T) { testReplacedCacheFilesNotRead(t, lay.slabs) })
	}
}

func testReplacedCacheFilesNotRead(t *testing.T, slabs bool) {
	l := newLargeReplica(t, slabs)
	l.check(t)
	files := l.cacheFiles(t)
	changed := 0
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for k := range b {
			b[k] ^= 0x5a
		}
		tmp := p + ".new"
		if err := os.WriteFile(tmp, b, 0o400); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, p); err != nil {
			t.Fatal(err)
		}
		changed++
	}
	if calls := l.check(t); calls < int64(changed-2*config.MinReplicaMappedChunks) {
		t.Errorf("GoCalls()=%d after %d cache files were replaced, want at least %d: the files were read without Go", calls, changed, changed-2*config.MinReplicaMappedChunks)
	}
}

// TestReplicaFileReadsRefreshMtime: a chunk read from its cache file by C
// counts as a use for the cache's eviction, which goes by mtime: the read
// refreshes a file's mtime once it is older than the touch age (a minute;
// zero here), and moves the file's stamp along with the change time that
// the refresh changes, so that later reads still need no call into Go.
func TestReplicaFileReadsRefreshMtime(t *testing.T) {
	for _, lay := range layouts {
		t.Run(lay.name, func(t *testing.T) { testFileReadsRefreshMtime(t, lay.slabs) })
	}
}

func testFileReadsRefreshMtime(t *testing.T, slabs bool) {
	l := newLargeReplica(t, slabs)
	l.check(t)
	files := l.cacheFiles(t)
	mtimes := func() map[string]time.Time {
		m := make(map[string]time.Time, len(files))
		for _, p := range files {
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			m[p] = st.ModTime()
		}
		return m
	}
	before := mtimes()
	vfs.SetSnapTouchAge(t, 0)
	if calls := l.check(t); calls > 2 {
		t.Fatalf("GoCalls()=%d for a read with every file refreshed, want at most 2 (chunk 0, inline): the refresh lost the files' stamps", calls)
	}
	refreshed := 0
	for p, m := range mtimes() {
		if m.After(before[p]) {
			refreshed++
		}
	}
	// Chunks still held in memory are not read from their files.
	if want := len(files) - config.MinReplicaMappedChunks; refreshed < want {
		t.Errorf("%d of %d cache files had their mtime refreshed by the read, want at least %d", refreshed, len(files), want)
	}
	if calls := l.check(t); calls > 2 {
		t.Errorf("GoCalls()=%d for the read after the refresh, want at most 2: the stamps did not follow the files' change times", calls)
	}
}

// TestReplicaHeldWhileRoom: chunks a replica got from the store, as
// copies, and let go of to keep its memory bound, are read again through
// Go, which maps them from their cache files and holds them, while the
// process holds fewer chunks than it may: reads of them are then from
// memory. (Reading them from their files at each read instead made a
// warm point query 5.7 times slower.)
func TestReplicaHeldWhileRoom(t *testing.T) {
	tg, _ := dirTarget(t)
	e := replEnv(t, tg)
	path, src := e.writer(t, "room.db", "")
	fill(t, src, 3000) // about 3.3 MiB: 52 chunks, more than the copies allowed
	mustFlush(t, path)
	want, err := digest(src)
	if err != nil {
		t.Fatal(err)
	}
	cacheDir := t.TempDir()
	local := config.Target{Local: &config.LocalTarget{Directory: cacheDir, NumShards: 2, Capacity: 1 << 10}}
	register(t, vfs.Config{
		ReplicationTargets: []config.Target{local, tg},
		ReplicaMemoryLimit: config.MinReplicaMemoryLimit, // copies: a quarter, 8 chunks
	})
	t.Cleanup(vfs.Reader().Close)
	rep := openReplica(t, path, "")
	rep.SetMaxOpenConns(1)
	for round := range 4 {
		got, err := digest(rep)
		if err != nil || got != want {
			t.Fatalf("round %d: digest()=%s, %v; want the source's %s", round, got, err, want)
		}
	}
	if held, copies, _ := vfs.Reader().Held(); held < 40 {
		t.Errorf("Held()=%d chunks (%d copies) after four reads of a 52-chunk replica, want nearly all: read from their files at each read?", held, copies)
	}
}
