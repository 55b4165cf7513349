package replicate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"golang.org/x/time/rate"

	"github.com/boule-vfs/boule/internal/faultproxy"
	"github.com/boule-vfs/boule/internal/miniotest"
	"github.com/boule-vfs/boule/manifest"
)

// scriptStore is a Store whose calls fail with scripted errors, then
// succeed.
type scriptStore struct {
	mu    sync.Mutex
	errs  []error
	calls int
	data  []byte
}

func (s *scriptStore) next() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if len(s.errs) == 0 {
		return nil
	}
	err := s.errs[0]
	s.errs = s.errs[1:]
	return err
}

func (s *scriptStore) PutChunk(context.Context, manifest.Fingerprint, []byte) error { return s.next() }
func (s *scriptStore) GetChunk(context.Context, manifest.Fingerprint) ([]byte, error) {
	if err := s.next(); err != nil {
		return nil, err
	}
	return s.data, nil
}
func (s *scriptStore) TouchChunk(context.Context, manifest.Fingerprint) error      { return s.next() }
func (s *scriptStore) PutPack(context.Context, manifest.Fingerprint, []byte) error { return s.next() }
func (s *scriptStore) GetPack(context.Context, manifest.Fingerprint) ([]byte, error) {
	return s.data, s.next()
}
func (s *scriptStore) TouchPack(context.Context, manifest.Fingerprint) error { return s.next() }
func (s *scriptStore) PutManifest(context.Context, string, []byte) error     { return s.next() }
func (s *scriptStore) GetManifest(context.Context, string) ([]byte, error)   { return s.data, s.next() }
func (s *scriptStore) GetManifestVersion(context.Context, string, string) ([]byte, error) {
	return s.data, s.next()
}
func (s *scriptStore) ListManifests(context.Context, string) ([]ManifestInfo, error) {
	return nil, s.next()
}
func (s *scriptStore) ManifestVersions(context.Context, string) ([]Version, error) {
	return nil, s.next()
}
func (s *scriptStore) String() string { return "script" }

var (
	errTransient = &Error{Op: "test op", Detail: "transient", Retryable: true}
	errForbidden = &Error{Op: "test op", Detail: "denied", Kind: ErrPermanent}
	errMissing   = &Error{Op: "test op", Detail: "missing", Kind: ErrNotFound}
)

func newTestLimited(s Store, lim *rate.Limiter, clk *fakeClock) *Limited {
	return NewLimited(s, lim, RetryOptions{Clock: clk, Jitter: func() float64 { return 1 }})
}

func TestLimitedRetriesThenSucceeds(t *testing.T) {
	clk := &fakeClock{}
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
	if got, want := clk.sleeps(), []time.Duration{100 * time.Millisecond, 400 * time.Millisecond}; !slices.Equal(got, want) {
		t.Errorf("slept %v, want %v", got, want)
	}
}

func TestLimitedBackoffSchedule(t *testing.T) {
	for _, c := range []struct {
		opts RetryOptions
		want []time.Duration
	}{
		{RetryOptions{}, []time.Duration{100 * time.Millisecond, 400 * time.Millisecond, 1600 * time.Millisecond, 6400 * time.Millisecond}},
		{RetryOptions{BaseDelay: time.Second}, []time.Duration{time.Second, 4 * time.Second, 10 * time.Second, 10 * time.Second}},
		{RetryOptions{MaxAttempts: 2}, []time.Duration{100 * time.Millisecond}},
	} {
		clk := &fakeClock{}
		c.opts.Clock = clk
		c.opts.Jitter = func() float64 { return 1 }
		st := &scriptStore{errs: slices.Repeat([]error{errTransient}, 10)}
		l := NewLimited(st, nil, c.opts)
		err := l.TouchChunk(context.Background(), manifest.ZeroChunk)
		if !IsRetryable(err) {
			t.Fatalf("err %v", err)
		}
		if got := clk.sleeps(); !slices.Equal(got, c.want) {
			t.Errorf("%+v: slept %v, want %v", c.opts, got, c.want)
		}
		if s := l.Stats(); s.Calls != int64(len(c.want)+1) || s.Failures != 1 {
			t.Errorf("stats %+v", s)
		}
	}
}

