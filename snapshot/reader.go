package snapshot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/restore"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/cache"
)

// Defaults of Options.
const (
	// DefaultPollInterval is how often a replica with auto-refreshing
	// connections fetches its manifest, and how long a fetched manifest
	// is reused by new connections.
	DefaultPollInterval = time.Second
	// DefaultPrefetch is the number of chunks fetched at once in the
	// background; packs (of up to 64 chunks) are fetched a quarter as
	// many at once, at least 2.
	DefaultPrefetch = 16
	// DefaultOpenTimeout bounds the manifest fetch of an open.
	DefaultOpenTimeout = 30 * time.Second
	// DefaultChunkTimeout bounds the fetch of one chunk a read waits for.
	DefaultChunkTimeout = 60 * time.Second
	// maxManifestFile bounds the size of a manifest file opened by path:
	// a 4 TiB database's manifest is 2 GiB, a 64 GiB one's 32 MiB.
	maxManifestFile = 256 << 20
)

// ErrNoManifest is wrapped by the errors of opening a replica whose
// manifest does not exist.
var ErrNoManifest = store.ErrNotFound

// Options configure a Reader.
type Options struct {
	// Remote are the stores holding manifests and chunks, tried in
	// order. They should be rate-limited (store.Limited).
	Remote []store.Store
	// Cache is where fetched chunks are kept, shared with the other
	// processes of the host; nil keeps them in memory only.
	Cache *cache.Store
	// ReadOnly are directories of chunks looked in after Cache.
	ReadOnly []ReadOnlyDir
	// Hostname replaces the empty host of "boule:///path" names;
	// default os.Hostname().
	Hostname string
	// Policy says how much of a snapshot is fetched before an open
	// returns: "default" fetches only the manifest and prefetches the
	// rest in the background, "eager" fetches everything, "partial"
	// fetches between Min and Max chunks and the rest on demand.
	Policy config.LoadingPolicy
	// PollInterval defaults to DefaultPollInterval.
	PollInterval time.Duration
	// Prefetch defaults to DefaultPrefetch; negative disables the
	// background prefetch.
	Prefetch int
	// OpenTimeout and ChunkTimeout default to DefaultOpenTimeout and
	// DefaultChunkTimeout.
	OpenTimeout, ChunkTimeout time.Duration
	// MemoryLimit bounds the anonymous memory, in bytes, in which the
	// Reader keeps chunks: a quarter of it for copies of chunks (fetched
	// from a store, inline in a manifest, or read from files it may not
	// map), an eighth for the buffers packs are read into (being
	// fetched, kept for their other chunks, or holding chunks queued for
	// the cache's files; but one pack at a time is read whatever its
	// size), and the rest for the Go heap's work. Zero means
	// DefaultMemoryLimit; less than MinMemoryLimit means MinMemoryLimit.
	// Chunks mapped from the chunk cache's files are file-backed memory
	// that the kernel may reclaim, and are bounded by MaxMappedChunks.
	MemoryLimit int64
	// MaxMappedChunks bounds the chunks held at once by the process,
	// mapped from cache files or copied; zero means
	// DefaultMaxMappedChunks, or half of vm.max_map_count if less. Past
	// either bound, the least recently read chunks are let go, and read
	// again from the cache (verified again) when needed.
	MaxMappedChunks int
	// Quiesce, if set, waits until no read of a chunk that began before
	// the call is still under way: the C side's hook, called after
	// evicted chunks are taken out of their views and before they are
	// unmapped.
	Quiesce func()
	// OnRoom, if set, is told whether the process holds few enough
	// chunks to map more (below MaxMappedChunks, with an eighth to
	// spare), each time that changes, under the pool's lock: the C side
	// then asks Go to map a chunk it reads from a cache file, rather than
	// read it from the file at each read, while there is room.
	OnRoom func(room bool)
	Logger *slog.Logger
	// OnReplicaGone, if set, is called, outside the Reader's locks, with
	// each replica the Reader forgets: one with no connection left whose
	// manifest is older than the poll interval. A later open of the same
	// name gets a new Replica.
	OnReplicaGone func(*Replica)
}

