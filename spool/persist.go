package spool

import (
	"context"
	"errors"
	"time"
)

// DefaultPersistGap is the default squash window ([Options.PersistGap]):
// a persister stages at most once per gap, so that commits in quick
// succession squash into one snapshot (one manifest written, each chunk
// hashed once) instead of one each. A flush or a close waiting for the
// staged snapshot, or a capture budget half used, cuts it short.
const DefaultPersistGap = 50 * time.Millisecond

// persistLoop stages the queued captures of the database, a batch at a
// time, until the queue is empty. One runs per database while it has
// captures: Capture starts it.
func (d *DB) persistLoop() {
	for {
		if wait := d.s.opts.PersistGap - time.Since(d.lastPersist); wait > 0 && !d.s.budget.pressed() {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-d.hurry:
			}
			t.Stop()
		}
		d.qmu.Lock()
		batch := d.queue
		d.queue = nil
		clear(d.queuedChunk)
		if len(batch) == 0 {
			d.persisting = false
			d.staged.Broadcast()
			d.qmu.Unlock()
			return
		}
		d.qmu.Unlock()
		for _, cp := range batch {
			<-cp.filled // read by its commit, which holds SQLite's lock
		}
		published := d.persist(batch)
		d.lastPersist = time.Now()
		var n int64
		for _, cp := range batch {
			n += cp.bytes
		}
		putChunkBufs(batch)
		d.s.budget.release(n)
		if published && d.s.opts.Notify != nil {
			d.s.opts.Notify(d.dir)
		}
	}
}

// persist stages batch, captures in generation order, as one snapshot:
// consecutive commits squash into one. Captures the staged snapshot holds
// already (a rebuild overtook them) are dropped. When the captures do not
// follow the staged snapshot (a capture was lost, or another program
// wrote the file between two of them), the marker asks the next
// transaction for a rebuild. It reports whether a snapshot was handed
// over to the uploader.
func (d *DB) persist(batch []*Capture) (published bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.signalStaged()
	last := batch[len(batch)-1]
	published, staged := d.persistLocked(batch)
	// Validated with the spool lock released: the validator takes it.
	if v := d.s.opts.Validate; v != nil && staged && last.full != nil {
		v(d, last.gen, last.full)
	}
	return published
}

// persistLocked is persist with d.mu held; staged reports whether the
// batch was staged.
func (d *DB) persistLocked(batch []*Capture) (published, staged bool) {
	c := d.ctlp.Load()
	last := batch[len(batch)-1]
	// The generations change under the spool lock only: read them, and
	// store the new one, with it held.
	unlock, err := d.lockFor(last.post)
	if err != nil {
		d.failed(c, err)
		return false, false
	}
	defer unlock()
	persisted := c.load(ctlPersisted)
	for len(batch) > 0 && batch[0].gen <= persisted {
		batch = batch[1:]
	}
	if len(batch) == 0 {
		return false, false
	}
	if batch[0].gen != persisted+1 {
		d.needRebuild(c, "a commit captured before these was lost")
		return false, false
	}
	src := capturedSource{size: last.post.size, chunks: map[int][]byte{}}
	ch := batch[0].ch
	ch.Force = false
	var words int
	for _, cp := range batch {
		words = max(words, len(cp.ch.Dirty))
	}
	ch.Dirty = make([]uint64, words)
	for _, cp := range batch {
		for i, w := range cp.ch.Dirty {
			ch.Dirty[i] |= w
		}
		for i, b := range cp.chunks {
			src.chunks[i] = b
		}
	}
	d.stagedNow = d.stagedNow[:0]
	published, err = d.stageFileLocked(src, ch, last.post, true, func(fileState) {
		c.store(ctlPersisted, last.gen)
		if c.load(ctlCommitted) == last.gen && c.load(ctlTxn) == 0 {
			c.store(ctlSince, 0)
		}
	})
	switch {
	case errors.Is(err, errNotIncremental), errors.Is(err, errNotCaptured):
		d.needRebuild(c, "the staged snapshot does not lead to these commits (another program wrote the database?)")
		return false, false
	case err != nil:
		d.failed(c, err)
		return false, false
	}
	d.stats.Snapshots++
	d.stats.LastSnapshot = time.Now()
	d.stats.LastError = ""
	if d.failing {
		d.failing = false
		d.s.log.Warn("spool: replication resumed: snapshots succeed again", logKeyDB, d.path)
	}
	return published, true
}

// failed records a snapshot that failed: counted, in the marker, and
// logged once per episode.
func (d *DB) failed(c *ctl, err error) {
	d.stats.Failures++
	d.stats.LastError = err.Error()
	d.markState(c, stateFailed, err)
	if !d.failing {
		d.failing = true
		d.s.log.Error("spool: replication paused: snapshot failed; the transaction itself committed, and replication resumes once the cause is gone",
			logKeyDB, d.path, logKeyErr, err)
	}
}

// needRebuild records in the marker that the staged snapshot cannot be
// updated incrementally any more: the next transaction rebuilds it.
func (d *DB) needRebuild(c *ctl, why string) {
	c.setState(stateRebuild, nil)
	d.s.log.Warn("spool: the next transaction rebuilds the snapshot", logKeyDB, d.path, "why", why)
}

// signalStaged wakes those waiting for the staged snapshot to change.
func (d *DB) signalStaged() {
	d.qmu.Lock()
	d.staged.Broadcast()
	d.qmu.Unlock()
}

// WaitStaged waits until this process has staged every commit it captured
// before the call, or ctx ends.
func (d *DB) WaitStaged(ctx context.Context) error {
	c := d.ctlp.Load()
	if c == nil {
		return nil
	}
	want := c.load(ctlCommitted)
	select {
	case d.hurry <- struct{}{}:
	default:
	}
	stop := context.AfterFunc(ctx, d.signalStaged)
	defer stop()
	d.qmu.Lock()
	defer d.qmu.Unlock()
	for c.load(ctlPersisted) < want && (d.persisting || len(d.queue) > 0) {
		if err := ctx.Err(); err != nil {
			return err
		}
		d.staged.Wait()
	}
	return nil
}
