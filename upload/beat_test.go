package upload

import (
	"testing"
	"time"

	"github.com/boule-vfs/boule/store/storetest"
)

// waitBeat waits until the heartbeat of dir says it was written at want.
func waitBeat(t *testing.T, d *testSpool, want time.Time) {
	t.Helper()
	deadline := time.Now().Add(storetest.WaitTimeout)
	for {
		if b, ok := d.sp.Beat(); ok && b.At.Equal(want) {
			return
		}
		if time.Now().After(deadline) {
			b, ok := d.sp.Beat()
			t.Fatalf("Beat()=%v, %v; want one written at %v", b, ok, want)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestUploaderBeat: a started uploader rewrites the heartbeat of the
// databases it serves while it has nothing to upload, without calling the
// store; ReadStatus reports it alive, then, once it is closed and a few
// periods have passed, gone, with the time it was last seen.
func TestUploaderBeat(t *testing.T) {
	now, fake, opts := fakeTarget(nil)
	opts.BeatPeriod = 5 * time.Millisecond
	u := newTestUploader(t, opts)
	d := newTestSpool(t, t.TempDir(), "/data/idle.db")

	s, err := ReadStatus(d.dir, now.Now())
	if err != nil || s.UploaderAlive || !s.UploaderSeen.IsZero() {
		t.Fatalf("ReadStatus() before any uploader=%+v, %v; want not alive, never seen", s, err)
	}

	u.Add(d.dir)
	u.Start()
	first := now.Now()
	waitBeat(t, d, first)
	calls := fake.NumCalls()
	now.Advance(time.Second)
	second := now.Now()
	waitBeat(t, d, second) // rewritten while idle
	if got := fake.CallsSince(calls); len(got) != 0 {
		t.Fatalf("store calls while beating=%v, want none", got)
	}
	s, err = ReadStatus(d.dir, second)
	if err != nil || !s.UploaderAlive || !s.UploaderSeen.Equal(second) {
		t.Fatalf("ReadStatus()=%+v, %v; want alive, seen at %v", s, err, second)
	}

	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	b, _ := d.sp.Beat()
	for _, tc := range []struct {
		name  string
		after time.Duration
		alive bool
	}{
		{"just written", 0, true},
		{"a missed beat", 2 * opts.BeatPeriod, true},
		{"gone", 3*opts.BeatPeriod + time.Millisecond, false},
		{"long gone", time.Hour, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ReadStatus(d.dir, b.At.Add(tc.after))
			if err != nil || s.UploaderAlive != tc.alive || !s.UploaderSeen.Equal(b.At) {
				t.Fatalf("ReadStatus(%v later)=alive %v seen %v, %v; want alive %v seen %v", tc.after, s.UploaderAlive, s.UploaderSeen, err, tc.alive, b.At)
			}
		})
	}
}