// A Reader opens replicas. One serves a whole process: replicas, their
// snapshots and their chunk mappings are shared by all its connections.
type Reader struct {
	remote   []store.Store
	cache    *cache.Store
	readOnly []ReadOnlyDir
	host     string
	policy   config.LoadingPolicy
	poll     time.Duration
	prefetch int
	openTO   time.Duration
	chunkTO  time.Duration
	log      *slog.Logger

	chunks chunkMaps
	pool   pool
	slabs  slabs
	packs  *packCache
	bufs   *packBufs
	ctx    context.Context // ends with Close; loads run under it, not their callers'
	cancel context.CancelFunc
	bg     sync.WaitGroup // loads, prefetches, cache writers, pollers: started only by goBG

	lifeMu sync.Mutex // orders goBG's bg.Add before Close's bg.Wait
	closed bool

	cacheOnce    sync.Once
	cacheQ       chan cacheItem
	cacheQLen    int            // cacheQ's capacity
	cachePending sync.WaitGroup // chunks queued for the cache, not yet written
	cacheMu      sync.Mutex     // orders cachePending.Add before Close's Wait
	cacheClosed  bool
	queued       map[manifest.Fingerprint]struct{} // chunks in cacheQ (or about to be); under cacheMu
	packQueued   map[manifest.Fingerprint]int      // chunks of each pack in cacheQ; under cacheMu
	sealDue      map[manifest.Fingerprint]bool     // packs whose slab to seal when packQueued is 0; under cacheMu
	cachePace    time.Duration                     // see cacheRead
	paceAfter    int64                             // see Snapshot.pacedLoad
	written      writtenFiles                      // cache files written from verified bytes
	slabMu       sync.Mutex
	building     map[manifest.Fingerprint]*slabBuild // slabs being written, by pack; under slabMu
	tick         func() (<-chan time.Time, func())   // the poller's clock; tests replace it
	now          func() time.Time                    // the freshness clock; tests replace it
	gcWanted     atomic.Bool                         // see retire

	mu        sync.Mutex
	replicas  map[string]*Replica
	lastSweep time.Time // of replicas, for those nobody uses
	onGone    func(*Replica)
}

