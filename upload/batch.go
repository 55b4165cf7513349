package upload

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sync"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
)

// Packs shared by databases. A process that replicates thousands of small
// databases uploads a chunk or two per database per pass: one pack (or
// chunk) and one manifest each would spend half the limiter on chunk
// puts. The uploads that run at the same time — one worker's drain of the
// wake-up queue, or one FlushAll — form a group: the chunks each member
// has to upload, when they fit in one pack, are submitted to the group's
// open round instead, which closes once every active member is waiting in
// it, and goes up as one pack per PackChunks chunks (never mixing
// databases of different read permissions). Each member then records
// where its own chunks went, deletes its spool files, and uploads its own
// manifest, whose pack table lists only its own chunks in the shared
// pack: N databases cost one pack and N manifests. A shared pack stays
// alive while any manifest refers to it, since every database touches
// the packs its last manifest uses (touch.go).
//
// A member is active while it does local work that may end in a
// submission (the chunk phase of a pass), and inactive while it waits on
// anything else (the manifest gap, a large upload of its own, its
// manifest, the next wake-up), so that a round never waits for a slow
// member. A submission activates its member.

// groupMax is the most databases one worker uploads together.
const groupMax = 32

// flushAllConcurrency is the number of databases FlushAll flushes at a
// time (their small uploads share packs).
const flushAllConcurrency = 32

// A group is a set of database uploads that share packs.
type group struct {
	u        *Uploader
	ctx      context.Context // the puts of a round run under it
	finished chan struct{}   // closed when a worker's group is done

	mu     sync.Mutex
	first  int           // members that have not released yet
	ready  chan struct{} // closed when every member has released once
	active int           // members that may submit to the open round soon
	parked int           // members waiting in the open round
	open   *round        // nil until a submission opens one
}

// A member is one database's upload in a group.
type member struct {
	g        *group
	active   bool // under g.mu
	released bool // under g.mu: released at least once
}

// A round is the set of submissions that go up together.
type round struct {
	subs []*submission
	done chan struct{} // closed once every submission has its result
}

// A submission is the chunks of one database that a round uploads.
type submission struct {
	st      *dbState
	parts   []part
	perm    fs.FileMode // the database's file mode in the stores (store.FilePerm)
	hurried bool        // a flush waits for it: the round uses the flush targets
	// Results, set before the round's done is closed: the chunks put
	// (those whose spool file was there), where (a zero ID: an object
	// of its own), and the error that stopped them.
	put  []manifest.Fingerprint
	refs []manifest.PackRef
	err  error
}

func (u *Uploader) newGroup(ctx context.Context) *group {
	return &group{u: u, ctx: ctx, finished: make(chan struct{}), ready: make(chan struct{})}
}

// join adds a member, active or not.
func (g *group) join(active bool) *member {
	m := &member{g: g}
	g.mu.Lock()
	g.first++
	g.mu.Unlock()
	if active {
		m.activate()
	}
	return m
}

type memberKey struct{}

// withMember returns ctx carrying m: the uploads under it share packs
// with m's group.
func withMember(ctx context.Context, m *member) context.Context {
	return context.WithValue(ctx, memberKey{}, m)
}

// memberOf returns the member ctx carries, or nil.
func memberOf(ctx context.Context) *member {
	m, _ := ctx.Value(memberKey{}).(*member)
	return m
}

// activate marks m as about to submit, so that the open round waits for
// it. Nil-safe.
func (m *member) activate() {
	if m == nil {
		return
	}
	g := m.g
	g.mu.Lock()
	if !m.active {
		m.active = true
		g.active++
	}
	g.mu.Unlock()
}

// release marks m as not submitting soon; the open round closes if every
// other active member waits in it. Nil-safe and idempotent.
func (m *member) release() {
	if m == nil {
		return
	}
	g := m.g
	g.mu.Lock()
	if !m.active {
		g.mu.Unlock()
		return
	}
	m.active = false
	g.active--
	if !m.released {
		m.released = true
		if g.first--; g.first == 0 {
			select {
			case <-g.ready: // a FlushAll's group: members come and go
			default:
				close(g.ready)
			}
		}
	}
	r := g.closeIfReady()
	g.mu.Unlock()
	if r != nil {
		go g.run(r)
	}
}

