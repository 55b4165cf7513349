package vfs

/*
#include "boule_sqlite.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
)

// resultCode is an SQLite result code (SQLITE_OK, SQLITE_CANTOPEN, ...),
// as the C side takes and returns it.
type resultCode = C.int

// A codeError is an error that stands for one SQLite result code: whatever
// it wraps, sqliteCode returns that code for it.
type codeError struct {
	code resultCode
	err  error
}

func (e *codeError) Error() string { return e.err.Error() }
func (e *codeError) Unwrap() error { return e.err }

// withCode returns err marked as SQLite result code code.
func withCode(code resultCode, err error) error {
	return &codeError{code: code, err: err}
}

// sqliteError describes an SQLite result code from the C side; sqliteCode
// returns that code for it.
func sqliteError(op string, rc int) error {
	return withCode(resultCode(rc), fmt.Errorf("vfs: %s: sqlite error code %d", op, rc))
}

// sqliteCode is the SQLite result code for err, the error of an operation
// whose code is def unless err says more. It is the one place where Go
// errors become SQLite codes:
//
//   - nil is SQLITE_OK;
//   - an error marked with a code (withCode, sqliteError) is that code;
//   - a manifest in a format this version does not read is
//     SQLITE_CANTOPEN;
//   - bytes from a store that are damaged or invalid (a tampered or
//     bit-rotted blob or manifest) are SQLITE_CORRUPT;
//   - a store that could not be read (down, timing out, refusing the
//     credentials) is an I/O error: def if def is one of the SQLITE_IOERR
//     codes (SQLITE_IOERR_READ for a chunk), else SQLITE_IOERR;
//   - anything else (an object no store holds, a name that is refused) is
//     def.
func sqliteCode(err error, def resultCode) resultCode {
	var ce *codeError
	switch {
	case err == nil:
		return C.SQLITE_OK
	case errors.As(err, &ce):
		return ce.code
	case errors.Is(err, manifest.ErrVersion), errors.Is(err, manifest.ErrFlags):
		return C.SQLITE_CANTOPEN
	case errors.Is(err, store.ErrCorrupt), errors.Is(err, manifest.ErrTruncated),
		errors.Is(err, manifest.ErrMagic), errors.Is(err, manifest.ErrChecksum),
		errors.Is(err, manifest.ErrInvalid), errors.Is(err, manifest.ErrInlineMismatch),
		errors.Is(err, manifest.ErrFingerprint):
		return C.SQLITE_CORRUPT
	case errors.Is(err, context.DeadlineExceeded), storeFailed(err):
		// Before "not found": with several stores, the one that failed
		// may be the one that has the object.
		if def&0xff == C.SQLITE_IOERR {
			return def
		}
		return C.SQLITE_IOERR
	}
	return def
}

// storeFailed reports whether err holds a store error other than "not
// found", looking into every error that err joins.
func storeFailed(err error) bool {
	if se, ok := err.(*store.Error); ok {
		return !errors.Is(se, store.ErrNotFound)
	}
	switch u := err.(type) {
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if storeFailed(e) {
				return true
			}
		}
	case interface{ Unwrap() error }:
		return storeFailed(u.Unwrap())
	}
	return false
}
