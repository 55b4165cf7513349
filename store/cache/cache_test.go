package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/storetest"
)

func newTestCache(t *testing.T, shards int, capacity int64) *Store {
	t.Helper()
	c, err := New(t.TempDir(), shards, capacity)
	if err != nil {
		t.Fatalf("New()=%v", err)
	}
	return c
}

func TestLocalCacheConformance(t *testing.T) {
	c := newTestCache(t, 4, 1000)
	h := storetest.FileHarness(c, c.Path)
	h.ChunksOnly = true
	storetest.Run(t, h)
}

// TestLimitedLocalCacheConformance runs the suite through the retry
// wrapper, which must be transparent, and keep the cache a cache.
func TestLimitedLocalCacheConformance(t *testing.T) {
	c := newTestCache(t, 4, 1000)
	h := storetest.FileHarness(c, c.Path)
	h.ChunksOnly = true
	storetest.RunLimited(t, h)
}

// cacheChunk returns chunk bytes determined by seed, and their fingerprint.
func cacheChunk(seed uint64, n int) ([]byte, manifest.Fingerprint) {
	b := storetest.RandomBytes(seed, n)
	return b, manifest.Sum(b)
}

func TestNewLocalCacheErrors(t *testing.T) {
	tests := []struct {
		name     string
		dir      string
		capacity int64
	}{
		{"relative directory", "cache", 10},
		{"zero capacity", "/tmp/boule-cache", 0},
		{"negative capacity", "/tmp/boule-cache", -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.dir, 1, tt.capacity); err == nil {
				t.Errorf("New(%q, 1, %d)=nil error, want an error", tt.dir, tt.capacity)
			}
		})
	}
}

func TestLocalCachePutGet(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		size int
	}{
		{"empty chunk", 0},
		{"one byte", 1},
		{"partial chunk", 1000},
		{"full chunk", manifest.ChunkSize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, 4, 100)
			data, fp := cacheChunk(uint64(tt.size)+1, tt.size)
			if _, err := c.GetChunk(ctx, fp); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("GetChunk() before Put=%v, want ErrNotFound", err)
			}
			if err := c.PutChunk(ctx, fp, data); err != nil {
				t.Fatalf("PutChunk()=%v, want nil", err)
			}
			if err := c.PutChunk(ctx, fp, data); err != nil {
				t.Fatalf("second PutChunk()=%v, want nil", err)
			}
			got, err := c.GetChunk(ctx, fp)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("GetChunk()=%d bytes, %v, want the %d bytes put", len(got), err, len(data))
			}
			// Stored raw, read-only, in its shard.
			p := c.Path(fp)
			if filepath.Dir(filepath.Dir(p)) != c.Dir() {
				t.Errorf("Path()=%s, want <dir>/<shard>/<fp>", p)
			}
			raw, err := os.ReadFile(p)
			if err != nil || !bytes.Equal(raw, data) {
				t.Errorf("file %s: %v, want the raw chunk", p, err)
			}
			// Put for no database in particular: its owner's only.
			if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o400 {
				t.Errorf("file mode %v, %v, want 0400", fi.Mode().Perm(), err)
			}
			if err := c.TouchChunk(ctx, fp); err != nil {
				t.Errorf("TouchChunk()=%v, want nil", err)
			}
		})
	}
}

func TestLocalCacheManifests(t *testing.T) {
	ctx := context.Background()
	c := newTestCache(t, 1, 10)
	if err := c.PutManifest(ctx, "k", []byte("m")); !errors.Is(err, store.ErrPermanent) {
		t.Errorf("PutManifest()=%v, want ErrPermanent", err)
	}
	if _, err := c.GetManifest(ctx, "k"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetManifest()=%v, want ErrNotFound", err)
	}
	if _, err := c.GetManifestVersion(ctx, "k", "v"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetManifestVersion()=%v, want ErrNotFound", err)
	}
	if l, err := c.ListManifests(ctx, ""); err != nil || len(l) != 0 {
		t.Errorf("ListManifests()=%v, %v, want nothing", l, err)
	}
	if want := "local:" + c.Dir(); c.String() != want {
		t.Errorf("String()=%q, want %q", c.String(), want)
	}
}

