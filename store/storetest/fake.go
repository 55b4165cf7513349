package storetest

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
)

// Operation names recorded by Fake, one per method of store.Store.
const (
	OpPutChunk    = "PutChunk"
	OpGetChunk    = "GetChunk"
	OpTouchChunk  = "TouchChunk"
	OpPutPack     = "PutPack"
	OpGetPack     = "GetPack"
	OpTouchPack   = "TouchPack"
	OpPutBase     = "PutBase"
	OpGetBase     = "GetBase"
	OpTouchBase   = "TouchBase"
	OpPutManifest = "PutManifest"
	OpGetManifest = "GetManifest"
	OpList        = "ListManifests"
	OpVersions    = "ManifestVersions"
	OpGetVersion  = "GetManifestVersion"
	// The calls of store.Conditional.
	OpPutManifestIf  = "PutManifestIf"
	OpGetManifestTag = "GetManifestTag"
)

// Conditional puts of a Fake (SetConditional).
const (
	// CondNone: a store without conditional writes. ConditionalPuts
	// reports false and PutManifestIf fails with ErrUnsupported, as a
	// Limited over a store that is not store.Conditional does.
	CondNone = iota
	// CondHonoured: conditional puts as S3's, with a new entity tag for
	// every put, even of the same bytes.
	CondHonoured
	// CondIgnored: a store that claims conditional writes and ignores the
	// conditions, as an S3 clone that drops the headers does.
	CondIgnored
	// CondRefused: a store that claims conditional writes and answers 501
	// Not Implemented to them.
	CondRefused
)

// Call is one call made to a Fake.
type Call struct {
	Op  string // the method called, one of the Op constants
	Key string // the fingerprint in hex for chunk and pack calls, the key for manifests
	Err error  // what the call returned
}

// String returns "Op(key)" or "Op(key)=err", with a fingerprint cut to
// its first 8 hex digits.
func (c Call) String() string {
	k := c.Key
	if len(k) == 64 {
		k = k[:8]
	}
	if c.Err != nil {
		return fmt.Sprintf("%s(%s)=%v", c.Op, k, c.Err)
	}
	return fmt.Sprintf("%s(%s)", c.Op, k)
}

// Hook runs before every call of a Fake, outside its lock. It may
// block (honouring ctx), and a non-nil error is returned by the call
// instead of doing it.
type Hook func(ctx context.Context, op, key string) error

// Fake is an in-memory store.Store that records its calls. Tests wait on
// it with WaitFor, which wakes on every call. It keeps chunks and packs
// as they are put, never encoded, and does not verify what it returns.
type Fake struct {
	name string

	mu        sync.Mutex
	chunks    map[manifest.Fingerprint][]byte
	packs     map[manifest.Fingerprint][]byte
	bases     map[manifest.Fingerprint][]byte
	manifests map[string][]byte
	calls     []Call
	touches   map[manifest.Fingerprint]int
	putLog    [][]byte // every manifest stored, in order
	// missing lists, for every manifest stored, the chunks it references
	// (inline ones aside) that the store lacked at that moment.
	missing []string
	// badPuts lists chunk puts whose data did not hash to the fingerprint.
	badPuts []string
	// putBytes counts the bytes put, by operation.
	putBytes map[string]int64
	changed  chan struct{} // closed and replaced at every call
	hooks    []Hook
	// Conditional puts: the mode, the entity tag of each manifest, the
	// last tag given out, and the answers to lose (LoseAnswers).
	cond  int
	tags  map[string]string
	tagN  int
	loses map[string]int
}

var (
	_ store.Store       = (*Fake)(nil)
	_ store.Conditional = (*Fake)(nil)
)

// NewFake returns an empty Fake named name.
func NewFake(name string) *Fake {
	return &Fake{
		name:      name,
		chunks:    make(map[manifest.Fingerprint][]byte),
		packs:     make(map[manifest.Fingerprint][]byte),
		bases:     make(map[manifest.Fingerprint][]byte),
		putBytes:  make(map[string]int64),
		manifests: make(map[string][]byte),
		touches:   make(map[manifest.Fingerprint]int),
		changed:   make(chan struct{}),
		tags:      make(map[string]string),
		loses:     make(map[string]int),
	}
}

