package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/boule-vfs/boule/manifest"
)

// Retry defaults, for the zero fields of RetryOptions.
const (
	// DefaultBaseDelay is the backoff before the first retry.
	DefaultBaseDelay = 100 * time.Millisecond
	// DefaultBackoffFactor multiplies the backoff at each further retry.
	DefaultBackoffFactor = 4
	// DefaultMaxAttempts bounds the attempts per call, the first included.
	DefaultMaxAttempts = 5
	// DefaultMaxDelay bounds the backoff.
	DefaultMaxDelay = 10 * time.Second
	// DefaultNotFoundDelay is how long a read that found nothing waits
	// before its one retry: S3 clones can make objects flicker in and
	// out of existence right after a PUT.
	DefaultNotFoundDelay = 100 * time.Millisecond
)

// Clock is the time source of Limited: the rate limiter's reservations
// and the sleeps between attempts go through it, so that tests can run
// without sleeping.
type Clock interface {
	Now() time.Time
	// Sleep waits for d or until ctx is done, returning ctx's error in
	// the latter case.
	Sleep(ctx context.Context, d time.Duration) error
}

// SystemClock is the real clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// Sleep waits for d or until ctx is done.
func (SystemClock) Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RetryOptions tunes Limited. Zero fields take the defaults.
type RetryOptions struct {
	// BaseDelay is the backoff before the first retry (before jitter);
	// zero means DefaultBaseDelay.
	BaseDelay time.Duration
	// Factor multiplies the backoff at each further retry; less than 1
	// means DefaultBackoffFactor.
	Factor float64
	// MaxDelay bounds the backoff; zero means DefaultMaxDelay.
	MaxDelay time.Duration
	// MaxAttempts bounds the attempts per call, the first included;
	// zero means DefaultMaxAttempts.
	MaxAttempts int
	// NotFoundDelay is the wait before retrying, once, a GetChunk,
	// GetPack or GetManifest that found nothing; zero means
	// DefaultNotFoundDelay, and negative disables that retry.
	NotFoundDelay time.Duration
	// Clock defaults to SystemClock.
	Clock Clock
	// Jitter returns a uniform random number in [0, 1); the delay before
	// a retry is Jitter() times the backoff ("full jitter"). It defaults
	// to math/rand/v2's Float64.
	Jitter func() float64
}

