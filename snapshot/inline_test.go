package snapshot

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boule-vfs/boule/manifest"
)

// TestCachedChunkMappedByItsReader: a chunk in the cache's files, or
// inline in the manifest, is mapped by the goroutine that reads it, not
// by a load of its own (a cold scan's C reads, whose goroutines are
// locked to their threads, paid two thread switches per chunk for the
// hand-off); a chunk that must be fetched still is loaded on its own.
func TestCachedChunkMappedByItsReader(t *testing.T) {
	f := newFixture(t)
	image := db(71, 3)
	m := publish(t, f.store, "/inline.db", image, time.Now())
	if err := f.cache.PutChunk(context.Background(), m.Chunks[1], chunkBytes(image, 1)); err != nil {
		t.Fatal(err)
	}
	r, c := f.open("/inline.db", Options{Prefetch: -1})
	// No background work from now on: goBG runs nothing, as once Close
	// has begun, but the reader's context is still live.
	r.lifeMu.Lock()
	r.closed = true
	r.lifeMu.Unlock()
	defer func() {
		r.lifeMu.Lock()
		r.closed = false
		r.lifeMu.Unlock()
	}()
	s := c.Snapshot()
	got, err := s.Chunk(context.Background(), 1)
	if err != nil || !bytes.Equal(got, chunkBytes(image, 1)) {
		t.Fatalf("Chunk(1), in the cache=%d bytes, %v; want its %d bytes, mapped without a load of its own", len(got), err, len(chunkBytes(image, 1)))
	}
	if _, err := s.Chunk(context.Background(), 2); !errors.Is(err, errReaderClosed) {
		t.Fatalf("Chunk(2), not in the cache=%v, want %v: a fetch runs on its own", err, errReaderClosed)
	}
	if n := f.store.chunks.Load(); n != 0 {
		t.Fatalf("%d chunks fetched from the store, want 0", n)
	}
}

// TestLocalLoadShared: a load that its starter runs itself is still one
// load for all who ask for the chunk meanwhile, and a local load that
// fails leaves the chunk to the load of its own.
func TestLocalLoadShared(t *testing.T) {
	for _, localOK := range []bool{true, false} {
		c := chunkMaps{maps: map[manifest.Fingerprint]*mapping{}, inflight: map[manifest.Fingerprint]*flight{}}
		var fp manifest.Fingerprint
		fp[0] = 1
		buf := []byte("chunk")
		entered, release := make(chan struct{}), make(chan struct{})
		var spawned, loads atomic.Int32
		spawn := func(f func()) bool { spawned.Add(1); go f(); return true }
		local := func() (loaded, error) {
			close(entered)
			<-release
			if !localOK {
				return loaded{}, errNotLocal
			}
			return loaded{b: buf, free: func() {}}, nil
		}
		load := func() (loaded, error) {
			loads.Add(1)
			return loaded{b: buf, free: func() {}}, nil
		}
		got := make(chan *mapping, 2)
		get := func() {
			m, err := c.acquire(context.Background(), spawn, fp, local, load)
			if err != nil {
				t.Error(err)
			}
			got <- m
		}
		go get()
		<-entered // the first runs local, and the second waits for it
		go get()
		for c.waiting(fp) != 2 {
			time.Sleep(time.Millisecond)
		}
		close(release)
		m1, m2 := <-got, <-got
		if m1 != m2 || m1 == nil || m1.refs != 2 {
			t.Fatalf("local ok=%v: mappings %p and %p, refs %d; want one mapping with 2 references", localOK, m1, m2, m1.refs)
		}
		wantSpawned := int32(0)
		if !localOK {
			wantSpawned = 1
		}
		if spawned.Load() != wantSpawned || loads.Load() != wantSpawned {
			t.Fatalf("local ok=%v: %d loads spawned, %d run; want %d", localOK, spawned.Load(), loads.Load(), wantSpawned)
		}
	}
}
