package store

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"golang.org/x/time/rate"

	"github.com/boule-vfs/boule/config"
)

// A Target is one configured replication target, opened: a store and
// the name logs and status give it.
type Target struct {
	// Name identifies the target in logs and status, e.g. "dir:/backups".
	Name string
	// Store receives the chunks and manifests.
	Store Store
	// Cache marks a local chunk cache: it is filled on the way, but an
	// upload does not wait for it or fail because of it.
	Cache bool
}

// OpenOptions are what every backend may use when it opens a target.
type OpenOptions struct {
	// Logger receives a backend's own diagnostics. Nil means
	// slog.Default().
	Logger *slog.Logger
	// ReadOnly opens the stores to be read only (restores, replicas,
	// tools): a backend then creates and changes nothing, whatever the
	// target's configuration allows a writer (s3: no bucket is created
	// on demand, nor checked first).
	ReadOnly bool
}

// A Backend opens the targets of one kind. Open reports ok false for a
// target of another kind.
type Backend struct {
	// Name is the configuration key of the kind, such as "s3".
	Name string
	// Open opens t if it is of this kind. The store is a Cache when the
	// target only caches chunks.
	Open func(ctx context.Context, t config.Target, opts OpenOptions) (s Store, ok bool, err error)
}

var (
	backendsMu sync.Mutex
	backends   []Backend
)

// RegisterBackend makes a kind of target known to Open. Each backend
// package registers itself when imported (store/s3, store/dir,
// store/cache); a program imports the ones it needs.
func RegisterBackend(b Backend) {
	backendsMu.Lock()
	defer backendsMu.Unlock()
	backends = append(backends, b)
}

// Open opens the stores of cfg's replication targets, in order: every s3
// and dir target, and the local caches (marked Cache). read_only targets
// are only read from, by replicas, so they are not opened here. No
// network call is made. A target whose backend was not imported is an
// error that names it.
func Open(ctx context.Context, cfg config.Config, opts OpenOptions) ([]Target, error) {
	if opts.Logger == nil {
		opts.Logger = cfg.Logger
	}
	backendsMu.Lock()
	bs := append([]Backend(nil), backends...)
	backendsMu.Unlock()
	var out []Target
	for i, t := range cfg.ReplicationTargets {
		if t.ReadOnly != nil {
			continue
		}
		var opened bool
		for _, b := range bs {
			s, ok, err := b.Open(ctx, t, opts)
			if err != nil {
				return nil, fmt.Errorf("store: replication_targets[%d]: %w", i, err)
			}
			if ok {
				out = append(out, Target{Name: s.String(), Store: s, Cache: IsCache(s)})
				opened = true
				break
			}
		}
		if !opened {
			return nil, fmt.Errorf("store: replication_targets[%d]: no backend for this kind of target is linked into the program", i)
		}
	}
	return out, nil
}

// Read-side defaults. Reads are cheap (GETs cost a tenth of PUTs) and a
// cold scan needs many of them, so readers get their own limiter, far
// above the uploader's 30/s; the retries are bounded so that a store that
// is down fails an open or a restore in seconds, not minutes.
const (
	// ReadRequestsPerSecond is the rate of the readers' limiter.
	ReadRequestsPerSecond = 2000
	// ReadBurst is the burst of the readers' limiter.
	ReadBurst = 200
	// ReadMaxAttempts bounds the attempts of each read, the first
	// included.
	ReadMaxAttempts = 4
)

// ForReading splits targets for readers: the remote stores, wrapped in
// one read limiter (ReadRequestsPerSecond, ReadBurst) with at most
// ReadMaxAttempts attempts per request, and the first local cache, if any.
func ForReading(targets []Target) (remote []Store, cache Store) {
	lim := rate.NewLimiter(ReadRequestsPerSecond, ReadBurst)
	for _, t := range targets {
		if t.Cache {
			if cache == nil {
				cache = t.Store
			}
			continue
		}
		remote = append(remote, NewLimited(t.Store, lim, RetryOptions{MaxAttempts: ReadMaxAttempts}))
	}
	return remote, cache
}

// OpenForReading opens the stores that restores and tools read from, in
// the order they are tried: the local cache, if cfg has one, then the
// remote targets behind the read limiter (see ForReading).
func OpenForReading(ctx context.Context, cfg config.Config) ([]Store, error) {
	targets, err := Open(ctx, cfg, OpenOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	remote, cache := ForReading(targets)
	if cache == nil {
		return remote, nil
	}
	return append([]Store{cache}, remote...), nil
}
