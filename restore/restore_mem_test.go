package restore

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boule-vfs/boule/internal/memtest"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/storetest"
)

// segments returns all of m's segments, in file order.
func segments(m *manifest.Manifest) []segment {
	var out []segment
	c := segmenter{m: m, x: m.PackIndex()}
	for s, ok := c.next(); ok; s, ok = c.next() {
		out = append(out, s)
	}
	return out
}

// sharedChunkSource serves the same bytes for every fingerprint, without
// allocating, and counts calls.
type sharedChunkSource struct {
	store.Store
	data  []byte
	calls atomic.Int64
}

func (c *sharedChunkSource) GetChunk(ctx context.Context, fp manifest.Fingerprint) ([]byte, error) {
	c.calls.Add(1)
	return c.data, nil
}

func (c *sharedChunkSource) String() string { return "shared" }

// distinct returns a manifest of n chunks with n distinct fingerprints.
func distinct(n int) *manifest.Manifest {
	m := &manifest.Manifest{Size: int64(n) * manifest.ChunkSize, Chunks: make([]manifest.Fingerprint, n)}
	for i := range m.Chunks {
		m.Chunks[i][0], m.Chunks[i][1], m.Chunks[i][2], m.Chunks[i][3] = byte(i), byte(i>>8), byte(i>>16), byte(i>>24)
		m.Chunks[i][4] = 1
	}
	return m
}

// TestRestoreAllocationsPerChunk: what Write allocates beyond the bytes
// the stores return does not grow with the number of chunks: it holds no
// list of segments, no map of every chunk, nothing per chunk.
func TestRestoreAllocationsPerChunk(t *testing.T) {
	if testing.Short() {
		t.Skip("restores 2 x 200,000 chunks")
	}
	src := &sharedChunkSource{data: make([]byte, manifest.ChunkSize)}
	for _, tc := range []struct {
		name string
		m    *manifest.Manifest
	}{
		{"distinct", distinct(200_000)},
		{"repeating", synthetic(200_000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.m
			var err error
			// A fixed amount for the window, the goroutines and the maps,
			// and at most a byte per chunk.
			bound := uint64(1<<20) + uint64(len(m.Chunks))
			n, ok := memtest.AtMost(bound, func() {
				err = Write(context.Background(), []store.Store{src}, m, io.Discard, Options{})
			})
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				t.Errorf("Write of %d chunks allocated %d bytes (%.1f a chunk), want at most %d",
					len(m.Chunks), n, float64(n)/float64(len(m.Chunks)), bound)
			}
		})
	}
}

// onePackSource serves the same pack for every pack ID, without
// allocating.
type onePackSource struct {
	store.Store
	pack []byte
}

func (s *onePackSource) GetPack(ctx context.Context, id manifest.Fingerprint) ([]byte, error) {
	return s.pack, nil
}

func (s *onePackSource) String() string { return "onepack" }

// packedRepeats returns a manifest of n chunks, all the same random chunk,
// in packs of 64 that all hold it raw at offset 0, and the store that
// serves the pack.
func packedRepeats(n int) (*manifest.Manifest, *onePackSource) {
	c := storetest.RandomBytes(92, manifest.ChunkSize) // incompressible: stored raw
	fp := manifest.Sum(c)
	m := &manifest.Manifest{Size: int64(n) * manifest.ChunkSize, Chunks: make([]manifest.Fingerprint, n)}
	for i := range m.Chunks {
		m.Chunks[i] = fp
	}
	for first := 0; first < n; first += 64 {
		var p manifest.Pack
		binary.BigEndian.PutUint64(p.ID[:], uint64(first))
		for i := first; i < min(n, first+64); i++ {
			p.Members = append(p.Members, manifest.PackMember{Index: uint32(i), Length: manifest.ChunkSize})
		}
		m.Packs = append(m.Packs, p)
	}
	return m, &onePackSource{pack: c}
}

// TestRestorePackedAllocationsPerChunk: with packs, Write allocates its
// PackIndex (four bytes a chunk) and a little per pack it fetches, and
// nothing else per chunk: no map of the packed chunks.
func TestRestorePackedAllocationsPerChunk(t *testing.T) {
	if testing.Short() {
		t.Skip("restores 100,000 packed chunks")
	}
	m, src := packedRepeats(100_000)
	var err error
	n := len(m.Chunks)
	bound := uint64(1<<20) + 4*uint64(n) + 512*uint64(len(m.Packs))
	got, ok := memtest.AtMost(bound, func() {
		err = Write(context.Background(), []store.Store{src}, m, io.Discard, Options{})
	})
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Errorf("Write of %d packed chunks allocated %d bytes (%.1f a chunk), want at most %d", n, got, float64(got)/float64(n), bound)
	}
}

