//go:build boule_ext

package vfs

// Built with -tags boule_ext, the C half reaches SQLite through the
// extension API table (sqlite3ext.h) and defines sqlite3_boule_init, the
// loadable extension's entry point.

/*
#cgo CFLAGS: -DBOULE_EXTENSION=1
#include <stdlib.h>
#include <string.h>
*/
import "C"

import (
	"fmt"
	"os"

	"github.com/boule-vfs/boule/config"
)

//export bouleGoExtInit
func bouleGoExtInit(pzErr **C.char) (rc C.int) {
	defer func() {
		if r := recover(); r != nil {
			*pzErr = C.CString(fmt.Sprint("panic: ", r))
			rc = 1
		}
	}()
	fail := func(err error) C.int {
		*pzErr = C.CString(err.Error())
		return 1 // SQLITE_ERROR
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
	return 0
}
