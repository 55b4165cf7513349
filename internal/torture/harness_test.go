//go:build linux

package torture

import (
	"bufio"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/testfs"
	"github.com/boule-vfs/boule/internal/testlog"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/restore"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
)

// progressTimeout is how long a writer may go without committing before
// the test fails as stuck.
const progressTimeout = 2 * time.Minute

// proc is a child process: the test binary running one of children.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stderr *testlog.Buffer
	exited chan struct{} // closed once its stdout is read to the end and it has exited
	err    error         // from Wait; read only after exited is closed
}

// startProc starts child name with the extra environment env, and hands
// each line it prints to onLine, from one goroutine, in order. The test
// kills it at the latest when it ends.
func startProc(t testing.TB, name string, stderr *testlog.Buffer, onLine func(string), env ...string) *proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{envChild + "=" + name}, env...)...)
	// If the test binary dies, its children die with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{name: name, cmd: cmd, stderr: stderr, exited: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			onLine(sc.Text())
		}
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() { _ = p.kill() })
	return p
}

// kill kills p with SIGKILL and waits for it. It returns an error if p had
// exited by itself.
func (p *proc) kill() error {
	select {
	case <-p.exited:
		return p.exitErr()
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
	return p.exitErr()
}

// exitErr is nil if p died of SIGKILL, the only way a child may end.
func (p *proc) exitErr() error {
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return nil
		}
	}
	return fmt.Errorf("%s process ended by itself (%v); stderr:\n%s", p.name, p.err, tail(p.stderr.String(), 4000))
}

// ends is s, or its first and last n bytes when it is longer than 2n:
// how a failure started, and where it ended.
func ends(s string, n int) string {
	if len(s) > 2*n {
		return s[:n] + "\n…\n" + s[len(s)-n:]
	}
	return s
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// commits follows the seqs a writer reports. Each must be above the one
// before, across writer processes too: a new writer numbers its first row
// after the highest in the database, so a reported seq at or below the
// last one means a committed transaction was lost.
type commits struct {
	mu   sync.Mutex
	last int64 // the highest seq reported committed
	n    int   // commits reported
	err  error // the first violation
	wake chan struct{}
}

func newCommits() *commits { return &commits{wake: make(chan struct{}, 1)} }

func (c *commits) line(s string) {
	seq, err := strconv.ParseInt(s, 10, 64)
	c.mu.Lock()
	switch {
	case c.err != nil:
	case err != nil:
		c.err = fmt.Errorf("writer printed %q, want a seq", s)
	case seq <= c.last:
		c.err = fmt.Errorf("writer committed seq %d after seq %d had been reported committed: a committed transaction was lost", seq, c.last)
	default:
		c.last = seq
		c.n++
	}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *commits) state() (last int64, n int, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last, c.n, c.err
}

// waitCommits waits until the writer w has reported n more commits. Other
// processes that must not end are in also: if one of them ends, or w
// does, the test fails.
func (c *commits) waitCommits(t testing.TB, w *proc, n int, also ...*proc) {
	t.Helper()
	_, start, _ := c.state()
	deadline := time.NewTimer(progressTimeout)
	defer deadline.Stop()
	others := exitedOf(also)
	for {
		_, got, err := c.state()
		if err != nil {
			t.Fatal(err)
		}
		if got >= start+n {
			return
		}
		select {
		case <-c.wake:
		case <-w.exited:
			t.Fatal(w.exitErr())
		case <-others:
			t.Fatal(firstExited(also).exitErr())
		case <-deadline.C:
			t.Fatalf("writer committed %d of %d transactions in %v; stderr:\n%s", got-start, n, progressTimeout, tail(w.stderr.String(), 4000))
		}
	}
}

// runFor lets the processes run for d; the test fails if one ends.
func runFor(t testing.TB, d time.Duration, procs ...*proc) {
	t.Helper()
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
	case <-exitedOf(procs):
		t.Fatal(firstExited(procs).exitErr())
	}
}

// exitedOf returns a channel closed when one of procs (nil ones ignored)
// has exited, or nil if there is none.
func exitedOf(procs []*proc) <-chan struct{} {
	var live []*proc
	for _, p := range procs {
		if p != nil {
			live = append(live, p)
		}
	}
	switch len(live) {
	case 0:
		return nil
	case 1:
		return live[0].exited
	}
	ch := make(chan struct{})
	var once sync.Once
	for _, p := range live {
		go func() {
			<-p.exited
			once.Do(func() { close(ch) })
		}()
	}
	return ch
}