func TestLimitedFullJitter(t *testing.T) {
	clk := &fakeClock{}
	var draws []float64
	l := NewLimited(&scriptStore{errs: []error{errTransient, errTransient}}, nil, RetryOptions{
		Clock:  clk,
		Jitter: func() float64 { draws = append(draws, 0.25); return 0.25 },
	})
	if err := l.PutManifest(context.Background(), "k", nil); err != nil {
		t.Fatal(err)
	}
	if got, want := clk.sleeps(), []time.Duration{25 * time.Millisecond, 100 * time.Millisecond}; !slices.Equal(got, want) {
		t.Errorf("slept %v, want %v", got, want)
	}
	// Default jitter stays within [0, backoff).
	clk = &fakeClock{}
	l = NewLimited(&scriptStore{errs: slices.Repeat([]error{errTransient}, 4)}, nil, RetryOptions{Clock: clk})
	_ = l.PutManifest(context.Background(), "k", nil)
	for i, d := range clk.sleeps() {
		if max := 100 * time.Millisecond << (2 * i); d < 0 || d >= max {
			t.Errorf("sleep %d = %v, want in [0, %v)", i, d, max)
		}
	}
}

func TestLimitedPermanentNotRetried(t *testing.T) {
	clk := &fakeClock{}
	st := &scriptStore{errs: []error{errForbidden}}
	l := newTestLimited(st, nil, clk)
	err := l.PutChunk(context.Background(), manifest.ZeroChunk, nil)
	if !errors.Is(err, ErrPermanent) || st.calls != 1 || len(clk.sleeps()) != 0 {
		t.Fatalf("err %v after %d calls, slept %v", err, st.calls, clk.sleeps())
	}
	if s := l.Stats(); s.Failures != 1 || s.Retries != 0 || s.BytesUp != 0 || !strings.Contains(s.LastError, "denied") {
		t.Errorf("stats %+v", s)
	}
}

func TestLimitedNotFoundRetriedOnce(t *testing.T) {
	ctx := context.Background()
	for name, op := range map[string]func(*Limited) error{
		"GetChunk":    func(l *Limited) error { _, err := l.GetChunk(ctx, manifest.ZeroChunk); return err },
		"GetManifest": func(l *Limited) error { _, err := l.GetManifest(ctx, "k"); return err },
	} {
		// Missing twice: ErrNotFound after one retry 100 ms later.
		clk := &fakeClock{}
		st := &scriptStore{errs: []error{errMissing, errMissing, errMissing}}
		l := newTestLimited(st, nil, clk)
		if err := op(l); !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s: %v", name, err)
		}
		if st.calls != 2 || !slices.Equal(clk.sleeps(), []time.Duration{100 * time.Millisecond}) {
			t.Errorf("%s: %d calls, slept %v", name, st.calls, clk.sleeps())
		}
		if s := l.Stats(); s.Failures != 0 || s.LastError != "" {
			t.Errorf("%s: a miss counted as a failure: %+v", name, s)
		}
		// Flickering: found on the retry.
		st = &scriptStore{errs: []error{errMissing}, data: []byte("abc")}
		l = newTestLimited(st, nil, &fakeClock{})
		if err := op(l); err != nil {
			t.Fatalf("%s after a flicker: %v", name, err)
		}
		if l.Stats().BytesDown != 3 {
			t.Errorf("%s: BytesDown %d", name, l.Stats().BytesDown)
		}
	}
	// Touch and version reads do not retry a miss.
	st := &scriptStore{errs: []error{errMissing, errMissing}}
	l := newTestLimited(st, nil, &fakeClock{})
	if err := l.TouchChunk(ctx, manifest.ZeroChunk); !errors.Is(err, ErrNotFound) || st.calls != 1 {
		t.Errorf("TouchChunk: %v after %d calls", err, st.calls)
	}
}

func TestLimitedCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	st := &scriptStore{errs: slices.Repeat([]error{errTransient}, 10)}
	// The real clock: cancellation must cut the backoff short.
	l := NewLimited(st, nil, RetryOptions{BaseDelay: time.Hour, Jitter: func() float64 { return 1 }})
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
	l = NewLimited(st, rate.NewLimiter(rate.Every(time.Hour), 1), RetryOptions{})
	_ = l.TouchChunk(context.Background(), manifest.ZeroChunk) // takes the only token
	err := l.TouchChunk(ctx, manifest.ZeroChunk)
	if !errors.Is(err, context.Canceled) || st.calls != 1 || !strings.HasPrefix(err.Error(), "replicate: ") {
		t.Fatalf("err %v after %d calls", err, st.calls)
	}
}

