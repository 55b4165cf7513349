package fanout

import (
	"sync/atomic"
	"testing"
)

func TestEach(t *testing.T) {
	for _, tc := range []struct {
		name     string
		n, count int
	}{
		{"more work than goroutines", 4, 1000},
		{"more goroutines than work", 16, 3},
		{"one goroutine", 1, 10},
		{"no work", 4, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := make([]atomic.Int32, tc.count)
			Each(tc.n, tc.count, func(i int) bool {
				calls[i].Add(1)
				return true
			})
			for i := range calls {
				if got := calls[i].Load(); got != 1 {
					t.Errorf("f(%d) called %d times, want 1", i, got)
				}
			}
		})
	}
}

// TestEachStop: a goroutine whose f returns false takes no more work, and
// the others finish the loop.
func TestEachStop(t *testing.T) {
	const n, count = 4, 100
	var calls atomic.Int32
	Each(n, count, func(i int) bool {
		calls.Add(1)
		return i != 0
	})
	if got := calls.Load(); got != count {
		t.Errorf("f called %d times, want %d", got, count)
	}
	var one atomic.Int32
	Each(n, count, func(int) bool { one.Add(1); return false })
	if got := one.Load(); got != n {
		t.Errorf("with every f returning false, f called %d times, want %d (once per goroutine)", got, n)
	}
}
