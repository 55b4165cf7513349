package snapshot

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/cache"
)

// countingPacks counts pack GETs on top of counting.
type countingPacks struct {
	*counting
	packs atomic.Int64
}

func (c *countingPacks) GetPack(ctx context.Context, id manifest.Fingerprint) ([]byte, error) {
	c.packs.Add(1)
	if c.down.Load() {
		return nil, errDown
	}
	return c.Store.GetPack(ctx, id)
}

// publishPacked stores image as the newest snapshot of path with every
// chunk but 0 (inline) in packs of per chunks, in file order, as the
// uploader does.
func publishPacked(t testing.TB, s store.Store, path string, image []byte, per int) *manifest.Manifest {
	t.Helper()
	ctx := context.Background()
	m := &manifest.Manifest{
		Hostname: testHost, SourcePath: path, Generator: "test",
		Size: int64(len(image)), Created: time.Now(), SourceCtime: time.Now(),
		Inline: map[uint32][]byte{},
	}
	var chunks []store.PackedChunk
	var idx []uint32
	for i := range manifest.NumChunks(m.Size) {
		c := image[i*manifest.ChunkSize : i*manifest.ChunkSize+manifest.ChunkLen(m.Size, i)]
		m.Chunks = append(m.Chunks, manifest.Sum(c))
		if i == 0 {
			m.Inline[0] = c
			continue
		}
		chunks = append(chunks, store.PackedChunk{FP: m.Chunks[i], Data: c})
		idx = append(idx, uint32(i))
	}
	for len(chunks) > 0 {
		k := min(per, len(chunks))
		blob, id, refs := store.EncodePack(chunks[:k])
		if err := s.PutPack(ctx, id, blob); err != nil {
			t.Fatal(err)
		}
		p := manifest.Pack{ID: id}
		for j := range k {
			p.Members = append(p.Members, manifest.PackMember{Index: idx[j], Offset: refs[j].Offset, Length: refs[j].Length})
		}
		m.Packs = append(m.Packs, p)
		chunks, idx = chunks[k:], idx[k:]
	}
	for i := 1; i < len(m.Packs); i++ { // sort by ID
		for j := i; j > 0 && bytes.Compare(m.Packs[j].ID[:], m.Packs[j-1].ID[:]) < 0; j-- {
			m.Packs[j], m.Packs[j-1] = m.Packs[j-1], m.Packs[j]
		}
	}
	putManifest(t, s, path, m)
	return m
}

// TestPackedReplica: a read of a packed chunk fetches its whole pack once,
// which then serves the pack's other chunks; the prefetch fetches each
// pack once; the chunks land in the shared cache one by one; a damaged
// member is ErrCorrupt and the pack's other chunks still read.
func TestPackedReplica(t *testing.T) {
	f := newFixture(t)
	sto := &countingPacks{counting: f.store}
	image := db(30, 41) // 40 chunks in files: packs of 8
	m := publishPacked(t, sto, "/data/p.db", image, 8)
	if len(m.Packs) != 5 {
		t.Fatalf("%d packs, want 5", len(m.Packs))
	}
	open := func(opts Options) (*Reader, *Conn) {
		t.Helper()
		opts.Remote = []store.Store{sto}
		opts.Cache = f.cache
		opts.Hostname = testHost
		r := NewReader(opts)
		t.Cleanup(r.Close)
		c := mustOpen(t, r, "boule:///data/p.db")
		t.Cleanup(func() { c.Close() })
		return r, c
	}

	r, c := open(Options{Prefetch: -1})
	if b, err := c.Snapshot().Chunk(context.Background(), 10); err != nil || !bytes.Equal(b, image[10*manifest.ChunkSize:11*manifest.ChunkSize]) {
		t.Fatalf("chunk 10: %v", err)
	}
	if n, k := sto.packs.Load(), sto.chunks.Load(); n != 1 || k != 0 {
		t.Fatalf("one read made %d pack and %d chunk GETs, want 1 and 0", n, k)
	}
	for i := 9; i <= 16; i++ { // chunk 10's pack
		if _, err := c.Snapshot().Chunk(context.Background(), i); err != nil {
			t.Fatal(err)
		}
	}
	if n := sto.packs.Load(); n != 1 {
		t.Fatalf("reading the rest of the pack made %d pack GETs, want still 1", n)
	}
	if got := read(t, c.Snapshot()); !bytes.Equal(got, image) {
		t.Fatal("replica differs from the image")
	}
	if n := sto.packs.Load(); n != 5 {
		t.Fatalf("whole read made %d pack GETs, want 5", n)
	}
	r.flushCache()
	if _, _, ok := cachedStamp(t, f.cache, m, 20); !ok {
		t.Errorf("chunk 20 not in the shared cache")
	}

	// The prefetch of a fresh process fetches each pack once; the cache
	// answers instead for chunks it has.
	if err := os.RemoveAll(filepath.Join(f.dir, "cache")); err != nil {
		t.Fatal(err)
	}
	cache2, err := cache.New(filepath.Join(f.dir, "cache2"), 4, 1000)
	if err != nil {
		t.Fatal(err)
	}
	f.cache = cache2
	sto.packs.Store(0)
	_, c2 := open(Options{Prefetch: 4})
	<-c2.Snapshot().prefetched
	if n := sto.packs.Load(); n != 5 {
		t.Errorf("prefetch made %d pack GETs, want 5", n)
	}
	if got := c2.Snapshot().Mapped(); got != len(m.Chunks) {
		t.Errorf("prefetch mapped %d chunks, want %d", got, len(m.Chunks))
	}

	// Damage chunk 30's blob in its pack.
	ref := m.PackRefs()[30]
	p := filepath.Join(f.dir, "store", "chunks", store.PackKey(ref.ID))
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[ref.Offset+ref.Length/2] ^= 1
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	f.cache, _ = cache.New(filepath.Join(f.dir, "cache3"), 4, 1000)
	_, c3 := open(Options{Prefetch: -1})
	if _, err := c3.Snapshot().Chunk(context.Background(), 30); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged member: err=%v, want ErrCorrupt", err)
	}
	if got, err := c3.Snapshot().Chunk(context.Background(), 31); err != nil || !bytes.Equal(got, image[31*manifest.ChunkSize:32*manifest.ChunkSize]) {
		t.Fatalf("healthy member of the damaged pack: %v", err)
	}
}

