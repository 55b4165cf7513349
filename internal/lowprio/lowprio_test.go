//go:build linux

package lowprio

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
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
	for range 20 { // more than Do's slots, at once
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

// TestLoweredThreadsLive: a lowered thread never ends, so that children
// forked from it with a parent-death signal live on (a thread that ended
// killed a test's MinIO server), and stays lowered; and no other
// goroutine ever runs lowered.
func TestLoweredThreadsLive(t *testing.T) {
	runtime.LockOSThread()
	mine := niceness(t)
	runtime.UnlockOSThread()
	const n = 8
	tids := make(chan int, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		Go(func() {
			defer wg.Done()
			tids <- unix.Gettid()
		})
	}
	wg.Wait()
	close(tids)
	for tid := range tids {
		// Let a thread whose goroutine exits end first, as it would.
		runtime.Gosched()
		b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/stat", tid))
		if err != nil {
			t.Fatalf("lowered thread %d after its function: %v (it ended)", tid, err)
		}
		// Field 19 is the niceness; the command (field 2) has no spaces here.
		if f := strings.Fields(string(b)); len(f) < 19 || f[18] != fmt.Sprint(min(mine+Nice, 19)) {
			t.Fatalf("thread %d: stat %q, want niceness %d", tid, b, min(mine+Nice, 19))
		}
	}
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