// NewReader returns a Reader with opts.
func NewReader(opts Options) *Reader {
	r := &Reader{
		remote:   opts.Remote,
		cache:    opts.Cache,
		readOnly: opts.ReadOnly,
		host:     opts.Hostname,
		policy:   opts.Policy,
		poll:     opts.PollInterval,
		prefetch: opts.Prefetch,
		openTO:   opts.OpenTimeout,
		chunkTO:  opts.ChunkTimeout,
		log:      opts.Logger,
		chunks: chunkMaps{
			maps:     map[manifest.Fingerprint]*mapping{},
			inflight: map[manifest.Fingerprint]*flight{},
		},
		replicas: map[string]*Replica{},
		onGone:   opts.OnReplicaGone,
	}
	mem := opts.MemoryLimit
	if mem == 0 {
		mem = DefaultMemoryLimit
	}
	mem = max(mem, MinMemoryLimit)
	r.pool = pool{maxLive: opts.MaxMappedChunks, maxAnon: chunkSlots(mem / 4), quiesce: opts.Quiesce, onRoom: opts.OnRoom}
	if r.pool.maxLive <= 0 {
		r.pool.maxLive = maxMappedDefault()
	}
	r.pool.mu.Lock()
	r.pool.noteRoomLocked()
	r.pool.mu.Unlock()
	r.pool.release = r.release
	// Packs are read into buffers outside the Go heap, an eighth of the
	// limit in all, which the packs kept (up to half of them) share with
	// those being fetched. The rest of the limit is for the Go heap,
	// which the garbage collector lets grow to twice what is live: the
	// chunks decoded for the cache's files (a sixty-fourth), the records
	// below, and the manifests.
	r.packs = newPackCache(int(min(mem/16, defaultPackCacheBytes)), r.goBG)
	r.bufs = newPackBufs(mem/8, r.packs.dropOldest)
	r.cacheQLen = min(max(chunkSlots(mem/64), 4), 256)
	r.cachePace = defaultCachePace
	r.paceAfter = defaultPaceAfter
	// A record for each cache file the replicas may map again, up to
	// about a sixteenth of the memory limit (some 64 bytes each): a scan
	// of a snapshot larger than the chunks held maps each chunk again,
	// and one whose record was forgotten is hashed again (a sixth of a
	// warm 4 GiB scan's time when the records were bounded by the
	// chunks held).
	r.written.max = r.pool.maxLive
	if r.cache != nil {
		r.written.max = max(r.written.max, int(min(r.cache.Capacity(), mem/1024)))
	}
	if r.host == "" {
		if h, err := os.Hostname(); err == nil && h != "" {
			r.host = h
		} else {
			r.host = "localhost"
		}
	}
	if r.poll <= 0 {
		r.poll = DefaultPollInterval
	}
	if r.prefetch == 0 {
		r.prefetch = DefaultPrefetch
	}
	if r.openTO <= 0 {
		r.openTO = DefaultOpenTimeout
	}
	if r.chunkTO <= 0 {
		r.chunkTO = DefaultChunkTimeout
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.now = time.Now
	r.tick = func() (<-chan time.Time, func()) {
		t := time.NewTicker(r.poll)
		return t.C, t.Stop
	}
	return r
}

// Close writes the chunks still queued for the local cache, then stops
// the reader's background work (chunk loads, prefetches) and waits for it.
// Connections still open fail the reads that need a fetch.
func (r *Reader) Close() {
	r.cacheMu.Lock()
	r.cacheClosed = true
	r.cacheMu.Unlock()
	r.cachePending.Wait()
	r.sealAll()
	r.lifeMu.Lock()
	r.closed = true
	r.lifeMu.Unlock()
	r.cancel()
	r.bg.Wait()
	r.slabs.close()
	// What a closed reader keeps in memory, it keeps for as long as
	// anything refers to it (the VFS keeps a word per replica until the
	// replica is forgotten): its packs, up to an eighth of the memory
	// limit, went with it for good at every reader a process replaced.
	// Their buffers are unmapped, each once its last chunk is written.
	r.packs.clear()
	r.bufs.close()
	r.written.clear()
	r.mu.Lock()
	gone := r.forgetLocked(true)
	r.mu.Unlock()
	if r.onGone != nil {
		for _, g := range gone {
			r.onGone(g)
		}
	}
}

// goBG runs f in a goroutine that Close waits for, and reports false,
// running nothing, once Close has begun: no work of a closed reader
// outlives its Close, such as a poller's fetch that would start a
// prefetch and write to a cache directory its owner is removing.
func (r *Reader) goBG(f func()) bool {
	r.lifeMu.Lock()
	defer r.lifeMu.Unlock()
	if r.closed {
		return false
	}
	r.bg.Add(1)
	go func() {
		defer r.bg.Done()
		f()
	}()
	return true
}

// errReaderClosed is returned for work asked of a closed Reader.
var errReaderClosed = errors.New("snapshot: reader closed")

// sweepLocked forgets, at most once per poll interval, the replicas that
// have no connection, no fetch or poller under way, and a manifest older
// than the poll interval (which an open would fetch again anyway), so
// that a process opening many databases over its life does not keep a
// manifest for each. It returns them; the caller holds r.mu.
func (r *Reader) sweepLocked() []*Replica {
	now := r.now()
	if now.Sub(r.lastSweep) < r.poll {
		return nil
	}
	r.lastSweep = now
	return r.forgetLocked(false)
}

// forgetLocked forgets the replicas that have no connection and no fetch
// or poller under way, and, unless all is set, a manifest older than the
// poll interval, and returns them; the caller holds r.mu.
func (r *Reader) forgetLocked(all bool) []*Replica {
	now := r.now()
	var gone []*Replica
	for id, rp := range r.replicas {
		rp.mu.Lock()
		idle := rp.conns == 0 && rp.fetching == nil && rp.stopPoll == nil && (all || now.Sub(rp.lastStart) >= r.poll)
		if idle {
			// A background fetch queued before the last connection
			// closed may still adopt a snapshot: it must not announce
			// it to callbacks whose state OnReplicaGone frees.
			rp.onNewest = nil
			r.retire(rp.lastM)
		}
		rp.mu.Unlock()
		if idle {
			delete(r.replicas, id)
			gone = append(gone, rp)
		}
	}
	return gone
}

// Stale tells the Reader that the store holds a newer manifest for the
// database at path on hostname: the next open of its replica fetches it,
// whatever the poll interval says. Connections already open keep their
// snapshot until they refresh.
func (r *Reader) Stale(hostname, path string) {
	r.mu.Lock()
	rp := r.replicas[Source{Hostname: hostname, Path: path}.String()]
	r.mu.Unlock()
	if rp == nil {
		return
	}
	rp.mu.Lock()
	rp.staleAt = r.now()
	rp.mu.Unlock()
}

// Replicas reports how many replicas the Reader keeps.
func (r *Reader) Replicas() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.replicas)
}

