package replicate

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boule-vfs/boule/manifest"
)

// Operation names recorded by fakeStore.
const (
	opPutChunk    = "PutChunk"
	opGetChunk    = "GetChunk"
	opTouchChunk  = "TouchChunk"
	opPutPack     = "PutPack"
	opGetPack     = "GetPack"
	opTouchPack   = "TouchPack"
	opPutManifest = "PutManifest"
	opGetManifest = "GetManifest"
	opList        = "ListManifests"
	opVersions    = "ManifestVersions"
	opGetVersion  = "GetManifestVersion"
)

// fakeCall is one call made to a fakeStore.
type fakeCall struct {
	Op  string
	Key string // the fingerprint in hex for chunk calls, the key for manifests
	Err error  // what the call returned
}

func (c fakeCall) String() string {
	k := c.Key
	if len(k) == 64 {
		k = k[:8]
	}
	if c.Err != nil {
		return fmt.Sprintf("%s(%s)=%v", c.Op, k, c.Err)
	}
	return fmt.Sprintf("%s(%s)", c.Op, k)
}

// fakeHook runs before every call of a fakeStore, outside its lock. It may
// block (honouring ctx), and a non-nil error is returned by the call
// instead of doing it.
type fakeHook func(ctx context.Context, op, key string) error

// fakeStore is an in-memory Store that records its calls. Tests wait on it
// with waitFor, which wakes on every call.
type fakeStore struct {
	name string

	mu        sync.Mutex
	chunks    map[manifest.Fingerprint][]byte
	packs     map[manifest.Fingerprint][]byte
	manifests map[string][]byte
	calls     []fakeCall
	touches   map[manifest.Fingerprint]int
	putLog    [][]byte // every manifest stored, in order
	// missing lists, for every manifest stored, the chunks it references
	// (inline ones aside) that the store lacked at that moment.
	missing []string
	// badPuts lists chunk puts whose data did not hash to the fingerprint.
	badPuts []string
	changed chan struct{} // closed and replaced at every call
	hooks   []fakeHook
}

var _ Store = (*fakeStore)(nil)

func newFakeStore(name string) *fakeStore {
	return &fakeStore{
		name:      name,
		chunks:    make(map[manifest.Fingerprint][]byte),
		packs:     make(map[manifest.Fingerprint][]byte),
		manifests: make(map[string][]byte),
		touches:   make(map[manifest.Fingerprint]int),
		changed:   make(chan struct{}),
	}
}

// addHook adds h to the hooks run before each call; the first error wins.
func (s *fakeStore) addHook(h fakeHook) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hooks = append(s.hooks, h)
}

// clearHooks removes every hook.
func (s *fakeStore) clearHooks() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hooks = nil
}

// failOn makes the calls op whose key satisfies match (nil: every key)
// return err.
func (s *fakeStore) failOn(op string, match func(key string) bool, err error) {
	s.addHook(func(_ context.Context, o, key string) error {
		if o == op && (match == nil || match(key)) {
			return err
		}
		return nil
	})
}

// fakeGate holds one call inside the store until released.
type fakeGate struct {
	entered chan struct{} // closed when the call arrives
	release chan struct{} // close to let it go on
	once    sync.Once
}

// blockOnce makes the first call op whose key satisfies match (nil: any)
// wait inside the store until the gate is released (or its context ends).
func (s *fakeStore) blockOnce(op string, match func(key string) bool) *fakeGate {
	g := &fakeGate{entered: make(chan struct{}), release: make(chan struct{})}
	s.addHook(func(ctx context.Context, o, key string) error {
		if o != op || (match != nil && !match(key)) {
			return nil
		}
		first := false
		g.once.Do(func() { first = true })
		if !first {
			return nil
		}
		close(g.entered)
		select {
		case <-g.release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	return g
}

// wait waits until the gated call has arrived.
func (g *fakeGate) wait(t testing.TB) {
	t.Helper()
	select {
	case <-g.entered:
	case <-time.After(waitTimeout):
		t.Fatal("timed out waiting for the gated store call")
	}
}

// open releases the gated call; it may be called more than once.
func (g *fakeGate) open() {
	select {
	case <-g.release:
	default:
		close(g.release)
	}
}

// waitTimeout bounds every wait of the tests on a condition; the tests
// never get near it unless they fail.
const waitTimeout = 10 * time.Second

// waitFor waits until cond, evaluated under the store's lock, holds. It
// re-evaluates cond at every call made to the store.
func (s *fakeStore) waitFor(t testing.TB, what string, cond func(s *fakeStore) bool) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		ok := cond(s)
		ch := s.changed
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s; calls to %s: %v", what, s.name, s.callLog())
		}
	}
}

