package vfs

import (
	"log/slog"
	"testing"

	"github.com/mattn/go-sqlite3"

	"github.com/boule-vfs/boule/internal/testlog"
)

// captureLog sends what logger() logs to the returned handler until the
// test ends.
func captureLog(t testing.TB) *testlog.Records {
	t.Helper()
	h := &testlog.Records{}
	rt := &runtime{log: slog.New(h)}
	if old := current.Load(); old != nil {
		c := *old
		c.log = rt.log
		rt = &c
	}
	old := current.Swap(rt)
	t.Cleanup(func() { current.CompareAndSwap(rt, old) })
	return h
}

// snapOutOf allocates the struct an //export function of the replica VFS
// writes its result in (a test file cannot name C types).
func snapOutOf[H, T, R any](func(H, *T) R) *T { return new(T) }

// cString is the NUL-terminated string at the start of b.
func cString[T ~int8 | ~uint8](b []T) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

// TestExportPanic: a panic in any //export function returns the
// function's failure value, logs one error naming the function, and
// hands its message to C where C takes one.
func TestExportPanic(t *testing.T) {
	var (
		ioRead   = int64(sqlite3.ErrIoErrRead)
		cantOpen = int64(sqlite3.ErrCantOpen)
		generic  = int64(sqlite3.ErrError)
	)
	out := snapOutOf(bouleGoSnapAdopt)
	zero := *out
	for _, tc := range []struct {
		fn   string
		call func() int64 // calls fn; 0 for a function with no result
		want int64
		msg  bool // the panic's message reaches out.msg
	}{
		{"bouleGoOpen", func() int64 { return int64(bouleGoOpen(nil, nil, nil)) }, 0, false},
		{"bouleGoSnapshot", func() int64 { return int64(bouleGoSnapshot(1, nil, nil, 0, nil, 0)) }, 1, false},
		{"bouleGoFlush", func() int64 { return int64(bouleGoFlush(1, 0)) }, 0, false},
		{"bouleGoClose", func() int64 { bouleGoClose(1); return 0 }, 0, false},
		{"bouleGoSnapOpen", func() int64 { return int64(bouleGoSnapOpen(nil, 0, out)) }, cantOpen, true},
		{"bouleGoSnapChunk", func() int64 { return int64(bouleGoSnapChunk(1, 0)) }, ioRead, false},
		{"bouleGoSnapAdopt", func() int64 { return int64(bouleGoSnapAdopt(1, out)) }, generic, false},
		{"bouleGoSnapPragma", func() int64 { return int64(bouleGoSnapPragma(1, nil, nil, 0, out)) }, generic, true},
		{"bouleGoSnapClose", func() int64 { bouleGoSnapClose(1); return 0 }, 0, false},
	} {
		t.Run(tc.fn, func(t *testing.T) {
			log := captureLog(t)
			SetExportHook(t, func(fn string) {
				if fn == tc.fn {
					panic("boom in " + fn)
				}
			})
			*out = zero
			if got := tc.call(); got != tc.want {
				t.Errorf("%s()=%d after a panic, want %d", tc.fn, got, tc.want)
			}
			if n := log.Count(slog.LevelError, "panic in "+tc.fn); n != 1 {
				t.Errorf("%s: %d error records name the panic, want 1", tc.fn, n)
			}
			if tc.msg {
				if got, want := cString(out.msg[:]), "panic: boom in "+tc.fn; got != want {
					t.Errorf("%s: out.msg=%q, want %q", tc.fn, got, want)
				}
			}
		})
	}
}