// Hostname is the host that "boule:///path" names refer to.
func (r *Reader) Hostname() string { return r.host }

// MappedChunks reports how many distinct chunks the process has mapped.
func (r *Reader) MappedChunks() int { return r.chunks.mapped() }

// Held reports the chunks the reader's snapshots hold (one per snapshot
// and index), how many of them are copies in anonymous memory, and how
// many were evicted so far to stay within the bounds.
func (r *Reader) Held() (chunks, copies int, evicted int64) { return r.pool.counts() }

// MemoryUse is what a Reader holds in anonymous memory, outside the Go
// heap (Reader.Memory).
type MemoryUse struct {
	// Copies are the chunk copies held, in bytes; Slabs, the slabs
	// mapped for them (slots used or free).
	Copies, Slabs int64
	// Buffers are the pack buffers mapped, in use or free: packs being
	// fetched, kept for their other chunks, or holding chunks queued for
	// the cache's files. BuffersPeak is the most they have been, and
	// BuffersLimit their bound (see Options.MemoryLimit).
	Buffers, BuffersPeak, BuffersLimit int64
	// PacksKept are the bytes of the packs kept for their other chunks
	// (within Buffers). BufferWaits counts the fetches that waited for
	// room in the buffers.
	PacksKept, BufferWaits int64
	// CacheQueued counts the chunks queued for the cache's files.
	CacheQueued int
}

// Memory reports what the reader holds in anonymous memory now.
func (r *Reader) Memory() MemoryUse {
	_, anon, _ := r.pool.counts()
	u := MemoryUse{Copies: int64(anon) * manifest.ChunkSize, Slabs: int64(r.slabs.count()) * slabSize, BuffersLimit: r.bufs.max}
	u.Buffers, _, u.BuffersPeak, u.BufferWaits = r.bufs.counts()
	r.packs.mu.Lock()
	u.PacksKept = int64(r.packs.bytes)
	r.packs.mu.Unlock()
	r.cacheMu.Lock()
	u.CacheQueued = len(r.queued)
	r.cacheMu.Unlock()
	return u
}

// Resolve parses name and fills in this machine's host name.
func (r *Reader) Resolve(name string) (Source, error) {
	src, err := ParseName(name)
	if err != nil {
		return Source{}, err
	}
	if src.ManifestFile == "" && src.Hostname == "" {
		src.Hostname = r.host
	}
	return src, nil
}

