package vfs

import (
	"testing"
	"time"

	"github.com/boule-vfs/boule/spool"
)

// SetFaultHook installs a hook called before each spool filesystem step,
// for spools opened after the call. Tests use it to inject errors (ENOSPC)
// or to crash the process at an exact step.
func SetFaultHook(f func(op, path string) error) { faultHook = f }

// SetCompactFloor sets the superseded bytes that make a compaction of
// staging in spools opened after the call, for the rest of the process
// (a test's child): 0 is spool's default.
func SetCompactFloor(n int64) { compactFloor = n }

// SetPersistGap sets the persisters' squash window of spools opened
// after the call, until the test ends (0: spool's default); t nil, for
// the rest of the process (a test's child).
func SetPersistGap(t testing.TB, gap time.Duration) {
	persistGap = gap
	if t != nil {
		t.Cleanup(func() { persistGap = 0 })
	}
}

// SetSnapTouchAge sets how old a cache file's mtime may be before a read
// from C refreshes it, until the test ends.
func SetSnapTouchAge(t testing.TB, seconds int) {
	old := setSnapTouchAge(seconds)
	t.Cleanup(func() { setSnapTouchAge(old) })
}

// ResetSpools forgets the spools opened so far, so that the next Register
// opens a fresh one (with the current fault hook).
func ResetSpools() {
	regMu.Lock()
	defer regMu.Unlock()
	clear(spools)
}

// SetExportHook makes hook run at the start of every //export function,
// inside its guard, with the function's name, until the test ends.
func SetExportHook(t testing.TB, hook func(fn string)) {
	t.Helper()
	old := exportHook.Swap(&hook)
	t.Cleanup(func() { exportHook.Store(old) })
}

// SetWALOpenHook makes each persister read of a log call hook once its
// connection is in its read transaction, for spools opened after the
// call, until the test ends.
func SetWALOpenHook(t testing.TB, hook func(path string)) {
	old := walOpener
	walOpener = func(path string) (*spool.WALReader, error) {
		r, err := openWAL(path)
		if err == nil {
			hook(path)
		}
		return r, err
	}
	t.Cleanup(func() { walOpener = old })
}

// SetCopyLimit bounds the bytes of C's copies of the chunks large
// transactions write until the test ends; the next Register sets the
// capture budget again.
func SetCopyLimit(t testing.TB, n int64) {
	setCopyLimit(n)
	t.Cleanup(func() { setCopyLimit(spool.DefaultCaptureMemory) })
}
