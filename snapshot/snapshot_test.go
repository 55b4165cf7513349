package snapshot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/testfs"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/cache"
	"github.com/boule-vfs/boule/store/dir"
	"github.com/boule-vfs/boule/store/storetest"
)

const testHost = "host.test"

// counting wraps a store and counts its calls.
type counting struct {
	store.Store
	manifests, chunks atomic.Int64
	down              atomic.Bool
}

var errDown = errors.New("store is down")

func (c *counting) GetManifest(ctx context.Context, key string) ([]byte, error) {
	c.manifests.Add(1)
	if c.down.Load() {
		return nil, errDown
	}
	return c.Store.GetManifest(ctx, key)
}

func (c *counting) GetChunk(ctx context.Context, fp manifest.Fingerprint) ([]byte, error) {
	c.chunks.Add(1)
	if c.down.Load() {
		return nil, errDown
	}
	return c.Store.GetChunk(ctx, fp)
}

// db builds a database image of n chunks (the last one short) with
// distinct contents, and one duplicated chunk.
func db(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, (n-1)*manifest.ChunkSize+1000)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	if n > 3 {
		copy(b[2*manifest.ChunkSize:3*manifest.ChunkSize], b[manifest.ChunkSize:2*manifest.ChunkSize])
	}
	return b
}

// putManifest stores m as the newest manifest of path on testHost.
func putManifest(t testing.TB, s store.Store, path string, m *manifest.Manifest) {
	t.Helper()
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	key, _ := store.ManifestKey(testHost, path)
	if err := s.PutManifest(context.Background(), key, b); err != nil {
		t.Fatal(err)
	}
}

// publish stores image as the newest snapshot of path.
func publish(t testing.TB, s store.Store, path string, image []byte, created time.Time) *manifest.Manifest {
	t.Helper()
	ctx := context.Background()
	n := manifest.NumChunks(int64(len(image)))
	m := &manifest.Manifest{
		Hostname: testHost, SourcePath: path, Generator: "test",
		Size: int64(len(image)), Created: created, SourceCtime: created,
		Chunks: make([]manifest.Fingerprint, n),
		Inline: map[uint32][]byte{},
	}
	for i := range n {
		off := i * manifest.ChunkSize
		c := image[off : off+manifest.ChunkLen(m.Size, i)]
		m.Chunks[i] = manifest.Sum(c)
		if i == 0 {
			m.Inline[0] = c
			continue
		}
		if err := s.PutChunk(ctx, m.Chunks[i], c); err != nil {
			t.Fatal(err)
		}
	}
	putManifest(t, s, path, m)
	return m
}

type fixture struct {
	t     *testing.T
	dir   string
	store *counting
	cache *cache.Store
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	tmpdir := t.TempDir()
	root := filepath.Join(tmpdir, "store")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	ds, err := dir.New(root)
	if err != nil {
		t.Fatal(err)
	}
	cache, err := cache.New(filepath.Join(tmpdir, "cache"), 4, 1000)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, dir: tmpdir, store: &counting{Store: ds}, cache: cache}
}

