package store_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/storetest"
)

// scriptStore is a Store whose calls fail with scripted errors, then
// succeed, returning data. It records the methods called, and runs
// during, if set, in each call.
type scriptStore struct {
	mu     sync.Mutex
	errs   []error
	calls  int
	ops    []string
	data   []byte
	during func()
}

func (s *scriptStore) next(op string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	s.ops = append(s.ops, op)
	if s.during != nil {
		s.during()
	}
	if len(s.errs) == 0 {
		return nil
	}
	err := s.errs[0]
	s.errs = s.errs[1:]
	return err
}

// read returns data unless the call fails.
func (s *scriptStore) read(op string) ([]byte, error) {
	if err := s.next(op); err != nil {
		return nil, err
	}
	return s.data, nil
}

func (s *scriptStore) PutChunk(context.Context, manifest.Fingerprint, []byte) error {
	return s.next("PutChunk")
}
func (s *scriptStore) GetChunk(context.Context, manifest.Fingerprint) ([]byte, error) {
	return s.read("GetChunk")
}
func (s *scriptStore) TouchChunk(context.Context, manifest.Fingerprint) error {
	return s.next("TouchChunk")
}
func (s *scriptStore) PutPack(context.Context, manifest.Fingerprint, []byte) error {
	return s.next("PutPack")
}
func (s *scriptStore) GetPack(context.Context, manifest.Fingerprint) ([]byte, error) {
	return s.read("GetPack")
}
func (s *scriptStore) TouchPack(context.Context, manifest.Fingerprint) error {
	return s.next("TouchPack")
}
func (s *scriptStore) PutBase(context.Context, manifest.Fingerprint, []byte) error {
	return s.next("PutBase")
}
func (s *scriptStore) GetBase(context.Context, manifest.Fingerprint, int64) ([]byte, error) {
	return s.read("GetBase")
}
func (s *scriptStore) TouchBase(context.Context, manifest.Fingerprint) error {
	return s.next("TouchBase")
}
func (s *scriptStore) PutManifest(context.Context, string, []byte) error {
	return s.next("PutManifest")
}
func (s *scriptStore) GetManifest(context.Context, string) ([]byte, error) {
	return s.read("GetManifest")
}
func (s *scriptStore) GetManifestVersion(context.Context, string, string) ([]byte, error) {
	return s.read("GetManifestVersion")
}
func (s *scriptStore) ListManifests(context.Context, string) ([]store.ManifestInfo, error) {
	return nil, s.next("ListManifests")
}
func (s *scriptStore) ManifestVersions(context.Context, string) ([]store.Version, error) {
	return nil, s.next("ManifestVersions")
}
func (s *scriptStore) String() string { return "script" }

var (
	errTransient = &store.Error{Op: "test op", Detail: "transient", Retryable: true}
	errForbidden = &store.Error{Op: "test op", Detail: "denied", Kind: store.ErrPermanent}
	errMissing   = &store.Error{Op: "test op", Detail: "missing", Kind: store.ErrNotFound}
)

func newTestLimited(s store.Store, lim *rate.Limiter, clk *storetest.SleepClock) *store.Limited {
	return store.NewLimited(s, lim, store.RetryOptions{Clock: clk, Jitter: func() float64 { return 1 }})
}

