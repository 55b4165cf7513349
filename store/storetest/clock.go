package storetest

import (
	"context"
	"sync"
	"time"
)

// SleepClock is a store.Clock whose Sleep returns at once, moving the
// time forward by the duration slept. Its zero value starts in 2030.
type SleepClock struct {
	mu    sync.Mutex
	now   time.Time
	slept []time.Duration
}

// Now returns the clock's time.
func (c *SleepClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.now.IsZero() {
		c.now = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	return c.now
}

// Sleep moves the clock forward by d, at once.
func (c *SleepClock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.slept = append(c.slept, d)
	return nil
}

// Total returns the time slept so far.
func (c *SleepClock) Total() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var sum time.Duration
	for _, d := range c.slept {
		sum += d
	}
	return sum
}

// Sleeps returns the durations slept, in order.
func (c *SleepClock) Sleeps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.slept...)
}