// positiveOr returns v if it is positive, and def otherwise.
func positiveOr[T int | time.Duration](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

func (o RetryOptions) withDefaults() RetryOptions {
	o.BaseDelay = positiveOr(o.BaseDelay, DefaultBaseDelay)
	o.MaxDelay = positiveOr(o.MaxDelay, DefaultMaxDelay)
	o.MaxAttempts = positiveOr(o.MaxAttempts, DefaultMaxAttempts)
	if o.Factor < 1 {
		o.Factor = DefaultBackoffFactor
	}
	if o.NotFoundDelay == 0 {
		o.NotFoundDelay = DefaultNotFoundDelay
	}
	if o.Clock == nil {
		o.Clock = SystemClock{}
	}
	if o.Jitter == nil {
		o.Jitter = rand.Float64
	}
	return o
}

// Stats are a Limited store's counters since it was created.
type Stats struct {
	// Calls counts attempts, each one a call to the wrapped store after
	// waiting on the rate limiter.
	Calls int64
	// Retries counts attempts after the first of their call.
	Retries int64
	// Failures counts calls that returned an error, ErrNotFound and
	// ErrPrecondition aside.
	Failures int64
	// BytesUp counts the raw bytes of successful puts (before
	// compression); BytesDown those returned by successful gets (after
	// decompression).
	BytesUp, BytesDown int64
	// LastError is the message of the last failed attempt (ErrNotFound
	// and ErrPrecondition aside).
	LastError string
	// LastErrorTime is when the last failed attempt failed.
	LastErrorTime time.Time
	// LimiterWait is the total time attempts waited on the rate limiter.
	LimiterWait time.Duration
}

// Limited is a Store that rate-limits and retries the calls to another.
// Every attempt first waits on the limiter; errors for which IsRetryable
// is true are retried with exponential backoff and full jitter, and other
// errors return at once. It is safe for concurrent use.
type Limited struct {
	s    Store
	lim  *rate.Limiter
	opts RetryOptions

	calls, retries, failures atomic.Int64
	bytesUp, bytesDown       atomic.Int64
	limiterWait              atomic.Int64

	mu          sync.Mutex
	lastErr     string
	lastErrTime time.Time
}

var (
	_ Store       = (*Limited)(nil)
	_ Conditional = (*Limited)(nil)
)

// NewLimited wraps s. A nil lim means no rate limit.
func NewLimited(s Store, lim *rate.Limiter, opts RetryOptions) *Limited {
	return &Limited{s: s, lim: lim, opts: opts.withDefaults()}
}

// Unwrap returns the wrapped store.
func (l *Limited) Unwrap() Store { return l.s }

// String implements Store: the wrapped store's description.
func (l *Limited) String() string { return l.s.String() }

// Stats returns a snapshot of the counters.
func (l *Limited) Stats() Stats {
	st := Stats{
		Calls:       l.calls.Load(),
		Retries:     l.retries.Load(),
		Failures:    l.failures.Load(),
		BytesUp:     l.bytesUp.Load(),
		BytesDown:   l.bytesDown.Load(),
		LimiterWait: time.Duration(l.limiterWait.Load()),
	}
	l.mu.Lock()
	st.LastError, st.LastErrorTime = l.lastErr, l.lastErrTime
	l.mu.Unlock()
	return st
}

// wait takes one token from the limiter, sleeping on the clock as long as
// the reservation says.
func (l *Limited) wait(ctx context.Context) error {
	if l.lim == nil {
		return ctx.Err()
	}
	now := l.opts.Clock.Now()
	r := l.lim.ReserveN(now, 1)
	if !r.OK() {
		return errors.New("store: rate limiter burst is zero")
	}
	d := r.DelayFrom(now)
	if d <= 0 {
		return ctx.Err()
	}
	if err := l.opts.Clock.Sleep(ctx, d); err != nil {
		r.CancelAt(l.opts.Clock.Now())
		return err
	}
	l.limiterWait.Add(int64(d))
	return nil
}

// backoff returns the delay before retry number n (1 for the first).
func (l *Limited) backoff(n int) time.Duration {
	d := float64(l.opts.BaseDelay)
	for i := 1; i < n && d < float64(l.opts.MaxDelay); i++ {
		d *= l.opts.Factor
	}
	d = min(d, float64(l.opts.MaxDelay))
	return time.Duration(l.opts.Jitter() * d)
}

// run calls f until it succeeds, fails for good, or runs out of
// attempts. retryNotFound allows one retry of an ErrNotFound.
func (l *Limited) run(ctx context.Context, retryNotFound bool, f func(context.Context) error) error {
	var err error
	notFoundRetried := false
	for attempt := 1; ; attempt++ {
		if werr := l.wait(ctx); werr != nil {
			if err == nil {
				err = &Error{Op: "wait for rate limiter", Target: l.s.String(), Detail: werr.Error(), Err: werr}
			} else {
				err = fmt.Errorf("%w (gave up: %w)", err, werr)
			}
			return l.fail(err)
		}
		l.calls.Add(1)
		if attempt > 1 {
			l.retries.Add(1)
		}
		err = f(ctx)
		if err == nil {
			return nil
		}
		var delay time.Duration
		switch {
		case errors.Is(err, ErrNotFound):
			if !retryNotFound || notFoundRetried || l.opts.NotFoundDelay < 0 || attempt >= l.opts.MaxAttempts {
				return err
			}
			notFoundRetried = true
			delay = l.opts.NotFoundDelay
		case IsRetryable(err) && attempt < l.opts.MaxAttempts && ctx.Err() == nil:
			l.noteError(err)
			delay = l.backoff(attempt)
		case IsRetryable(err) && ctx.Err() != nil && !errors.Is(err, ctx.Err()):
			// Canceled during the attempt: say so, as when canceled
			// during a backoff.
			return l.fail(fmt.Errorf("%w (gave up: %w)", err, ctx.Err()))
		default:
			return l.fail(err)
		}
		if serr := l.opts.Clock.Sleep(ctx, delay); serr != nil {
			return l.fail(fmt.Errorf("%w (gave up: %w)", err, serr))
		}
	}
}

func (l *Limited) noteError(err error) {
	l.mu.Lock()
	l.lastErr, l.lastErrTime = err.Error(), l.opts.Clock.Now()
	l.mu.Unlock()
}

// fail counts err as a failure, unless it is an answer rather than a
// failure: not found, or a precondition that did not hold.
func (l *Limited) fail(err error) error {
	if !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrPrecondition) {
		l.failures.Add(1)
		l.noteError(err)
	}
	return err
}

