package spool

import (
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

func TestParseMarker(t *testing.T) {
	since := time.Date(2031, 3, 1, 12, 0, 0, 123, time.UTC)
	block := func(words map[int]uint64, errText string) []byte {
		b := make([]byte, ctlSize)
		copy(b, ctlMagic)
		for off, v := range words {
			*(*uint64)(unsafe.Pointer(&b[off])) = v
		}
		copy(b[ctlErr:], errText)
		return b
	}
	ns := uint64(since.UnixNano())
	for _, tc := range []struct {
		name string
		b    []byte
		want Marker
	}{
		{"new", block(nil, ""), Marker{}},
		{"clean", block(map[int]uint64{ctlCommitted: 7, ctlPersisted: 7, ctlOwner: deadOwner}, ""), Marker{Committed: 7, Persisted: 7, Owner: deadOwner}},
		{"clean with an old time", block(map[int]uint64{ctlSince: ns}, ""), Marker{}},
		{"a writer died in a transaction", block(map[int]uint64{ctlTxn: deadOwner, ctlSince: ns}, ""), Marker{State: MarkerSet, Since: since, Writer: deadOwner}},
		{"a transaction in flight", block(map[int]uint64{ctlTxn: Self(), ctlCommitted: 7, ctlPersisted: 7, ctlSince: ns}, ""), Marker{Committed: 7, Persisted: 7, Since: since, Writer: Self()}},
		{"invalidated", block(map[int]uint64{ctlState: stateRebuild, ctlSince: ns}, ""), Marker{State: MarkerSet, Since: since}},
		{"commits of a dead process", block(map[int]uint64{ctlCommitted: 8, ctlPersisted: 7, ctlOwner: deadOwner, ctlSince: ns}, ""),
			Marker{State: MarkerSet, Since: since, Committed: 8, Persisted: 7, Owner: deadOwner}},
		{"commits of this process", block(map[int]uint64{ctlCommitted: 8, ctlPersisted: 7, ctlOwner: Self(), ctlSince: ns}, ""),
			Marker{State: MarkerPending, Since: since, Committed: 8, Persisted: 7, Owner: Self()}},
		{"failed", block(map[int]uint64{ctlState: stateFailed, ctlSince: ns, ctlErrLen: 39}, "spool: write x: no space left on device"),
			Marker{State: MarkerFailed, Since: since, Err: "spool: write x: no space left on device"}},
		{"WAL", block(map[int]uint64{ctlState: stateWAL, ctlSince: ns}, ""), Marker{State: MarkerWAL, Since: since}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := parseCtl(tc.b); got != tc.want {
				t.Fatalf("parseCtl()=%+v, want %+v", got, tc.want)
			}
		})
	}
}

// sinceOf reads the marker's time.
func sinceOf(t testing.TB, db *DB) time.Time {
	t.Helper()
	m, err := ReadMarker(db.Dir())
	if err != nil {
		t.Fatal(err)
	}
	return m.Since
}

// TestMarkerRecordsFailures: a failed snapshot leaves the marker failed,
// with its error and the time of the first transaction it lacks, which
// later failures keep; a success makes it clean.
func TestMarkerRecordsFailures(t *testing.T) {
	d := snapshotted(t, 6*cs)
	if got := markerState(t, d.db); got != MarkerClean {
		t.Fatalf("marker after a snapshot=%v, want clean", got)
	}
	d.fault.set(failOp("create", syscall.ENOSPC))
	var first time.Time
	err := txnWith(t, d.db, d.src, func(*Change) { first = sinceOf(t, d.db) }, rewrite(d.rng, 2*cs, 4096), 2)
	if !errors.Is(err, syscall.ENOSPC) || first.IsZero() {
		t.Fatalf("Snapshot()=%v with the marker's time %v, want ENOSPC and a time", err, first)
	}
	m, err := ReadMarker(d.db.Dir())
	if err != nil || m.State != MarkerFailed || !m.Since.Equal(first) || !strings.Contains(m.Err, "no space left on device") {
		t.Fatalf("ReadMarker()=%+v, %v; want failed since %v with the error", m, err, first)
	}
	if err := txn(t, d.db, d.src, rewrite(d.rng, 3*cs, 4096), 3); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("second Snapshot()=%v, want ENOSPC", err)
	}
	if m, err := ReadMarker(d.db.Dir()); err != nil || m.State != MarkerFailed || !m.Since.Equal(first) {
		t.Fatalf("ReadMarker() after a second failure=%+v, %v; want failed since %v, the first", m, err, first)
	}

	d.fault.clear()
	mustTxn(t, d.db, d.src, rewrite(d.rng, 4*cs, 4096), 4)
	if got := markerState(t, d.db); got != MarkerClean {
		t.Fatalf("marker after a success=%v, want clean", got)
	}

}

// TestMarkerFirstCheckFails: a first read that cannot stage the database
// (no transaction ever set the marker) still leaves a failed marker.
func TestMarkerFirstCheckFails(t *testing.T) {
	d := newTestDB(t, 3*cs)
	if err := os.MkdirAll(d.db.Dir(), 0o700); err != nil {
		t.Fatal(err)
	}
	d.fault.set(failOp("create", syscall.ENOSPC))
	before := time.Now()
	if err := d.db.Snapshot(d.src, Change{}); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Snapshot()=%v, want ENOSPC", err)
	}
	m, err := ReadMarker(d.db.Dir())
	if err != nil || m.State != MarkerFailed || m.Since.Before(before) || !strings.Contains(m.Err, "no space left on device") {
		t.Fatalf("ReadMarker()=%+v, %v; want failed since the check, with the error", m, err)
	}
}
