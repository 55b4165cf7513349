package lowprio

import (
	"runtime"
	"sync"
)

// Nice is how much the niceness of a background thread is raised above
// the process's (capped at 19, the lowest priority).
const Nice = 10

// jobs hands work to the lowered threads that wait for it.
var jobs = make(chan func())

// Go runs f on a lowered thread, and returns at once. The thread is one
// of a pool that grows to the number of functions running at once and
// never shrinks: a lowered thread must never end, since the child
// processes it forked with a parent-death signal (exec's Pdeathsig, as
// test harnesses and supervisors use) would be killed with it, and a
// lowered thread may be one that another goroutine of the program ran on
// before.
func Go(f func()) {
	if !supported {
		go f()
		return
	}
	select {
	case jobs <- f: // a lowered thread was waiting
	default:
		go worker(f)
	}
}

// worker lowers its thread for good and runs f, then whatever Go hands
// it, forever.
func worker(f func()) {
	runtime.LockOSThread() // never unlocked: the thread stays lowered, and ours
	lower()
	for {
		f()
		f = <-jobs
	}
}

var (
	slotsOnce sync.Once
	slots     chan struct{}
)

// Do runs f on a lowered thread and returns when f has. At most
// max(4, 2×GOMAXPROCS) run at once: the work of many databases shares
// that many threads, and work blocked on a file or a lock leaves the
// others free to run.
func Do(f func()) {
	if !supported {
		f()
		return
	}
	slotsOnce.Do(func() { slots = make(chan struct{}, max(4, 2*runtime.GOMAXPROCS(0))) })
	slots <- struct{}{}
	defer func() { <-slots }()
	done := make(chan struct{})
	Go(func() {
		defer close(done)
		f()
	})
	<-done
}
