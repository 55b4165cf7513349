package vfs

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/mattn/go-sqlite3"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
)

// TestSQLiteCode: the SQLite code of a Go error, for each operation's
// default: a failed replica open (SQLITE_CANTOPEN), a failed chunk read
// (SQLITE_IOERR_READ) and a failed pragma (SQLITE_ERROR), including with
// several stores that failed differently. The expected codes are
// mattn/go-sqlite3's, not the headers sqliteCode reads.
func TestSQLiteCode(t *testing.T) {
	notFound := &store.Error{Op: "get manifest", Key: "k", Kind: store.ErrNotFound}
	down := &store.Error{Op: "get manifest", Key: "k", Err: errors.New("connection refused")}
	var (
		ok       = resultCode(0)
		cantOpen = resultCode(sqlite3.ErrCantOpen)
		corrupt  = resultCode(sqlite3.ErrCorrupt)
		ioErr    = resultCode(sqlite3.ErrIoErr)
		ioRead   = resultCode(sqlite3.ErrIoErrRead)
		generic  = resultCode(sqlite3.ErrError)
		locked   = resultCode(sqlite3.ErrLocked)
		notFnd   = resultCode(sqlite3.ErrNotFound)
	)
	for _, tc := range []struct {
		name string
		err  error
		def  resultCode
		want resultCode
	}{
		{"nil", nil, cantOpen, ok},

		// A replica open.
		{"open/not found", fmt.Errorf("snapshot: x: %w", notFound), cantOpen, cantOpen},
		{"open/down", fmt.Errorf("snapshot: x: %w", down), cantOpen, ioErr},
		{"open/one store lacks it, the other is down", fmt.Errorf("snapshot: x: %w", errors.Join(notFound, down)), cantOpen, ioErr},
		{"open/both lack it", errors.Join(notFound, notFound), cantOpen, cantOpen},
		{"open/timeout", fmt.Errorf("x: %w", context.DeadlineExceeded), cantOpen, ioErr},
		{"open/checksum", fmt.Errorf("x: %w", manifest.ErrChecksum), cantOpen, corrupt},
		{"open/truncated", fmt.Errorf("x: %w", manifest.ErrTruncated), cantOpen, corrupt},
		{"open/magic", fmt.Errorf("x: %w", manifest.ErrMagic), cantOpen, corrupt},
		{"open/invalid", fmt.Errorf("x: %w", manifest.ErrInvalid), cantOpen, corrupt},
		{"open/inline mismatch", fmt.Errorf("x: %w", manifest.ErrInlineMismatch), cantOpen, corrupt},
		{"open/fingerprint", fmt.Errorf("x: %w", manifest.ErrFingerprint), cantOpen, corrupt},
		{"open/corrupt blob", fmt.Errorf("x: %w", store.ErrCorrupt), cantOpen, corrupt},
		{"open/corrupt in one store, the other down", errors.Join(fmt.Errorf("x: %w", store.ErrCorrupt), down), cantOpen, corrupt},
		{"open/newer format", fmt.Errorf("x: %w", manifest.ErrVersion), cantOpen, cantOpen},
		{"open/unknown flags", fmt.Errorf("x: %w", manifest.ErrFlags), cantOpen, cantOpen},
		{"open/newer format in one store, corrupt in the other", errors.Join(manifest.ErrVersion, manifest.ErrChecksum), cantOpen, cantOpen},
		{"open/bad name", errors.New("snapshot: a name with .."), cantOpen, cantOpen},

		// A chunk read.
		{"chunk/corrupt", fmt.Errorf("snapshot: chunk 3: %w", store.ErrCorrupt), ioRead, corrupt},
		{"chunk/corrupt in one store, the other down", errors.Join(fmt.Errorf("x: %w", store.ErrCorrupt), down), ioRead, corrupt},
		{"chunk/down", fmt.Errorf("snapshot: chunk 3: %w", down), ioRead, ioRead},
		{"chunk/not found", fmt.Errorf("snapshot: chunk 3: %w", notFound), ioRead, ioRead},
		{"chunk/timeout", fmt.Errorf("snapshot: chunk 3: %w", context.DeadlineExceeded), ioRead, ioRead},
		{"chunk/closed", errors.New("snapshot: closed"), ioRead, ioRead},

		// A pragma.
		{"pragma/bad argument", errors.New("boule_snapshot_refresh: want 0, 1, 2 or force"), generic, generic},
		{"pragma/inside a transaction", withCode(locked, errors.New("refresh inside a transaction")), generic, locked},
		{"pragma/not ours", errNotSnapPragma, generic, notFnd},
		{"pragma/refresh with the store down", withCode(generic, fmt.Errorf("refresh: %w", down)), generic, generic},
		{"pragma/refresh of a corrupt manifest", withCode(generic, fmt.Errorf("refresh: %w", manifest.ErrChecksum)), generic, generic},

		// A code from the C side comes back as itself.
		{"sqlite error", fmt.Errorf("vfs: x: %w", sqliteError("read", int(ioRead))), generic, ioRead},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := sqliteCode(tc.err, tc.def); got != tc.want {
				t.Errorf("sqliteCode(%v, %d)=%d, want %d", tc.err, tc.def, got, tc.want)
			}
		})
	}
}

// TestSnapPragmaCode: the code of each way a replica pragma fails before
// it reads its connection.
func TestSnapPragmaCode(t *testing.T) {
	for _, tc := range []struct {
		name, pragma, arg string
		hasArg, locked    bool
		want              sqlite3.ErrNo
		wantMsg           string
	}{
		{"refresh inside a transaction", "boule_snapshot_refresh", "", false, true,
			sqlite3.ErrLocked, "boule_snapshot_refresh: a replica may not be refreshed inside a transaction"},
		{"async reload inside a transaction", "boule_snapshot_async_reload", "", false, true,
			sqlite3.ErrLocked, "boule_snapshot_async_reload: a replica may not be refreshed inside a transaction"},
		{"refresh with a bad argument", "boule_snapshot_refresh", "maybe", true, false,
			sqlite3.ErrError, `boule_snapshot_refresh: want 0, 1, 2 or force, got "maybe"`},
		{"unknown", "boule_snapshot_nope", "", false, false, sqlite3.ErrNotFound, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := snapPragma(nil, tc.pragma, tc.arg, tc.hasArg, tc.locked)
			if err == nil {
				t.Fatalf("snapPragma()=%q, nil, want an error", res)
			}
			if got, want := sqliteCode(err, resultCode(sqlite3.ErrError)), resultCode(tc.want); got != want {
				t.Errorf("sqliteCode(snapPragma())=%d, want %d", got, want)
			}
			if tc.wantMsg != "" && err.Error() != tc.wantMsg {
				t.Errorf("snapPragma()=%q, want %q", err, tc.wantMsg)
			}
		})
	}
}