// TestClosedReaderKeepsNoPacks: a closed reader lets go of the packs it
// kept and forgets its idle replicas (OnReplicaGone), so that whoever
// still refers to a replica of it (the VFS does, until it is forgotten)
// does not keep up to an eighth of the memory limit in packs: each reader
// a process replaced kept them for good.
func TestClosedReaderKeepsNoPacks(t *testing.T) {
	f := newFixture(t)
	publishPacked(t, f.store, "/data/kept.db", db(31, 17), 8)
	var gone []*Replica
	r, c := f.open("/data/kept.db", Options{Prefetch: -1, OnReplicaGone: func(rp *Replica) { gone = append(gone, rp) }})
	if _, err := c.Snapshot().Chunk(context.Background(), 3); err != nil {
		t.Fatal(err)
	}
	rp := c.Replica()
	if r.packs.bytes == 0 {
		t.Fatal("packs.bytes=0 after a packed read: the test proves nothing")
	}
	c.Close()
	r.Close()
	if r.packs.bytes != 0 || len(r.packs.kept) != 0 {
		t.Errorf("after Close, packs.bytes=%d in %d packs, want 0", r.packs.bytes, len(r.packs.kept))
	}
	if r.Replicas() != 0 || len(gone) != 1 || gone[0] != rp {
		t.Errorf("after Close, Replicas()=%d and OnReplicaGone called with %d replicas, want 0 and the one opened", r.Replicas(), len(gone))
	}
}

// TestWarmPrefetchCachesCopies: the prefetch of a snapshot larger than
// the memory bounds writes to the chunk cache the chunks a read holds as
// copies (a scan that overtook it), which are let go soon: it skipped
// every chunk held, and a warm scan fetched those again from the store.
func TestWarmPrefetchCachesCopies(t *testing.T) {
	f := newFixture(t)
	m := publishPacked(t, f.store, "/data/warm.db", db(32, 17), 8)
	r, c := f.open("/data/warm.db", Options{Prefetch: -1, MaxMappedChunks: 16})
	s := c.Snapshot()
	if _, err := s.Chunk(context.Background(), 5); err != nil {
		t.Fatal(err)
	}
	r.flushCache()
	_, p, ok := cachedStamp(t, f.cache, m, 5)
	if !ok {
		t.Fatal("chunk 5 was not cached")
	}
	if err := os.Remove(p); err != nil { // its pack's slab
		t.Fatal(err)
	}
	if e := s.maps.get(5); e == nil || !e.m.anon {
		t.Fatal("chunk 5 is not held as a copy: the test proves nothing")
	}
	r.prefetch = 4
	s.startPrefetch()
	<-s.prefetched
	r.flushCache()
	for i := 1; i < len(m.Chunks); i++ {
		if _, _, ok := cachedStamp(t, f.cache, m, i); !ok {
			t.Errorf("chunk %d is not in the cache after the prefetch", i)
		}
	}
}

