package upload

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/boule-vfs/boule/internal/testlog"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/storetest"
)

// condTarget is oneTarget with a Fake whose conditional puts are as mode
// says (storetest.SetConditional).
func condTarget(t testing.TB, source string, mode int, tweak func(*Options)) (*storetest.Clock, *storetest.Fake, *Uploader, *testSpool) {
	t.Helper()
	now, fake, opts := fakeTarget(tweak)
	fake.SetConditional(mode)
	return now, fake, newTestUploader(t, opts), newTestSpool(t, t.TempDir(), source)
}

// condOps returns the manifest calls among calls, in order.
func condOps(calls []storetest.Call) []string {
	var ops []string
	for _, c := range calls {
		switch c.Op {
		case storetest.OpPutManifest, storetest.OpPutManifestIf, storetest.OpGetManifestTag:
			ops = append(ops, c.Op)
		}
	}
	return ops
}

// TestUploaderConditionalGap: on a store whose conditional puts are
// verified, manifests go up without the manifest gap; on one that has
// none, refuses them, ignores them, or when the uploader is told not to
// use them, the gap stays, and the store still gets every manifest.
func TestUploaderConditionalGap(t *testing.T) {
	const (
		put   = storetest.OpPutManifest
		putIf = storetest.OpPutManifestIf
		get   = storetest.OpGetManifestTag
	)
	for _, tc := range []struct {
		name   string
		mode   int
		off    bool // NoConditionalPuts
		first  []string
		second []string
		warn   string // logged once
		noGap  bool
	}{
		{name: "Honoured", mode: storetest.CondHonoured, first: []string{get, putIf, putIf}, second: []string{putIf}, noGap: true},
		{name: "Ignored", mode: storetest.CondIgnored, first: []string{get, putIf, putIf}, second: []string{put}, warn: "ignores conditional puts"},
		{name: "Refused", mode: storetest.CondRefused, first: []string{get, putIf, put}, second: []string{put}, warn: "refused a conditional put"},
		{name: "None", mode: storetest.CondNone, first: []string{put}, second: []string{put}},
		{name: "Disabled", mode: storetest.CondHonoured, off: true, first: []string{put}, second: []string{put}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gap := 50 * time.Millisecond
			if tc.noGap {
				gap = time.Hour // a wait would outlast the test
			}
			logs := &testlog.Records{}
			now, fake, u, d := condTarget(t, "/data/cond.db", tc.mode, func(o *Options) {
				o.ManifestGap = gap
				o.ConditionalGap = -1
				o.NoConditionalPuts = tc.off
				o.Logger = slog.New(logs)
			})
			ctx, cancel := context.WithTimeout(context.Background(), storetest.WaitTimeout)
			defer cancel()

			s1 := d.stageNew(testData(700, 3*manifest.ChunkSize), now.Now())
			if err := u.Flush(ctx, d.dir); err != nil {
				t.Fatalf("Flush()=%v, want nil", err)
			}
			if got := condOps(fake.CallLog()); !slices.Equal(got, tc.first) {
				t.Errorf("first upload's manifest calls=%q, want %q", got, tc.first)
			}
			checkStored(t, fake, d, s1)
			wantGap := gap
			if tc.noGap {
				wantGap = -1
			}
			if got, fromStart := u.manifestGap(u.bg); got != wantGap || fromStart != tc.noGap {
				t.Errorf("manifestGap()=%v, %v, want %v, %v", got, fromStart, wantGap, tc.noGap)
			}

			n := fake.NumCalls()
			s2 := d.stageNew(withChunk(s1.data, 1, 701), now.Now())
			start := time.Now()
			if err := u.Flush(ctx, d.dir); err != nil {
				t.Fatalf("Flush()=%v, want nil", err)
			}
			if el := time.Since(start); !tc.noGap && el < gap {
				t.Errorf("second manifest %v after the first, want at least %v", el, gap)
			}
			if got := condOps(fake.CallsSince(n)); !slices.Equal(got, tc.second) {
				t.Errorf("second upload's manifest calls=%q, want %q", got, tc.second)
			}
			checkStored(t, fake, d, s2)
			if tc.warn != "" {
				if n := logs.Count(slog.LevelWarn, tc.warn); n != 1 {
					t.Errorf("%d warnings saying %q, want 1; logs:\n%s", n, tc.warn, logs)
				}
			}
			fake.CheckIntegrity(t)
		})
	}
}