func TestLimitedRetriesThenSucceeds(t *testing.T) {
	clk := &storetest.SleepClock{}
	st := &scriptStore{errs: []error{errTransient, errTransient}}
	l := newTestLimited(st, nil, clk)
	if err := l.PutChunk(context.Background(), manifest.ZeroChunk, make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	s := l.Stats()
	if s.Calls != 3 || s.Retries != 2 || s.Failures != 0 || s.BytesUp != 100 {
		t.Errorf("stats %+v", s)
	}
	if !strings.Contains(s.LastError, "transient") || s.LastErrorTime.IsZero() {
		t.Errorf("LastError %q at %v", s.LastError, s.LastErrorTime)
	}
	if got, want := clk.Sleeps(), []time.Duration{100 * time.Millisecond, 400 * time.Millisecond}; !slices.Equal(got, want) {
		t.Errorf("slept %v, want %v", got, want)
	}
}

func TestLimitedBackoffSchedule(t *testing.T) {
	for _, c := range []struct {
		opts store.RetryOptions
		want []time.Duration
	}{
		{store.RetryOptions{}, []time.Duration{100 * time.Millisecond, 400 * time.Millisecond, 1600 * time.Millisecond, 6400 * time.Millisecond}},
		{store.RetryOptions{BaseDelay: time.Second}, []time.Duration{time.Second, 4 * time.Second, 10 * time.Second, 10 * time.Second}},
		{store.RetryOptions{MaxAttempts: 2}, []time.Duration{100 * time.Millisecond}},
	} {
		clk := &storetest.SleepClock{}
		c.opts.Clock = clk
		c.opts.Jitter = func() float64 { return 1 }
		st := &scriptStore{errs: slices.Repeat([]error{errTransient}, 10)}
		l := store.NewLimited(st, nil, c.opts)
		err := l.TouchChunk(context.Background(), manifest.ZeroChunk)
		if !store.IsRetryable(err) {
			t.Fatalf("err %v", err)
		}
		if got := clk.Sleeps(); !slices.Equal(got, c.want) {
			t.Errorf("%+v: slept %v, want %v", c.opts, got, c.want)
		}
		if s := l.Stats(); s.Calls != int64(len(c.want)+1) || s.Failures != 1 {
			t.Errorf("stats %+v", s)
		}
	}
}

func TestLimitedFullJitter(t *testing.T) {
	clk := &storetest.SleepClock{}
	var draws []float64
	l := store.NewLimited(&scriptStore{errs: []error{errTransient, errTransient}}, nil, store.RetryOptions{
		Clock:  clk,
		Jitter: func() float64 { draws = append(draws, 0.25); return 0.25 },
	})
	if err := l.PutManifest(context.Background(), "k", nil); err != nil {
		t.Fatal(err)
	}
	if got, want := clk.Sleeps(), []time.Duration{25 * time.Millisecond, 100 * time.Millisecond}; !slices.Equal(got, want) {
		t.Errorf("slept %v, want %v", got, want)
	}
	// Default jitter stays within [0, backoff).
	clk = &storetest.SleepClock{}
	l = store.NewLimited(&scriptStore{errs: slices.Repeat([]error{errTransient}, 4)}, nil, store.RetryOptions{Clock: clk})
	_ = l.PutManifest(context.Background(), "k", nil)
	for i, d := range clk.Sleeps() {
		if max := 100 * time.Millisecond << (2 * i); d < 0 || d >= max {
			t.Errorf("sleep %d = %v, want in [0, %v)", i, d, max)
		}
	}
}

func TestLimitedPermanentNotRetried(t *testing.T) {
	clk := &storetest.SleepClock{}
	st := &scriptStore{errs: []error{errForbidden}}
	l := newTestLimited(st, nil, clk)
	err := l.PutChunk(context.Background(), manifest.ZeroChunk, nil)
	if !errors.Is(err, store.ErrPermanent) || st.calls != 1 || len(clk.Sleeps()) != 0 {
		t.Fatalf("err %v after %d calls, slept %v", err, st.calls, clk.Sleeps())
	}
	if s := l.Stats(); s.Failures != 1 || s.Retries != 0 || s.BytesUp != 0 || !strings.Contains(s.LastError, "denied") {
		t.Errorf("stats %+v", s)
	}
}

func TestLimitedNotFoundRetriedOnce(t *testing.T) {
	ctx := context.Background()
	for name, op := range map[string]func(*store.Limited) error{
		"GetChunk":    func(l *store.Limited) error { _, err := l.GetChunk(ctx, manifest.ZeroChunk); return err },
		"GetManifest": func(l *store.Limited) error { _, err := l.GetManifest(ctx, "k"); return err },
	} {
		// Missing twice: ErrNotFound after one retry 100 ms later.
		clk := &storetest.SleepClock{}
		st := &scriptStore{errs: []error{errMissing, errMissing, errMissing}}
		l := newTestLimited(st, nil, clk)
		if err := op(l); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("%s: %v", name, err)
		}
		if st.calls != 2 || !slices.Equal(clk.Sleeps(), []time.Duration{100 * time.Millisecond}) {
			t.Errorf("%s: %d calls, slept %v", name, st.calls, clk.Sleeps())
		}
		if s := l.Stats(); s.Failures != 0 || s.LastError != "" {
			t.Errorf("%s: a miss counted as a failure: %+v", name, s)
		}
		// Flickering: found on the retry.
		st = &scriptStore{errs: []error{errMissing}, data: []byte("abc")}
		l = newTestLimited(st, nil, &storetest.SleepClock{})
		if err := op(l); err != nil {
			t.Fatalf("%s after a flicker: %v", name, err)
		}
		if l.Stats().BytesDown != 3 {
			t.Errorf("%s: BytesDown %d", name, l.Stats().BytesDown)
		}
	}
	// Touch and version reads do not retry a miss.
	st := &scriptStore{errs: []error{errMissing, errMissing}}
	l := newTestLimited(st, nil, &storetest.SleepClock{})
	if err := l.TouchChunk(ctx, manifest.ZeroChunk); !errors.Is(err, store.ErrNotFound) || st.calls != 1 {
		t.Errorf("TouchChunk: %v after %d calls", err, st.calls)
	}
}

