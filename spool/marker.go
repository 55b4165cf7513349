package spool

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// The txn marker of a database is a small file, rewritten in place and
// never removed (creating files is the slow part of a commit):
//
//	byte 0        the state: '0' clean, '1' set, 'F' failed, 'W' WAL
//	bytes 1..20   when the marker left the clean state, in Unix
//	              nanoseconds, as 20 decimal digits (absent in markers
//	              written by Invalidate)
//	byte 21..     for 'F', "\n", the snapshot's error, "\n"
//
// The VFS (c/boule_vfs.c, set_marker) turns a clean marker into '1' and the
// time before the first write of each transaction, and leaves any other
// state alone, so that the time stays that of the oldest transaction the
// staged snapshot lacks. A snapshot that succeeds writes '0'; one that
// fails writes 'F' and its error; one that finds the database in WAL mode
// writes 'W'. Only byte 0 and, when leaving the clean state, the time are
// rewritten: the file's first page is allocated already, so even a full
// disk lets the marker say what happened.
const (
	markerClean  = '0'
	markerSet    = '1'
	markerFailed = 'F'
	markerWAL    = 'W'

	markerTimeLen = 20
	markerErrOff  = 1 + markerTimeLen
	markerErrMax  = 1024 // bytes of the error kept in the marker
)

// MarkerState is what a database's txn marker says about its staged
// snapshot.
type MarkerState int

const (
	// MarkerClean: every transaction committed through boule is in the
	// staged snapshot.
	MarkerClean MarkerState = iota
	// MarkerSet: a write transaction is in flight, or one committed and
	// its process died before staging its snapshot.
	MarkerSet
	// MarkerFailed: the last snapshot failed (a full disk, say), so
	// committed transactions are missing from the staged snapshot.
	MarkerFailed
	// MarkerWAL: the database is in WAL mode, which is not replicated:
	// nothing is staged.
	MarkerWAL
)

func (s MarkerState) String() string {
	switch s {
	case MarkerClean:
		return "clean"
	case MarkerSet:
		return "set"
	case MarkerFailed:
		return "failed"
	case MarkerWAL:
		return "wal"
	}
	return fmt.Sprintf("MarkerState(%d)", int(s))
}

// Marker is the content of a database's txn marker.
type Marker struct {
	State MarkerState
	// Since is when the marker left the clean state: the start of the
	// oldest transaction the staged snapshot may lack. Zero when clean,
	// or not recorded.
	Since time.Time
	// Err is the error of the snapshot that failed, for MarkerFailed;
	// it may be empty (a disk too full to hold it).
	Err string
}

// ReadMarker reads the txn marker in the database spool directory dir. A
// missing or empty marker is clean: no transaction has written the
// database through boule since the directory was made.
func ReadMarker(dir string) (Marker, error) {
	p := markerPath(dir)
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return Marker{}, nil
	}
	if err != nil {
		return Marker{}, fmt.Errorf("spool: read txn marker %s: %w", p, err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return Marker{}, fmt.Errorf("spool: txn marker %s is not a regular file", p)
	}
	b := make([]byte, markerErrOff+1+markerErrMax+1)
	n, err := f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return Marker{}, fmt.Errorf("spool: read txn marker %s: %w", p, err)
	}
	return parseMarker(b[:n]), nil
}

func parseMarker(b []byte) Marker {
	if len(b) == 0 || b[0] == markerClean {
		return Marker{}
	}
	var m Marker
	switch b[0] {
	case markerFailed:
		m.State = MarkerFailed
	case markerWAL:
		m.State = MarkerWAL
	default: // '1', or anything unexpected: the snapshot cannot be trusted
		m.State = MarkerSet
	}
	if len(b) >= markerErrOff {
		if ns, err := strconv.ParseInt(string(b[1:markerErrOff]), 10, 64); err == nil && ns > 0 {
			m.Since = time.Unix(0, ns).UTC()
		}
	}
	if m.State == MarkerFailed && len(b) > markerErrOff+1 && b[markerErrOff] == '\n' {
		msg := b[markerErrOff+1:]
		for i, c := range msg {
			if c == '\n' {
				msg = msg[:i]
				break
			}
		}
		m.Err = string(msg)
	}
	return m
}

func markerPath(dir string) string { return filepath.Join(dir, markerFile) }

// markerTime formats t as the marker's 20 digits.
func markerTime(t time.Time) []byte {
	return fmt.Appendf(nil, "%0*d", markerTimeLen, t.UnixNano())
}

// markState records in the marker that the last snapshot failed (with its
// error) or found the database in WAL mode. The time is kept if the
// marker already left the clean state, and set to now otherwise. Errors
// are ignored: the marker is only a record, and a marker that cannot be
// written is already set (the VFS sets it before the transaction writes).
func (d *DB) markState(state byte, cause error) {
	p := d.MarkerPath()
	if d.s.fault("write", p) != nil {
		return
	}
	f, err := os.OpenFile(p, os.O_RDWR|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		// No transaction wrote through boule yet: a first read found the
		// database in WAL mode, or could not snapshot it.
		f, err = os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o644)
	}
	if err != nil {
		return
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return
	}
	var cur [1]byte
	n, _ := f.ReadAt(cur[:], 0)
	rec := []byte{state}
	if n == 0 || cur[0] == markerClean {
		rec = append(rec, markerTime(time.Now())...)
	}
	if state == markerFailed && cause != nil {
		msg := []byte(cause.Error())
		if len(msg) > markerErrMax {
			msg = msg[:markerErrMax]
		}
		for i, c := range msg {
			if c == '\n' || c == '\r' {
				msg[i] = ' '
			}
		}
		// The error goes after the time, which a clean marker may not
		// have yet: write both when needed.
		if len(rec) == 1 {
			var t [markerTimeLen]byte
			if n, _ := f.ReadAt(t[:], 1); n == markerTimeLen {
				rec = append(rec, t[:]...)
			} else {
				rec = append(rec, markerTime(time.Now())...)
			}
		}
		rec = append(rec, '\n')
		rec = append(rec, msg...)
		rec = append(rec, '\n')
	}
	if _, err := f.WriteAt(rec, 0); err != nil {
		return
	}
	if state == markerFailed {
		_ = f.Truncate(int64(len(rec))) // drop a longer, older error
	}
}

// WriteMarker writes m as the database's txn marker, as the VFS and the
// snapshots do (doc/FORMAT.md, "Spool layout"): for tools and for tests
// that reproduce the states a crash or a failure leaves. A zero Since is
// left out.
func (d Dir) WriteMarker(m Marker) error {
	var b []byte
	switch m.State {
	case MarkerClean:
		b = []byte{markerClean}
	case MarkerSet:
		b = []byte{markerSet}
	case MarkerFailed:
		b = []byte{markerFailed}
	case MarkerWAL:
		b = []byte{markerWAL}
	default:
		return fmt.Errorf("spool: write marker: unknown state %v", m.State)
	}
	if !m.Since.IsZero() {
		b = append(b, markerTime(m.Since)...)
	}
	if m.Err != "" {
		b = fmt.Appendf(b, "\n%s\n", m.Err)
	}
	if err := os.WriteFile(markerPath(d.path), b, 0o644); err != nil {
		return fmt.Errorf("spool: write marker: %w", err)
	}
	return nil
}