// Open opens a connection to the replica name (see ParseName). It returns
// once the replica's manifest is known: fetched now, or fetched by another
// connection of the process within the poll interval.
func (r *Reader) Open(ctx context.Context, name string) (*Conn, error) {
	src, err := r.Resolve(name)
	if err != nil {
		return nil, err
	}
	id := src.String()
	key := ""
	if src.ManifestFile == "" {
		if key, err = store.ManifestKey(src.Hostname, src.Path); err != nil {
			return nil, fmt.Errorf("snapshot: %s: %w", id, err)
		}
	} else if id, err = filepath.Abs(src.ManifestFile); err != nil {
		return nil, fmt.Errorf("snapshot: %s: %w", src.ManifestFile, err)
	}

	r.mu.Lock()
	rep, ok := r.replicas[id]
	if !ok {
		rep = &Replica{r: r, src: src, id: id, key: key}
		r.replicas[id] = rep
	}
	rep.mu.Lock()
	rep.conns++
	rep.mu.Unlock()
	gone := r.sweepLocked()
	r.mu.Unlock()
	if r.onGone != nil {
		for _, g := range gone {
			r.onGone(g)
		}
	}

	ctx, cancel := context.WithTimeout(ctx, r.openTO)
	defer cancel()
	s, err := rep.current(ctx)
	if err != nil {
		rep.dropConn()
		return nil, err
	}
	if err := s.load(ctx, r.upFront(len(s.M.Chunks))); err != nil {
		// Reads of the chunks that failed will report their own errors.
		r.log.Warn("snapshot: chunks the loading policy wanted at open are missing", "replica", id, "err", err)
	}
	return &Conn{rep: rep, snap: s}, nil
}

// upFront returns how many chunks of an n-chunk snapshot the loading
// policy fetches before an open returns: none if 0, otherwise the first
// k, and the last one too when k < n (see Snapshot.load).
func (r *Reader) upFront(n int) int {
	var k int
	switch r.policy.Kind {
	case "eager":
		k = n
	case "partial":
		// As Verneuil does: about sqrt(n), clamped, plus the last chunk.
		k = isqrtCeil(n)
		lo, hi := max(int(r.policy.Min), 1), int(r.policy.Max)
		if hi == 0 {
			hi = 16
		}
		hi = max(hi, lo)
		k = min(max(k, lo), hi)
	default:
		return 0
	}
	return min(k, n)
}

func isqrtCeil(n int) int {
	k := 0
	for k*k < n {
		k++
	}
	return k
}

// Replica is one replicated database as seen by this process: the newest
// snapshot fetched, and the fetch under way, if any.
type Replica struct {
	r   *Reader
	src Source
	id  string // ManifestFile's absolute path, or boule://host/path
	key string // manifest key; empty for a manifest file

	mu        sync.Mutex
	conns     int
	autoConns int
	newest    *Snapshot // holds a reference while conns > 0
	gen       uint64
	fetching  *fetchCall
	lastM     *manifest.Manifest   // the newest manifest, kept while conns == 0
	lastSum   manifest.Fingerprint // its checksum
	lastFrom  int                  // the store lastM came from
	lastStart time.Time            // when the newest fetch that returned lastM started
	staleAt   time.Time            // when the store was known to hold a newer manifest (Stale)
	stopPoll  chan struct{}
	onNewest  []func(gen uint64)
	// base keeps the base of the last format v2 manifest, fetched once
	// for all the heads that name it.
	base baseMemo
}

type fetchCall struct {
	done    chan struct{}
	start   time.Time
	joiners int       // callers waiting for it besides its starter; under Replica.mu
	s       *Snapshot // with a reference for the caller that started it
	err     error
}

// Name is the replica's name: "boule://host/path" or the manifest file.
func (rp *Replica) Name() string { return rp.id }

// Gen counts the snapshots the replica has adopted as its newest.
func (rp *Replica) Gen() uint64 {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	return rp.gen
}

// OnNewest registers f, called with the new generation whenever the
// replica's newest snapshot changes.
func (rp *Replica) OnNewest(f func(gen uint64)) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	rp.onNewest = append(rp.onNewest, f)
}

