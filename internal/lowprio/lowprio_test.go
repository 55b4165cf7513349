//go:build linux

package lowprio

import (
	"runtime"
	"sync"
	"testing"
)

// niceness returns the niceness of the thread the calling goroutine is
// locked to.
func niceness(t *testing.T) int {
	t.Helper()
	n, err := Niceness()
	if err != nil {
		t.Fatalf("Niceness()=%v", err)
	}
	return n
}

func TestDoRunsLowered(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	mine := niceness(t)
	var got []int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 20 { // more than the pool, at once
		wg.Add(1)
		go func() {
			defer wg.Done()
			Do(func() {
				n, err := Niceness()
				if err != nil {
					t.Error(err)
				}
				mu.Lock()
				got = append(got, n)
				mu.Unlock()
			})
		}()
	}
	wg.Wait()
	want := min(mine+Nice, 19)
	for _, n := range got {
		if n != want {
			t.Fatalf("Do ran f at niceness %d, want %d (the caller's is %d)", n, want, mine)
		}
	}
	if len(got) != 20 {
		t.Fatalf("Do ran %d functions, want 20", len(got))
	}
	if n := niceness(t); n != mine {
		t.Errorf("the caller's niceness went from %d to %d", mine, n)
	}
}

// A goroutine that lowered itself ends its thread: no other goroutine
// later runs at the lower priority.
func TestLowerEndsWithItsGoroutine(t *testing.T) {
	runtime.LockOSThread()
	mine := niceness(t)
	runtime.UnlockOSThread()
	done := make(chan bool)
	go func() { done <- Lower() }()
	if !<-done {
		t.Fatal("Lower()=false, want true")
	}
	// Every thread the runtime runs goroutines on now: none is lowered.
	var wg sync.WaitGroup
	for range 4 * runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if n := niceness(t); n != mine {
				t.Errorf("a goroutine ran at niceness %d, the process's is %d", n, mine)
			}
		}()
	}
	wg.Wait()
}
