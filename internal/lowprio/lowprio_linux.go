package lowprio

import "golang.org/x/sys/unix"

const supported = true

// lower raises the niceness of the calling thread by Nice, up to 19, or
// leaves it as it is if it cannot (the work then runs at the process's
// priority). Raising one's own niceness needs no privilege. On Linux
// getpriority(2) returns 20 minus the niceness.
func lower() {
	tid := unix.Gettid()
	raw, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		return
	}
	if cur := 20 - raw; cur < 19 {
		_ = unix.Setpriority(unix.PRIO_PROCESS, tid, min(cur+Nice, 19))
	}
}

// Niceness returns the niceness of the calling thread, for tests; the
// caller must be locked to its thread for the answer to mean anything.
func Niceness() (int, error) {
	raw, err := unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid())
	return 20 - raw, err
}
