//go:build boule_lib || boule_ext

// Command libboule is not a command: it is the main package from which the
// loadable extension (go build -buildmode=c-shared -tags boule_ext) and the
// static C library (go build -buildmode=c-archive) are built. See c/boule.h
// for the C API.
package main

/*
#include <stdlib.h>
*/
import "C"

import (
	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/vfs"
)

// boule_configure registers the boule VFS from a JSON configuration, or
// from "@/path/to/file.json", or from BOULE_CONFIG when json is NULL. On
// failure it returns non-zero and, when errmsg is not NULL, sets *errmsg to
// a message the caller frees with free().
//
//export boule_configure
func boule_configure(json *C.char, errmsg **C.char) C.int {
	var cfg config.Config
	var err error
	if json == nil {
		err = vfs.RegisterFromEnv()
	} else if cfg, err = config.Load(C.GoString(json)); err == nil {
		err = vfs.Register(cfg)
	}
	if err != nil {
		if errmsg != nil {
			*errmsg = C.CString(err.Error())
		}
		return 1
	}
	return 0
}

func main() {}
