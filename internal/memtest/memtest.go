package memtest

import (
	"runtime"
	"runtime/metrics"
	"sync"
)

// Allocated returns the bytes allocated on the heap while f ran, by every
// goroutine, exactly. It stops the world twice (runtime.ReadMemStats):
// some tens of microseconds.
func Allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// Least returns the least of Allocated over runs calls of f. Allocated
// counts every goroutine's allocations: in a test binary whose other tests
// or background goroutines (servers, pollers) allocate meanwhile, one
// measure can be inflated, never deflated, so the least of a few is the
// cost of f. f must allocate the same each time it runs.
func Least(runs int, f func()) uint64 {
	n := Allocated(f)
	for range runs - 1 {
		n = min(n, Allocated(f))
	}
	return n
}

var (
	sampleMu sync.Mutex
	sample   = []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
)

func heapAllocs() uint64 {
	sampleMu.Lock()
	defer sampleMu.Unlock()
	metrics.Read(sample)
	return sample[0].Value.Uint64()
}

// Roughly is Allocated at a fraction of a microsecond, without stopping
// the world; but the runtime counts small objects a span at a time, when
// it replaces the span, so the figure may include some hundreds of KiB
// allocated before f ran, or miss some allocated by f. Large objects
// (over 32 KiB), the ones a hostile count or size would make, are counted
// exactly.
func Roughly(f func()) uint64 {
	before := heapAllocs()
	f()
	return heapAllocs() - before
}

// AtMost reports whether f allocates at most limit bytes, and how much it
// allocated, for fuzz targets, which run it millions of times: Roughly,
// and when that is over limit, Allocated, the least of three runs, so
// that neither Roughly's error nor another goroutine's allocations fail
// an input. f runs up to four times.
func AtMost(limit uint64, f func()) (uint64, bool) {
	n := Roughly(f)
	if n <= limit {
		return n, true
	}
	for range 3 {
		n = min(n, Allocated(f))
	}
	return n, n <= limit
}