func firstExited(procs []*proc) *proc {
	for _, p := range procs {
		if p == nil {
			continue
		}
		select {
		case <-p.exited:
			return p
		default:
		}
	}
	return procs[0]
}

// checkLocal asserts that the local database holds every transaction the
// writer reported committed, and nothing else: rows 1..N with N at least
// the last reported seq. It returns N.
func checkLocal(t testing.TB, db *sql.DB, c *commits) int64 {
	t.Helper()
	last, _, err := c.state()
	if err != nil {
		t.Fatal(err)
	}
	n, err := checkRows(db)
	if err != nil {
		t.Fatalf("local database: %v", err)
	}
	if n < last {
		t.Fatalf("local database has rows 1..%d, but seq %d was reported committed", n, last)
	}
	return n
}

// checkRows checks that the log table holds exactly rows 1..N, each with
// its own text, and the churn table all its rows, and returns N.
func checkRows(db *sql.DB) (int64, error) {
	var count, lo, hi, bad int64
	err := db.QueryRow(`SELECT count(*), coalesce(min(seq), 1), coalesce(max(seq), 0),
coalesce(sum(v IS NOT 'row-' || seq), 0) FROM log`).Scan(&count, &lo, &hi, &bad)
	if err != nil {
		return 0, err
	}
	if count != hi || lo != 1 || bad != 0 {
		return 0, fmt.Errorf("log holds %d rows from %d to %d (%d with the wrong text), want rows 1..N", count, lo, hi, bad)
	}
	var churn int
	if err := db.QueryRow("SELECT count(*) FROM churn").Scan(&churn); err != nil {
		return 0, err
	}
	if churn != churnRows {
		return 0, fmt.Errorf("churn holds %d rows, want %d", churn, churnRows)
	}
	return hi, nil
}

// recorder keeps every manifest it sees under key in a store: it polls
// the latest while the test runs, and at the end adds every kept version.
type recorder struct {
	store store.Store
	key   string

	mu     sync.Mutex
	blobs  map[[32]byte][]byte
	polled [][32]byte // distinct latest manifests, in the order seen

	stop chan struct{}
	done chan struct{}
}

func startRecorder(sto store.Store, key string) *recorder {
	r := &recorder{store: sto, key: key, blobs: map[[32]byte][]byte{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		tick := time.NewTicker(20 * time.Millisecond) // sampling the store, not synchronization
		defer tick.Stop()
		for {
			r.pollLatest()
			select {
			case <-r.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return r
}

func (r *recorder) pollLatest() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, err := r.store.GetManifest(ctx, r.key)
	if err != nil {
		return // none yet, or the store is down: the versions catch up
	}
	sum := r.add(b)
	r.mu.Lock()
	if n := len(r.polled); n == 0 || r.polled[n-1] != sum {
		r.polled = append(r.polled, sum)
	}
	r.mu.Unlock()
}

func (r *recorder) add(b []byte) [32]byte {
	sum := sha256.Sum256(b)
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.blobs[sum]; !ok {
		r.blobs[sum] = b
	}
	return sum
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.blobs)
}

// finish stops polling, polls once more and adds every kept version. It
// returns the versions, newest first.
func (r *recorder) finish(t testing.TB) [][32]byte {
	t.Helper()
	close(r.stop)
	<-r.done
	r.pollLatest()
	ctx := context.Background()
	vs, err := r.store.ManifestVersions(ctx, r.key)
	if err != nil {
		t.Fatalf("ManifestVersions(%s)=%v", r.key, err)
	}
	out := make([][32]byte, 0, len(vs))
	for _, v := range vs {
		b, err := r.store.GetManifestVersion(ctx, r.key, v.ID)
		if err != nil {
			t.Fatalf("GetManifestVersion(%s, %s)=%v", r.key, v.ID, err)
		}
		out = append(out, r.add(b))
	}
	return out
}

// restore reassembles the manifest m from store into a file in dir.
func restoreTo(t testing.TB, sto store.Store, m *manifest.Manifest, tmpdir string) string {
	t.Helper()
	f, err := os.CreateTemp(tmpdir, "restored-*.db")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := restore.Reassemble(context.Background(), []store.Store{sto}, m, f); err != nil {
		t.Fatalf("Reassemble(manifest of %s, change counter %d)=%v", m.SourcePath, m.ChangeCounter, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// verifyManifest restores the manifest b, checks the database passes
// integrity_check and holds rows 1..N, and returns N.
func verifyManifest(t testing.TB, sto store.Store, b []byte, tmpdir string) int64 {
	t.Helper()
	m, err := manifest.Decode(b)
	if err != nil {
		t.Fatalf("manifest.Decode()=%v", err)
	}
	p := restoreTo(t, sto, m, tmpdir)
	defer os.Remove(p)
	if m.Size == 0 {
		return 0 // the database before its first transaction
	}
	db, err := sql.Open("sqlite3", "file:"+p+"?mode=ro&vfs=unix")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var ok string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&ok); err != nil || ok != "ok" {
		t.Fatalf("restored manifest (change counter %d, %d bytes): integrity_check=%q, %v", m.ChangeCounter, m.Size, ok, err)
	}
	n, err := checkRows(db)
	if err != nil {
		t.Fatalf("restored manifest (change counter %d, %d bytes): %v", m.ChangeCounter, m.Size, err)
	}
	return n
}

// checkLatest asserts the newest manifest in store restores to exactly
// the bytes of the database at path.
func checkLatest(t testing.TB, sto store.Store, key, path, tmpdir string) {
	t.Helper()
	m, _, err := store.FetchManifest(context.Background(), []store.Store{sto}, key)
	if err != nil {
		t.Fatalf("FetchManifest(%s)=%v", key, err)
	}
	testfs.WantSameFile(t, restoreTo(t, sto, m, tmpdir), path)
}

// configJSON is cfg as the children read it from config.EnvVar.
func configJSON(t testing.TB, cfg config.Config) string {
	t.Helper()
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return config.EnvVar + "=" + string(b)
}

func mustEvalTempDir(t testing.TB) string {
	t.Helper()
	tmpdir := testfs.TempDir(t)
	return tmpdir
}

// listTree lists the files under root, one per line: the path below root,
// the size and the link count; for a failed run's log (what filled a
// spool, what it held when uploads stopped).
func listTree(root string) string {
	var b strings.Builder
	var total int64
	_ = filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", p, err)
			return nil
		}
		info, err := e.Info()
		if err != nil || e.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		var links uint64
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			links = uint64(st.Nlink)
		}
		total += info.Size()
		fmt.Fprintf(&b, "  %s %d bytes, %d links, %s\n", rel, info.Size(), links, info.ModTime().Format("15:04:05.000"))
		return nil
	})
	fmt.Fprintf(&b, "  (%d bytes in all, hard links counted each time)\n", total)
	return b.String()
}