// SetConditional sets how the Fake answers conditional puts: CondNone (the
// default), CondHonoured, CondIgnored or CondRefused.
func (s *Fake) SetConditional(mode int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cond = mode
}

// LoseAnswers makes the next n calls op that succeed return a retryable
// error instead, the put done: an answer lost on the way back, whose
// request the client retries.
func (s *Fake) LoseAnswers(op string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loses[op] += n
}

// AddHook adds h to the hooks run before each call; the first error wins.
func (s *Fake) AddHook(h Hook) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hooks = append(s.hooks, h)
}

// ClearHooks removes every hook.
func (s *Fake) ClearHooks() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hooks = nil
}

// FailOn makes the calls op whose key satisfies match (nil: every key)
// return err.
func (s *Fake) FailOn(op string, match func(key string) bool, err error) {
	s.AddHook(func(_ context.Context, o, key string) error {
		if o == op && (match == nil || match(key)) {
			return err
		}
		return nil
	})
}

// Gate holds one call inside a Fake until released (BlockOnce).
type Gate struct {
	entered chan struct{} // closed when the call arrives
	release chan struct{} // close to let it go on
	once    sync.Once
}

// BlockOnce makes the first call op whose key satisfies match (nil: any)
// wait inside the store until the gate is released (or its context ends).
func (s *Fake) BlockOnce(op string, match func(key string) bool) *Gate {
	g := &Gate{entered: make(chan struct{}), release: make(chan struct{})}
	s.AddHook(func(ctx context.Context, o, key string) error {
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

// Wait waits until the gated call has arrived.
func (g *Gate) Wait(t testing.TB) {
	t.Helper()
	select {
	case <-g.entered:
	case <-time.After(WaitTimeout):
		t.Fatal("timed out waiting for the gated store call")
	}
}

// Open releases the gated call; it may be called more than once.
func (g *Gate) Open() {
	select {
	case <-g.release:
	default:
		close(g.release)
	}
}

// WaitTimeout bounds every wait of the tests on a condition; the tests
// never get near it unless they fail.
const WaitTimeout = 10 * time.Second

// WaitFor waits until cond holds. It evaluates cond (which may call the
// store's methods) again after every call made to the store.
func (s *Fake) WaitFor(t testing.TB, what string, cond func(s *Fake) bool) {
	t.Helper()
	deadline := time.NewTimer(WaitTimeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		if cond(s) {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s; calls to %s: %v", what, s.name, s.CallLog())
		}
	}
}

// do runs the hooks, then f under the lock, and records the call.
func (s *Fake) do(ctx context.Context, op, key string, f func() error) error {
	s.mu.Lock()
	hooks := append([]Hook(nil), s.hooks...)
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
		if err == nil && s.loses[op] > 0 {
			s.loses[op]--
			err = &store.Error{Op: "fake " + op, Key: key, Target: s.name, Detail: "answer lost", Retryable: true}
		}
	}
	s.calls = append(s.calls, Call{Op: op, Key: key, Err: err})
	close(s.changed)
	s.changed = make(chan struct{})
	return err
}

func (s *Fake) notFound(op, key string) error {
	return &store.Error{Op: "fake " + op, Key: key, Target: s.name, Kind: store.ErrNotFound, Detail: "not found"}
}

// PutChunk implements store.Store. It notes a put of data that does not
// hash to fp, for CheckIntegrity.
func (s *Fake) PutChunk(ctx context.Context, fp manifest.Fingerprint, data []byte) error {
	return s.put(ctx, OpPutChunk, "", s.chunks, fp, data)
}

// GetChunk implements store.Store.
func (s *Fake) GetChunk(ctx context.Context, fp manifest.Fingerprint) ([]byte, error) {
	return lookup(ctx, s, OpGetChunk, "get chunk", s.chunks, fp, fp.String())
}

// TouchChunk implements store.Store, counting the touches (TouchCount).
func (s *Fake) TouchChunk(ctx context.Context, fp manifest.Fingerprint) error {
	return s.touch(ctx, OpTouchChunk, "touch chunk", s.chunks, fp)
}

// PutPack implements store.Store. It notes a pack whose bytes do not hash
// to id, for CheckIntegrity.
func (s *Fake) PutPack(ctx context.Context, id manifest.Fingerprint, blob []byte) error {
	return s.put(ctx, OpPutPack, "pack ", s.packs, id, blob)
}

// GetPack implements store.Store.
func (s *Fake) GetPack(ctx context.Context, id manifest.Fingerprint) ([]byte, error) {
	return lookup(ctx, s, OpGetPack, "get pack", s.packs, id, id.String())
}

// ReadPackRange implements store.PackRangeReader; hooks see it as a
// GetPack (OpGetPack).
func (s *Fake) ReadPackRange(ctx context.Context, id manifest.Fingerprint, off, length int, dst []byte) ([]byte, error) {
	var out []byte
	err := s.do(ctx, OpGetPack, id.String(), func() error {
		d, ok := s.packs[id]
		if !ok {
			return s.notFound("get pack", id.String())
		}
		var err error
		out, err = store.PackRange(d, id, off, length, dst)
		return err
	})
	return out, err
}

// TouchPack implements store.Store, counting the touches (TouchCount).
func (s *Fake) TouchPack(ctx context.Context, id manifest.Fingerprint) error {
	return s.touch(ctx, OpTouchPack, "touch pack", s.packs, id)
}

// PutBase implements store.Store. It notes a base whose bytes do not
// hash to id, for CheckIntegrity.
func (s *Fake) PutBase(ctx context.Context, id manifest.Fingerprint, blob []byte) error {
	return s.put(ctx, OpPutBase, "base ", s.bases, id, blob)
}

// GetBase implements store.Store. A base longer than size is corrupt,
// as in real stores.
func (s *Fake) GetBase(ctx context.Context, id manifest.Fingerprint, size int64) ([]byte, error) {
	b, err := lookup(ctx, s, OpGetBase, "get base", s.bases, id, id.String())
	if err == nil && int64(len(b)) > size {
		return nil, &store.Error{Op: "fake get base", Key: id.String(), Target: s.name, Kind: store.ErrCorrupt,
			Detail: fmt.Sprintf("object of %d bytes, more than %d", len(b), size)}
	}
	return b, err
}

// TouchBase implements store.Store, counting the touches (TouchCount).
func (s *Fake) TouchBase(ctx context.Context, id manifest.Fingerprint) error {
	return s.touch(ctx, OpTouchBase, "touch base", s.bases, id)
}

// BytesPut returns how many bytes were put with operation op (OpPutChunk,
// OpPutPack, OpPutBase or OpPutManifest), as given to the Fake, before
// any encoding a real store would do.
func (s *Fake) BytesPut(op string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.putBytes[op]
}

// DeleteBase removes base id behind the store's back.
func (s *Fake) DeleteBase(id manifest.Fingerprint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.bases, id)
}

// FlipBaseByte flips the bits of byte off of base id behind the store's
// back.
func (s *Fake) FlipBaseByte(id manifest.Fingerprint, off int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bases[id][off] ^= 0xff
}

// put stores a copy of b under fp in m, noting it in badPuts (with
// prefix) if b does not hash to fp.
func (s *Fake) put(ctx context.Context, op, prefix string, m map[manifest.Fingerprint][]byte, fp manifest.Fingerprint, b []byte) error {
	return s.do(ctx, op, fp.String(), func() error {
		if manifest.Sum(b) != fp {
			s.badPuts = append(s.badPuts, prefix+fp.String())
		}
		m[fp] = append([]byte(nil), b...)
		s.putBytes[op] += int64(len(b))
		return nil
	})
}

// touch counts a touch of fp, which must be in m.
func (s *Fake) touch(ctx context.Context, op, what string, m map[manifest.Fingerprint][]byte, fp manifest.Fingerprint) error {
	return s.do(ctx, op, fp.String(), func() error {
		if _, ok := m[fp]; !ok {
			return s.notFound(what, fp.String())
		}
		s.touches[fp]++
		return nil
	})
}

// lookup returns a copy of m[k], or an ErrNotFound that says what was
// not found. The call is recorded as op on key.
func lookup[K comparable](ctx context.Context, s *Fake, op, what string, m map[K][]byte, k K, key string) ([]byte, error) {
	var out []byte
	err := s.do(ctx, op, key, func() error {
		d, ok := m[k]
		if !ok {
			return s.notFound(what, key)
		}
		out = append([]byte(nil), d...)
		return nil
	})
	return out, err
}

// PutManifest implements store.Store. It notes, for CheckIntegrity, a
// manifest that does not decode or that names chunks the store lacks.
func (s *Fake) PutManifest(ctx context.Context, key string, data []byte) error {
	return s.do(ctx, OpPutManifest, key, func() error {
		s.putManifestLocked(OpPutManifest, key, data)
		return nil
	})
}

// ConditionalPuts implements store.Conditional: true unless the Fake is
// CondNone.
func (s *Fake) ConditionalPuts() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cond != CondNone
}

