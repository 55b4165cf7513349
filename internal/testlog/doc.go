// Package testlog keeps what tests log or what their child processes
// write, for the tests to read while the writers may still be running:
// [Buffer], a bytes.Buffer safe for that, and [Records], an slog.Handler
// that keeps every record.
//
// Only tests import it. It does no I/O, and imports no other package of
// this module.
package testlog