// spoolState describes each database's spool under root for a failed
// run's log: the marker, the staged and the uploaded manifests, and, for
// each staged chunk file, which of the two references it.
func spoolState(root string) string {
	dbs, err := spool.List(root)
	if err != nil {
		return fmt.Sprintf("  spool.List: %v\n", err)
	}
	var b strings.Builder
	for _, db := range dbs {
		d := spool.OpenDir(db.Dir)
		fmt.Fprintf(&b, "  %s:\n", db.Source)
		if m, err := d.Marker(); err == nil {
			fmt.Fprintf(&b, "    marker %v committed %d persisted %d owner %x writer %x since %v err %q\n", m.State, m.Committed, m.Persisted, m.Owner, m.Writer, m.Since, m.Err)
		}
		refs := func(m *manifest.Manifest) map[manifest.Fingerprint]bool {
			out := map[manifest.Fingerprint]bool{}
			if m != nil {
				for _, fp := range m.Chunks {
					out[fp] = true
				}
			}
			return out
		}
		var staged, uploaded map[manifest.Fingerprint]bool
		if s, err := d.Staged(); err != nil || s == nil {
			fmt.Fprintf(&b, "    staged: none (%v)\n", err)
		} else {
			staged = refs(s.Manifest)
			fmt.Fprintf(&b, "    staged: %x, %d bytes, %d chunks, created %v\n", s.ID[:6], s.Manifest.Size, len(s.Manifest.Chunks), s.Manifest.Created)
		}
		if m, err := d.Uploaded(); err != nil || m == nil {
			fmt.Fprintf(&b, "    uploaded: none (%v)\n", err)
		} else {
			uploaded = refs(m)
			fmt.Fprintf(&b, "    uploaded: %d bytes, %d chunks, created %v\n", m.Size, len(m.Chunks), m.Created)
		}
		fps, err := d.StagedChunks().List()
		if err != nil {
			fmt.Fprintf(&b, "    staged chunks: %v\n", err)
		}
		for _, fp := range fps {
			fmt.Fprintf(&b, "    staged chunk %x: in staged %v, in uploaded %v\n", fp[:6], staged[fp], uploaded[fp])
		}
	}
	return b.String()
}