// stallCacheWriter replaces r's cache writer with a queue of n that
// nobody writes from: the test takes the items itself.
func stallCacheWriter(r *Reader, n int) chan cacheItem {
	r.cacheQ = make(chan cacheItem, n)
	r.cacheOnce.Do(func() {})
	return r.cacheQ
}

// TestPacedReadsCacheEveryChunk: reads of a snapshot prefetched into the
// cache's files (larger than the memory bounds) wait for room in the
// cache writer's queue, so that a scan faster than the writer leaves
// every chunk it read queued for the cache. They gave up at once when
// the queue was full, and the prefetch fetched and decoded those chunks'
// packs again to cache them.
func TestPacedReadsCacheEveryChunk(t *testing.T) {
	f := newFixture(t)
	m := publishPacked(t, f.store, "/data/paced.db", db(33, 17), 8)
	r := f.reader(Options{Prefetch: -1, MaxMappedChunks: 16})
	r.cachePace = time.Minute // the test's writer is slow, not stuck
	r.paceAfter = 0
	q := stallCacheWriter(r, 2)
	c := mustOpen(t, r, "boule:///data/paced.db")
	defer c.Close()
	s := c.Snapshot()
	s.paced.Store(true)
	written := make(chan map[manifest.Fingerprint]bool)
	stop := make(chan struct{})
	go func() {
		got := map[manifest.Fingerprint]bool{}
		for {
			select {
			case it := <-q:
				got[it.fp] = true
				r.cacheDone(it)
				time.Sleep(time.Millisecond) // a writer slower than the reads
			case <-stop:
				written <- got
				return
			}
		}
	}()
	for i := range len(m.Chunks) {
		if _, err := s.Chunk(context.Background(), i); err != nil {
			t.Fatal(err)
		}
	}
	r.flushCache()
	close(stop)
	got := <-written
	for i := 1; i < len(m.Chunks); i++ { // chunk 0 is inline
		if !got[m.Chunks[i]] {
			t.Errorf("chunk %d was not queued for the cache", i)
		}
	}
}

// TestWarmPrefetchSkipsQueued: the prefetch does not fetch again the
// pack of chunks that wait in the cache writer's queue (a scan queued
// them), nor queue them twice.
func TestWarmPrefetchSkipsQueued(t *testing.T) {
	f := newFixture(t)
	sto := &countingPacks{counting: f.store}
	m := publishPacked(t, sto, "/data/queued.db", db(34, 17), 8) // chunk 0 inline, two packs
	r := NewReader(Options{Remote: []store.Store{sto}, Cache: f.cache, Hostname: testHost, Prefetch: -1, MaxMappedChunks: 16})
	t.Cleanup(r.Close)
	q := stallCacheWriter(r, 64)
	c := mustOpen(t, r, "boule:///data/queued.db")
	defer c.Close()
	s := c.Snapshot()
	s.paced.Store(true)
	for i := 9; i <= 16; i++ { // the second pack, whole
		if _, err := s.Chunk(context.Background(), i); err != nil {
			t.Fatal(err)
		}
	}
	r.packs.clear()
	sto.packs.Store(0)
	r.prefetch = 4
	s.startPrefetch()
	<-s.prefetched
	if n := sto.packs.Load(); n != 1 {
		t.Errorf("the prefetch made %d pack GETs, want 1 (the first pack; the second one's chunks are queued)", n)
	}
	n := map[manifest.Fingerprint]int{}
	for len(q) > 0 {
		it := <-q
		n[it.fp]++
		r.cacheDone(it)
	}
	for i := 1; i < len(m.Chunks); i++ {
		if n[m.Chunks[i]] != 1 {
			t.Errorf("chunk %d queued %d times for the cache, want 1", i, n[m.Chunks[i]])
		}
	}
}