func TestLocalCacheCorrupt(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		mangle func([]byte) []byte
	}{
		{"flipped bit", func(b []byte) []byte { b = bytes.Clone(b); b[7] ^= 1; return b }},
		{"truncated", func(b []byte) []byte { return b[:len(b)-1] }},
		{"extended", func(b []byte) []byte { return append(bytes.Clone(b), 0) }},
		{"oversized", func(b []byte) []byte { return make([]byte, manifest.ChunkSize+1) }},
		{"empty", func([]byte) []byte { return nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, 2, 10)
			data, fp := cacheChunk(7, 5000)
			if err := c.PutChunk(ctx, fp, data); err != nil {
				t.Fatal(err)
			}
			p := c.Path(fp)
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, tt.mangle(data), 0o444); err != nil {
				t.Fatal(err)
			}
			if _, err := c.GetChunk(ctx, fp); !errors.Is(err, store.ErrCorrupt) {
				t.Fatalf("GetChunk()=%v, want ErrCorrupt", err)
			}
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("corrupt file kept: %v", err)
			}
			if _, err := c.GetChunk(ctx, fp); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("GetChunk() after the corrupt file went=%v, want ErrNotFound", err)
			}
			// And it can be cached again.
			if err := c.PutChunk(ctx, fp, data); err != nil {
				t.Fatal(err)
			}
			if got, err := c.GetChunk(ctx, fp); err != nil || !bytes.Equal(got, data) {
				t.Errorf("GetChunk() after a new Put=%v, want the chunk", err)
			}
		})
	}
}

// shardCounts returns the number of chunk files in each shard directory.
func shardCounts(t *testing.T, c *Store) map[string]int {
	t.Helper()
	entries, err := os.ReadDir(c.Dir())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, e := range entries {
		files, err := os.ReadDir(filepath.Join(c.Dir(), e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = len(files)
	}
	return out
}

func TestLocalCacheEviction(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name     string
		shards   int
		capacity int64
	}{
		{"one shard", 1, 20},
		{"four shards", 4, 40},
		{"capacity below shards", 8, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, tt.shards, tt.capacity)
			share := int((tt.capacity + int64(tt.shards) - 1) / int64(tt.shards))
			share = max(share, 1)
			var last manifest.Fingerprint
			for i := range 3 * int(tt.capacity) {
				data, fp := cacheChunk(uint64(1000+i), 200)
				if err := c.PutChunk(ctx, fp, data); err != nil {
					t.Fatalf("PutChunk(#%d)=%v", i, err)
				}
				last = fp
				for shard, n := range shardCounts(t, c) {
					if n > share {
						t.Fatalf("after %d puts, shard %s holds %d chunks, want at most %d", i+1, shard, n, share)
					}
				}
			}
			total := 0
			for _, n := range shardCounts(t, c) {
				total += n
			}
			if total == 0 || total > tt.shards*share {
				t.Errorf("cache holds %d chunks, want 1 to %d", total, tt.shards*share)
			}
			if _, err := c.GetChunk(ctx, last); err != nil {
				t.Errorf("the chunk put last was evicted: %v", err)
			}
		})
	}
}

// TestLocalCacheSharedEviction: two processes' caches on one directory
// add chunks in turn. Each lists a shard only every sixty-fourth of its
// share (listing it at every addition made a cold scan of a large replica
// spend its time in stat), and the shard stays within its share plus a
// sixty-fourth for the other process's additions.
func TestLocalCacheSharedEviction(t *testing.T) {
	ctx := context.Background()
	const capacity = 640 // one shard: a listing every 10 additions
	a := newTestCache(t, 1, capacity)
	b, err := New(a.Dir(), 1, capacity)
	if err != nil {
		t.Fatalf("New()=%v", err)
	}
	const puts = 3 * capacity
	for i := range puts {
		c := a
		if i%2 == 1 {
			c = b
		}
		data, fp := cacheChunk(uint64(5000+i), 100)
		if err := c.PutChunk(ctx, fp, data); err != nil {
			t.Fatalf("PutChunk(#%d)=%v", i, err)
		}
		for shard, n := range shardCounts(t, a) {
			if n > capacity+capacity/64 {
				t.Fatalf("after %d puts, shard %s holds %d chunks, want at most %d", i+1, shard, n, capacity+capacity/64)
			}
		}
	}
	for _, c := range []*Store{a, b} {
		// One listing per 10 additions, and some when the count goes
		// over the share: not one per addition.
		if got, most := c.listings(), int64(puts/2/5); got > most {
			t.Errorf("listings()=%d after %d puts, want at most %d", got, puts/2, most)
		}
	}
}

