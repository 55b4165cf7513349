package lagtrack

import (
	"sync"
	"time"
)

// Tracker dates each commit's arrival in the store.
type Tracker struct {
	mu        sync.Mutex
	committed map[int64]time.Time // commit number → commit time, until seen
	lags      []time.Duration
	seen      int64
	lastSeen  time.Time
}

// New returns a Tracker for the commits after seen, the newest commit
// the store shows already.
func New(seen int64) *Tracker {
	return &Tracker{committed: map[int64]time.Time{}, seen: seen}
}

// Committed notes that commit n returned at at.
func (t *Tracker) Committed(n int64, at time.Time) {
	t.mu.Lock()
	t.committed[n] = at
	t.mu.Unlock()
}

// Pending returns how many of the commits noted the store does not show
// yet.
func (t *Tracker) Pending() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.committed)
}

// Poll calls visible every period until stop is closed. visible returns
// the newest commit the store shows and when the store was read; an error
// (a manifest not there yet, a racing upload) is skipped: the next poll
// sees it.
func (t *Tracker) Poll(stop <-chan struct{}, period time.Duration, visible func() (int64, time.Time, error)) {
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		v, at, err := visible()
		if err != nil {
			continue
		}
		t.mu.Lock()
		if v > t.seen {
			for n, c := range t.committed {
				if n <= v {
					t.lags = append(t.lags, at.Sub(c))
					delete(t.committed, n)
				}
			}
			t.seen = v
			t.lastSeen = at
		}
		t.mu.Unlock()
	}
}

// Drain waits, checking every period, until the store shows every commit
// noted or timeout has passed.
func (t *Tracker) Drain(timeout, period time.Duration) {
	for end := time.Now().Add(timeout); t.Pending() > 0 && time.Now().Before(end); {
		time.Sleep(period) // waiting for the asynchronous upload
	}
}

// Result returns the lag of each commit seen, in no particular order, how
// many commits the store never showed, and when it first showed the last
// commit seen (zero if none).
func (t *Tracker) Result() (lags []time.Duration, missing int, lastSeen time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]time.Duration(nil), t.lags...), len(t.committed), t.lastSeen
}