// TestWrittenRecordsOutnumberHeld: the records of the cache files this
// process wrote (which it maps again without hashing them) cover a
// snapshot larger than the chunks held, whose scans map every chunk
// again: they were bounded by the chunks held, and a warm scan of a
// large replica hashed most of its chunks again.
func TestWrittenRecordsOutnumberHeld(t *testing.T) {
	f := newFixture(t)
	m := publishPacked(t, f.store, "/data/records.db", db(35, 41), 8)
	r, c := f.open("/data/records.db", Options{Prefetch: -1, MaxMappedChunks: 16})
	if got := read(t, c.Snapshot()); len(got) != int(m.Size) {
		t.Fatalf("read %d bytes, want %d", len(got), m.Size)
	}
	r.flushCache()
	known := 0
	for i := 1; i < len(m.Chunks); i++ {
		if st, _, ok := cachedStamp(t, f.cache, m, i); ok && r.written.same(m.Chunks[i], st) {
			known++
		}
	}
	if want := len(m.Chunks) - 2; known < want { // chunk 0 inline, chunk 2 a duplicate of 1
		t.Errorf("%d cache files recorded as written, want %d (more than the 16 chunks held)", known, want)
	}
}

// TestFirstReadsNotPaced: the first reads of a snapshot prefetched into
// the cache's files (a first query) do not wait for room in the cache
// writers' queue, which the prefetch keeps full; reads past paceAfter
// chunks (a scan) do.
func TestFirstReadsNotPaced(t *testing.T) {
	f := newFixture(t)
	publishPacked(t, f.store, "/data/first.db", db(36, 17), 8)
	r := f.reader(Options{Prefetch: -1, MaxMappedChunks: 16})
	r.cachePace = time.Minute
	r.paceAfter = 2
	q := stallCacheWriter(r, 1)
	q <- cacheItem{} // full, and nobody writes
	c := mustOpen(t, r, "boule:///data/first.db")
	defer c.Close()
	s := c.Snapshot()
	s.paced.Store(true)
	for _, i := range []int{9, 12} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := s.Chunk(ctx, i)
		cancel()
		if err != nil {
			t.Fatalf("Chunk(%d), one of the first 2 reads, =%v, want nil at once", i, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := s.Chunk(ctx, 14); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Chunk(14), the third read, =%v, want it waiting for room in the queue until its deadline", err)
	}
	<-q // room: the waiting load queues chunk 14, and returns
	it := <-q
	r.cacheDone(it)
}

// packBytes counts the bytes of packs a store returns, whole or by range.
type packBytes struct {
	store.Store
	whole, ranges, bytes atomic.Int64
}

func (c *packBytes) GetPack(ctx context.Context, id manifest.Fingerprint) ([]byte, error) {
	b, err := c.Store.GetPack(ctx, id)
	c.whole.Add(1)
	c.bytes.Add(int64(len(b)))
	return b, err
}

func (c *packBytes) ReadPackRange(ctx context.Context, id manifest.Fingerprint, off, length int, dst []byte) ([]byte, error) {
	b, err := store.ReadPackRange(ctx, c.Store, id, off, length, dst)
	c.ranges.Add(1)
	c.bytes.Add(int64(len(b)))
	return b, err
}

// TestSmallLimitReadsMembers: with a memory limit too small to keep a
// pack of 64 chunks, reads of chunks of that pack fetch each chunk's
// blob alone (a range of the pack), not the whole pack for each. The
// prefetch still reads packs whole. Before ranged reads, 10 reads
// fetched the 4 MiB pack 10 times.
func TestSmallLimitReadsMembers(t *testing.T) {
	f := newFixture(t)
	sto := &packBytes{Store: f.store}
	image := db(31, 65) // 65 chunks: chunk 0 inline, one pack of 64
	m := publishPacked(t, sto, "/data/r.db", image, 64)
	if len(m.Packs) != 1 || len(m.Packs[0].Members) != 64 {
		t.Fatalf("%d packs, want 1 of 64 chunks", len(m.Packs))
	}
	r := NewReader(Options{Remote: []store.Store{sto}, Hostname: testHost, Prefetch: -1, MemoryLimit: MinMemoryLimit})
	t.Cleanup(r.Close)
	c := mustOpen(t, r, "boule:///data/r.db")
	t.Cleanup(func() { c.Close() })

	var want int64
	for i := 3; i < 13; i++ { // chunk 2 repeats chunk 1
		b, err := c.Snapshot().Chunk(context.Background(), i)
		if err != nil || !bytes.Equal(b, image[i*manifest.ChunkSize:(i+1)*manifest.ChunkSize]) {
			t.Fatalf("chunk %d: %v, or its bytes differ", i, err)
		}
		want += int64(m.Packs[0].Members[i-1].Length)
	}
	if w, n, got := sto.whole.Load(), sto.ranges.Load(), sto.bytes.Load(); w != 0 || n != 10 || got != want {
		t.Errorf("10 reads fetched %d bytes of packs (%d whole, %d ranges), want %d bytes in 10 ranges", got, w, n, want)
	}
}