// TestRestoreLiveHeap: what Write holds while it runs, measured at its
// middle chunk, does not grow with the database: twice the chunks, the
// same live heap.
func TestRestoreLiveHeap(t *testing.T) {
	if testing.Short() {
		t.Skip("restores 400,000 chunks")
	}
	live := func(n int) int64 {
		m := distinct(n)
		src := &chunkProbe{sharedChunkSource: sharedChunkSource{data: make([]byte, manifest.ChunkSize)}, at: m.Chunks[n/2]}
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		if err := Write(context.Background(), []store.Store{src}, m, io.Discard, Options{}); err != nil {
			t.Fatal(err)
		}
		runtime.KeepAlive(m)
		return int64(src.heap) - int64(before.HeapAlloc)
	}
	small, large := live(100_000), live(400_000)
	t.Logf("live heap at the middle chunk: %d bytes for 100,000 chunks, %d for 400,000", small, large)
	// 300,000 more chunks: the bit set of the fingerprints that repeat
	// takes a byte each (up to 1 MiB in all); two bytes each would be
	// 600 KB.
	if large-small > 300_000+64<<10 {
		t.Errorf("live heap grows with the chunks: %d bytes for 100,000, %d for 400,000", small, large)
	}
}

// chunkProbe measures the live heap when chunk at is fetched.
type chunkProbe struct {
	sharedChunkSource
	at   manifest.Fingerprint
	heap uint64
}

func (p *chunkProbe) GetChunk(ctx context.Context, fp manifest.Fingerprint) ([]byte, error) {
	if fp == p.at {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		p.heap = ms.HeapAlloc
	}
	return p.data, nil
}

// TestRestoreRepeatsAcrossWindows: a chunk that keeps coming back, farther
// apart than the window, is fetched once; the bytes stay in order.
func TestRestoreRepeatsAcrossWindows(t *testing.T) {
	const n = 2000
	m := &manifest.Manifest{Size: n * manifest.ChunkSize, Chunks: make([]manifest.Fingerprint, n)}
	for i := range m.Chunks {
		// Chunk 0 and every 100th repeat; the others are distinct.
		if i%100 != 0 {
			m.Chunks[i][0], m.Chunks[i][1], m.Chunks[i][3] = byte(i), byte(i>>8), 1
		}
		m.Chunks[i][2], m.Chunks[i][5] = byte(i%100), 7 // not chunkSource.bad
	}
	src := &chunkSource{}
	var buf bytes.Buffer
	start := time.Now()
	if err := Write(context.Background(), []store.Store{src}, m, &buf, Options{Concurrency: 4}); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	for i := range n {
		if b[i*manifest.ChunkSize] != byte(i%100) {
			t.Fatalf("chunk %d out of place", i)
		}
	}
	// Chunk 0 and its 19 repeats (each 100 apart, far past the window of
	// 8) take one fetch, the others one each.
	if got, want := src.calls.Load(), int64(n-n/100+1); got > want {
		t.Errorf("%d fetches, want %d (took %v)", got, want, time.Since(start))
	}
}

// TestSegmentsFollowPacks: segments cut at pack boundaries and every
// maxSegment chunks, and mark a pack's last.
func TestSegmentsFollowPacks(t *testing.T) {
	_, m, _ := packedStore(t, 200, 100) // chunk 0 inline, 1-100 and 101-198 packed, 199 alone
	var got []segment
	for _, s := range segments(m) {
		got = append(got, s)
	}
	k1, _ := m.PackIndex().Pack(1)
	k2, _ := m.PackIndex().Pack(101)
	want := []segment{
		{first: 0, n: 1, pack: -1},
		{first: 1, n: 64, pack: k1},
		{first: 65, n: 36, pack: k1, last: true},
		{first: 101, n: 64, pack: k2},
		{first: 165, n: 34, pack: k2, last: true},
		{first: 199, n: 1, pack: -1},
	}
	if len(got) != len(want) {
		t.Fatalf("segments %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("segment %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}
