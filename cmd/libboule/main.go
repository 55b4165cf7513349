//go:build boule_lib || boule_ext

package main

/*
#include <stdlib.h>
*/
import "C"

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/vfs"
)

// fail stores err's message in *errmsg, when errmsg is not NULL, and
// returns 1.
func fail(errmsg **C.char, err error) C.int {
	if errmsg != nil {
		*errmsg = C.CString(err.Error())
	}
	return 1
}

// guard turns a panic into an error return, so that no Go panic crosses
// into a C program.
func guard(errmsg **C.char, rc *C.int) {
	if r := recover(); r != nil {
		*rc = fail(errmsg, fmt.Errorf("boule: panic: %v", r))
	}
}

// boule_configure registers the boule and boule_snapshot VFSes from a JSON
// configuration, or from "@/path/to/file.json", or, when json is NULL,
// from BOULE_CONFIG (or Verneuil's VERNEUIL_CONFIG when BOULE_CONFIG is
// unset or empty). Logs go to standard error, or to the file BOULE_LOG_FILE
// names, at the level BOULE_LOG sets.
//
//export boule_configure
func boule_configure(js *C.char, errmsg **C.char) (rc C.int) {
	defer guard(errmsg, &rc)
	log, err := vfs.StderrLogger()
	if err != nil {
		return fail(errmsg, err)
	}
	var src string
	if js != nil {
		src = C.GoString(js)
	} else {
		src = config.FromEnv(os.LookupEnv, log)
	}
	cfg, err := config.Load(src)
	if err != nil {
		return fail(errmsg, err)
	}
	if cfg.Logger == nil {
		cfg.Logger = log
	}
	if err := vfs.Register(cfg); err != nil {
		return fail(errmsg, err)
	}
	if js == nil {
		vfs.WarnUnconfigured(cfg.Logger, src)
	}
	return 0
}

// boule_flush uploads everything spooled for the database at path, or for
// every database this process replicates when path is NULL, and waits.
//
//export boule_flush
func boule_flush(path *C.char, errmsg **C.char) (rc C.int) {
	defer guard(errmsg, &rc)
	var err error
	if path == nil {
		err = vfs.FlushAll(context.Background())
	} else {
		err = vfs.Flush(context.Background(), C.GoString(path))
	}
	if err != nil {
		return fail(errmsg, err)
	}
	return 0
}

// boule_replication_info stores in *out a JSON array describing the
// replication of each database this process replicates (lag, pending
// bytes, uploads, failures, last error), freed with free().
//
//export boule_replication_info
func boule_replication_info(out **C.char, errmsg **C.char) (rc C.int) {
	defer guard(errmsg, &rc)
	type info struct {
		Source        string  `json:"source"`
		LagSeconds    float64 `json:"lag_seconds"`
		PendingBytes  int64   `json:"pending_bytes"`
		Uploads       int64   `json:"uploads"`
		Failures      int64   `json:"failures"`
		LastError     string  `json:"last_error,omitempty"`
		Blocked       bool    `json:"blocked"`
		NotReplicated bool    `json:"not_replicated"`
		Problem       string  `json:"problem,omitempty"`
	}
	list := []info{}
	for _, s := range vfs.ReplicationStatus() {
		list = append(list, info{s.Source, s.Lag.Seconds(), s.PendingBytes, s.Uploads, s.Failures, s.LastError, s.Blocked, s.NotReplicated, s.Problem})
	}
	b, err := json.Marshal(list)
	if err != nil {
		return fail(errmsg, err)
	}
	if out == nil {
		return fail(errmsg, fmt.Errorf("boule_replication_info: out is NULL"))
	}
	*out = C.CString(string(b))
	return 0
}

// boule_restore writes the newest replicated snapshot of name
// ("boule://HOST/abs/path", "boule:///abs/path" for this host, or a
// manifest file) to the file out, atomically, every chunk verified.
//
//export boule_restore
func boule_restore(name, out *C.char, errmsg **C.char) (rc C.int) {
	defer guard(errmsg, &rc)
	if name == nil || out == nil {
		return fail(errmsg, fmt.Errorf("boule_restore: name and out must not be NULL"))
	}
	if err := vfs.Restore(context.Background(), C.GoString(name), C.GoString(out)); err != nil {
		return fail(errmsg, err)
	}
	return 0
}

func main() {}
