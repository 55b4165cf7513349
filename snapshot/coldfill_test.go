package snapshot

import (
	"bytes"
	"context"
	"io/fs"
	"path/filepath"
	"testing"

	"github.com/boule-vfs/boule/store"
)

// TestColdFillFilesPerPack: the prefetch of a snapshot larger than the
// memory bounds, which goes to the chunk cache's files, writes one file
// per pack (a slab), not one per chunk: creating a file cost 50 to 200 µs
// on the benchmark host's ext4, and a cold 1 GiB scan created 16,384 of
// them. A fresh reader then reads the whole replica from those files,
// without a GET.
func TestColdFillFilesPerPack(t *testing.T) {
	f := newFixture(t)
	sto := &countingPacks{counting: f.store}
	image := db(71, 65) // 64 chunks in files (chunk 0 inline, 2 is 1 again): packs of 16
	m := publishPacked(t, sto, "/data/fill.db", image, 16)
	packs := len(m.Packs)
	if packs < 4 {
		t.Fatalf("%d packs, want at least 4", packs)
	}
	r, c := f.open("/data/fill.db", Options{Prefetch: 4, MaxMappedChunks: 16})
	s := c.Snapshot()
	if !s.paced.Load() {
		t.Fatal("the snapshot fits in memory: its prefetch does not go to the cache's files, and the test proves nothing")
	}
	<-s.prefetched
	c.Close()
	r.Close() // writes what is queued
	files := 0
	if err := filepath.WalkDir(f.cache.Dir(), func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files++
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if files == 0 || files > packs {
		t.Errorf("the cold fill of %d chunks in %d packs created %d cache files, want 1 to %d (one per pack)", len(m.Chunks), packs, files, packs)
	}

	sto.packs.Store(0)
	f.store.chunks.Store(0)
	r2 := NewReader(Options{Remote: []store.Store{sto}, Cache: f.cache, Hostname: testHost, Prefetch: -1})
	defer r2.Close()
	c2 := mustOpen(t, r2, "boule:///data/fill.db")
	defer c2.Close()
	if got := read(t, c2.Snapshot()); !bytes.Equal(got, image) {
		t.Fatal("the replica read from the cache differs from the image")
	}
	if n, k := sto.packs.Load(), f.store.chunks.Load(); n != 0 || k != 0 {
		t.Errorf("reading the replica from a filled cache made %d pack and %d chunk GETs, want 0", n, k)
	}
}

// TestChunkFilesStillRead: a cache that holds packed chunks in files of
// their own (as the uploader writes them, and as readers did before
// slabs) serves them: a fresh reader reads the whole replica from it
// without a GET, and writes no slab.
func TestChunkFilesStillRead(t *testing.T) {
	f := newFixture(t)
	sto := &countingPacks{counting: f.store}
	image := db(72, 40)
	m := publishPacked(t, sto, "/data/old.db", image, 8)
	for i := range m.Chunks {
		if _, inline := m.Inline[uint32(i)]; inline {
			continue
		}
		b := chunkBytes(image, i)
		if err := f.cache.PutChunk(context.Background(), m.Chunks[i], b); err != nil {
			t.Fatal(err)
		}
	}
	sto.packs.Store(0)
	f.store.chunks.Store(0)
	r := NewReader(Options{Remote: []store.Store{sto}, Cache: f.cache, Hostname: testHost, Prefetch: 4})
	c := mustOpen(t, r, "boule:///data/old.db")
	if got := read(t, c.Snapshot()); !bytes.Equal(got, image) {
		t.Fatal("the replica read from chunk files differs from the image")
	}
	<-c.Snapshot().prefetched
	c.Close()
	r.Close()
	if n, k := sto.packs.Load(), f.store.chunks.Load(); n != 0 || k != 0 {
		t.Errorf("reading the replica from chunk files made %d pack and %d chunk GETs, want 0", n, k)
	}
	slabs, _ := filepath.Glob(filepath.Join(f.cache.Dir(), "*", "*.slab"))
	if len(slabs) != 0 {
		t.Errorf("the reader wrote %d slabs for chunks the cache had", len(slabs))
	}
}
