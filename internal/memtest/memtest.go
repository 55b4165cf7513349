// Package memtest measures the heap memory code allocates, for the tests
// that bound what hostile input can cost: a decoder's tests assert that it
// allocates at most a small multiple of the size its input declares
// (doc/STYLE.md 13a).
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

// Roughly is Allocated for fuzz targets, which run it millions of times:
// it costs a fraction of a microsecond, without stopping the world, but
// the runtime counts small objects a span at a time, so it may miss up to
// some tens of KiB of them. Large objects (over 32 KiB), the ones a
// hostile count or size would make, are counted exactly.
func Roughly(f func()) uint64 {
	before := heapAllocs()
	f()
	return heapAllocs() - before
}
