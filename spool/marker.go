package spool

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"
)

// MarkerState is what a database's txn marker says about its staged
// snapshot.
type MarkerState int

const (
	// MarkerClean: every transaction committed through boule is in the
	// staged snapshot.
	MarkerClean MarkerState = iota
	// MarkerSet: the staged snapshot cannot be trusted until a rebuild:
	// a writer died in a transaction or before staging its commits, or
	// the uploader invalidated the spool.
	MarkerSet
	// MarkerFailed: the last snapshot failed (a full disk, say), so
	// committed transactions are missing from the staged snapshot.
	MarkerFailed
	// MarkerWAL: an earlier version of boule, which did not replicate
	// WAL mode, stopped replicating the database when it entered it;
	// nothing is staged. The next transaction through this version
	// rebuilds the snapshot and clears it.
	MarkerWAL
	// MarkerPending: commits are captured but not staged yet by their
	// process, which is alive: the staged snapshot will catch up.
	MarkerPending
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
	case MarkerPending:
		return "pending"
	}
	return fmt.Sprintf("MarkerState(%d)", int(s))
}

// Marker is what a database's txn marker says.
type Marker struct {
	State MarkerState
	// Since is the start of the oldest transaction the staged snapshot
	// may lack. Zero when clean, or not recorded.
	Since time.Time
	// Err is the error of the snapshot that failed, for MarkerFailed;
	// it may be empty.
	Err string
	// Committed and Persisted are the generations of the last commit
	// captured and of the staged snapshot; Owner is the process that
	// captured the last commit.
	Committed, Persisted, Owner uint64
	// Writer is the process with a write transaction in flight (it
	// wrote the file, and has not captured its commit yet), 0 if none.
	// A live writer's transaction is not committed, or its commit has not
	// returned yet: it leaves the marker clean.
	Writer uint64
	// WAL reports that the last commit captured was read from the
	// database's write-ahead log. Commits made there by programs that do
	// not use boule are captured only by the next capture: a flush
	// re-stages rather than trust a clean marker.
	WAL bool
	// LazyReader is the process whose persister reads the log for the
	// commits of its connections (ctlWALLazy): they take their
	// generations without entering Go. 0 if none.
	LazyReader uint64
}

// ReadMarker reads the txn marker in the database spool directory dir. A
// missing marker is clean: no transaction has written the database
// through boule since the directory was made.
func ReadMarker(dir string) (Marker, error) {
	b, err := readCtl(markerPath(dir))
	if err != nil {
		return Marker{}, err
	}
	return parseCtl(b), nil
}

// parseCtl interprets a control block's words.
func parseCtl(b []byte) Marker {
	m := Marker{
		Writer:    le64(b, ctlTxn),
		Committed: le64(b, ctlCommitted),
		Persisted: le64(b, ctlPersisted),
		Owner:     le64(b, ctlOwner),
		WAL:       le64(b, ctlWALMode) == walAt,

		LazyReader: le64(b, ctlWALLazy),
	}
	if ns := le64(b, ctlSince); ns != 0 {
		m.Since = time.Unix(0, int64(ns)).UTC()
	}
	switch state := le64(b, ctlState); {
	case state == stateFailed:
		m.State = MarkerFailed
		if n := le64(b, ctlErrLen); n <= ctlErrMax {
			m.Err = string(b[ctlErr : ctlErr+int(n)])
		}
	case state == stateWAL:
		m.State = MarkerWAL
	case state != stateOK:
		m.State = MarkerSet
	case le64(b, ctlTxn) != 0 && !ownerAlive(le64(b, ctlTxn)):
		// A writer died in a transaction. (One alive is writing: its
		// transaction is not committed yet, so no flush waits for it.)
		m.State = MarkerSet
	case m.Committed != m.Persisted:
		if ownerAlive(m.Owner) {
			m.State = MarkerPending
		} else {
			m.State = MarkerSet
		}
	case le64(b, ctlTxn) != 0:
		// A transaction in flight: clean, but Since says since when.
	default:
		m.Since = time.Time{}
	}
	return m
}

func markerPath(dir string) string { return filepath.Join(dir, markerFile) }

// WaitStaged waits until the staged snapshot holds every commit captured
// when it was called, as the marker says: for a flush, whose upload must
// include them. It returns at once, without error, when the marker is not
// pending (clean, or a state a flush handles on its own), and an error
// when ctx ends first.
func (d Dir) WaitStaged(ctx context.Context) error {
	m, err := d.Marker()
	if err != nil || m.State != MarkerPending {
		return nil
	}
	want := m.Committed
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("spool: waiting for %s's commits to be staged: %w", d.path, ctx.Err())
		case <-t.C:
		}
		m, err := d.Marker()
		if err != nil || m.State != MarkerPending || m.Persisted >= want {
			return nil
		}
	}
}

// WriteMarker writes m as the database's txn marker, as the VFS and the
// snapshots leave it: for tools and for tests that reproduce the states a
// crash or a failure leaves. Committed, Persisted and Owner are written as
// given; then MarkerSet leaves a transaction in flight by an owner that is
// not running, MarkerFailed and MarkerWAL set the state, and
// MarkerPending makes this process the owner of at least one commit not
// staged yet.
func (d Dir) WriteMarker(m Marker) error {
	c, err := openCtl(markerPath(d.path), d.join(tmpDir), d.Perm())
	if err != nil {
		return err
	}
	defer c.close()
	c.store(ctlErrLen, 0)
	c.store(ctlSince, 0)
	c.store(ctlTxn, 0)
	c.store(ctlState, stateOK)
	c.store(ctlCommitted, m.Committed)
	c.store(ctlPersisted, m.Persisted)
	c.store(ctlOwner, m.Owner)
	switch m.State {
	case MarkerClean:
	case MarkerSet:
		c.store(ctlTxn, deadOwner)
	case MarkerFailed:
		c.setState(stateFailed, errors.New(m.Err))
	case MarkerWAL:
		c.setState(stateWAL, nil)
	case MarkerPending:
		c.store(ctlOwner, self())
		c.store(ctlCommitted, max(m.Committed, m.Persisted+1))
	default:
		return fmt.Errorf("spool: write marker: unknown state %v", m.State)
	}
	if !m.Since.IsZero() {
		c.store(ctlSince, uint64(m.Since.UnixNano()))
	}
	return nil
}

// deadOwner is an owner ID no running process has: pid 0.
const deadOwner = 1