// closeIfReady detaches the open round when every active member waits in
// it. Called under g.mu.
func (g *group) closeIfReady() *round {
	if g.open == nil || g.parked < g.active {
		return nil
	}
	r := g.open
	g.open, g.parked = nil, 0
	return r
}

// submit adds s to the open round and waits for the round's puts. The
// member stays active: it goes on with its chunk phase.
func (m *member) submit(s *submission) {
	g := m.g
	g.mu.Lock()
	if !m.active {
		m.active = true
		g.active++
	}
	if g.open == nil {
		g.open = &round{done: make(chan struct{})}
	}
	r := g.open
	r.subs = append(r.subs, s)
	g.parked++
	closed := g.closeIfReady()
	g.mu.Unlock()
	if closed != nil {
		g.run(closed)
	}
	// The round's puts run under the group's context, which outlives
	// every member: waiting for them is bounded by its cancellation and
	// the stores' timeouts.
	<-r.done
}

// run uploads the chunks of r's submissions, in packs of at most
// PackChunks chunks that each hold databases of one file mode, and sets
// each submission's result.
func (g *group) run(r *round) {
	defer close(r.done)
	var modes []fs.FileMode
	byMode := map[fs.FileMode][]*submission{}
	for _, s := range r.subs {
		if _, ok := byMode[s.perm]; !ok {
			modes = append(modes, s.perm)
		}
		byMode[s.perm] = append(byMode[s.perm], s)
	}
	for _, mode := range modes {
		b := batch{g: g, ctx: store.WithSourcePerm(g.ctx, mode)}
		for _, s := range byMode[mode] {
			b.add(s)
		}
		b.put()
	}
}

// A batch is one pack in the making.
type batch struct {
	g      *group
	ctx    context.Context
	subs   []*submission
	chunks []store.PackedChunk
	index  map[manifest.Fingerprint]int // position in chunks
}

// A part is chunks of one spool directory that a submission carries.
type part struct {
	dir spool.Chunks
	fps []manifest.Fingerprint
	// staged: dir is staging, listed before the pass took ready/ into
	// consuming/; a chunk handed over since is read from where it went.
	staged bool
}

// read returns chunk fp of p, or an error wrapping fs.ErrNotExist when
// the spool no longer holds it there: moved on to ready/ (found in a
// sweep), or no longer referenced (the staged snapshot changed).
func (p part) read(st *dbState, fp manifest.Fingerprint) ([]byte, error) {
	data, err := p.dir.Read(fp)
	if p.staged && errors.Is(err, fs.ErrNotExist) {
		// Handed over after the pass took ready/: the chunk is in
		// ready/ now, which no sweep of this pass lists.
		data, err = st.sp.FindChunk(fp)
	}
	return data, err
}

// add reads and verifies s's chunks and adds them to b, putting b first
// if they would not fit.
func (b *batch) add(s *submission) {
	var chunks []store.PackedChunk
	for _, p := range s.parts {
		for _, fp := range p.fps {
			data, err := p.read(s.st, fp)
			if errors.Is(err, fs.ErrNotExist) {
				continue // moved on to ready/, or no longer referenced
			}
			if err != nil {
				s.err = fmt.Errorf("upload: read spool chunk %s: %w", fp, err)
				return
			}
			if manifest.Sum(data) != fp {
				s.err = fmt.Errorf("%w: spool chunk %s of %s does not match its fingerprint", ErrSpoolCorrupt, fp, s.st.sp)
				return
			}
			chunks = append(chunks, store.PackedChunk{FP: fp, Data: data})
		}
	}
	if len(chunks) == 0 {
		return
	}
	fresh := 0
	for _, c := range chunks {
		if _, dup := b.index[c.FP]; !dup {
			fresh++
		}
	}
	if len(b.chunks) > 0 && len(b.chunks)+fresh > b.g.u.opts.PackChunks {
		b.put()
	}
	if b.index == nil {
		b.index = map[manifest.Fingerprint]int{}
	}
	for _, c := range chunks {
		if _, dup := b.index[c.FP]; !dup {
			b.index[c.FP] = len(b.chunks)
			b.chunks = append(b.chunks, c)
		}
		s.put = append(s.put, c.FP)
	}
	b.subs = append(b.subs, s)
}