// TestLimitedMethods: each method of Limited calls the same of the store
// it wraps, retries a miss once only where a read may see an object
// flicker into existence, and counts the raw bytes it moves.
func TestLimitedMethods(t *testing.T) {
	ctx := context.Background()
	payload := []byte("12345")
	for _, tc := range []struct {
		name      string
		call      func(l *store.Limited) error
		retryMiss bool
		up, down  int64
	}{
		{"PutChunk", func(l *store.Limited) error { return l.PutChunk(ctx, manifest.ZeroChunk, payload) }, false, 5, 0},
		{"GetChunk", func(l *store.Limited) error { _, err := l.GetChunk(ctx, manifest.ZeroChunk); return err }, true, 0, 3},
		{"TouchChunk", func(l *store.Limited) error { return l.TouchChunk(ctx, manifest.ZeroChunk) }, false, 0, 0},
		{"PutPack", func(l *store.Limited) error { return l.PutPack(ctx, manifest.ZeroChunk, payload) }, false, 5, 0},
		{"GetPack", func(l *store.Limited) error { _, err := l.GetPack(ctx, manifest.ZeroChunk); return err }, true, 0, 3},
		{"TouchPack", func(l *store.Limited) error { return l.TouchPack(ctx, manifest.ZeroChunk) }, false, 0, 0},
		{"PutManifest", func(l *store.Limited) error { return l.PutManifest(ctx, "k", payload) }, false, 5, 0},
		{"GetManifest", func(l *store.Limited) error { _, err := l.GetManifest(ctx, "k"); return err }, true, 0, 3},
		{"GetManifestVersion", func(l *store.Limited) error { _, err := l.GetManifestVersion(ctx, "k", "v"); return err }, false, 0, 3},
		{"ListManifests", func(l *store.Limited) error { _, err := l.ListManifests(ctx, "p"); return err }, false, 0, 0},
		{"ManifestVersions", func(l *store.Limited) error { _, err := l.ManifestVersions(ctx, "k"); return err }, false, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := &scriptStore{data: []byte("abc")}
			l := newTestLimited(st, nil, &storetest.SleepClock{})
			if err := tc.call(l); err != nil {
				t.Fatalf("%s()=%v, want nil", tc.name, err)
			}
			if s := l.Stats(); !slices.Equal(st.ops, []string{tc.name}) || s.Calls != 1 || s.BytesUp != tc.up || s.BytesDown != tc.down {
				t.Errorf("%s() called %q; stats %+v, want BytesUp %d BytesDown %d", tc.name, st.ops, s, tc.up, tc.down)
			}

			st = &scriptStore{errs: []error{errMissing}, data: []byte("abc")}
			l = newTestLimited(st, nil, &storetest.SleepClock{})
			err := tc.call(l)
			if tc.retryMiss && (err != nil || st.calls != 2) {
				t.Errorf("%s() after one miss=%v after %d calls, want nil after 2", tc.name, err, st.calls)
			}
			if !tc.retryMiss && (!errors.Is(err, store.ErrNotFound) || st.calls != 1) {
				t.Errorf("%s() after one miss=%v after %d calls, want ErrNotFound after 1", tc.name, err, st.calls)
			}
		})
	}
}

