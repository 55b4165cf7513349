package lowprio

import (
	"runtime"
	"sync"
)

// Nice is how much the niceness of a background thread is raised above
// the process's (capped at 19, the lowest priority).
const Nice = 10

// Lower locks the calling goroutine to its thread and lowers the thread's
// priority by Nice, for the rest of the goroutine's life. The goroutine
// must not call runtime.UnlockOSThread. It reports whether the priority
// was lowered.
func Lower() bool {
	if !supported {
		return false
	}
	runtime.LockOSThread()
	return lower()
}

var (
	startOnce sync.Once
	work      chan func()
)

// Do runs f on one of a few long-lived lowered threads, and returns when f
// has: the work of many databases shares those threads instead of each
// making (and ending) one. The pool has max(4, 2×GOMAXPROCS) threads, so
// work blocked on a file or a lock leaves others free to run.
func Do(f func()) {
	if !supported {
		f()
		return
	}
	startOnce.Do(start)
	done := make(chan struct{})
	work <- func() {
		defer close(done)
		f()
	}
	<-done
}

func start() {
	n := max(4, 2*runtime.GOMAXPROCS(0))
	work = make(chan func())
	for range n {
		go func() {
			Lower()
			for f := range work {
				f()
			}
		}()
	}
}
