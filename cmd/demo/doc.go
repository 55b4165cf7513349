// Command demo tells Boule's story on the embedded default, a dir store in
// a temp folder, with nothing to configure: it writes a database through
// the boule VFS, shows each commit and the replication lag until the store
// caught up, opens a read replica in a second process and shows a fresh
// commit arriving there, then restores the database and proves the
// restore byte-identical. Each step shows the command that does the same
// by hand (the sqlite3 shell with the extension, or vfsctl). With -dir the
// files stay, to try those commands on; -internals also shows what the
// spool holds. `make demo` builds and runs it.
//
//	go run ./cmd/demo [-dir DIR] [-internals]
//
// It is the second process itself too: run with -replica PATH, it opens
// the read replica and answers the first process's commands on stdin.
//
// It uses Boule as a program would, through packages vfs, config, spool
// and store: it spells no store key or manifest encoding, and reads the
// spool through package spool's API (-internals prints the spool's
// directory tree as it finds it). It needs cgo and links SQLite through
// github.com/mattn/go-sqlite3. Nothing imports it.
package main
