package vfs

// The C half of the VFS lives in this directory: boule_vfs.c (the
// replicating VFS) and boule_snapshot.c (the read-replica VFS), each with
// its internal header shared with the Go half (boule_vfs.h, which also
// holds what both VFSes share, and boule_snapshot.h), boule_sqlite.h (how
// they reach SQLite), and boule.h, the public header of the C library.
// cgo compiles each .c file on its own, and the go command rebuilds when
// any of them changes. This file holds no //export functions: their
// preamble may hold declarations only.
//
// Every //export function defers guard (guard.go), and every SQLite code
// Go returns for an error comes from sqliteCode (errcode.go).

/*
#cgo CFLAGS: -O2 -Wall -Wextra -Wno-unused-parameter
*/
import "C"
