//go:build boule_ext

package vfs

import (
	"log/slog"
	"testing"
	"unsafe"

	"github.com/mattn/go-sqlite3"
)

// errArgOf allocates the char ** in which f returns an error message.
func errArgOf[T, R any](func(**T) R) **T { return new(*T) }

// TestExtInitPanic: a panic while the extension loads fails the load with
// SQLITE_ERROR and the panic's message, and logs it once.
func TestExtInitPanic(t *testing.T) {
	log := captureLog(t)
	SetExportHook(t, func(fn string) {
		if fn == "bouleGoExtInit" {
			panic("boom in " + fn)
		}
	})
	pzErr := errArgOf(bouleGoExtInit)
	if got, want := int64(bouleGoExtInit(pzErr)), int64(sqlite3.ErrError); got != want {
		t.Errorf("bouleGoExtInit()=%d after a panic, want %d", got, want)
	}
	if *pzErr == nil {
		t.Fatal("bouleGoExtInit() left no error message")
	}
	want := "panic: boom in bouleGoExtInit"
	if got := cString(unsafe.Slice((*byte)(unsafe.Pointer(*pzErr)), len(want)+1)); got != want {
		t.Errorf("bouleGoExtInit() message %q, want %q", got, want)
	}
	if n := log.Count(slog.LevelError, "panic in bouleGoExtInit"); n != 1 {
		t.Errorf("%d error records name the panic, want 1", n)
	}
}