// TestUploaderConditionalLostAnswer: a conditional put lands, its answer
// is lost, and the retry finds the precondition failed. The uploader
// finds its own manifest stored and goes on from its tag; nothing is put
// twice.
func TestUploaderConditionalLostAnswer(t *testing.T) {
	now, fake, u, d := condTarget(t, "/data/lost.db", storetest.CondHonoured, nil)
	s1 := d.stageNew(testData(710, 3*manifest.ChunkSize), now.Now())
	mustFlush(t, u, d.dir)

	fake.LoseAnswers(storetest.OpPutManifestIf, 1)
	s2 := d.stageNew(withChunk(s1.data, 1, 711), now.Now())
	mustFlush(t, u, d.dir)
	checkStored(t, fake, d, s2)

	n := fake.NumCalls()
	s3 := d.stageNew(withChunk(s2.data, 2, 712), now.Now())
	mustFlush(t, u, d.dir)
	checkStored(t, fake, d, s3)
	if got, want := condOps(fake.CallsSince(n)), []string{storetest.OpPutManifestIf}; !slices.Equal(got, want) {
		t.Errorf("manifest calls after the lost answer=%q, want %q", got, want)
	}
	if got, want := manifestCounters(fake.ManifestPuts()), []uint32{1, 2, 3}; !slices.Equal(got, want) {
		t.Errorf("manifests stored=%v, want %v", got, want)
	}
}

// TestUploaderConditionalOtherWriter: another writer puts a manifest of
// the database behind the uploader's back. An older one is replaced by
// the next snapshot; a newer one is not, and the upload fails with
// ErrNewerInStore.
func TestUploaderConditionalOtherWriter(t *testing.T) {
	for _, tc := range []struct {
		name  string
		shift time.Duration // of the other writer's manifest from the snapshot's time
		err   error
	}{
		{"Older", -time.Minute, nil},
		{"Newer", time.Minute, ErrNewerInStore},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &testlog.Records{}
			now, fake, u, d := condTarget(t, "/data/other.db", storetest.CondHonoured, func(o *Options) { o.Logger = slog.New(logs) })
			s1 := d.stageNew(testData(720, 3*manifest.ChunkSize), now.Now())
			mustFlush(t, u, d.dir)

			now.Advance(time.Hour)
			other := d.snapshot(testData(721, 3*manifest.ChunkSize), now.Now().Add(tc.shift))
			if err := fake.PutManifest(context.Background(), d.key(), other.mb); err != nil {
				t.Fatal(err)
			}
			s2 := d.stageNew(withChunk(s1.data, 1, 722), now.Now())
			err := u.Flush(context.Background(), d.dir)
			if !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Fatalf("Flush()=%v, want %v", err, tc.err)
			}
			want := s2.mb
			if tc.err != nil {
				want = other.mb
				if n := logs.Count(slog.LevelError, "newer manifest"); n != 1 {
					t.Errorf("%d errors logged about the newer manifest, want 1; logs:\n%s", n, logs)
				}
			}
			if got := fake.ManifestAt(d.key()); !bytes.Equal(got, want) {
				t.Errorf("stored manifest is not the one expected (%d bytes, want %d)", len(got), len(want))
			}
		})
	}
}

// TestUploaderConditionalGapPaces: with verified conditional puts, the
// passes that upload a manifest start ConditionalGap apart, and
// ManifestGap plays no part.
func TestUploaderConditionalGapPaces(t *testing.T) {
	const gap = 50 * time.Millisecond
	now, fake, u, d := condTarget(t, "/data/paced.db", storetest.CondHonoured, func(o *Options) {
		o.ManifestGap = time.Hour // a wait would outlast the test
		o.ConditionalGap = gap
	})
	ctx, cancel := context.WithTimeout(context.Background(), storetest.WaitTimeout)
	defer cancel()
	s1 := d.stageNew(testData(730, 3*manifest.ChunkSize), now.Now())
	if err := u.Flush(ctx, d.dir); err != nil {
		t.Fatalf("Flush()=%v, want nil", err)
	}
	s2 := d.stageNew(withChunk(s1.data, 1, 731), now.Now())
	start := time.Now() // the clock is frozen: the whole gap is left
	if err := u.Flush(ctx, d.dir); err != nil {
		t.Fatalf("Flush()=%v, want nil", err)
	}
	if el := time.Since(start); el < gap {
		t.Errorf("second manifest %v after the first, want at least %v", el, gap)
	}
	checkStored(t, fake, d, s2)
}

// TestUploaderConditionalPermanentError: a permanent error that fails
// the plain put as well as the conditional one (wrong credentials) says
// nothing of conditional puts: once it is fixed, they are used.
func TestUploaderConditionalPermanentError(t *testing.T) {
	now, fake, u, d := condTarget(t, "/data/perm.db", storetest.CondHonoured, func(o *Options) { o.ManifestGap = -1 })
	fake.FailOn(storetest.OpPutManifestIf, nil, storetest.PermanentErr())
	fake.FailOn(storetest.OpPutManifest, nil, storetest.PermanentErr())
	s1 := d.stageNew(testData(740, 3*manifest.ChunkSize), now.Now())
	if err := u.Flush(context.Background(), d.dir); !errors.Is(err, store.ErrPermanent) {
		t.Fatalf("Flush()=%v, want ErrPermanent", err)
	}
	fake.ClearHooks()
	mustFlush(t, u, d.dir)
	checkStored(t, fake, d, s1)
	if _, fromStart := u.manifestGap(u.bg); !fromStart {
		t.Error("manifestGap() keeps the old gap after a permanent error unrelated to conditional puts")
	}
}