// TestLimitedCanceledDuringAttempt: a caller that cancels while an
// attempt is under way, which then fails in a way worth retrying, gets an
// error that says the cancellation ended the call, as when it cancels
// during a backoff, not the attempt's error alone.
func TestLimitedCanceledDuringAttempt(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := &scriptStore{errs: []error{errTransient, errTransient}, during: cancel}
	l := newTestLimited(st, nil, &storetest.SleepClock{})
	err := l.PutChunk(ctx, manifest.ZeroChunk, nil)
	if !errors.Is(err, context.Canceled) || !errors.Is(err, errTransient) || st.calls != 1 {
		t.Fatalf("PutChunk()=%v after %d calls, want the attempt's error and context.Canceled after 1", err, st.calls)
	}
	if s := l.Stats(); s.Failures != 1 || s.LastError != err.Error() {
		t.Errorf("stats %+v, want one failure, %q", s, err)
	}
}

func TestLimitedCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	st := &scriptStore{errs: slices.Repeat([]error{errTransient}, 10)}
	// The real clock: cancellation must cut the backoff short.
	l := store.NewLimited(st, nil, store.RetryOptions{BaseDelay: time.Hour, Jitter: func() float64 { return 1 }})
	done := make(chan error, 1)
	go func() { done <- l.PutChunk(ctx, manifest.ZeroChunk, nil) }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v, want it to wrap context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancellation did not interrupt the backoff")
	}
	// Canceled before the first attempt: no call at all.
	st = &scriptStore{}
	l = store.NewLimited(st, rate.NewLimiter(rate.Every(time.Hour), 1), store.RetryOptions{})
	_ = l.TouchChunk(context.Background(), manifest.ZeroChunk) // takes the only token
	err := l.TouchChunk(ctx, manifest.ZeroChunk)
	if !errors.Is(err, context.Canceled) || st.calls != 1 || !strings.HasPrefix(err.Error(), "store: ") {
		t.Fatalf("err %v after %d calls", err, st.calls)
	}
}

func TestLimitedRateLimit(t *testing.T) {
	clk := &storetest.SleepClock{}
	st := &scriptStore{}
	l := newTestLimited(st, rate.NewLimiter(10, 5), clk)
	for range 30 {
		if err := l.TouchChunk(context.Background(), manifest.ZeroChunk); err != nil {
			t.Fatal(err)
		}
	}
	// 5 calls go at once, the other 25 at 10 per second.
	if got := clk.Total(); got < 2490*time.Millisecond || got > 2510*time.Millisecond {
		t.Errorf("waited %v on the limiter, want 2.5s", got)
	}
	if s := l.Stats(); s.Calls != 30 || s.LimiterWait != clk.Total() {
		t.Errorf("stats %+v", s)
	}
	// Retries wait on the limiter too.
	clk = &storetest.SleepClock{}
	l = store.NewLimited(&scriptStore{errs: []error{errTransient, errTransient}}, rate.NewLimiter(1, 1), store.RetryOptions{Clock: clk, Jitter: func() float64 { return 0 }})
	if err := l.TouchChunk(context.Background(), manifest.ZeroChunk); err != nil {
		t.Fatal(err)
	}
	if got := clk.Total(); got != 2*time.Second {
		t.Errorf("3 attempts at 1/s waited %v, want 2s", got)
	}
}

func TestLimitedConcurrentStats(t *testing.T) {
	st := &scriptStore{}
	l := store.NewLimited(st, rate.NewLimiter(rate.Inf, 1), store.RetryOptions{Clock: &storetest.SleepClock{}})
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				_ = l.PutChunk(context.Background(), manifest.ZeroChunk, make([]byte, 10))
				_ = l.Stats()
			}
		}()
	}
	wg.Wait()
	if s := l.Stats(); s.Calls != 100 || s.BytesUp != 1000 {
		t.Errorf("stats %+v", s)
	}
	if l.String() != "script" || l.Unwrap() != store.Store(st) {
		t.Error("String or Unwrap")
	}
}

