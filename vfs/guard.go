package vfs

import (
	"fmt"
	"runtime/debug"
	"sync/atomic"
)

// guard keeps a panic in the //export function fn from unwinding into the
// C frames of SQLite, which would end the process. Every //export function
// defers it first thing. On a panic it logs one error naming fn and what
// the failure means to the caller (effect, may be empty), hands the
// panic's message to report (if not nil; the replica VFS passes it to C),
// and makes the function return fail.
func guard[T any](fn, effect string, ret *T, fail T, report func(msg string)) {
	r := recover()
	if r == nil {
		return
	}
	*ret = fail
	msg := logPanic(fn, effect, r)
	if report != nil {
		report(msg)
	}
}

// guardVoid is guard for an //export function with no result.
func guardVoid(fn, effect string) {
	if r := recover(); r != nil {
		logPanic(fn, effect, r)
	}
}

// logPanic logs the panic r of the //export function fn and returns its
// message.
func logPanic(fn, effect string, r any) string {
	msg := fmt.Sprint(r)
	text := "vfs: panic in " + fn
	if effect != "" {
		text += "; " + effect
	}
	logger().Error(text, logKeyErr, msg, logKeyStack, string(debug.Stack()))
	return msg
}

// exportHook, if set, runs at the start of every //export function, inside
// its guard, with the function's name. Tests set it (SetExportHook) to
// make an //export function panic.
var exportHook atomic.Pointer[func(fn string)]

// enter runs the export hook, if set, for the //export function fn.
func enter(fn string) {
	if h := exportHook.Load(); h != nil {
		(*h)(fn)
	}
}
