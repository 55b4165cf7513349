// Package rawvfs drives the file methods of a registered SQLite VFS
// directly, for tests that need the writes, truncations and lock steps
// that no SQL statement makes in that order: a truncate followed by a
// write past the new end in one transaction, a write across two of
// boule's chunks, or an overwrite that fails halfway (cut short by a file
// size limit) in a transaction that then commits. Each File is one open main database file, used by one
// goroutine.
//
// It uses cgo, and calls the SQLite the program links (the one package
// vfs is built against, whose sqlite3.h it includes), so it is only for
// programs that link one: only tests of package vfs import it. It must
// not be imported by the pure-Go packages or their tests, which would
// then need cgo and a SQLite.
package rawvfs