// current returns the newest snapshot, with a reference, fetching one if
// the replica has none fresher than the poll interval. When that fetch
// fails, a snapshot the open connections hold is returned all the same:
// a store outage fails the opens that have nothing to serve, not those
// that do.
func (rp *Replica) current(ctx context.Context) (*Snapshot, error) {
	rp.mu.Lock()
	// A fetch that started before Stale may have missed what Stale
	// announced.
	fresh := rp.r.now().Sub(rp.lastStart) < rp.r.poll && rp.lastStart.After(rp.staleAt)
	if rp.newest != nil && fresh {
		s := rp.newest
		s.ref()
		rp.mu.Unlock()
		return s, nil
	}
	if rp.newest == nil && rp.lastM != nil && fresh {
		s, old := rp.adoptLocked(rp.lastM, rp.lastSum, rp.lastFrom, rp.lastStart)
		s.ref()
		rp.mu.Unlock()
		if old != nil {
			old.unref()
		}
		return s, nil
	}
	rp.mu.Unlock()
	s, err := rp.fetch(ctx, false)
	if err != nil {
		rp.mu.Lock()
		if held := rp.newest; held != nil {
			held.ref()
			rp.mu.Unlock()
			return held, nil
		}
		rp.mu.Unlock()
	}
	return s, err
}

// fetch fetches the manifest and returns the replica's newest snapshot
// afterwards, with a reference. Unless force is set, it joins a fetch
// already under way instead of starting one.
func (rp *Replica) fetch(ctx context.Context, force bool) (*Snapshot, error) {
	for {
		rp.mu.Lock()
		if fc := rp.fetching; fc != nil {
			fc.joiners++
			rp.mu.Unlock()
			select {
			case <-fc.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if !force {
				if fc.err != nil {
					return nil, fc.err
				}
				// The fetch joined is as fresh as one of our own, even
				// if it took longer than the poll interval: taking its
				// result, not fetching again, keeps N waiting opens
				// from making N fetches one after another.
				rp.mu.Lock()
				if s := rp.newest; s != nil && fc.start.After(rp.staleAt) {
					s.ref()
					rp.mu.Unlock()
					return s, nil
				}
				rp.mu.Unlock()
				return rp.current(ctx)
			}
			force = false // a fetch that started after ours was asked for
			continue
		}
		start := rp.r.now()
		fc := &fetchCall{done: make(chan struct{}), start: start}
		rp.fetching = fc
		rp.mu.Unlock()

		m, sum, from, err := rp.fetchManifest(ctx)
		rp.mu.Lock()
		rp.fetching = nil
		var s, old *Snapshot
		if err == nil {
			s, old = rp.adoptLocked(m, sum, from, start)
			s.ref()
		}
		rp.mu.Unlock()
		if old != nil {
			old.unref()
		}
		fc.err = err
		close(fc.done)
		if err != nil && rp.r.ctx.Err() == nil {
			rp.r.log.Warn("snapshot: manifest fetch failed", "replica", rp.id, "err", err)
		}
		return s, err
	}
}

// checksum returns the checksum that ends b, an encoding manifest.Decode
// accepted: the BLAKE3-256 of the rest, so equal checksums mean equal
// encodings. Snapshots keep it, and not the encoding, which is as large
// as the decoded manifest.
func checksum(b []byte) manifest.Fingerprint {
	return manifest.Fingerprint(b[len(b)-manifest.FingerprintSize:])
}

// adoptLocked makes the snapshot of m (whose encoding has checksum sum,
// fetched from start) the newest, unless it is the newest already or
// older than it, and returns the newest. The caller must unref old, if
// not nil, after unlocking rp.mu.
func (rp *Replica) adoptLocked(m *manifest.Manifest, sum manifest.Fingerprint, from int, start time.Time) (s, old *Snapshot) {
	if cur := rp.newest; cur != nil {
		if cur.sum == sum {
			cur.setFetched(start)
			if start.After(rp.lastStart) {
				rp.lastStart = start
			}
			return cur, nil
		}
		if m.Created.Before(cur.M.Created) {
			if from != cur.from {
				// Another store, lagging behind the one read before
				// (which failed this time): keep the newer.
				if start.After(rp.lastStart) {
					rp.lastStart = start
				}
				return cur, nil
			}
			// The same store went back in time: the writer's clock
			// stepped back, or another writer took over the path. What
			// the store holds now is the database.
			rp.r.log.Info("snapshot: the store's newest manifest was created before the one read earlier; adopting it",
				"replica", rp.id, "created", m.Created, "before", cur.M.Created)
		}
	}
	s = newSnapshot(rp, m, sum, from, start)
	rp.gen++
	s.gen = rp.gen
	old = rp.newest
	rp.newest = s
	if rp.lastM != m {
		rp.r.retire(rp.lastM)
	}
	rp.lastM, rp.lastSum, rp.lastFrom, rp.lastStart = m, sum, from, start
	if rp.conns > 0 {
		s.ref() // the replica's own reference
		s.startPrefetch()
	} else {
		rp.newest = nil
	}
	for _, f := range rp.onNewest {
		f(rp.gen)
	}
	return s, old
}

// fetchManifest returns the replica's manifest, the checksum of its
// encoding, and the index of the store it came from (-1 for a manifest
// file).
func (rp *Replica) fetchManifest(ctx context.Context) (*manifest.Manifest, manifest.Fingerprint, int, error) {
	if rp.src.ManifestFile != "" {
		bufs := &manifestBufs{dir: rp.r.tempDir()}
		defer bufs.done()
		m, sum, err := readManifestFile(rp.src.ManifestFile, bufs)
		if err != nil {
			return nil, sum, -1, err
		}
		return m, sum, -1, nil
	}
	if len(rp.r.remote) == 0 {
		return nil, manifest.Fingerprint{}, -1, fmt.Errorf("snapshot: %s: no replication target to read the manifest %s from: %w", rp.id, rp.key, ErrNoManifest)
	}
	m, sum, from, err := rp.r.loadManifest(ctx, rp.key, &rp.base)
	if err != nil {
		return nil, sum, -1, fmt.Errorf("snapshot: %s (manifest %s): %w", rp.id, rp.key, err)
	}
	if m.Hostname != rp.src.Hostname || m.SourcePath != rp.src.Path {
		return nil, sum, -1, fmt.Errorf("snapshot: %s: manifest %s describes %s%s%s: %w",
			rp.id, rp.key, Scheme, m.Hostname, m.SourcePath, manifest.ErrInvalid)
	}
	return m, sum, from, nil
}

func (rp *Replica) dropConn() {
	rp.mu.Lock()
	rp.conns--
	var s *Snapshot
	if rp.conns == 0 && rp.newest != nil {
		s, rp.newest = rp.newest, nil
	}
	rp.mu.Unlock()
	if s != nil {
		s.unref()
	}
}

// setAuto counts connections with auto-refresh on, and runs the poller
// while there is at least one.
func (rp *Replica) setAuto(delta int) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	rp.autoConns += delta
	switch {
	case rp.autoConns > 0 && rp.stopPoll == nil:
		rp.stopPoll = make(chan struct{})
		stop := rp.stopPoll
		rp.r.goBG(func() { rp.poller(stop) })
	case rp.autoConns == 0 && rp.stopPoll != nil:
		close(rp.stopPoll)
		rp.stopPoll = nil
	}
}

