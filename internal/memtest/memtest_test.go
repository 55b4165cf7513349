package memtest

import "testing"

var sink []byte

// TestCounts: both measures see a large allocation made by f, and
// nothing much when f allocates nothing.
func TestCounts(t *testing.T) {
	for name, measure := range map[string]func(func()) uint64{"Allocated": Allocated, "Roughly": Roughly} {
		t.Run(name, func(t *testing.T) {
			if n := measure(func() { sink = make([]byte, 1<<20) }); n < 1<<20 || n > 1<<20+64<<10 {
				t.Errorf("%s(1 MiB)=%d, want about 1 MiB", name, n)
			}
			if n := measure(func() {}); n > 64<<10 {
				t.Errorf("%s(nothing)=%d, want about 0", name, n)
			}
		})
	}
}

// TestAtMost: AtMost tells an allocation over the limit from one within.
func TestAtMost(t *testing.T) {
	for _, c := range []struct {
		name  string
		limit uint64
		ok    bool
	}{
		{"within", 2 << 20, true},
		{"over", 512 << 10, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			n, ok := AtMost(c.limit, func() { sink = make([]byte, 1<<20) })
			if ok != c.ok || n < 1<<20 {
				t.Errorf("AtMost(%d, 1 MiB)=%d, %v, want %v", c.limit, n, ok, c.ok)
			}
		})
	}
}
