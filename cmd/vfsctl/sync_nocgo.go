//go:build !cgo

package main

// The pure-Go build: what needs SQLite says so, and fails. sync_cgo.go
// has the real thing.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/upload"
)

// errNoCgo is returned when a command needs to read a database through
// SQLite, and this vfsctl was built without cgo.
var errNoCgo = errors.New("this vfsctl was built without cgo (CGO_ENABLED=0)")

// cgoBuild says how to get a vfsctl that can.
const cgoBuild = "the cgo build of vfsctl (CGO_ENABLED=1 and a C toolchain), on the database's host"

// restager returns a Restage hook that cannot re-stage: the flush of a
// database whose staged snapshot lacks committed transactions fails,
// saying why, rather than uploading the stale one. A database that is
// gone is reported as gone, as the cgo build does.
func restager(config.Config, string) func(ctx context.Context, dir, source string) error {
	return func(ctx context.Context, dir, source string) error {
		if _, err := os.Stat(source); errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: %s: %w", upload.ErrSourceGone, source, err)
		}
		return fmt.Errorf("%w, and taking a new snapshot of %s reads it through SQLite: that needs %s", errNoCgo, source, cgoBuild)
	}
}

// syncDB refuses: sync reads the database through SQLite.
func syncDB(context.Context, *globals, string, bool) error {
	return usagef("%v, and sync reads the database through SQLite: that needs %s", errNoCgo, cgoBuild)
}