func TestLimitedRateLimit(t *testing.T) {
	clk := &fakeClock{}
	st := &scriptStore{}
	l := newTestLimited(st, rate.NewLimiter(10, 5), clk)
	for range 30 {
		if err := l.TouchChunk(context.Background(), manifest.ZeroChunk); err != nil {
			t.Fatal(err)
		}
	}
	// 5 calls go at once, the other 25 at 10 per second.
	if got := clk.total(); got < 2490*time.Millisecond || got > 2510*time.Millisecond {
		t.Errorf("waited %v on the limiter, want 2.5s", got)
	}
	if s := l.Stats(); s.Calls != 30 || s.LimiterWait != clk.total() {
		t.Errorf("stats %+v", s)
	}
	// Retries wait on the limiter too.
	clk = &fakeClock{}
	l = NewLimited(&scriptStore{errs: []error{errTransient, errTransient}}, rate.NewLimiter(1, 1), RetryOptions{Clock: clk, Jitter: func() float64 { return 0 }})
	if err := l.TouchChunk(context.Background(), manifest.ZeroChunk); err != nil {
		t.Fatal(err)
	}
	if got := clk.total(); got != 2*time.Second {
		t.Errorf("3 attempts at 1/s waited %v, want 2s", got)
	}
}

func TestLimitedConcurrentStats(t *testing.T) {
	st := &scriptStore{}
	l := NewLimited(st, rate.NewLimiter(rate.Inf, 1), RetryOptions{Clock: &fakeClock{}})
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
	if l.String() != "script" || l.Unwrap() != Store(st) {
		t.Error("String or Unwrap")
	}
}