func TestIsRetryable(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{store.ErrNotFound, false},
		{store.ErrCorrupt, false},
		{store.ErrPermanent, false},
		{errTransient, true},
		{fmt.Errorf("wrapped: %w", errTransient), true},
		{errForbidden, false},
		{context.Canceled, false},
		{context.DeadlineExceeded, false},
		{io.ErrUnexpectedEOF, true},
		{fmt.Errorf("read: %w", syscall.ECONNRESET), true},
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, true},
		{errors.New("something else"), false},
	} {
		if got := store.IsRetryable(c.err); got != c.want {
			t.Errorf("IsRetryable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestErrorMessage(t *testing.T) {
	e := &store.Error{Op: "s3 put chunk", Key: store.ChunkKey(manifest.ZeroChunk), Target: `bucket "chunks"`,
		Detail: "access denied (403 InvalidAccessKeyId): check credentials", Kind: store.ErrPermanent}
	const want = `store: s3 put chunk 3bdeaf8f8e98… to bucket "chunks": access denied (403 InvalidAccessKeyId): check credentials`
	if e.Error() != want {
		t.Errorf("got  %s\nwant %s", e, want)
	}
	e = &store.Error{Op: "dir get manifest", Key: "a0e4-example.com/98f2-x", Target: "/store", Detail: "not found", Kind: store.ErrNotFound}
	if got := e.Error(); got != "store: dir get manifest a0e4-example.com/98f2-x from /store: not found" {
		t.Errorf("got %s", got)
	}
}

// TestLimitedConditional: Limited passes conditional puts through. A
// precondition failure is an answer: returned at once, not counted as a
// failure; a lost answer is retried, and the retry's precondition failure
// returned. A miss of GetManifestTag is not retried. Over a store without
// conditional puts, both fail with ErrUnsupported, without a call.
func TestLimitedConditional(t *testing.T) {
	ctx := context.Background()
	key := storetest.MustKey(t, "h", "/c.db")
	m := storetest.Manifest(t, "h", "/c.db", 1, 1)
	fake := storetest.NewFake("fake")
	fake.SetConditional(storetest.CondHonoured)
	clk := &storetest.SleepClock{}
	l := newTestLimited(fake, nil, clk)
	if !l.ConditionalPuts() {
		t.Fatal("ConditionalPuts()=false over a conditional store, want true")
	}
	if _, _, err := l.GetManifestTag(ctx, key); !errors.Is(err, store.ErrNotFound) || fake.NumCalls() != 1 || len(clk.Sleeps()) != 0 {
		t.Fatalf("GetManifestTag(missing)=%v after %d calls, slept %v; want ErrNotFound after 1, no sleep", err, fake.NumCalls(), clk.Sleeps())
	}
	fake.LoseAnswers(storetest.OpPutManifestIf, 1)
	if _, err := l.PutManifestIf(ctx, key, m, ""); !errors.Is(err, store.ErrPrecondition) {
		t.Fatalf("PutManifestIf() with its answer lost=%v, want ErrPrecondition from the retry", err)
	}
	if n := storetest.CountOps(fake.CallLog(), storetest.OpPutManifestIf); n != 2 {
		t.Errorf("%d conditional puts, want 2 (one retry)", n)
	}
	if _, err := l.PutManifestIf(ctx, key, m, `"stale"`); !errors.Is(err, store.ErrPrecondition) {
		t.Fatalf("PutManifestIf(stale)=%v, want ErrPrecondition", err)
	}
	if n := storetest.CountOps(fake.CallLog(), storetest.OpPutManifestIf); n != 3 {
		t.Errorf("%d conditional puts, want 3: a precondition failure is not retried", n)
	}
	if s := l.Stats(); s.Failures != 0 || s.LastError == "" {
		// LastError holds the lost answer, retried; no call failed.
		t.Errorf("Stats()=%+v, want no failure and the lost answer noted", s)
	}

	st := &scriptStore{}
	l = newTestLimited(st, nil, &storetest.SleepClock{})
	if l.ConditionalPuts() {
		t.Error("ConditionalPuts()=true over a store without, want false")
	}
	if _, err := l.PutManifestIf(ctx, key, m, ""); !errors.Is(err, store.ErrUnsupported) || st.calls != 0 {
		t.Errorf("PutManifestIf()=%v after %d calls, want ErrUnsupported after none", err, st.calls)
	}
	if _, _, err := l.GetManifestTag(ctx, key); !errors.Is(err, store.ErrUnsupported) || st.calls != 0 {
		t.Errorf("GetManifestTag()=%v after %d calls, want ErrUnsupported after none", err, st.calls)
	}
}