// do runs the hooks, then f under the lock, and records the call.
func (s *fakeStore) do(ctx context.Context, op, key string, f func() error) error {
	s.mu.Lock()
	hooks := append([]fakeHook(nil), s.hooks...)
	s.mu.Unlock()
	var err error
	for _, h := range hooks {
		if err = h(ctx, op, key); err != nil {
			break
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		err = f()
	}
	s.calls = append(s.calls, fakeCall{Op: op, Key: key, Err: err})
	close(s.changed)
	s.changed = make(chan struct{})
	return err
}

func (s *fakeStore) notFound(op, key string) error {
	return &Error{Op: "fake " + op, Key: key, Target: s.name, Kind: ErrNotFound, Detail: "not found"}
}

func (s *fakeStore) PutChunk(ctx context.Context, fp manifest.Fingerprint, data []byte) error {
	return s.do(ctx, opPutChunk, fp.String(), func() error {
		if manifest.Sum(data) != fp {
			s.badPuts = append(s.badPuts, fp.String())
		}
		s.chunks[fp] = append([]byte(nil), data...)
		return nil
	})
}

func (s *fakeStore) GetChunk(ctx context.Context, fp manifest.Fingerprint) ([]byte, error) {
	var out []byte
	err := s.do(ctx, opGetChunk, fp.String(), func() error {
		d, ok := s.chunks[fp]
		if !ok {
			return s.notFound("get chunk", fp.String())
		}
		out = append([]byte(nil), d...)
		return nil
	})
	return out, err
}

func (s *fakeStore) TouchChunk(ctx context.Context, fp manifest.Fingerprint) error {
	return s.do(ctx, opTouchChunk, fp.String(), func() error {
		if _, ok := s.chunks[fp]; !ok {
			return s.notFound("touch chunk", fp.String())
		}
		s.touches[fp]++
		return nil
	})
}

func (s *fakeStore) PutPack(ctx context.Context, id manifest.Fingerprint, blob []byte) error {
	return s.do(ctx, opPutPack, id.String(), func() error {
		if manifest.Sum(blob) != id {
			s.badPuts = append(s.badPuts, "pack "+id.String())
		}
		s.packs[id] = append([]byte(nil), blob...)
		return nil
	})
}

func (s *fakeStore) GetPack(ctx context.Context, id manifest.Fingerprint) ([]byte, error) {
	var out []byte
	err := s.do(ctx, opGetPack, id.String(), func() error {
		d, ok := s.packs[id]
		if !ok {
			return s.notFound("get pack", id.String())
		}
		out = append([]byte(nil), d...)
		return nil
	})
	return out, err
}

func (s *fakeStore) TouchPack(ctx context.Context, id manifest.Fingerprint) error {
	return s.do(ctx, opTouchPack, id.String(), func() error {
		if _, ok := s.packs[id]; !ok {
			return s.notFound("touch pack", id.String())
		}
		s.touches[id]++
		return nil
	})
}

func (s *fakeStore) PutManifest(ctx context.Context, key string, data []byte) error {
	return s.do(ctx, opPutManifest, key, func() error {
		if m, err := manifest.Decode(data); err == nil {
			refs := m.PackRefs()
			for i, fp := range m.Chunks {
				if _, inline := m.Inline[uint32(i)]; inline {
					continue
				}
				if ref, ok := refs[uint32(i)]; ok {
					if _, err := DecodePackMember(s.packs[ref.ID], ref, fp); err != nil {
						s.missing = append(s.missing, fmt.Sprintf("manifest %d of %s: chunk %d (%s) in pack: %v", m.ChangeCounter, key, i, fp.String()[:8], err))
					}
					continue
				}
				if _, ok := s.chunks[fp]; !ok {
					s.missing = append(s.missing, fmt.Sprintf("manifest %d of %s: chunk %d (%s)", m.ChangeCounter, key, i, fp.String()[:8]))
				}
			}
		} else {
			s.missing = append(s.missing, fmt.Sprintf("undecodable manifest put under %s: %v", key, err))
		}
		s.manifests[key] = append([]byte(nil), data...)
		s.putLog = append(s.putLog, append([]byte(nil), data...))
		return nil
	})
}

func (s *fakeStore) GetManifest(ctx context.Context, key string) ([]byte, error) {
	var out []byte
	err := s.do(ctx, opGetManifest, key, func() error {
		d, ok := s.manifests[key]
		if !ok {
			return s.notFound("get manifest", key)
		}
		out = append([]byte(nil), d...)
		return nil
	})
	return out, err
}

func (s *fakeStore) ListManifests(ctx context.Context, prefix string) ([]ManifestInfo, error) {
	var out []ManifestInfo
	err := s.do(ctx, opList, prefix, func() error {
		for k, v := range s.manifests {
			if strings.HasPrefix(k, prefix) {
				out = append(out, ManifestInfo{Key: k, Size: int64(len(v))})
			}
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
		return nil
	})
	return out, err
}

func (s *fakeStore) ManifestVersions(ctx context.Context, key string) ([]Version, error) {
	var out []Version
	err := s.do(ctx, opVersions, key, func() error {
		if _, ok := s.manifests[key]; !ok {
			return s.notFound("manifest versions", key)
		}
		out = []Version{{ID: "latest", IsLatest: true}}
		return nil
	})
	return out, err
}

func (s *fakeStore) GetManifestVersion(ctx context.Context, key, versionID string) ([]byte, error) {
	var out []byte
	err := s.do(ctx, opGetVersion, key, func() error {
		d, ok := s.manifests[key]
		if !ok || versionID != "latest" {
			return s.notFound("get manifest version", key)
		}
		out = append([]byte(nil), d...)
		return nil
	})
	return out, err
}

func (s *fakeStore) String() string { return "fake:" + s.name }

// callLog returns the calls made so far.
func (s *fakeStore) callLog() []fakeCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]fakeCall(nil), s.calls...)
}