// PutManifestIf implements store.Conditional, as SetConditional says. It
// notes what PutManifest notes.
func (s *Fake) PutManifestIf(ctx context.Context, key string, data []byte, etag string) (string, error) {
	var tag string
	err := s.do(ctx, OpPutManifestIf, key, func() error {
		fail := func(kind error, detail string) error {
			return &store.Error{Op: "fake put manifest if", Key: key, Target: s.name, Kind: kind, Detail: detail}
		}
		switch s.cond {
		case CondNone:
			return fail(store.ErrUnsupported, "the store has no conditional writes")
		case CondRefused:
			return fail(store.ErrUnsupported, "conditional writes not supported (501 NotImplemented)")
		case CondHonoured:
			if cur, ok := s.tags[key]; ok != (etag != "") || cur != etag {
				return fail(store.ErrPrecondition, "precondition failed (412 PreconditionFailed)")
			}
		}
		tag = s.putManifestLocked(OpPutManifestIf, key, data)
		return nil
	})
	return tag, err
}

// GetManifestTag implements store.Conditional.
func (s *Fake) GetManifestTag(ctx context.Context, key string) ([]byte, string, error) {
	var tag string
	var out []byte
	err := s.do(ctx, OpGetManifestTag, key, func() error {
		d, ok := s.manifests[key]
		if !ok {
			return s.notFound("get manifest", key)
		}
		out, tag = append([]byte(nil), d...), s.tags[key]
		return nil
	})
	return out, tag, err
}

