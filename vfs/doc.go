// Package vfs registers Boule's two SQLite VFSes
// (https://www.sqlite.org/vfs.html) in the process: "boule", which
// replicates every committed write transaction of a database in rollback
// journal mode to the configured stores, and "boule_snapshot", which
// opens read-only replicas of such databases from the stores
// ("file:boule://HOST/abs/path?vfs=boule_snapshot"). Register (or
// RegisterFromEnv) configures both; Flush and FlushAll wait until the
// stores hold what was committed; Restore writes a replica to a file.
//
// # Which SQLite driver
//
// The VFSes are C code that calls SQLite's C API (sqlite3_vfs_register,
// sqlite3_file_control, ...), and this package brings no SQLite of its
// own: the program must link one, and the supported driver is
// github.com/mattn/go-sqlite3, which compiles SQLite into the program with
// cgo. Import it beside this package and open databases with its
// "sqlite3" driver:
//
//	import (
//		"database/sql"
//
//		_ "github.com/mattn/go-sqlite3"
//		"github.com/boule-vfs/boule/vfs"
//	)
//
//	err := vfs.RegisterFromEnv() // BOULE_CONFIG
//	db, err := sql.Open("sqlite3", "file:/srv/app.db?vfs=boule")
//
// Pure-Go drivers, modernc.org/sqlite (SQLite translated to Go) and
// github.com/ncruces/go-sqlite3 (SQLite in WebAssembly), export no C
// symbols, and a program that imports this package without
// mattn/go-sqlite3 fails to link with "undefined reference to
// `sqlite3_...'". Programs in other languages use the loadable extension
// (cmd/libboule, make ext) or the C library (make lib) instead; a Go
// program must not also load the extension, as two Go runtimes in one
// process are not supported.
//
// CGO_ENABLED=1 is needed. Tools that only restore or inspect replicas
// need no SQLite: packages restore, store and snapshot are pure Go.
package vfs