// numCalls returns how many calls were made so far.
func (s *fakeStore) numCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.calls)
}

// callsSince returns the calls made after the first n.
func (s *fakeStore) callsSince(n int) []fakeCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]fakeCall(nil), s.calls[n:]...)
}

func (s *fakeStore) hasChunk(fp manifest.Fingerprint) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.chunks[fp]
	return ok
}

func (s *fakeStore) deleteChunk(fp manifest.Fingerprint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.chunks, fp)
}

func (s *fakeStore) manifestAt(key string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.manifests[key]
}

// manifestPuts returns every manifest stored so far, in order.
func (s *fakeStore) manifestPuts() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.putLog...)
}

func (s *fakeStore) touchCount(fp manifest.Fingerprint) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.touches[fp]
}

// checkIntegrity fails t if a manifest was stored before one of its chunks,
// or a chunk was stored under the wrong fingerprint.
func (s *fakeStore) checkIntegrity(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.missing {
		t.Errorf("%s: manifest stored before its chunk: %s", s.name, m)
	}
	for _, b := range s.badPuts {
		t.Errorf("%s: chunk %s stored with data that does not hash to it", s.name, b)
	}
}

// countOps counts the calls named op in calls.
func countOps(calls []fakeCall, op string) int {
	n := 0
	for _, c := range calls {
		if c.Op == op {
			n++
		}
	}
	return n
}

// testNow is an injectable clock for UploaderOptions.Now.
type testNow struct {
	mu  sync.Mutex
	now time.Time
}

func newTestNow() *testNow {
	return &testNow{now: time.Date(2031, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *testNow) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testNow) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Errors the fake stores are told to return.
func permanentErr() error {
	return &Error{Op: "fake put", Target: "fake", Status: 403, Code: "AccessDenied", Detail: "access denied", Kind: ErrPermanent}
}

func retryableErr() error {
	return &Error{Op: "fake put", Target: "fake", Status: 503, Code: "SlowDown", Detail: "slow down", Retryable: true}
}
