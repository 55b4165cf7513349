// Command vfsctl operates Boule replication from the command line.
//
//	vfsctl [-c|--config JSON|@FILE] [-l|--log off|error|warn|info|debug] COMMAND [ARGS]
//	vfsctl --version
//	vfsctl help [COMMAND]
//
// Commands:
//
//	flush SPOOL_DIR        upload everything spooled under SPOOL_DIR
//	sync DB                upload a fresh snapshot of DB and print its manifest name
//	status SPOOL_DIR       replication lag, pending bytes, uploader and errors per database;
//	                       --max-lag D exits 1 beyond D, --watch redraws on a terminal
//	metrics SPOOL_DIR      the same, as Prometheus metrics; --listen ADDR serves /metrics
//	restore SOURCE         write a replicated database, or an older version, to a file
//	manifest SOURCE        fetch the manifest of a replicated database
//	manifest-name SOURCE   print the key of a database's manifest
//	ls-versions SOURCE     list the points in time a database can be restored to
//	ls                     list the databases a store holds
//	verify SOURCE          check every chunk of a manifest
//	shell SOURCE           open the sqlite3 shell on a read replica
//
// A command's flags may come before or after its arguments (after "--",
// everything is an argument; for shell, everything after SOURCE goes to
// sqlite3); the global flags come before the command. A wrong flag prints
// its error, then the command's usage, and exits 2. --version prints the
// module version and the commit vfsctl was built from (when go build
// stamped it: not with -buildvcs=false, nor from a git worktree). sync
// --optimize is accepted for verneuilctl's scripts and changes nothing
// (Verneuil rewrote the database first; Boule's sync never writes it).
//
// SOURCE is a database path on its host (--hostname, default this one) or
// a boule://HOST/abs/path name; restore, verify and shell also take a
// manifest file or name with --manifest instead, and restore takes
// --source-path PATH as another spelling of SOURCE. Run "vfsctl COMMAND
// --help" for each command's options. Commands whose output is data take
// --json. Progress bars appear only on a terminal.
//
// The configuration comes from --config, BOULE_CONFIG or, when that is unset
// or empty, VERNEUIL_CONFIG (see doc/CONFIG.md).
//
// Exit codes: 0 success, 1 the operation failed, 2 bad usage or
// configuration.
//
// SIGTERM or SIGINT stops the command: every command exits, with status 1,
// within a second of the signal.
//
// # Builds
//
// vfsctl is pure Go but for sync, which reads a database through SQLite
// and boule, and for a flush that must take a new snapshot of a database
// first (see upload.Options.Restage): those two live in sync_cgo.go, and
// a vfsctl built with CGO_ENABLED=0 refuses them, saying so, and never
// claims a flush it could not make. Everything else (restore, verify,
// manifests, status, flushes of what is spooled) works in the pure-Go
// build, which cross-compiles for the laptops and ARM hosts operators
// restore from (make crossbuild).
//
// # What it owns, and what it must not touch
//
// vfsctl owns the command line: the commands, their flags and messages,
// the parsing of SOURCE (source.go, one parser for every command), and
// the exit codes. It reads and writes stores only through package store
// and its backends, restores through package restore, uploads through
// package upload, reads spools through package spool's API: it spells no
// store key, spool layout or manifest encoding itself. Of its non-test
// files, only sync_cgo.go may import package vfs or a SQLite driver.
package main
