package snapshot

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/boule-vfs/boule/internal/memtest"
	"github.com/boule-vfs/boule/manifest"
)

// TestPackBuffersWithinLimit: the packs a reader fetches (kept for their
// other chunks, being read, or holding chunks queued for the cache's
// files) stay within an eighth of its memory limit, however many reads
// and prefetch workers want packs at once. They were allocated in the Go
// heap, one per fetch, with nothing to bound those in flight: at the
// peak of a cold 10 GiB scan, the heap held 237 MiB for 89 MiB live.
func TestPackBuffersWithinLimit(t *testing.T) {
	f := newFixture(t)
	image := db(41, 97) // chunk 0 inline, 24 packs of 4 chunks of 64 KiB
	publishPacked(t, f.store, "/data/bufs.db", image, 4)
	// 8 MiB: 1 MiB of pack buffers, four packs; 2 MiB of copies, fewer
	// than half the chunks, so that the prefetch writes the cache's
	// files and queues chunks for them.
	r, c := f.open("/data/bufs.db", Options{MemoryLimit: 8 << 20})
	s := c.Snapshot()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 { // readers in four places at once, besides the prefetch
		wg.Go(func() {
			for k := range len(s.M.Chunks) {
				i := (k + w*len(s.M.Chunks)/4) % len(s.M.Chunks)
				got := make([]byte, manifest.ChunkLen(s.M.Size, i))
				if err := s.ReadAt(context.Background(), got, int64(i)*manifest.ChunkSize); err != nil {
					errs <- err
					return
				}
				if want := image[i*manifest.ChunkSize:][:len(got)]; !bytes.Equal(got, want) {
					errs <- fmt.Errorf("chunk %d differs", i)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	r.flushCache()
	mem := r.Memory()
	if mem.BuffersLimit != 1<<20 {
		t.Errorf("Memory().BuffersLimit=%d, want %d (an eighth of the limit)", mem.BuffersLimit, 1<<20)
	}
	if mem.BuffersPeak == 0 {
		t.Fatal("Memory().BuffersPeak=0: no pack was fetched, the test proves nothing")
	}
	if mem.BuffersPeak > mem.BuffersLimit {
		t.Errorf("Memory().BuffersPeak=%d, want at most BuffersLimit=%d", mem.BuffersPeak, mem.BuffersLimit)
	}
	c.Close()
	r.Close()
	if mem := r.Memory(); mem.Buffers != 0 {
		t.Errorf("after Close, Memory().Buffers=%d, want 0", mem.Buffers)
	}
}

// TestPackBufferLargerThanLimit: a pack larger than the buffers' bound is
// fetched all the same, alone, rather than waited for forever. Reads at
// this limit fetch members alone (TestSmallLimitReadsMembers); the
// prefetch into the chunk cache's files fetches packs whole.
func TestPackBufferLargerThanLimit(t *testing.T) {
	f := newFixture(t)
	image := db(42, 25) // chunk 0 inline, packs of 8 chunks: 512 KiB each
	publishPacked(t, f.store, "/data/big.db", image, 8)
	r, c := f.open("/data/big.db", Options{MemoryLimit: MinMemoryLimit}) // 256 KiB of buffers
	if got := read(t, c.Snapshot()); !bytes.Equal(got, image) {
		t.Fatal("read differs from the image")
	}
	if p := c.Snapshot().prefetched; p != nil {
		<-p
	} else {
		t.Fatal("no prefetch into the chunk cache's files")
	}
	if mem := r.Memory(); mem.BuffersPeak != 512<<10 {
		t.Errorf("Memory().BuffersPeak=%d, want one pack's buffer alone, %d", mem.BuffersPeak, 512<<10)
	}
}

// TestPackedChunkReusesDecodeBuffers: a compressed chunk read from a pack
// is decoded into a buffer that is reused once the chunk is copied, not
// into a new 64 KiB each time: over a cold 10 GiB scan those were 9.8 GB
// of garbage, which kept the Go heap at twice what is live.
func TestPackedChunkReusesDecodeBuffers(t *testing.T) {
	f := newFixture(t)
	image := make([]byte, 9*manifest.ChunkSize)
	for i := range image {
		image[i] = byte(i/manifest.ChunkSize + i%7) // compresses, and no two chunks alike
	}
	m := publishPacked(t, f.store, "/data/zstd.db", image, 8)
	r, c := f.open("/data/zstd.db", Options{Prefetch: -1})
	s := c.Snapshot()
	ref, ok := s.packIndex().Ref(3)
	if !ok {
		t.Fatal("chunk 3 is not packed")
	}
	if ref.Length >= manifest.ChunkSize {
		t.Fatalf("chunk 3 is stored in %d bytes: not compressed, the test proves nothing", ref.Length)
	}
	get := func() {
		data, hold, err := r.packedChunk(context.Background(), m.Chunks[3], manifest.ChunkSize, ref, false)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(data, image[3*manifest.ChunkSize:4*manifest.ChunkSize]) {
			t.Fatal("chunk 3 differs")
		}
		hold.unref()
	}
	get() // fetches and keeps the pack
	if n := memtest.Least(5, get); n >= manifest.ChunkSize {
		t.Errorf("a compressed chunk of a kept pack allocated %d bytes, want less than a chunk (%d)", n, manifest.ChunkSize)
	}
}

// TestPrefetchLeavesReadPacksKept: the packs the prefetch fetches are
// held until it is done with them, not kept: kept, they pushed out of
// the packs kept (a sixteenth of the memory limit) the pack a scan was
// reading, whose next chunks then fetched it again.
func TestPrefetchLeavesReadPacksKept(t *testing.T) {
	f := newFixture(t)
	m := publishPacked(t, f.store, "/data/keep.db", db(43, 73), 8) // chunk 0 inline, 9 packs of 512 KiB
	// 64 MiB: 8 packs kept (of the 9), and room in the buffers (8 MiB)
	// for every pack at once, so that the prefetch never waits for room
	// (after prefetchEvictAfter, it would drop a kept pack).
	r, c := f.open("/data/keep.db", Options{MemoryLimit: 64 << 20, Prefetch: -1})
	s := c.Snapshot()
	if _, err := s.Chunk(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	read, _ := s.packIndex().Ref(1)
	r.prefetch = 4
	s.startPrefetch()
	<-s.prefetched
	r.packs.mu.Lock()
	_, kept := r.packs.kept[read.ID]
	held := len(r.packs.active)
	r.packs.mu.Unlock()
	if !kept {
		t.Errorf("after the prefetch of %d packs, the pack a read fetched is no longer kept", len(m.Packs))
	}
	if held != 0 {
		t.Errorf("after the prefetch, %d of its packs are still held, want 0", held)
	}
}
