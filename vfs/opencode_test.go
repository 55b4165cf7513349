package vfs

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
)

// TestOpenErrorCode: the SQLite code of a failed replica open, including
// with several stores that failed differently.
func TestOpenErrorCode(t *testing.T) {
	notFound := &store.Error{Op: "get manifest", Key: "k", Kind: store.ErrNotFound}
	down := &store.Error{Op: "get manifest", Key: "k", Err: errors.New("connection refused")}
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"not found", fmt.Errorf("snapshot: x: %w", notFound), sqliteCantOpen},
		{"down", fmt.Errorf("snapshot: x: %w", down), sqliteIOErr},
		{"one store lacks it, the other is down", fmt.Errorf("snapshot: x: %w", errors.Join(notFound, down)), sqliteIOErr},
		{"both lack it", errors.Join(notFound, notFound), sqliteCantOpen},
		{"timeout", fmt.Errorf("x: %w", context.DeadlineExceeded), sqliteIOErr},
		{"checksum", fmt.Errorf("x: %w", manifest.ErrChecksum), sqliteCorrupt},
		{"corrupt blob", fmt.Errorf("x: %w", store.ErrCorrupt), sqliteCorrupt},
		{"newer format", fmt.Errorf("x: %w", manifest.ErrVersion), sqliteCantOpen},
		{"bad name", errors.New("snapshot: a name with .."), sqliteCantOpen},
	} {
		if got := int(openErrorCode(tc.err)); got != tc.want {
			t.Errorf("%s: code %d, want %d", tc.name, got, tc.want)
		}
	}
}
