//go:build boule_ext

package vfs

// Built with -tags boule_ext, the C half reaches SQLite through the
// extension API table (sqlite3ext.h) and defines sqlite3_boule_init, the
// loadable extension's entry point.

/*
#cgo CFLAGS: -DBOULE_EXTENSION=1
#include <stdlib.h>
#include "boule_sqlite.h"
*/
import "C"

import (
	"os"

	"github.com/boule-vfs/boule/config"
)

//export bouleGoExtInit
func bouleGoExtInit(pzErr **C.char) (rc C.int) {
	defer guard("bouleGoExtInit", "the extension does not load", &rc, C.SQLITE_ERROR,
		func(msg string) { *pzErr = C.CString("panic: " + msg) })
	enter("bouleGoExtInit")
	fail := func(err error) C.int {
		*pzErr = C.CString(err.Error())
		return C.SQLITE_ERROR
	}
	log, err := StderrLogger()
	if err != nil {
		return fail(err)
	}
	src := config.FromEnv(os.LookupEnv, log)
	cfg, err := config.Load(src)
	if err != nil {
		return fail(err)
	}
	if cfg.Logger == nil {
		cfg.Logger = log
	}
	if err := Register(cfg); err != nil {
		return fail(err)
	}
	WarnUnconfigured(cfg.Logger, src)
	return C.SQLITE_OK
}