// poller fetches the manifest every poll interval: one request per
// interval for the replica, whatever the number of connections.
func (rp *Replica) poller(stop chan struct{}) {
	tick, stopTick := rp.r.tick()
	defer stopTick()
	for {
		select {
		case <-stop:
			return
		case <-rp.r.ctx.Done():
			return
		case <-tick:
		}
		ctx, cancel := context.WithTimeout(rp.r.ctx, rp.r.openTO)
		if s, err := rp.fetch(ctx, false); err == nil {
			s.unref()
		}
		cancel()
	}
}

// Conn is one connection's view of a replica: the snapshot it reads, which
// changes only when the connection asks (between transactions).
type Conn struct {
	rep  *Replica
	snap *Snapshot
	auto bool
}

// Replica returns the replica c reads.
func (c *Conn) Replica() *Replica { return c.rep }

// Snapshot returns the snapshot c reads.
func (c *Conn) Snapshot() *Snapshot { return c.snap }

// Adopt switches c to the newest snapshot the process has fetched, with no
// network I/O, and reports whether it changed. Call it between
// transactions only.
func (c *Conn) Adopt() bool {
	c.rep.mu.Lock()
	s := c.rep.newest
	if s == nil || s == c.snap {
		c.rep.mu.Unlock()
		return false
	}
	s.ref()
	c.rep.mu.Unlock()
	old := c.snap
	c.snap = s
	old.unref()
	return true
}

