package spool

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/boule-vfs/boule/internal/lowprio"
)

// DefaultPersistGap is the default squash window ([Options.PersistGap]):
// a persister stages at most once per gap, so that commits in quick
// succession squash into one snapshot (one manifest written, each chunk
// hashed once) instead of one each. A flush or a close waiting for the
// staged snapshot, or a capture budget half used, cuts it short.
const DefaultPersistGap = 50 * time.Millisecond

// persistLoop stages the queued captures of the database, a batch at a
// time, until the queue is empty. One runs per database while it has
// captures: Capture starts it. It stops as soon as the queue is empty,
// not after a squash window: the next capture starts another, which
// waits for what is left of the window since the last batch. After a
// batch of lazy log reads, though, it lingers (lingerLocked) for
// walLinger, so that the commits that follow need not enter Go.
func (d *DB) persistLoop() {
	var lingerFrom time.Time // the last batch of lazy log reads, or zero
	lingered := false        // the queue comes from a linger: no window to wait
	for {
		d.qmu.Lock()
		if len(d.queue) == 0 && !lingerFrom.IsZero() {
			// The linger waited a window, or was hurried (and took
			// the hurry): the batch it queued goes at once.
			lingered = d.lingerLocked(lingerFrom.Add(walLinger))
			if !lingered {
				lingerFrom = time.Time{}
			}
			d.qmu.Unlock()
			continue
		}
		if len(d.queue) == 0 {
			d.persisting = false
			// A hurry left unconsumed would cut the next persister's
			// squash window short. None is sent once this is false.
			select {
			case <-d.hurry:
			default:
			}
			d.staged.Broadcast()
			d.qmu.Unlock()
			return
		}
		d.qmu.Unlock()
		if wait := d.s.opts.PersistGap - time.Since(d.lastPersist); wait > 0 && !lingered && !d.s.budget.pressed() {
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
		if cp := d.disarmLazy(); cp != nil {
			batch = append(batch, cp)
		}
		clear(d.queuedChunk)
		lazy, prevLazy := batch[len(batch)-1].lazy, d.lastLazy
		if lazy {
			d.lastLazy = time.Now()
		}
		d.qmu.Unlock()
		// Linger only for a database that commits again within
		// walLinger: one that commits every few seconds would pay
		// walLinger/PersistGap wake-ups a commit for nothing.
		lingered, lingerFrom = false, time.Time{}
		if lazy && !prevLazy.IsZero() && time.Since(prevLazy) < walLinger {
			lingerFrom = time.Now()
		}
		for _, cp := range batch {
			<-cp.filled // read by its commit, which holds SQLite's lock
		}
		// Below the application's priority: a commit that wakes while
		// the batch is staged gets the core first (internal/lowprio).
		var published bool
		lowprio.Do(func() { published = d.persist(batch) })
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
	// Rollback commits first, then those of the log: a switch to WAL
	// mode is a rollback commit, and the log's captures start from it.
	i := 0
	for i < len(batch) && !batch[i].wal {
		i++
	}
	if i > 0 {
		published = d.persistRun(batch[:i])
	}
	if i == len(batch) {
		return published
	}
	run := batch[i:]
	for _, cp := range run {
		if !cp.wal {
			// Leaving WAL mode stages the log first (WALGone): a
			// rollback commit after WAL commits not staged lost them.
			d.mu.Lock()
			d.needRebuild(d.ctlp.Load(), "a rollback commit follows WAL commits not staged")
			d.mu.Unlock()
			return published
		}
	}
	if c := d.ctlp.Load(); c != nil {
		// Lazy captures staged meanwhile (a hook of the log staged it,
		// or another process's persister read it) need no read.
		persisted := c.load(ctlPersisted)
		for len(run) > 0 && run[0].gen <= persisted {
			run = run[1:]
		}
		if len(run) == 0 {
			return published
		}
	}
	if run[len(run)-1].lazy {
		// Never while a connection of the database may be finding out
		// that it is the last (HoldReads), and held until what is read
		// is staged: a last close stages the rest of the log after it.
		d.beginRead()
		defer d.endRead()
		cp, err := d.readLazy()
		if err != nil {
			d.mu.Lock()
			d.failed(d.ctlp.Load(), err)
			d.mu.Unlock()
			d.signalStaged()
			return published
		}
		if cp != nil {
			defer func() {
				d.s.budget.release(cp.bytes)
				cp.release()
			}()
			run = append(run, cp)
		}
	}
	if run[len(run)-1].lazy {
		return published // nothing read: a rebuild, or the log's last close, staged it all
	}
	return d.persistRun(run) || published
}

// persistRun stages a run of captures of one kind: rollback commits, or
// a log's.
func (d *DB) persistRun(batch []*Capture) (published bool) {
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
	if batch[0].wal {
		return d.persistWALLocked(c, batch)
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
		storePos(c, emptyPos(last.post))
		if c.load(ctlCommitted) == last.gen && c.load(ctlTxn) == 0 {
			c.store(ctlSince, 0)
		}
	})
	return d.persisted(c, published, err)
}

// persistWALLocked stages captures of a log, with the spool lock held:
// only the newest that read the log counts, as it read every page
// changed since the snapshot staged then (lazy captures read nothing; the
// persister read for them). It applies when the snapshot staged now is
// on its way: between where it read from and where it read to.
func (d *DB) persistWALLocked(c *ctl, batch []*Capture) (published, staged bool) {
	var cp *Capture
	for _, b := range batch {
		if !b.lazy {
			cp = b
		}
	}
	if cp == nil {
		return false, false
	}
	if staged := loadPos(c); within(cp.postPos, staged) && cp.postPos != staged {
		// A read of another persister, with an older generation, went
		// further: what this one read is staged already.
		c.store(ctlPersisted, max(c.load(ctlPersisted), cp.gen))
		if c.load(ctlCommitted) == cp.gen && c.load(ctlTxn) == 0 {
			c.store(ctlSince, 0)
		}
		return false, true
	}
	if !covers(cp.base, cp.postPos, loadPos(c), cp.carryVer != 0) {
		d.needRebuild(c, fmt.Sprintf("the staged snapshot (%v) is not where the log's capture started (read from %v to %v)", loadPos(c), cp.base, cp.postPos))
		return false, false
	}
	var src Source = capturedSource{size: cp.post.size, chunks: cp.chunks}
	switch {
	case cp.spill != nil:
		src = cp.spill
	case cp.direct != nil:
		src = cp.direct
	}
	ch := cp.ch
	ch.Force = false
	d.stagedNow = d.stagedNow[:0]
	published, err := d.stageFileLocked(src, ch, cp.post, true, func(fileState) {
		c.store(ctlPersisted, max(c.load(ctlPersisted), cp.gen))
		storePos(c, cp.postPos)
		d.dropCarry(c, cp.carryVer, false)
		if c.load(ctlCommitted) == cp.gen && c.load(ctlTxn) == 0 {
			c.store(ctlSince, 0)
		}
	})
	return d.persisted(c, published, err)
}

// persisted records the outcome of a persister's staging.
func (d *DB) persisted(c *ctl, published bool, err error) (bool, bool) {
	switch {
	case errors.Is(err, errNotIncremental), errors.Is(err, errNotCaptured):
		d.needRebuild(c, fmt.Sprintf("the staged snapshot does not lead to these commits (another program wrote the database?): %v", err))
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
// logged once per episode. One that failed for want of room sweeps the
// dead processes' leftovers of every database first (Spool.sweepAll).
func (d *DB) failed(c *ctl, err error) {
	if errors.Is(err, syscall.ENOSPC) {
		d.s.sweepAll(time.Now())
	}
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

// walLinger is how long a persister whose last batch read the log for
// lazy captures stays, with nothing queued, with ctlWALLazy naming this
// process (lingerLocked): commits meanwhile take their generations in C
// and do not enter Go, however slowly they come (at 10 commits a second,
// each would otherwise find the persister gone and enter Go to start
// another). It checks for them every squash window, so a database that
// stops committing costs walLinger/PersistGap wake-ups, then nothing; it
// lingers only when its previous batch of reads was within walLinger,
// so a database that commits every few seconds costs nothing.
const walLinger = time.Second

// lingerLocked arms ctlWALLazy with nothing queued, and looks for commits
// every squash window, until one came, a hurry, or until; with d.qmu held
// (released while it waits). Commits that took their generations in C
// meanwhile get the read of the log they need queued (disarmLazy's
// capture), and it reports true; so it does when something else queued a
// capture (a commit that entered Go: a restart of the log). It reports
// false when it stops with nothing queued: hurried (a flush, a last
// close), past until, or when it may not arm the word: no squash window, a commit not
// staged, the word naming another process, or a marker state in which a
// commit may not leave its capture to the persister.
func (d *DB) lingerLocked(until time.Time) bool {
	c := d.ctlp.Load()
	// Without a squash window (PersistGap negative) there is nothing to
	// look every window for: a linger would spin.
	if d.s.opts.PersistGap <= 0 || c == nil || !lazyState(c.load(ctlState)) || c.load(ctlWALMode) == walUnknown {
		return false
	}
	persisted := c.load(ctlPersisted)
	if c.load(ctlCommitted) != persisted || !c.cas(ctlWALLazy, 0, self()) {
		return false
	}
	for {
		d.qmu.Unlock()
		t := time.NewTimer(min(d.s.opts.PersistGap, max(time.Until(until), 0)))
		hurried := false
		select {
		case <-t.C:
		case <-d.hurry:
			hurried = true
		}
		t.Stop()
		d.qmu.Lock()
		if !hurried && len(d.queue) == 0 && c.load(ctlCommitted) == persisted && time.Now().Before(until) {
			continue
		}
		if cp := d.disarmLazy(); cp != nil && cp.gen != persisted {
			d.queue = append(d.queue, cp)
		}
		return len(d.queue) > 0
	}
}

// WaitStaged waits until this process has staged every commit it captured
// before the call, or ctx ends.
func (d *DB) WaitStaged(ctx context.Context) error {
	c := d.ctlp.Load()
	if c == nil {
		return nil
	}
	want := c.load(ctlCommitted)
	return d.waitPersister(ctx, func() bool { return c.load(ctlPersisted) >= want })
}

// WaitIdle waits until this process's persister of the database has
// nothing queued and has stopped, or ctx ends. WaitStaged can return
// while the persister still hands the snapshot over; a last close waits
// for this instead, so that nothing of the database's writes to the
// spool once it returns.
func (d *DB) WaitIdle(ctx context.Context) error {
	return d.waitPersister(ctx, func() bool { return false })
}

// waitPersister cuts the persister's squash window short and waits until
// done reports true, the persister has stopped with nothing queued, or
// ctx ends. done is called with d.qmu held.
func (d *DB) waitPersister(ctx context.Context, done func() bool) error {
	stop := context.AfterFunc(ctx, d.signalStaged)
	defer stop()
	d.qmu.Lock()
	defer d.qmu.Unlock()
	d.hurryLocked()
	for !done() && (d.persisting || len(d.queue) > 0) {
		if err := ctx.Err(); err != nil {
			return err
		}
		d.staged.Wait()
	}
	return nil
}

// hurryLocked cuts the running persister's squash window short, with
// d.qmu held; without a persister it does nothing, so that no hurry
// outlives the persister it was meant for.
func (d *DB) hurryLocked() {
	if d.persisting {
		select {
		case d.hurry <- struct{}{}:
		default:
		}
	}
}
