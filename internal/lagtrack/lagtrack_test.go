package lagtrack

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// TestTracker: a commit's lag runs from its return to the first read of
// the store that shows it or a later commit; an error reading the store
// and a store behind what was seen change nothing.
func TestTracker(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	tr := New(10)
	tr.Committed(11, t0)
	tr.Committed(12, t0.Add(time.Second))
	tr.Committed(13, t0.Add(2*time.Second))
	reads := []struct {
		v   int64
		at  time.Time
		err error
	}{
		{10, t0.Add(3 * time.Second), nil},
		{0, time.Time{}, errors.New("no manifest yet")},
		{12, t0.Add(4 * time.Second), nil},
		{11, t0.Add(5 * time.Second), nil},
	}
	var i atomic.Int32
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tr.Poll(stop, time.Millisecond, func() (int64, time.Time, error) {
			k := int(i.Add(1)) - 1
			if k >= len(reads) {
				return 0, time.Time{}, errors.New("done")
			}
			return reads[k].v, reads[k].at, reads[k].err
		})
	}()
	for i.Load() <= int32(len(reads)) {
		time.Sleep(time.Millisecond)
	}
	close(stop)
	<-done
	lags, missing, last := tr.Result()
	if got := tr.Pending(); got != 1 {
		t.Errorf("Pending()=%d, want 1", got)
	}
	if missing != 1 || !last.Equal(t0.Add(4*time.Second)) {
		t.Errorf("Result() missing, lastSeen=%d, %v, want 1, %v", missing, last, t0.Add(4*time.Second))
	}
	want := map[time.Duration]bool{4 * time.Second: true, 3 * time.Second: true}
	if len(lags) != 2 || !want[lags[0]] || !want[lags[1]] || lags[0] == lags[1] {
		t.Errorf("Result() lags=%v, want 4s and 3s", lags)
	}
}
