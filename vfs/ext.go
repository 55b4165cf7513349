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
	"log/slog"
	"os"
	"strings"

	"github.com/boule-vfs/boule/config"
)

// LogEnvVar sets the extension's log level: debug, info, warn or error
// (the default).
const LogEnvVar = "BOULE_LOG"

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
	var level slog.Level
	if v := strings.TrimSpace(os.Getenv(LogEnvVar)); v != "" {
		if err := level.UnmarshalText([]byte(v)); err != nil {
			return fail(fmt.Errorf("%s=%q: want debug, info, warn or error", LogEnvVar, v))
		}
	} else {
		level = slog.LevelError
	}
	cfg, err := config.Load(os.Getenv(config.EnvVar))
	if err != nil {
		return fail(err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	}
	if err := Register(cfg); err != nil {
		return fail(err)
	}
	return 0
}
