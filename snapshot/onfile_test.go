package snapshot

import (
	"context"
	"os"
	"sync"
	"testing"
)

// TestOnFileNamesCacheFiles: a snapshot larger than the memory bounds
// tells the VFS (Binding.OnFile) of each cache file the reader wrote for
// its chunks, with the file's stamp, and lets go of its copies of those
// chunks once they are written: the VFS reads them from the files. The
// copies stayed held until the pool was full (a quarter of the memory
// limit in a cold 4 GiB scan).
func TestOnFileNamesCacheFiles(t *testing.T) {
	f := newFixture(t)
	m := publishPacked(t, f.store, "/data/files.db", db(35, 17), 8) // chunk 0 inline; 2 is 1 again
	r := f.reader(Options{Prefetch: -1, MaxMappedChunks: 64})
	// The cache writer waits until every chunk is loaded: a file written
	// before its chunk's copy is held lets nothing go (the copy is let
	// go with the others, by the pool's clock).
	q := stallCacheWriter(r, 64)
	c := mustOpen(t, r, "boule:///data/files.db")
	defer c.Close()
	s := c.Snapshot()
	s.paced.Store(true)
	var mu sync.Mutex
	files := map[int]FileStamp{}
	s.Bind(Binding{OnFile: func(i int, st FileStamp) {
		mu.Lock()
		defer mu.Unlock()
		files[i] = st
	}})
	for i := range len(m.Chunks) {
		if _, err := s.Chunk(context.Background(), i); err != nil {
			t.Fatal(err)
		}
	}
	for len(q) > 0 {
		r.writeCached(<-q)
	}
	r.sealAll() // the chunks went to their packs' slabs
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(m.Chunks); i++ {
		if i == 2 {
			continue // loaded with chunk 1's copy, before its file was written
		}
		st, ok := files[i]
		if !ok {
			t.Errorf("OnFile was not called for chunk %d", i)
			continue
		}
		want, p, ok := cachedStamp(t, f.cache, m, i)
		if !ok {
			t.Fatalf("chunk %d is not in the cache", i)
		}
		if st != want {
			t.Errorf("OnFile(%d)=%+v, want the file's %+v (%s)", i, st, want, p)
		}
		if st.Slab == 0 {
			t.Errorf("OnFile(%d) names a file of its own, want its pack's slab", i)
		}
	}
	if _, err := os.Stat(f.cache.Path(m.Chunks[0])); err == nil {
		t.Error("chunk 0, inline, was written to the cache")
	}
	// Chunk 0 (inline) and chunk 2 (a copy loaded with chunk 1's) have
	// no file of their own that the reader told of: their copies stay.
	if _, copies, _ := r.Held(); copies > 2 {
		t.Errorf("Held()=%d copies once the files were written, want at most 2 (chunks 0 and 2)", copies)
	}
}