// putManifestLocked stores data under key, noting what CheckIntegrity
// checks, and returns its new entity tag.
func (s *Fake) putManifestLocked(op, key string, data []byte) string {
	s.putBytes[op] += int64(len(data))
	if m, err := s.resolveLocked(data); err == nil {
		refs := m.PackRefs()
		for i, fp := range m.Chunks {
			if _, inline := m.Inline[uint32(i)]; inline {
				continue
			}
			if ref, ok := refs[uint32(i)]; ok {
				if _, err := store.DecodePackMember(s.packs[ref.ID], ref, fp); err != nil {
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
	s.tagN++
	s.tags[key] = fmt.Sprintf("%q", fmt.Sprint(s.tagN))
	return s.tags[key]
}

// resolveLocked decodes a manifest of any format, a v2 head with the
// base the Fake holds.
func (s *Fake) resolveLocked(data []byte) (*manifest.Manifest, error) {
	if v, err := manifest.FormatVersion(data); err != nil || v != 2 {
		return manifest.Decode(data)
	}
	h, err := manifest.DecodeHead(data)
	if err != nil {
		return nil, err
	}
	base, ok := s.bases[h.BaseID]
	if !ok {
		return nil, fmt.Errorf("base %s missing", h.BaseID)
	}
	bm, err := h.DecodeBase(base)
	if err != nil {
		return nil, err
	}
	return h.Apply(bm)
}

// GetManifest implements store.Store.
func (s *Fake) GetManifest(ctx context.Context, key string) ([]byte, error) {
	return lookup(ctx, s, OpGetManifest, "get manifest", s.manifests, key, key)
}

// ListManifests implements store.Store. Times are zero.
func (s *Fake) ListManifests(ctx context.Context, prefix string) ([]store.ManifestInfo, error) {
	var out []store.ManifestInfo
	err := s.do(ctx, OpList, prefix, func() error {
		for k, v := range s.manifests {
			if strings.HasPrefix(k, prefix) {
				out = append(out, store.ManifestInfo{Key: k, Size: int64(len(v))})
			}
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
		return nil
	})
	return out, err
}

// ManifestVersions implements store.Store: a Fake keeps the latest
// version only, "latest".
func (s *Fake) ManifestVersions(ctx context.Context, key string) ([]store.Version, error) {
	var out []store.Version
	err := s.do(ctx, OpVersions, key, func() error {
		if _, ok := s.manifests[key]; !ok {
			return s.notFound("manifest versions", key)
		}
		out = []store.Version{{ID: "latest", IsLatest: true}}
		return nil
	})
	return out, err
}

// GetManifestVersion implements store.Store. The one version a Fake
// keeps is "latest".
func (s *Fake) GetManifestVersion(ctx context.Context, key, versionID string) ([]byte, error) {
	m := s.manifests
	if versionID != "latest" {
		m = nil // finds nothing
	}
	return lookup(ctx, s, OpGetVersion, "get manifest version", m, key, key)
}

// String implements store.Store: "fake:" and the name.
func (s *Fake) String() string { return "fake:" + s.name }

// Name is the name the store was made with.
func (s *Fake) Name() string { return s.name }

// DeletePack removes pack id behind the store's back.
func (s *Fake) DeletePack(id manifest.Fingerprint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.packs, id)
}

// FlipPackByte flips the bits of byte off of pack id behind the store's
// back.
func (s *Fake) FlipPackByte(id manifest.Fingerprint, off int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.packs[id][off] ^= 0xff
}

// CallLog returns the calls made so far.
func (s *Fake) CallLog() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

// NumCalls returns how many calls were made so far.
func (s *Fake) NumCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.calls)
}

// CallsSince returns the calls made after the first n.
func (s *Fake) CallsSince(n int) []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls[n:]...)
}