// mustOpen opens name on r, failing t if it cannot.
func mustOpen(t testing.TB, r *Reader, name string) *Conn {
	t.Helper()
	c, err := r.Open(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// open opens the replica of path on a new reader with opts, failing the
// test if it cannot; the connection is closed when the test ends.
func (f *fixture) open(path string, opts Options) (*Reader, *Conn) {
	f.t.Helper()
	r := f.reader(opts)
	c := mustOpen(f.t, r, "boule://"+path)
	f.t.Cleanup(c.Close)
	return r, c
}

func (f *fixture) reader(opts Options) *Reader {
	opts.Remote = []store.Store{f.store}
	if opts.Cache == nil {
		opts.Cache = f.cache
	}
	opts.Hostname = testHost
	r := NewReader(opts)
	f.t.Cleanup(r.Close)
	return r
}

// read returns the whole database as the connection sees it.
func read(t testing.TB, s *Snapshot) []byte {
	t.Helper()
	var out []byte
	for i := range s.M.Chunks {
		b, err := s.Chunk(context.Background(), i)
		if err != nil {
			t.Fatalf("chunk %d: %v", i, err)
		}
		out = append(out, b...)
	}
	return out
}

func TestLazyOpen(t *testing.T) {
	f := newFixture(t)
	image := db(1, 20)
	publish(t, f.store, "/data/a.db", image, time.Now())
	r, c := f.open("/data/a.db", Options{Prefetch: -1})
	if n := f.store.chunks.Load(); n != 0 {
		t.Fatalf("open fetched %d chunks, want 0 (lazy)", n)
	}
	if b, err := c.Snapshot().Chunk(context.Background(), 5); err != nil || !bytes.Equal(b, image[5*manifest.ChunkSize:6*manifest.ChunkSize]) {
		t.Fatalf("chunk 5: %v", err)
	}
	if n := f.store.chunks.Load(); n != 1 {
		t.Fatalf("one read fetched %d chunks, want 1", n)
	}
	if got := read(t, c.Snapshot()); !bytes.Equal(got, image) {
		t.Fatal("replica differs from the image")
	}
	// Chunk 0 is inline and chunks 1 and 2 are equal: 18 fetches.
	if n := f.store.chunks.Load(); n != 18 {
		t.Fatalf("whole read fetched %d chunks, want 18", n)
	}

	// A second reader in "another process" finds everything in the
	// shared cache, once it is written.
	r.flushCache()
	r2 := f.reader(Options{Prefetch: -1})
	c2, err := r2.Open(context.Background(), "boule://"+testHost+"/data/a.db")
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got := read(t, c2.Snapshot()); !bytes.Equal(got, image) {
		t.Fatal("second replica differs")
	}
	if n := f.store.chunks.Load(); n != 18 {
		t.Fatalf("second reader fetched %d more chunks, want 0", n-18)
	}
}

func TestPrefetchAndPolicies(t *testing.T) {
	f := newFixture(t)
	image := db(2, 30)
	publish(t, f.store, "/p.db", image, time.Now())
	for _, tc := range []struct {
		name   string
		policy config.LoadingPolicy
		atOpen int // chunks mapped when Open returns, at least
	}{
		{"eager", config.LoadingPolicy{Kind: "eager"}, 30},
		{"partial", config.LoadingPolicy{Kind: "partial", Min: 2, Max: 4}, 5}, // 4 + the last
	} {
		t.Run(tc.name, func(t *testing.T) {
			cache, _ := cache.New(filepath.Join(t.TempDir(), "c"), 1, 100)
			r := f.reader(Options{Policy: tc.policy, Cache: cache})
			t.Cleanup(r.Close) // before the cache's temp dir goes
			c := mustOpen(t, r, "boule:///p.db")
			defer c.Close()
			if got := c.Snapshot().Mapped(); got != tc.atOpen {
				t.Fatalf("mapped at open=%d, want %d", got, tc.atOpen)
			}
		})
	}
	t.Run("background", func(t *testing.T) {
		cache, _ := cache.New(filepath.Join(t.TempDir(), "c"), 1, 100)
		r := f.reader(Options{Cache: cache})
		t.Cleanup(r.Close)
		c := mustOpen(t, r, "boule:///p.db")
		defer c.Close()
		// The prefetch maps everything without any read.
		deadline := time.Now().Add(20 * time.Second)
		for c.Snapshot().Mapped() < 30 {
			if time.Now().After(deadline) {
				t.Fatalf("prefetch mapped %d of 30 chunks", c.Snapshot().Mapped())
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

// TestConnectionsShareFetches: many connections, one manifest request per
// poll, and snapshots switch only when a connection asks.
func TestConnectionsShareFetches(t *testing.T) {
	f := newFixture(t)
	img1, img2 := db(3, 6), db(4, 7)
	t0 := time.Now()
	publish(t, f.store, "/s.db", img1, t0)
	r := f.reader(Options{Prefetch: -1, PollInterval: time.Hour})
	var conns []*Conn
	for range 20 {
		c := mustOpen(t, r, "boule:///s.db")
		defer c.Close()
		conns = append(conns, c)
	}
	if n := f.store.manifests.Load(); n != 1 {
		t.Fatalf("20 opens fetched the manifest %d times, want 1", n)
	}

	publish(t, f.store, "/s.db", img2, t0.Add(time.Second))
	if got := read(t, conns[3].Snapshot()); !bytes.Equal(got, img1) {
		t.Fatal("a connection changed snapshot on its own")
	}
	if err := conns[0].Refresh(context.Background(), RefreshFetch); err != nil {
		t.Fatal(err)
	}
	if got := read(t, conns[0].Snapshot()); !bytes.Equal(got, img2) {
		t.Fatal("refresh did not bring the new snapshot")
	}
	if got := read(t, conns[1].Snapshot()); !bytes.Equal(got, img1) {
		t.Fatal("another connection switched without asking")
	}
	if !conns[1].Adopt() || !bytes.Equal(read(t, conns[1].Snapshot()), img2) {
		t.Fatal("Adopt did not switch to the snapshot fetched by another connection")
	}
	if n := f.store.manifests.Load(); n != 2 {
		t.Fatalf("manifest fetched %d times, want 2", n)
	}
	if err := conns[2].Refresh(context.Background(), RefreshCached); err != nil || conns[2].Snapshot().Gen() != conns[0].Snapshot().Gen() {
		t.Fatalf("refresh 0: %v", err)
	}
	if n := f.store.manifests.Load(); n != 2 {
		t.Fatalf("refresh 0 fetched: %d manifest requests, want 2", n)
	}
}

// TestPollOncePerInterval: the poller makes one request per tick for the
// replica, whatever the number of auto-refreshing connections.
func TestPollOncePerInterval(t *testing.T) {
	f := newFixture(t)
	publish(t, f.store, "/q.db", db(5, 3), time.Now())
	ticks := make(chan time.Time)
	r := f.reader(Options{Prefetch: -1})
	r.tick = func() (<-chan time.Time, func()) { return ticks, func() {} }
	var conns []*Conn
	for range 10 {
		c := mustOpen(t, r, "boule:///q.db")
		c.SetAutoRefresh(true)
		conns = append(conns, c)
	}
	before := f.store.manifests.Load()
	for range 5 {
		ticks <- time.Now()
	}
	ticks <- time.Now() // returns once the fifth poll is done
	if n := f.store.manifests.Load() - before; n < 5 || n > 6 {
		t.Fatalf("6 ticks with 10 auto-refreshing connections made %d manifest requests, want 5 or 6", n)
	}
	for _, c := range conns {
		c.Close()
	}
}

func TestCorruptChunk(t *testing.T) {
	f := newFixture(t)
	image := db(6, 4)
	m := publish(t, f.store, "/c.db", image, time.Now())
	// Damage chunk 3's blob in the store.
	blob := filepath.Join(f.dir, "store", "chunks", store.ChunkKey(m.Chunks[3]))
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	if err := os.WriteFile(blob, b, 0o644); err != nil {
		t.Fatal(err)
	}
	r, c := f.open("/c.db", Options{Prefetch: -1})
	if _, err := c.Snapshot().Chunk(context.Background(), 3); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("chunk with flipped bits: err=%v, want ErrCorrupt", err)
	}
	if _, err := c.Snapshot().Chunk(context.Background(), 1); err != nil {
		t.Fatalf("good chunk: %v", err)
	}

	// A bad file in the local cache is dropped and fetched again.
	r.flushCache()
	p := f.cache.Path(m.Chunks[1])
	_ = os.Chmod(p, 0o644)
	if err := os.WriteFile(p, make([]byte, manifest.ChunkSize), 0o644); err != nil {
		t.Fatal(err)
	}
	r2 := f.reader(Options{Prefetch: -1})
	c2 := mustOpen(t, r2, "boule:///c.db")
	defer c2.Close()
	got, err := c2.Snapshot().Chunk(context.Background(), 1)
	if err != nil || !bytes.Equal(got, image[manifest.ChunkSize:2*manifest.ChunkSize]) {
		t.Fatalf("chunk behind a bad cache file: %v", err)
	}
}

func TestStoreDown(t *testing.T) {
	f := newFixture(t)
	image := db(7, 5)
	publish(t, f.store, "/d.db", image, time.Now())
	_, c := f.open("/d.db", Options{Prefetch: -1})
	if _, err := c.Snapshot().Chunk(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	f.store.down.Store(true)
	// What is mapped keeps serving; what is not fails, naming the cause.
	if _, err := c.Snapshot().Chunk(context.Background(), 1); err != nil {
		t.Fatalf("mapped chunk with the store down: %v", err)
	}
	if _, err := c.Snapshot().Chunk(context.Background(), 3); !errors.Is(err, errDown) {
		t.Fatalf("unmapped chunk with the store down: %v, want the store's error", err)
	}
	if err := c.Refresh(context.Background(), RefreshForce); !errors.Is(err, errDown) {
		t.Fatalf("refresh with the store down: %v", err)
	}
	if got, err := c.Snapshot().Chunk(context.Background(), 1); err != nil || !bytes.Equal(got, image[manifest.ChunkSize:2*manifest.ChunkSize]) {
		t.Fatalf("after a failed refresh the old snapshot must still serve: %v", err)
	}
	// A new process cannot open it.
	r2 := f.reader(Options{Prefetch: -1})
	if _, err := r2.Open(context.Background(), "boule:///d.db"); !errors.Is(err, errDown) {
		t.Fatalf("open with the store down: %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	f := newFixture(t)
	r := f.reader(Options{})
	_, err := r.Open(context.Background(), "boule:///nothing/here.db")
	if !errors.Is(err, ErrNoManifest) || !bytes.Contains([]byte(err.Error()), []byte("/nothing/here.db")) {
		t.Fatalf("open without a manifest: %v, want not found naming the path", err)
	}
	for _, name := range []string{"boule://h/../x.db", "boule://h/a//b", "boule://h", "boule://a/b/c/\x01", "boule://" + string(bytes.Repeat([]byte("h"), 300)) + "/x"} {
		if _, err := r.Open(context.Background(), name); !errors.Is(err, ErrBadName) {
			t.Errorf("open %q: %v, want ErrBadName", name, err)
		}
	}
	garbage := filepath.Join(f.dir, "garbage.manifest")
	if err := os.WriteFile(garbage, []byte("not a manifest at all"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Open(context.Background(), garbage); !errors.Is(err, manifest.ErrTruncated) {
		t.Fatalf("open a garbage manifest file: %v", err)
	}
	if _, err := r.Open(context.Background(), filepath.Join(f.dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("open a missing manifest file: %v", err)
	}
}

// TestConcurrentReadsAndSwitches hammers one replica from many goroutines
// while snapshots change; run under -race.
func TestConcurrentReadsAndSwitches(t *testing.T) {
	f := newFixture(t)
	images := [][]byte{db(10, 8), db(11, 9), db(12, 8), db(13, 10)}
	t0 := time.Now()
	publish(t, f.store, "/r.db", images[0], t0)
	r := f.reader(Options{})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 8)
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := r.Open(context.Background(), "boule:///r.db")
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				s := c.Snapshot()
				var got []byte
				for i := range s.M.Chunks {
					b, err := s.Chunk(context.Background(), i)
					if err != nil {
						errs <- err
						return
					}
					got = append(got, b...)
				}
				if !bytes.Equal(got, images[s.Gen()-1]) {
					errs <- errors.New("a snapshot read back bytes of another")
					return
				}
				if (k+g)%3 == 0 {
					c.Adopt()
				}
			}
		}()
	}
	for i := 1; i < len(images); i++ {
		publish(t, f.store, "/r.db", images[i], t0.Add(time.Duration(i)*time.Second))
		c := mustOpen(t, r, "boule:///r.db")
		if err := c.Refresh(context.Background(), RefreshForce); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// gate holds callers until it opens, and says when one is waiting.
type gate struct {
	open    chan struct{} // closed to let callers through
	entered chan struct{} // receives when a caller waits (if none did since)
}

func newGate() gate { return gate{open: make(chan struct{}), entered: make(chan struct{}, 1)} }

// pass says a caller is waiting, then waits until the gate opens or ctx
// ends.
func (g gate) pass(ctx context.Context) error {
	select {
	case g.entered <- struct{}{}:
	default:
	}
	select {
	case <-g.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// gated blocks chunk fetches until the gate opens, and says when one is
// waiting.
type gated struct {
	*counting
	gate
}

func (g *gated) GetChunk(ctx context.Context, fp manifest.Fingerprint) ([]byte, error) {
	if err := g.pass(ctx); err != nil {
		return nil, err
	}
	return g.counting.GetChunk(ctx, fp)
}

// hung is a store whose chunk and pack reads never answer: each waits
// for its context and then fails, naming the store and the object, as
// the real stores' errors do.
type hung struct{ *counting }

func (h hung) GetChunk(ctx context.Context, fp manifest.Fingerprint) ([]byte, error) {
	<-ctx.Done()
	return nil, fmt.Errorf("hung store: get chunk %s: %w", fp, ctx.Err())
}

func (h hung) GetPack(ctx context.Context, id manifest.Fingerprint) ([]byte, error) {
	<-ctx.Done()
	return nil, fmt.Errorf("hung store: get pack %s: %w", id, ctx.Err())
}

// TestHungStoreNamesItself: a read of a chunk from a store that never
// answers fails after the chunk timeout naming the chunk or pack it
// waited for, not with a bare "context deadline exceeded" from a wait
// that gave up a moment before the fetch it waited for.
func TestHungStoreNamesItself(t *testing.T) {
	for _, packed := range []bool{false, true} {
		t.Run(fmt.Sprintf("packed=%v", packed), func(t *testing.T) {
			f := newFixture(t)
			img := db(3, 3)
			var want string
			if packed {
				m := publishPacked(t, f.store, "/hung.db", img, 2)
				want = "pack " + m.Packs[0].ID.String()
			} else {
				m := publish(t, f.store, "/hung.db", img, time.Now())
				want = "hung store: get chunk " + m.Chunks[1].String()
			}
			r := NewReader(Options{Remote: []store.Store{hung{f.store}}, Cache: f.cache, Hostname: testHost, Prefetch: -1, ChunkTimeout: 200 * time.Millisecond})
			t.Cleanup(r.Close)
			c := mustOpen(t, r, "boule:///hung.db")
			defer c.Close()
			_, err := c.Snapshot().Chunk(context.Background(), 1)
			if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), want) {
				t.Fatalf("Chunk(1) from a hung store: %v, want an error naming %q", err, want)
			}
		})
	}
}

// TestSharedLoadOutlivesItsStarter: a chunk load started by one caller and
// joined by another (another snapshot sharing the chunk) completes for the
// second even when the first gives up.
func TestSharedLoadOutlivesItsStarter(t *testing.T) {
	f := newFixture(t)
	img := db(1, 3)
	m := publish(t, f.store, "/x.db", img, time.Now())
	g := &gated{counting: f.store, gate: newGate()}
	r := NewReader(Options{Remote: []store.Store{g}, Cache: f.cache, Hostname: testHost, Prefetch: -1})
	t.Cleanup(r.Close)
	a := mustOpen(t, r, "boule:///x.db")
	b := mustOpen(t, r, "boule:///x.db")
	defer b.Close()
	ctxA, cancelA := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { _, err := a.Snapshot().Chunk(ctxA, 1); first <- err }()
	<-g.entered // a's load is in the store
	second := make(chan error, 1)
	go func() { _, err := b.Snapshot().Chunk(context.Background(), 1); second <- err }()
	for r.chunks.waiting(m.Chunks[1]) < 2 { // b has joined a's load
		time.Sleep(time.Millisecond)
	}
	cancelA()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("the canceled caller got %v, want its own cancellation", err)
	}
	a.Close()
	close(g.open)
	if err := <-second; err != nil {
		t.Fatalf("the caller that joined the load failed: %v", err)
	}
}

// TestMemoryBounds: a replica larger than the reader's bounds (chunks
// held, and copies among them) reads whole and correctly, twice, with
// the chunks held never over the bounds by more than the loads under
// way, and the least recently read let go and read again.
func TestMemoryBounds(t *testing.T) {
	for _, c := range []struct {
		name    string
		opts    Options
		maxHeld int
		maxCopy int
	}{
		{"mapped limit", Options{Prefetch: -1, MaxMappedChunks: 10}, 10, 10},
		{"memory limit", Options{Prefetch: -1, MemoryLimit: MinMemoryLimit}, maxMappedDefault(), MinMemoryLimit / 4 / manifest.ChunkSize},
		{"prefetch", Options{MaxMappedChunks: 12}, 12, 12},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			image := db(20, 40) // 40 chunks
			publish(t, f.store, "/big.db", image, time.Now())
			r := f.reader(c.opts)
			conn := mustOpen(t, r, "boule:///big.db")
			defer conn.Close()
			s := conn.Snapshot()
			for pass := range 2 {
				for i := range 40 {
					want := image[i*manifest.ChunkSize : min((i+1)*manifest.ChunkSize, len(image))]
					got := make([]byte, len(want))
					if err := s.ReadAt(context.Background(), got, int64(i)*manifest.ChunkSize); err != nil {
						t.Fatalf("pass %d: ReadAt(chunk %d)=%v", pass, i, err)
					}
					if !bytes.Equal(got, want) {
						t.Fatalf("pass %d: chunk %d differs from the source", pass, i)
					}
					if held, copies, _ := r.Held(); held > c.maxHeld || copies > c.maxCopy {
						t.Fatalf("pass %d, chunk %d: Held()=%d chunks, %d copies, want at most %d and %d", pass, i, held, copies, c.maxHeld, c.maxCopy)
					}
				}
			}
			if _, _, evicted := r.Held(); evicted == 0 {
				t.Errorf("Held()=0 evicted after reading 40 chunks twice with bounds of %d and %d", c.maxHeld, c.maxCopy)
			}
		})
	}
}

// stalling blocks manifest fetches, once armed, until their context ends,
// and counts those under way.
type stalling struct {
	*counting
	armed   atomic.Bool
	active  atomic.Int64
	entered chan struct{}
}

func (s *stalling) GetManifest(ctx context.Context, key string) ([]byte, error) {
	if !s.armed.Load() {
		return s.counting.GetManifest(ctx, key)
	}
	s.active.Add(1)
	defer s.active.Add(-1)
	s.entered <- struct{}{}
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestCloseEndsBackgroundWork: Close cancels and waits for the fetches a
// connection started in the background, and a closed reader starts no
// new work, so nothing of it runs on, against a store or a cache
// directory its owner is removing.
func TestCloseEndsBackgroundWork(t *testing.T) {
	f := newFixture(t)
	publish(t, f.store, "/c.db", db(7, 3), time.Now())
	s := &stalling{counting: f.store, entered: make(chan struct{}, 1)}
	r := NewReader(Options{Remote: []store.Store{s}, Cache: f.cache, Hostname: testHost, Prefetch: -1, OpenTimeout: time.Hour})
	c := mustOpen(t, r, "boule:///c.db")
	defer c.Close()
	s.armed.Store(true)
	if c.AsyncReload() {
		t.Fatal("AsyncReload adopted a snapshot without fetching one")
	}
	<-s.entered // the background fetch is in the store
	r.Close()
	if n := s.active.Load(); n != 0 {
		t.Fatalf("%d manifest fetches still under way after Close", n)
	}
	before := f.store.manifests.Load()
	c.AsyncReload()
	if _, err := c.Snapshot().Chunk(context.Background(), 1); err == nil {
		t.Fatal("a closed reader fetched a chunk")
	}
	select {
	case <-s.entered:
		t.Fatal("a closed reader started a manifest fetch")
	default:
	}
	if n := s.active.Load() + f.store.manifests.Load() - before; n != 0 {
		t.Fatalf("a closed reader made %d manifest requests", n)
	}
}

// clockedReader publishes image as the snapshot of path at t0, now, and
// returns a reader with opts whose clock stands at t0 until set.
func (f *fixture) clockedReader(path string, image []byte, opts Options) (*Reader, *storetest.Clock, time.Time) {
	f.t.Helper()
	t0 := time.Now()
	publish(f.t, f.store, path, image, t0)
	r := f.reader(opts)
	return r, fakeClock(r, t0), t0
}

// fakeClock makes r read the time from a clock that starts at t0.
func fakeClock(r *Reader, t0 time.Time) *storetest.Clock {
	c := storetest.NewClock()
	c.Set(t0)
	r.now = c.Now
	return c
}

// TestOpenFetchesAfterPollInterval: an open reuses the manifest another
// connection fetched within the poll interval, and fetches after it, even
// while other connections keep the replica open; when that fetch fails,
// the open gets the snapshot the others hold.
func TestOpenFetchesAfterPollInterval(t *testing.T) {
	f := newFixture(t)
	img1, img2 := db(11, 3), db(12, 3)
	r, clock, t0 := f.clockedReader("/p.db", img1, Options{Prefetch: -1, PollInterval: time.Minute})
	open := func() *Conn {
		t.Helper()
		c := mustOpen(t, r, "boule:///p.db")
		t.Cleanup(c.Close)
		return c
	}
	a := open()
	publish(t, f.store, "/p.db", img2, t0.Add(time.Second))
	before := f.store.manifests.Load()
	clock.Set(t0.Add(59 * time.Second))
	if b := open(); !bytes.Equal(read(t, b.Snapshot()), img1) || f.store.manifests.Load() != before {
		t.Fatal("an open within the poll interval did not reuse the fetched manifest")
	}
	clock.Set(t0.Add(61 * time.Second))
	if c := open(); !bytes.Equal(read(t, c.Snapshot()), img2) {
		t.Fatal("an open after the poll interval, with another connection open, got the old snapshot")
	}
	if !bytes.Equal(read(t, a.Snapshot()), img1) {
		t.Fatal("an open connection switched snapshot without asking")
	}
	f.store.down.Store(true)
	clock.Set(t0.Add(200 * time.Second))
	if d := open(); !bytes.Equal(read(t, d.Snapshot()), img2) {
		t.Fatal("with the store down, an open did not get the snapshot the process holds")
	}
}

// TestClockStepBack: the store's newest manifest is the database even
// when it was created before the one read earlier (the writer's clock
// went back); but an older manifest from another, lagging store does not
// replace a newer one.
func TestClockStepBack(t *testing.T) {
	f := newFixture(t)
	img1, img2, img3 := db(21, 3), db(22, 3), db(23, 3)
	t0 := time.Now()
	publish(t, f.store, "/k.db", img1, t0)
	_, c := f.open("/k.db", Options{Prefetch: -1})
	publish(t, f.store, "/k.db", img2, t0.Add(-time.Minute)) // the clock went back
	if err := c.Refresh(context.Background(), RefreshForce); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(read(t, c.Snapshot()), img2) {
		t.Fatal("after a clock step back, the replica kept the snapshot the store replaced")
	}

	// A second store lagging behind: with the first down, its older
	// manifest is not adopted.
	root := filepath.Join(f.dir, "lagging")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	ds, err := dir.New(root)
	if err != nil {
		t.Fatal(err)
	}
	lagging := &counting{Store: ds}
	publish(t, lagging, "/k.db", img3, t0.Add(-time.Hour))
	r2 := NewReader(Options{Remote: []store.Store{f.store, lagging}, Hostname: testHost, Prefetch: -1})
	t.Cleanup(r2.Close)
	c2 := mustOpen(t, r2, "boule:///k.db")
	defer c2.Close()
	f.store.down.Store(true)
	if err := c2.Refresh(context.Background(), RefreshForce); err != nil {
		t.Fatal(err)
	}
	if lagging.manifests.Load() == 0 {
		t.Fatal("the refresh did not read the second store")
	}
	f.store.down.Store(false)
	if !bytes.Equal(read(t, c2.Snapshot()), img2) {
		t.Fatal("a lagging store's older manifest replaced the newer one")
	}
}

// TestIdleReplicasForgotten: a process that opens many databases over
// its life keeps only those in use or fetched within the poll interval.
func TestIdleReplicasForgotten(t *testing.T) {
	f := newFixture(t)
	var gone atomic.Int64
	r := NewReader(Options{Remote: []store.Store{f.store}, Cache: f.cache, Hostname: testHost, Prefetch: -1,
		PollInterval: time.Minute, OnReplicaGone: func(*Replica) { gone.Add(1) }})
	t.Cleanup(r.Close)
	clock := fakeClock(r, time.Now())
	img := db(31, 2)
	for i := range 20 {
		name := fmt.Sprintf("/many/%d.db", i)
		publish(t, f.store, name, img, clock.Now())
		c := mustOpen(t, r, "boule://"+name)
		c.Close()
	}
	kept := mustOpen(t, r, "boule:///many/0.db")
	defer kept.Close()
	if n := r.Replicas(); n != 20 {
		t.Fatalf("%d replicas kept within the poll interval, want 20", n)
	}
	clock.Set(clock.Now().Add(2 * time.Minute))
	publish(t, f.store, "/many/last.db", img, clock.Now())
	c := mustOpen(t, r, "boule:///many/last.db")
	defer c.Close()
	// Kept: the one with a connection, and the one just opened.
	if n, g := r.Replicas(), gone.Load(); n != 2 || g != 19 {
		t.Fatalf("after the poll interval: %d replicas kept, %d reported gone; want 2 and 19", n, g)
	}
	if got := read(t, kept.Snapshot()); !bytes.Equal(got, img) {
		t.Fatal("the replica in use stopped reading")
	}
}

// TestCacheHitIsAUse: a chunk mapped from the host's cache has its mtime
// refreshed, so that the cache's least-recently-used eviction keeps the
// chunks replicas read.
func TestCacheHitIsAUse(t *testing.T) {
	f := newFixture(t)
	img := db(41, 3)
	m := publish(t, f.store, "/lru.db", img, time.Now())
	if err := f.cache.PutChunk(context.Background(), m.Chunks[1], img[manifest.ChunkSize:2*manifest.ChunkSize]); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-48 * time.Hour)
	p := f.cache.Path(m.Chunks[1])
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
	_, c := f.open("/lru.db", Options{Prefetch: -1})
	before := f.store.chunks.Load()
	if _, err := c.Snapshot().Chunk(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	if f.store.chunks.Load() != before {
		t.Fatal("the chunk was fetched from the store, not the cache")
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.ModTime().Before(time.Now().Add(-time.Hour)) {
		t.Fatalf("cache file mtime %v after a read, want it refreshed", st.ModTime())
	}
}

// TestManifestFileFIFO: a manifest "file" that is a FIFO is refused at
// once, not waited on until something writes to it.
func TestManifestFileFIFO(t *testing.T) {
	f := newFixture(t)
	p := filepath.Join(f.dir, "m.fifo")
	testfs.Mkfifo(t, p)
	r := f.reader(Options{Prefetch: -1})
	err := testfs.Promptly(t, p, func() error {
		_, err := r.Open(context.Background(), p)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("open of a FIFO as a manifest file: %v, want a refusal", err)
	}
}

// TestStale: after Stale (the process's own uploader put a newer
// manifest), the next open fetches, within the poll interval too.
func TestStale(t *testing.T) {
	f := newFixture(t)
	img1, img2 := db(51, 3), db(52, 3)
	r, clock, t0 := f.clockedReader("/s.db", img1, Options{Prefetch: -1, PollInterval: time.Hour})
	a := mustOpen(t, r, "boule:///s.db")
	defer a.Close()
	publish(t, f.store, "/s.db", img2, t0.Add(time.Second))
	clock.Set(t0.Add(time.Millisecond))
	r.Stale(testHost, "/s.db")
	clock.Set(t0.Add(2 * time.Millisecond))
	b := mustOpen(t, r, "boule:///s.db")
	defer b.Close()
	if !bytes.Equal(read(t, b.Snapshot()), img2) {
		t.Fatal("an open after Stale got the snapshot from before it")
	}
	before := f.store.manifests.Load()
	c := mustOpen(t, r, "boule:///s.db")
	defer c.Close()
	if f.store.manifests.Load() != before {
		t.Fatal("the open after a fresh fetch fetched again")
	}
}

// gatedManifests blocks manifest fetches, once armed, until the gate
// opens, and says when one is waiting.
type gatedManifests struct {
	*counting
	gate
	armed atomic.Bool
}

func (g *gatedManifests) GetManifest(ctx context.Context, key string) ([]byte, error) {
	if g.armed.Load() {
		if err := g.pass(ctx); err != nil {
			return nil, err
		}
	}
	return g.counting.GetManifest(ctx, key)
}

// TestSlowFetchIsShared: opens that join a manifest fetch take its
// result even when it took longer than the poll interval, instead of
// each fetching again in turn.
func TestSlowFetchIsShared(t *testing.T) {
	f := newFixture(t)
	t0 := time.Now()
	publish(t, f.store, "/slow.db", db(61, 2), t0)
	g := &gatedManifests{counting: f.store, gate: newGate()}
	r := NewReader(Options{Remote: []store.Store{g}, Hostname: testHost, Prefetch: -1, PollInterval: time.Minute})
	t.Cleanup(r.Close)
	clock := fakeClock(r, t0)
	hold := mustOpen(t, r, "boule:///slow.db")
	defer hold.Close()
	clock.Set(t0.Add(2 * time.Minute))
	g.armed.Store(true)
	before := f.store.manifests.Load()
	var wg sync.WaitGroup
	open := func() {
		defer wg.Done()
		c, err := r.Open(context.Background(), "boule:///slow.db")
		if err != nil {
			t.Error(err)
			return
		}
		c.Close()
	}
	wg.Add(1)
	go open()
	<-g.entered // the first open's fetch is in the store
	for range 4 {
		wg.Add(1)
		go open()
	}
	rp := hold.Replica()
	for {
		rp.mu.Lock()
		n := rp.fetching.joiners
		rp.mu.Unlock()
		if n == 4 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	clock.Set(t0.Add(4 * time.Minute)) // the fetch outlasted the poll interval
	close(g.open)
	wg.Wait()
	if n := f.store.manifests.Load() - before; n != 1 {
		t.Fatalf("5 concurrent opens made %d manifest fetches, want 1", n)
	}
}

// TestEvictedReplicaAnnouncesNothing: a fetch queued before a replica's
// last connection closed, and finishing after the Reader forgot the
// replica, does not call the replica's OnNewest callbacks, whose state
// OnReplicaGone has freed.
func TestEvictedReplicaAnnouncesNothing(t *testing.T) {
	f := newFixture(t)
	t0 := time.Now()
	publish(t, f.store, "/e.db", db(71, 2), t0)
	var gone atomic.Int64
	r := NewReader(Options{Remote: []store.Store{f.store}, Hostname: testHost, Prefetch: -1, PollInterval: time.Minute,
		OnReplicaGone: func(*Replica) { gone.Add(1) }})
	t.Cleanup(r.Close)
	clock := fakeClock(r, t0)
	c := mustOpen(t, r, "boule:///e.db")
	rp := c.Replica()
	var announced atomic.Int64
	rp.OnNewest(func(uint64) { announced.Add(1) })
	c.Close()
	clock.Set(t0.Add(2 * time.Minute))
	r.mu.Lock()
	r.sweepLocked()
	r.mu.Unlock()
	if n := r.Replicas(); n != 0 {
		t.Fatalf("%d replicas kept, want the idle one forgotten", n)
	}
	// What the queued fetch does when it finally runs:
	s, err := rp.fetch(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	s.unref()
	if n := announced.Load(); n != 0 {
		t.Fatalf("OnNewest called %d times after the replica was forgotten", n)
	}
}
