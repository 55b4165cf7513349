//go:build boule_lib || boule_ext

// Command libboule is not a command: it is the main package from which the
// loadable extension (go build -buildmode=c-shared -tags boule_ext, make
// ext) and the static C library (go build -buildmode=c-archive -tags
// boule_lib, make lib) are built. See vfs/boule.h for the C API. Without
// one of the two tags it has no files, and go build ./... skips it.
//
// It owns the Go side of the C library's functions, boule_configure,
// boule_flush, boule_replication_info and boule_restore: each turns a Go
// error into a message for the caller, and a panic into an error return,
// so that no Go panic crosses into a C program. The extension's entry
// point, sqlite3_boule_init, and everything that reaches SQLite are in
// package vfs (ext.go and its C sources).
//
// It holds no replication logic: it calls packages vfs and config only.
// A Go program imports package vfs instead of loading what this builds:
// two Go runtimes in one process are not supported.
package main
