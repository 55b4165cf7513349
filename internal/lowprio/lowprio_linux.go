package lowprio

import "golang.org/x/sys/unix"

const supported = true

// lower raises the niceness of the calling thread by Nice, up to 19.
// Raising one's own niceness needs no privilege. On Linux getpriority(2)
// returns 20 minus the niceness.
func lower() bool {
	tid := unix.Gettid()
	raw, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		return false
	}
	cur := 20 - raw
	want := min(cur+Nice, 19)
	if want <= cur {
		return cur == 19
	}
	return unix.Setpriority(unix.PRIO_PROCESS, tid, want) == nil
}

// Niceness returns the niceness of the calling thread, for tests; the
// caller must be locked to its thread for the answer to mean anything.
func Niceness() (int, error) {
	raw, err := unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid())
	return 20 - raw, err
}
