package vfs

/*
#include <stdint.h>
#include <stdlib.h>
#include "boule_vfs.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
	"unsafe"

	"github.com/boule-vfs/boule/upload"
)

// restageBusyMax bounds how long a re-staging waits for a writer's lock.
const restageBusyMax = time.Minute

// Restage brings the spool of the database at source up to date with the
// file, as the first transaction of a connection does: it opens the
// database through boule (never creating it) and, under a SHARED lock,
// checks the staged snapshot, taking a new one if it is missing, failed
// or unfinished (a writer died between its commit and its snapshot). It
// returns that snapshot's error: spool.ErrWAL for a database in WAL mode,
// the cause (a full disk, say) of a failure. dir is the spool directory
// the caller expects: boule must be registered with the spool holding it.
// A database that no longer exists is an error wrapping
// upload.ErrSourceGone. Flushes call it (upload.Options).
//
// It waits for a writer's lock for as long as ctx allows, at most a
// minute.
func Restage(ctx context.Context, dir, source string) error {
	if _, err := os.Stat(source); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s: %w", upload.ErrSourceGone, source, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("vfs: re-stage %s: %w", source, err)
	}
	busy := restageBusyMax
	if dl, ok := ctx.Deadline(); ok {
		busy = min(busy, max(time.Until(dl), time.Millisecond))
	}
	cpath := C.CString(source)
	defer C.free(unsafe.Pointer(cpath))
	var (
		db  unsafe.Pointer
		h   C.uint64_t
		msg [512]C.char
	)
	rc := C.boule_restage_open(cpath, C.int(busy.Milliseconds()), &db, &h, &msg[0], C.int(len(msg)))
	if rc != 0 {
		return fmt.Errorf("vfs: re-stage %s: read it through boule: %s (%w)", source, C.GoString(&msg[0]), sqliteError("open", int(rc)))
	}
	defer C.boule_restage_close(db)
	c := lookupConn(uint64(h))
	if c == nil {
		return fmt.Errorf("vfs: re-stage %s: boule opened it without replicating it (replication is off in the configuration in force, or the path cannot be replicated)", source)
	}
	if filepath.Clean(c.db.Dir()) != filepath.Clean(dir) {
		return fmt.Errorf("vfs: re-stage %s: it is spooled in %s under the configuration in force, not in %s", source, c.db.Dir(), dir)
	}
	if err := c.lastSnapErr(); err != nil {
		return err
	}
	// In WAL mode the check captures what the log committed since the
	// last capture, and a persister stages it.
	return c.db.WaitStaged(ctx)
}
