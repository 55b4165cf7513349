package fanout

import (
	"sync"
	"sync/atomic"
)

// Each calls f(i) for each i from 0 to count-1 on n goroutines, each
// taking the next i in turn, and returns once they are all done. A
// goroutine stops taking work as soon as its f returns false; the others
// go on. It allocates nothing per i.
func Each(n, count int, f func(i int) bool) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= count || !f(i) {
					return
				}
			}
		}()
	}
	wg.Wait()
}