// put runs a put of n raw bytes, counting them if it succeeds.
func (l *Limited) put(ctx context.Context, n int, f func(context.Context) error) error {
	err := l.run(ctx, false, f)
	if err == nil {
		l.bytesUp.Add(int64(n))
	}
	return err
}

// get runs a read, retrying one ErrNotFound if retryNotFound, and counts
// the bytes it returns.
func (l *Limited) get(ctx context.Context, retryNotFound bool, f func(context.Context) ([]byte, error)) ([]byte, error) {
	out, err := call(ctx, l, retryNotFound, f)
	if err != nil {
		return nil, err
	}
	l.bytesDown.Add(int64(len(out)))
	return out, nil
}

// call runs f through l.run and returns what its last attempt returned.
func call[T any](ctx context.Context, l *Limited, retryNotFound bool, f func(context.Context) (T, error)) (T, error) {
	var out T
	err := l.run(ctx, retryNotFound, func(ctx context.Context) (err error) {
		out, err = f(ctx)
		return err
	})
	return out, err
}

// PutChunk implements Store.
func (l *Limited) PutChunk(ctx context.Context, fp manifest.Fingerprint, data []byte) error {
	return l.put(ctx, len(data), func(ctx context.Context) error { return l.s.PutChunk(ctx, fp, data) })
}

// GetChunk implements Store.
func (l *Limited) GetChunk(ctx context.Context, fp manifest.Fingerprint) ([]byte, error) {
	return l.get(ctx, true, func(ctx context.Context) ([]byte, error) { return l.s.GetChunk(ctx, fp) })
}

// TouchChunk implements Store.
func (l *Limited) TouchChunk(ctx context.Context, fp manifest.Fingerprint) error {
	return l.run(ctx, false, func(ctx context.Context) error { return l.s.TouchChunk(ctx, fp) })
}

// PutPack implements Store.
func (l *Limited) PutPack(ctx context.Context, id manifest.Fingerprint, blob []byte) error {
	return l.put(ctx, len(blob), func(ctx context.Context) error { return l.s.PutPack(ctx, id, blob) })
}

// GetPack implements Store.
func (l *Limited) GetPack(ctx context.Context, id manifest.Fingerprint) ([]byte, error) {
	return l.get(ctx, true, func(ctx context.Context) ([]byte, error) { return l.s.GetPack(ctx, id) })
}

// ReadPack implements PackReader, through the store's ReadPack if it has
// one (see store.ReadPack).
func (l *Limited) ReadPack(ctx context.Context, id manifest.Fingerprint, alloc func(size int) ([]byte, error)) ([]byte, error) {
	return l.get(ctx, true, func(ctx context.Context) ([]byte, error) { return ReadPack(ctx, l.s, id, alloc) })
}

// ReadManifestBlob implements BlobReader, through the store's if it has
// one (see store.ReadManifestBlob).
func (l *Limited) ReadManifestBlob(ctx context.Context, key string, alloc func(size int) ([]byte, error)) ([]byte, error) {
	return l.get(ctx, true, func(ctx context.Context) ([]byte, error) { return ReadManifestBlob(ctx, l.s, key, alloc) })
}

// ReadBase implements BlobReader, through the store's if it has one
// (see store.ReadBase).
func (l *Limited) ReadBase(ctx context.Context, id manifest.Fingerprint, size int64, alloc func(size int) ([]byte, error)) ([]byte, error) {
	return l.get(ctx, true, func(ctx context.Context) ([]byte, error) { return ReadBase(ctx, l.s, id, size, alloc) })
}

// ReadPackRange implements PackRangeReader, through the store's if it
// has one (see store.ReadPackRange).
func (l *Limited) ReadPackRange(ctx context.Context, id manifest.Fingerprint, off, length int, dst []byte) ([]byte, error) {
	return l.get(ctx, true, func(ctx context.Context) ([]byte, error) { return ReadPackRange(ctx, l.s, id, off, length, dst) })
}