// put uploads b's chunks, as a pack when there are several, and sets the
// result of each of its submissions; then empties b.
func (b *batch) put() {
	defer func() { b.subs, b.chunks, b.index = nil, nil, nil }()
	if len(b.chunks) == 0 {
		return
	}
	u := b.g.u
	targets := u.bg
	for _, s := range b.subs {
		if s.hurried {
			targets = u.flush
		}
	}
	// The call counts in the status of the first database it carries.
	first := b.subs[0].st
	var refs []manifest.PackRef
	var err error
	if len(b.chunks) == 1 {
		err = u.putChunkTo(b.ctx, first, b.chunks[0].FP, b.chunks[0].Data, targets)
		refs = make([]manifest.PackRef, 1)
	} else {
		refs, err = u.putPackTo(b.ctx, first, b.chunks, targets)
	}
	for _, s := range b.subs {
		if err != nil {
			s.put, s.err = nil, err
			continue
		}
		s.refs = make([]manifest.PackRef, len(s.put))
		for i, fp := range s.put {
			s.refs[i] = refs[b.index[fp]]
		}
	}
}

// uploadShared uploads the chunks of parts (at most PackChunks in all)
// through m's group: they go up, in one submission, in a pack shared
// with other databases. Then it records where they went, and deletes
// their spool files: those of the chunks put or recently uploaded only,
// as uploadUnit does.
func (u *Uploader) uploadShared(ctx context.Context, m *member, st *dbState, parts []part, targets []limitedTarget) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var fresh []part
	var reused []manifest.Fingerprint
	var reusedRefs []manifest.PackRef
	seen := map[manifest.Fingerprint]bool{}
	stored := map[manifest.Fingerprint]bool{} // in the store: their files go
	for _, p := range parts {
		f := part{dir: p.dir, staged: p.staged}
		for _, fp := range p.fps {
			if seen[fp] {
				continue // in two places (moved meanwhile): read once
			}
			seen[fp] = true
			if ref, ok := u.recentlyUploaded(fp); ok {
				stored[fp] = true
				if ref.ID != (manifest.Fingerprint{}) {
					reused, reusedRefs = append(reused, fp), append(reusedRefs, ref)
				}
				continue
			}
			f.fps = append(f.fps, fp)
		}
		if len(f.fps) > 0 {
			fresh = append(fresh, f)
		}
	}
	read := func(fp manifest.Fingerprint) ([]byte, error) {
		for _, p := range parts {
			for _, f := range p.fps {
				if f == fp {
					return p.read(st, fp)
				}
			}
		}
		return nil, fs.ErrNotExist
	}
	if len(reused) > 0 {
		if err := u.place(ctx, st, reused, reusedRefs, read, targets); err != nil {
			return err
		}
	}
	if len(fresh) > 0 {
		s := &submission{
			st:      st,
			parts:   fresh,
			perm:    store.FilePerm(store.SourcePerm(ctx)),
			hurried: u.hurried(st, targets),
		}
		m.submit(s)
		if s.err != nil {
			return s.err
		}
		var packed []manifest.Fingerprint
		var packedRefs []manifest.PackRef
		for i, fp := range s.put {
			if s.refs[i].ID != (manifest.Fingerprint{}) {
				packed, packedRefs = append(packed, fp), append(packedRefs, s.refs[i])
			}
		}
		// Recorded before the spool files go: the manifest must say
		// where these chunks are, even after a restart.
		if len(packed) > 0 {
			if err := u.place(ctx, st, packed, packedRefs, read, targets); err != nil {
				return err
			}
		}
		for _, fp := range s.put {
			stored[fp] = true
		}
		st.mu.Lock()
		st.status.Chunks += int64(len(s.put))
		if len(packed) > 0 {
			st.status.Packs++
		}
		st.mu.Unlock()
	}
	for _, p := range parts {
		for _, fp := range p.fps {
			if !stored[fp] {
				continue
			}
			if err := p.dir.Remove(fp); err != nil {
				return err
			}
		}
	}
	return nil
}