// Refresh modes, as the boule_snapshot_refresh pragma's argument.
const (
	RefreshCached = 0 // use the newest snapshot already fetched
	RefreshFetch  = 1 // fetch, unless a fetch is under way: then wait for it
	RefreshForce  = 2 // always fetch
)

// Refresh fetches the manifest as mode says, then adopts the newest
// snapshot. Call it between transactions only.
func (c *Conn) Refresh(ctx context.Context, mode int) error {
	if mode != RefreshCached {
		ctx, cancel := context.WithTimeout(ctx, c.rep.r.openTO)
		defer cancel()
		s, err := c.rep.fetch(ctx, mode == RefreshForce)
		if err != nil {
			return err
		}
		if err := s.load(ctx, c.rep.r.upFront(len(s.M.Chunks))); err != nil {
			c.rep.r.log.Warn("snapshot: chunks the loading policy wanted at refresh are missing", "replica", c.rep.id, "err", err)
		}
		s.unref()
	}
	c.Adopt()
	return nil
}

// AsyncReload adopts a newer snapshot if the process has one and reports
// true; otherwise it starts a background fetch, unless one is under way,
// and reports false.
func (c *Conn) AsyncReload() bool {
	if c.Adopt() {
		return true
	}
	c.rep.mu.Lock()
	busy := c.rep.fetching != nil
	c.rep.mu.Unlock()
	if !busy {
		c.rep.r.goBG(func() {
			ctx, cancel := context.WithTimeout(c.rep.r.ctx, c.rep.r.openTO)
			defer cancel()
			if s, err := c.rep.fetch(ctx, false); err == nil {
				s.unref()
			}
		})
	}
	return false
}

// AutoRefresh reports whether c adopts the newest snapshot at each
// transaction.
func (c *Conn) AutoRefresh() bool { return c.auto }

// SetAutoRefresh sets auto-refresh and returns its previous value. While
// on, the replica's manifest is polled every poll interval.
func (c *Conn) SetAutoRefresh(on bool) bool {
	prev := c.auto
	if on != prev {
		c.auto = on
		if on {
			c.rep.setAuto(1)
		} else {
			c.rep.setAuto(-1)
		}
	}
	return prev
}

// Close releases c's snapshot.
func (c *Conn) Close() {
	if c.snap == nil {
		return
	}
	c.SetAutoRefresh(false)
	c.snap.unref()
	c.snap = nil
	c.rep.dropConn()
}

// errClosed is returned for chunks of a snapshot nobody uses any more.
var errClosed = errors.New("snapshot: snapshot released")

// Stores returns the stores chunks are read from, in order: the cache,
// then the remote stores.
func (r *Reader) Stores() []store.Store {
	var out []store.Store
	if r.cache != nil {
		out = append(out, r.cache)
	}
	return append(out, r.remote...)
}

// Manifest fetches the newest manifest of the replica name (see
// ParseName), or reads the manifest file it names.
func (r *Reader) Manifest(ctx context.Context, name string) (*manifest.Manifest, error) {
	src, err := r.Resolve(name)
	if err != nil {
		return nil, err
	}
	rp := &Replica{r: r, src: src, id: src.String()}
	if src.ManifestFile == "" {
		if rp.key, err = store.ManifestKey(src.Hostname, src.Path); err != nil {
			return nil, fmt.Errorf("snapshot: %s: %w", rp.id, err)
		}
	}
	m, _, _, err := rp.fetchManifest(ctx)
	return m, err
}

// Restore writes the newest snapshot of the replica name to the file out,
// atomically (see restore.File).
func (r *Reader) Restore(ctx context.Context, name, out string, opts restore.Options) error {
	m, err := r.Manifest(ctx, name)
	if err != nil {
		return err
	}
	return restore.File(ctx, r.Stores(), m, out, opts)
}