// TouchPack implements Store.
func (l *Limited) TouchPack(ctx context.Context, id manifest.Fingerprint) error {
	return l.run(ctx, false, func(ctx context.Context) error { return l.s.TouchPack(ctx, id) })
}

// PutBase implements Store.
func (l *Limited) PutBase(ctx context.Context, id manifest.Fingerprint, blob []byte) error {
	return l.put(ctx, len(blob), func(ctx context.Context) error { return l.s.PutBase(ctx, id, blob) })
}

// GetBase implements Store.
func (l *Limited) GetBase(ctx context.Context, id manifest.Fingerprint, size int64) ([]byte, error) {
	return l.get(ctx, true, func(ctx context.Context) ([]byte, error) { return l.s.GetBase(ctx, id, size) })
}

// TouchBase implements Store.
func (l *Limited) TouchBase(ctx context.Context, id manifest.Fingerprint) error {
	return l.run(ctx, false, func(ctx context.Context) error { return l.s.TouchBase(ctx, id) })
}

// PutManifest implements Store.
func (l *Limited) PutManifest(ctx context.Context, key string, data []byte) error {
	return l.put(ctx, len(data), func(ctx context.Context) error { return l.s.PutManifest(ctx, key, data) })
}

// GetManifest implements Store.
func (l *Limited) GetManifest(ctx context.Context, key string) ([]byte, error) {
	return l.get(ctx, true, func(ctx context.Context) ([]byte, error) { return l.s.GetManifest(ctx, key) })
}

// ListManifests implements Store.
func (l *Limited) ListManifests(ctx context.Context, prefix string) ([]ManifestInfo, error) {
	return call(ctx, l, false, func(ctx context.Context) ([]ManifestInfo, error) { return l.s.ListManifests(ctx, prefix) })
}

// ManifestVersions implements Store.
func (l *Limited) ManifestVersions(ctx context.Context, key string) ([]Version, error) {
	return call(ctx, l, false, func(ctx context.Context) ([]Version, error) { return l.s.ManifestVersions(ctx, key) })
}

// GetManifestVersion implements Store.
func (l *Limited) GetManifestVersion(ctx context.Context, key, versionID string) ([]byte, error) {
	return l.get(ctx, false, func(ctx context.Context) ([]byte, error) { return l.s.GetManifestVersion(ctx, key, versionID) })
}

// ConditionalPuts implements Conditional: whether the wrapped store
// honours conditional puts.
func (l *Limited) ConditionalPuts() bool { return ConditionalPuts(l.s) }

// PutManifestIf implements Conditional. A precondition failure is
// returned at once, never retried; a wrapped store that is not
// Conditional fails with ErrUnsupported, without a call.
func (l *Limited) PutManifestIf(ctx context.Context, key string, data []byte, etag string) (string, error) {
	c, ok := l.s.(Conditional)
	if !ok {
		return "", unsupported("put manifest if", key, l.s)
	}
	var tag string
	err := l.put(ctx, len(data), func(ctx context.Context) (err error) {
		tag, err = c.PutManifestIf(ctx, key, data, etag)
		return err
	})
	return tag, err
}

// GetManifestTag implements Conditional. Unlike GetManifest it does not
// retry a manifest not found: a caller that then puts on no manifest
// (If-None-Match) learns of one that flickered out by the put's
// precondition failure.
func (l *Limited) GetManifestTag(ctx context.Context, key string) ([]byte, string, error) {
	c, ok := l.s.(Conditional)
	if !ok {
		return nil, "", unsupported("get manifest tag", key, l.s)
	}
	var tag string
	b, err := l.get(ctx, false, func(ctx context.Context) (b []byte, err error) {
		b, tag, err = c.GetManifestTag(ctx, key)
		return b, err
	})
	if err != nil {
		return nil, "", err
	}
	return b, tag, nil
}

// unsupported returns the error of a conditional call to s, a store
// without conditional puts.
func unsupported(op, key string, s Store) error {
	return &Error{Op: op, Key: key, Target: s.String(), Kind: ErrUnsupported, Detail: "the store has no conditional writes"}
}