// A chunk read recently survives the eviction of older ones.
func TestLocalCacheGetRefreshes(t *testing.T) {
	ctx := context.Background()
	const capacity = 10
	c := newTestCache(t, 1, capacity)
	base := time.Now().Add(-time.Hour)
	var fps []manifest.Fingerprint
	for i := range capacity {
		data, fp := cacheChunk(uint64(2000+i), 100)
		if err := c.PutChunk(ctx, fp, data); err != nil {
			t.Fatal(err)
		}
		// Chunk i was last used at base + i seconds.
		when := base.Add(time.Duration(i) * time.Second)
		if err := os.Chtimes(c.Path(fp), when, when); err != nil {
			t.Fatal(err)
		}
		fps = append(fps, fp)
	}
	if _, err := c.GetChunk(ctx, fps[0]); err != nil {
		t.Fatalf("GetChunk()=%v", err)
	}
	if fi, err := os.Stat(c.Path(fps[0])); err != nil || !fi.ModTime().After(base.Add(capacity*time.Second)) {
		t.Fatalf("GetChunk() left the modification time at %v, %v; want it refreshed", fi.ModTime(), err)
	}
	// One more chunk: the cache is over capacity and evicts the least
	// recently used, chunks 1 and 2, not chunk 0.
	data, fp := cacheChunk(3000, 100)
	if err := c.PutChunk(ctx, fp, data); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		fp   manifest.Fingerprint
		kept bool
	}{
		{"recently read chunk", fps[0], true},
		{"least recently used", fps[1], false},
		{"second least recently used", fps[2], false},
		{"newer chunk", fps[3], true},
		{"new chunk", fp, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := os.Stat(c.Path(tt.fp))
			if kept := err == nil; kept != tt.kept {
				t.Errorf("kept=%v (%v), want %v", kept, err, tt.kept)
			}
		})
	}
}

func TestLocalCacheTouch(t *testing.T) {
	ctx := context.Background()
	c := newTestCache(t, 2, 10)
	data, fp := cacheChunk(9, 300)
	if err := c.TouchChunk(ctx, fp); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("TouchChunk() of a missing chunk=%v, want ErrNotFound", err)
	}
	if err := c.PutChunk(ctx, fp, data); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-48 * time.Hour)
	if err := os.Chtimes(c.Path(fp), old, old); err != nil {
		t.Fatal(err)
	}
	if err := c.TouchChunk(ctx, fp); err != nil {
		t.Fatalf("TouchChunk()=%v, want nil", err)
	}
	if fi, err := os.Stat(c.Path(fp)); err != nil || !fi.ModTime().After(old.Add(time.Hour)) {
		t.Errorf("TouchChunk() left the modification time at %v, %v", fi.ModTime(), err)
	}
}

// TestLocalCacheConcurrentEviction: writers of one process and of
// another add chunks to a shard at once, each evicting while the others
// remove files it listed; the shard stays within its share plus what
// they add between listings.
func TestLocalCacheConcurrentEviction(t *testing.T) {
	ctx := context.Background()
	const capacity = 16
	a := newTestCache(t, 1, capacity)
	b, err := New(a.Dir(), 1, capacity)
	if err != nil {
		t.Fatalf("New()=%v", err)
	}
	var wg sync.WaitGroup
	for w := range 8 {
		c := a
		if w%2 == 1 {
			c = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				data, fp := cacheChunk(uint64(10000+1000*w+i), 100)
				if err := c.PutChunk(ctx, fp, data); err != nil {
					t.Errorf("PutChunk()=%v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for shard, n := range shardCounts(t, a) {
		if n == 0 || n > capacity+8 {
			t.Errorf("shard %s holds %d chunks, want 1 to %d", shard, n, capacity+8)
		}
	}
}

// TestChunkPath: ChunkPath names the file the cache writes a chunk to,
// sharded or flat, in the layout FORMAT.md documents, so that a reader of
// a directory laid out that way (a read-only seed, a cache an earlier
// version wrote) finds it without opening the cache.
func TestChunkPath(t *testing.T) {
	for _, shards := range []int{1, 7, 256} {
		dir := t.TempDir()
		c, err := New(dir, shards, 1<<10)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 20 {
			data := []byte(fmt.Sprintf("chunk %d", i))
			fp := manifest.Sum(data)
			if err := c.PutChunk(context.Background(), fp, data); err != nil {
				t.Fatal(err)
			}
			p := ChunkPath(dir, shards, fp)
			// FORMAT.md, "Local chunk caches": three digits, the first two
			// bytes big-endian modulo the shards.
			if want := filepath.Join(dir, fmt.Sprintf("%03d", (int(fp[0])<<8|int(fp[1]))%shards), fp.String()); p != want {
				t.Fatalf("%d shards: ChunkPath=%s, want %s", shards, p, want)
			}
			if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("%d shards: ChunkPath=%s: %q, %v; want the chunk put", shards, p, got, err)
			}
			if p != c.Path(fp) {
				t.Fatalf("%d shards: ChunkPath=%s, Path=%s", shards, p, c.Path(fp))
			}
		}
	}
	fp := manifest.Sum([]byte("flat"))
	if got, want := ChunkPath("/seed/", 0, fp), "/seed/"+fp.String(); got != want {
		t.Fatalf("ChunkPath without shards=%s, want %s", got, want)
	}
}