// HasChunk reports whether the chunk fp is stored.
func (s *Fake) HasChunk(fp manifest.Fingerprint) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.chunks[fp]
	return ok
}

// DeleteChunk removes the chunk fp behind the store's back.
func (s *Fake) DeleteChunk(fp manifest.Fingerprint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.chunks, fp)
}

// ManifestAt returns the manifest stored under key, nil if none. The
// caller must not change it.
func (s *Fake) ManifestAt(key string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.manifests[key]
}

// ManifestPuts returns every manifest stored so far, in order.
func (s *Fake) ManifestPuts() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.putLog...)
}

// TouchCount returns how many times the chunk or pack fp was touched.
func (s *Fake) TouchCount(fp manifest.Fingerprint) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.touches[fp]
}

// CheckIntegrity fails t if a manifest was stored before one of its chunks,
// or a chunk was stored under the wrong fingerprint.
func (s *Fake) CheckIntegrity(t testing.TB) {
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

// CountOps counts the calls named op in calls.
func CountOps(calls []Call, op string) int {
	n := 0
	for _, c := range calls {
		if c.Op == op {
			n++
		}
	}
	return n
}

// Clock is a clock that moves only when told to (Advance), for code that
// takes its time from a func() time.Time. Its zero value is not ready:
// use NewClock.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a Clock set to 12:00 UTC on 1 March 2031.
func NewClock() *Clock {
	return &Clock{now: time.Date(2031, 3, 1, 12, 0, 0, 0, time.UTC)}
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Set moves the clock to t, forward or back.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// PermanentErr returns a new permanent failure (403 AccessDenied), for a
// Fake to be told to return (FailOn).
func PermanentErr() error {
	return &store.Error{Op: "fake put", Target: "fake", Status: 403, Code: "AccessDenied", Detail: "access denied", Kind: store.ErrPermanent}
}

// RetryableErr returns a new retryable failure (503 SlowDown), for a Fake
// to be told to return.
func RetryableErr() error {
	return &store.Error{Op: "fake put", Target: "fake", Status: 503, Code: "SlowDown", Detail: "slow down", Retryable: true}
}