func TestIsRetryable(t *testing.T) {
	resp := func(code int) error {
		return &awshttp.ResponseError{ResponseError: &smithyhttp.ResponseError{
			Response: &smithyhttp.Response{Response: &http.Response{StatusCode: code}},
			Err:      errors.New("api error"),
		}}
	}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{ErrNotFound, false},
		{ErrCorrupt, false},
		{ErrPermanent, false},
		{errTransient, true},
		{fmt.Errorf("wrapped: %w", errTransient), true},
		{errForbidden, false},
		{context.Canceled, false},
		{context.DeadlineExceeded, false},
		{io.ErrUnexpectedEOF, true},
		{fmt.Errorf("read: %w", syscall.ECONNRESET), true},
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, true},
		{&smithyhttp.RequestSendError{Err: errors.New("boom")}, true},
		{resp(500), true},
		{resp(503), true},
		{resp(408), true},
		{resp(429), true},
		{resp(403), false},
		{resp(404), false},
		{resp(400), false},
		{errors.New("something else"), false},
	} {
		if got := IsRetryable(c.err); got != c.want {
			t.Errorf("IsRetryable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestErrorMessage(t *testing.T) {
	e := &Error{Op: "s3 put chunk", Key: ChunkKey(manifest.ZeroChunk), Target: `bucket "chunks"`,
		Detail: "access denied (403 InvalidAccessKeyId): check credentials", Kind: ErrPermanent}
	const want = `replicate: s3 put chunk 3bdeaf8f8e98… to bucket "chunks": access denied (403 InvalidAccessKeyId): check credentials`
	if e.Error() != want {
		t.Errorf("got  %s\nwant %s", e, want)
	}
	e = &Error{Op: "dir get manifest", Key: "a0e4-example.com/98f2-x", Target: "/store", Detail: "not found", Kind: ErrNotFound}
	if got := e.Error(); got != "replicate: dir get manifest a0e4-example.com/98f2-x from /store: not found" {
		t.Errorf("got %s", got)
	}
}

// testLimitedMinio runs Limited over a real S3 store behind the fault
// proxy. The fake clock makes the backoffs instant.
func testLimitedMinio(t *testing.T, srv *miniotest.Server) {
	p := faultproxy.Start(t, srv.Endpoint)
	ctx := context.Background()
	tg := s3Target(p.URL, true)
	s := newS3(t, tg, S3Options{Timeout: 5 * time.Second})
	if err := s.EnsureBuckets(ctx); err != nil {
		t.Fatal(err)
	}
	// The same buckets with a short timeout, for stalls.
	fast := newS3(t, tg, S3Options{Timeout: 300 * time.Millisecond})
	if err := fast.EnsureBuckets(ctx); err != nil {
		t.Fatal(err)
	}
	data := compressible(20000)
	fp := manifest.Sum(data)
	setup := func(f faultproxy.Fault) (*Limited, *fakeClock) {
		p.ResetCounts()
		p.Set(f)
		clk := &fakeClock{}
		store := s
		if f.Kind == faultproxy.Stall {
			store = fast
		}
		return NewLimited(store, rate.NewLimiter(rate.Inf, 1), RetryOptions{Clock: clk}), clk
	}
	put := func(l *Limited) error { return l.PutChunk(ctx, fp, data) }
	get := func(l *Limited) error {
		got, err := l.GetChunk(ctx, fp)
		if err == nil && !bytes.Equal(got, data) {
			return errors.New("wrong bytes")
		}
		return err
	}
	if err := s.PutChunk(ctx, fp, data); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name    string
		fault   faultproxy.Fault
		op      func(*Limited) error
		calls   int64 // Limited attempts
		reqs    int   // requests seen by the proxy
		wantErr error
	}{
		{"500 twice", faultproxy.Fail(500, 2), put, 3, 3, nil},
		{"503 once on GET", faultproxy.Fail(503, 1), get, 2, 2, nil},
		{"429 once", faultproxy.Fail(429, 1), put, 2, 2, nil},
		{"408 once", faultproxy.Fail(408, 1), put, 2, 2, nil},
		{"500 always", faultproxy.Fail(500, 0), put, 5, 5, errTransient},
		{"403", faultproxy.Fault{Kind: faultproxy.Status, Status: 403, Code: "AccessDenied"}, put, 1, 1, ErrPermanent},
		{"400", faultproxy.Fault{Kind: faultproxy.Status, Status: 400, Code: "InvalidRequest"}, put, 1, 1, ErrPermanent},
		{"reset PUT", faultproxy.ResetNext(1), put, 2, 2, nil},
		{"reset GET", faultproxy.ResetNext(2), get, 0, 0, nil},
		{"truncated GET", faultproxy.TruncateNext(1), get, 2, 2, nil},
		{"truncated GET twice", faultproxy.TruncateNext(2), get, 3, 3, nil},
		{"stall", faultproxy.StallNext(time.Minute, 1), put, 2, 2, nil},
		{"corrupted upload", faultproxy.CorruptNext(1), put, 2, 2, nil},
		{"corrupted manifest upload", faultproxy.CorruptNext(2), func(l *Limited) error {
			key := mustKey(t, "h", "/corrupt.db")
			m := testManifest(t, "h", "/corrupt.db", 3, 9)
			if err := l.PutManifest(ctx, key, m); err != nil {
				return err
			}
			got, err := s.GetManifest(ctx, key) // not through l
			if err == nil && !bytes.Equal(got, m) {
				return errors.New("wrong manifest bytes")
			}
			return err
		}, 3, 4, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, clk := setup(c.fault)
			defer p.Pass()
			err := c.op(l)
			st := l.Stats()
			t.Logf("err %v; stats %+v; proxy %v; slept %v", err, st, p.Counts(), clk.sleeps())
			switch {
			case c.wantErr == nil && err != nil:
				t.Fatalf("err %v", err)
			case c.wantErr == errTransient && !IsRetryable(err):
				t.Fatalf("err %v, want a retryable error", err)
			case c.wantErr != nil && c.wantErr != errTransient && !errors.Is(err, c.wantErr):
				t.Fatalf("err %v, want %v", err, c.wantErr)
			}
			if c.calls > 0 {
				if st.Calls != c.calls || st.Retries != c.calls-1 {
					t.Errorf("Calls %d Retries %d, want %d and %d", st.Calls, st.Retries, c.calls, c.calls-1)
				}
				// One SDK attempt per Limited attempt: the SDK does not
				// retry on its own.
				if p.Total() != c.reqs {
					t.Errorf("proxy saw %d requests, want %d", p.Total(), c.reqs)
				}
			} else if st.Retries < 1 {
				t.Errorf("Retries %d, want at least 1", st.Retries)
			}
			if (c.wantErr == nil) != (st.Failures == 0) {
				t.Errorf("Failures %d", st.Failures)
			}
			if c.wantErr == nil && st.Retries > 0 && st.LastError == "" {
				t.Error("LastError not recorded")
			}
		})
	}
	t.Run("counters", func(t *testing.T) {
		l, _ := setup(faultproxy.Fault{})
		if err := put(l); err != nil {
			t.Fatal(err)
		}
		if err := get(l); err != nil {
			t.Fatal(err)
		}
		if st := l.Stats(); st.BytesUp != int64(len(data)) || st.BytesDown != int64(len(data)) || st.Calls != 2 || st.Failures != 0 {
			t.Errorf("stats %+v", st)
		}
		if got := p.Counts(); got[http.MethodPut] != 1 || got[http.MethodGet] != 1 {
			t.Errorf("proxy counts %v", got)
		}
	})
}
