// Package restore writes a database back from the stores: the newest
// snapshot or the one in force at a time (--at), fetched in parallel with
// bounded memory, each chunk verified against its fingerprint, written in
// order to a file (atomically, refusing a database in use) or a stream.
//
// It reads the stores through package store only and needs no SQLite and
// no cgo.
package restore
