package spool

import "time"

// holdReadsMax bounds how long a hold waits for a persister's read to
// end, and a persister's read for the holds to go: past it, each goes on
// as if the other were not there (a connection closes slowly, or a
// persister reads meanwhile, as before holds existed).
const holdReadsMax = 5 * time.Second

// HoldReads keeps the persister from reading the log in a connection of
// its own until ReleaseReads, and waits (at most holdReadsMax) for a read
// under way, and the staging of what it read, to end. The VFS calls it
// before a connection of the database asks for the exclusive lock on the
// file in WAL mode, which is how SQLite's last connection finds out that
// it is the last: it then checkpoints the log whole and deletes it,
// staging what the log held first (WALStage, WALGone). Were the
// persister's connection open then, it would be the last instead, and its
// close, through unix, would delete the log unstaged: the next
// transaction would rebuild the whole snapshot.
func (d *DB) HoldReads() {
	d.readmu.Lock()
	if d.holds == 0 {
		d.holdsGone = make(chan struct{})
	}
	d.holds++
	done := d.readDone
	d.readmu.Unlock()
	if done != nil && !waitAtMost(done, holdReadsMax) {
		d.s.log.Warn("spool: a connection asks for the exclusive lock while the persister reads the log, still after "+holdReadsMax.String()+"; if it is the last to close, the next transaction may rebuild the snapshot",
			logKeyDB, d.path)
	}
}

// ReleaseReads ends a hold of HoldReads.
func (d *DB) ReleaseReads() {
	d.readmu.Lock()
	defer d.readmu.Unlock()
	if d.holds == 0 {
		return
	}
	d.holds--
	if d.holds == 0 {
		close(d.holdsGone)
	}
}

// beginRead waits (at most holdReadsMax) until no connection holds the
// persister's reads, and marks a read under way; endRead ends it.
func (d *DB) beginRead() {
	d.readmu.Lock()
	if d.holds > 0 {
		gone := d.holdsGone
		d.readmu.Unlock()
		waitAtMost(gone, holdReadsMax)
		d.readmu.Lock()
	}
	d.readDone = make(chan struct{})
	d.readmu.Unlock()
}

func (d *DB) endRead() {
	d.readmu.Lock()
	defer d.readmu.Unlock()
	close(d.readDone)
	d.readDone = nil
}

// waitAtMost waits until ch is closed, for at most limit, and reports
// whether it was.
func waitAtMost(ch <-chan struct{}, limit time.Duration) bool {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}
