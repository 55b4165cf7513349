package vfs_test

import (
	"bufio"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/vfs"
)

func init() {
	children["writer"] = childWriter
	children["crashpoint"] = childCrashpoint
	children["crashop"] = childCrashOp
	children["verifier"] = childVerifyingWriter
	children["heldwriter"] = childHeldWriter
}

// childEnv reads the parameters the parent passes to a child.
type childEnv struct {
	db, spool, params string
	seed              uint64
	steps             int
}

func readChildEnv() childEnv {
	seed, _ := strconv.ParseUint(os.Getenv("BOULE_TEST_SEED"), 10, 64)
	steps, _ := strconv.Atoi(os.Getenv("BOULE_TEST_STEPS"))
	return childEnv{
		db:     os.Getenv("BOULE_TEST_DB"),
		spool:  os.Getenv("BOULE_TEST_SPOOL"),
		params: os.Getenv("BOULE_TEST_PARAMS"),
		seed:   seed,
		steps:  steps,
	}
}

// open registers boule with the child's spool, opens its database through
// it with a single connection, and runs stmts on it.
func (c childEnv) open(stmts ...string) (*sql.DB, error) {
	if err := vfs.Register(vfs.Config{ReplicationSpoolingDir: c.spool}); err != nil {
		return nil, err
	}
	dsn := "file:" + c.db + "?vfs=boule&_busy_timeout=20000"
	if c.params != "" {
		dsn += "&" + c.params
	}
	db, err := sql.Open("sqlite3", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	for _, q := range stmts {
		if _, err := db.Exec(q); err != nil {
			return nil, err
		}
	}
	return db, nil
}

// loggedTxn runs one transaction that appends a row to log and does random
// DML, and returns the new log seq once it has committed.
func loggedTxn(db *sql.DB, w *workload) (int64, error) {
	tx, err := db.Begin()
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	res, err := tx.Exec("INSERT INTO log DEFAULT VALUES")
	if err != nil {
		return 0, err
	}
	seq, err := res.LastInsertId()
	if err != nil {
		return 0, err
	}
	if err := w.dml(tx); err != nil {
		return 0, err
	}
	return seq, tx.Commit()
}

func setupLogged(db *sql.DB) error {
	if err := newWorkload(0).setup(db); err != nil {
		return err
	}
	_, err := db.Exec("CREATE TABLE IF NOT EXISTS log(seq INTEGER PRIMARY KEY)")
	return err
}

// childWriter commits logged transactions until killed, printing each
// committed seq on stdout.
func childWriter() error {
	c := readChildEnv()
	db, err := c.open()
	if err != nil {
		return err
	}
	w := newWorkload(c.seed)
	fmt.Println("ready")
	for i := 0; c.steps == 0 || i < c.steps; i++ {
		if w.rng.IntN(50) == 0 {
			if _, err := db.Exec("VACUUM"); err != nil {
				return err
			}
			continue
		}
		seq, err := loggedTxn(db, w)
		if err != nil {
			return err
		}
		fmt.Println(seq)
	}
	return nil
}

// childCrashpoint is childWriter with a SIGKILL at the Nth spool
// filesystem step: it dies at an exact point of the snapshot code.
func childCrashpoint() error {
	n, _ := strconv.Atoi(os.Getenv("BOULE_TEST_CRASH_AT"))
	var count atomic.Int64
	killAt(func(op, path string) bool { return count.Add(1) == int64(n) })
	return childWriter()
}

// childCrashOp is childWriter with a SIGKILL at the Nth spool step named
// BOULE_TEST_CRASH_OP on a path of the kind BOULE_TEST_CRASH_PATH names:
// "segment" (a segment being written) or "staged" (a chunk name in
// staging). It writes BOULE_TEST_STEPS transactions at most: one that
// ends unkilled never reached the step.
func childCrashOp() error {
	c := readChildEnv()
	op, kind := os.Getenv("BOULE_TEST_CRASH_OP"), os.Getenv("BOULE_TEST_CRASH_PATH")
	n, _ := strconv.Atoi(os.Getenv("BOULE_TEST_CRASH_AT"))
	var staged atomic.Pointer[string] // the staging chunks directory, once the spool is open
	var count atomic.Int64
	killAt(func(o, p string) bool {
		if o != op {
			return false
		}
		switch kind {
		case "segment":
			if !spool.IsSegmentTemp(p) {
				return false
			}
		case "staged":
			dir := staged.Load()
			if dir == nil || filepath.Dir(p) != *dir {
				return false
			}
		}
		return count.Add(1) == int64(n)
	})
	// Compactions of this small database, not only of one over 32 MiB.
	vfs.SetCompactFloor(128 << 10)
	if err := vfs.Register(vfs.Config{ReplicationSpoolingDir: c.spool}); err != nil {
		return err
	}
	d, err := vfs.Spool().DB(c.db)
	if err != nil {
		return err
	}
	dir := d.StagingChunksDir()
	staged.Store(&dir)
	return childWriter()
}

// killAt makes this process SIGKILL itself at the first spool filesystem
// step for which at returns true, before the step runs.
func killAt(at func(op, path string) bool) {
	vfs.SetFaultHook(func(op, path string) error {
		if at(op, path) {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the signal is on its way
		}
		return nil
	})
}

// child starts the test binary as a child process running name.
func startChild(t testing.TB, name string, env ...string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{"BOULE_TEST_CHILD=" + name}, env...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, bufio.NewScanner(stdout)
}

// verifyAfterCrash checks what must hold after any crash: the next commit
// (here, by a long-lived connection of this process, so that no
// first-transaction check runs before it) heals the snapshot, the database
// is intact, and every transaction the writer reported committed is there.
func verifyAfterCrash(t *testing.T, db *sql.DB, path string, committed map[int64]bool) {
	t.Helper()
	mustExec(t, db, "INSERT INTO t(k, v) VALUES (-1, randomblob(100))")
	checkSnapshot(t, db, path)
	checkCommitted(t, db, committed, "after crash")
}

// checkCommitted asserts that every transaction in committed, by its log
// seq, is in the database, once; when says after what, for the failure.
func checkCommitted(t testing.TB, db *sql.DB, committed map[int64]bool, when string) {
	t.Helper()
	for seq := range committed {
		var n int
		if err := db.QueryRow("SELECT count(*) FROM log WHERE seq = ?", seq).Scan(&n); err != nil || n != 1 {
			t.Fatalf("committed transaction %d missing %s (count %d, %v)", seq, when, n, err)
		}
	}
}

// parentConn opens the long-lived connection the parent verifies with, and
// runs its first transaction now, while no child is running.
func parentConn(t *testing.T, path, params string) *sql.DB {
	t.Helper()
	db := open(t, path, "boule", params)
	db.SetMaxOpenConns(1)
	db.SetConnMaxIdleTime(0)
	db.SetConnMaxLifetime(0)
	if err := setupLogged(db); err != nil {
		t.Fatal(err)
	}
	return db
}

// TestSIGKILLWriter kills a writer at random points, at least 200 times.
func TestSIGKILLWriter(t *testing.T) {
	killWriters(t, "", 200, 42, checkSnapshot)
}

// killWriters kills a writer child of the database in the given journal
// mode (params) at random points, kills times (a fifth of that with
// -short), rng seeding its choices: in a transaction, between its commit
// and its capture, between its capture and its persister's staging. After
// each kill, the next commit of this process heals the snapshot, as check
// asserts, and every committed transaction is in the database.
func killWriters(t *testing.T, params string, kills int, rng uint64, check func(testing.TB, *sql.DB, string)) {
	t.Helper()
	if testing.Short() {
		kills /= 5
	}
	e := newEnv(t)
	path := e.path("crash.db")
	db := parentConn(t, path, params)
	committed := map[int64]bool{}
	r := rand.New(rand.NewPCG(rng, rng+1))
	childParams := "_sync=OFF"
	if params != "" {
		childParams = params + "&" + childParams
	}
	midCommit := 0
	for i := range kills {
		cmd, out := startReady(t, "writer",
			"BOULE_TEST_DB="+path, "BOULE_TEST_SPOOL="+e.spool,
			fmt.Sprint("BOULE_TEST_SEED=", i), "BOULE_TEST_PARAMS="+childParams)
		// Let it commit a random number of transactions, then kill it
		// while it is in the middle of the next one.
		readSeqsN(t, out, r.IntN(30), committed)
		time.Sleep(time.Duration(r.IntN(3000)) * time.Microsecond) // where in the transaction to kill: random
		_ = cmd.Process.Signal(syscall.SIGKILL)
		// Whatever it printed before dying committed too.
		midCommit += reapKilled(t, cmd, out, committed, fmt.Sprint("child ", i))
		mustExec(t, db, "INSERT INTO t(k, v) VALUES (-1, randomblob(100))")
		check(t, db, path)
		checkCommitted(t, db, committed, "after the kill")
	}
	t.Logf("%d kills, %d transactions committed (%d reported as the writer died)", kills, len(committed), midCommit)
}

// TestCrashAtEverySpoolStep kills the writer at each filesystem step of the
// snapshot code in turn: while a segment is written, between the links of
// its chunks' names, between the chunks and the manifest, during ready
// publication, before the marker is removed.
func TestCrashAtEverySpoolStep(t *testing.T) {
	e := newEnv(t)
	path := e.path("steps.db")
	db := parentConn(t, path, "")
	committed := map[int64]bool{}
	steps := 60
	if testing.Short() {
		steps = 20
	}
	for n := 1; n <= steps; n++ {
		cmd, out := startChild(t, "crashpoint",
			"BOULE_TEST_DB="+path, "BOULE_TEST_SPOOL="+e.spool,
			fmt.Sprint("BOULE_TEST_SEED=", n), fmt.Sprint("BOULE_TEST_CRASH_AT=", n))
		reapKilled(t, cmd, out, committed, fmt.Sprint("crash at step ", n))
		verifyAfterCrash(t, db, path, committed)
	}
}

// TestCrashAtSegmentSteps kills the writer at the steps of the segments a
// snapshot stages its chunks in (segment.go): while a segment is written,
// between the links of its chunks' names, before its temp name goes, and
// between the renames of a compaction of staging (no uploader runs here,
// so superseded chunks pile up in staging until one compacts them). Each
// child must die at its step, and after each the next commit heals the
// snapshot with every committed transaction in it.
func TestCrashAtSegmentSteps(t *testing.T) {
	e := newEnv(t)
	path := e.path("segments.db")
	db := parentConn(t, path, "")
	committed := map[int64]bool{}
	steps := []struct {
		op, path string // the step, and the kind of its path (childCrashOp)
		at       []int  // which of them to die at
	}{
		{"write", "segment", []int{1, 2, 7}},
		{"link", "staged", []int{1, 2, 9, 30}},
		{"remove", "segment", []int{1, 3}},
		{"rename", "staged", []int{1, 4}}, // compaction only
	}
	for _, st := range steps {
		for _, n := range st.at {
			what := fmt.Sprintf("crash at %s #%d of %s", st.op, n, st.path)
			cmd, out := startChild(t, "crashop",
				"BOULE_TEST_DB="+path, "BOULE_TEST_SPOOL="+e.spool, "BOULE_TEST_STEPS=5000",
				fmt.Sprint("BOULE_TEST_SEED=", n), "BOULE_TEST_CRASH_OP="+st.op,
				"BOULE_TEST_CRASH_PATH="+st.path, fmt.Sprint("BOULE_TEST_CRASH_AT=", n))
			reapKilled(t, cmd, out, committed, what)
			verifyAfterCrash(t, db, path, committed)
		}
	}
}

// childVerifyingWriter writes through boule while other processes do the
// same, and after each of its commits checks, under a SHARED lock, that the
// staged snapshot equals the file.
func childVerifyingWriter() error {
	c := readChildEnv()
	db, err := c.open()
	if err != nil {
		return err
	}
	// One descriptor for the whole run: closing a descriptor on the file
	// would drop this process's locks on it.
	f, err := os.Open(c.db)
	if err != nil {
		return err
	}
	w := newWorkload(c.seed)
	checked := 0
	for range c.steps {
		if _, err := loggedTxn(db, w); err != nil {
			return err
		}
		ok, err := verifyUnderSharedLock(db, f, c.db)
		if err != nil {
			return err
		}
		if ok {
			checked++
		}
	}
	fmt.Println("checked", checked)
	return nil
}

// verifyUnderSharedLock holds a read transaction (SHARED) and compares the
// staged snapshot with the file. It reports false without checking when
// another writer's snapshot is still in flight (its txn marker exists).
func verifyUnderSharedLock(db *sql.DB, f *os.File, path string) (bool, error) {
	tx, err := db.Begin()
	if err != nil {
		return false, err
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRow("SELECT count(*) FROM log").Scan(&n); err != nil {
		return false, err
	}
	d, err := vfs.Spool().DB(path)
	if err != nil {
		return false, err
	}
	// Commits captured and not staged yet, by this process or another,
	// are staged by their persisters: wait for them. A marker left set
	// (another writer died) means the next transaction rebuilds: nothing
	// to check now.
	sp := spool.OpenDir(d.Dir())
	if err := staged(sp); err != nil {
		return false, err
	}
	// A writer between its commit and its capture holds SHARED too: its
	// commit is in the file and not yet in the snapshot.
	if m, err := sp.Marker(); err != nil || m.State != spool.MarkerClean || m.Writer != 0 {
		return false, err
	}
	st, err := f.Stat()
	if err != nil {
		return false, err
	}
	want := make([]byte, st.Size())
	if _, err := f.ReadAt(want, 0); err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	got, err := assemble(path)
	if err != nil {
		return false, err
	}
	if string(got) != string(want) {
		return false, fmt.Errorf("snapshot (%d bytes) differs from the file (%d bytes) at %d", len(got), len(want), firstDiff(got, want))
	}
	return true, nil
}

// TestSeveralProcesses runs writers in three OS processes on one database.
func TestSeveralProcesses(t *testing.T) {
	e := newEnv(t)
	path := e.path("procs.db")
	db := open(t, path, "boule", "")
	if err := setupLogged(db); err != nil {
		t.Fatal(err)
	}
	db.Close()
	type result struct {
		out string
		err error
	}
	results := make(chan result, 3)
	for i := range 3 {
		cmd, out := startChild(t, "verifier",
			"BOULE_TEST_DB="+path, "BOULE_TEST_SPOOL="+e.spool,
			fmt.Sprint("BOULE_TEST_SEED=", 1000+i), "BOULE_TEST_STEPS=80")
		go func() {
			var lines []string
			for out.Scan() {
				lines = append(lines, out.Text())
			}
			results <- result{strings.Join(lines, "\n"), cmd.Wait()}
		}()
	}
	for range 3 {
		r := <-results
		if r.err != nil {
			t.Fatalf("writer process: %v", r.err)
		}
		if !strings.HasPrefix(r.out, "checked ") || r.out == "checked 0" {
			t.Fatalf("writer process output %q, want some verified snapshots", r.out)
		}
		t.Log(r.out)
	}
	db = open(t, path, "boule", "")
	var n int
	if err := db.QueryRow("SELECT count(*) FROM log").Scan(&n); err != nil || n != 240 {
		t.Fatalf("log rows=%d, %v; want 240", n, err)
	}
	checkSnapshot(t, db, path)
}

// childHeldWriter is childWriter (without VACUUM) killed by SIGKILL at
// the first filesystem step of its persister after it reported its first
// commit: the commits it reported after that one were captured in memory
// and never staged.
func childHeldWriter() error {
	c := readChildEnv()
	var armed atomic.Bool
	killAt(func(op, path string) bool { return armed.Load() })
	db, err := c.open()
	if err != nil {
		return err
	}
	w := newWorkload(c.seed)
	for i := 0; c.steps == 0 || i < c.steps; i++ {
		seq, err := loggedTxn(db, w)
		if err != nil {
			return err
		}
		if i == 0 {
			// Armed once the parent knows of this commit: armed first, a
			// filesystem step of the first commit's persister could kill
			// the process before it said it was ready.
			fmt.Println("ready")
			fmt.Println(seq)
			armed.Store(true)
			continue
		}
		fmt.Println(seq)
	}
	return fmt.Errorf("not killed after %d commits", c.steps)
}

// startReady starts a child as startChild does, and waits for the
// "ready" line it prints once it has started.
func startReady(t testing.TB, name string, env ...string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd, out := startChild(t, name, env...)
	if !out.Scan() || out.Text() != "ready" {
		t.Fatalf("child %s %q did not start: %q", name, env, out.Text())
	}
	return cmd, out
}

// readSeqs reads the sequence numbers a writer child prints into
// committed, until it prints the line until or, with until "", exits.
func readSeqs(t testing.TB, out *bufio.Scanner, until string, committed map[int64]bool) {
	t.Helper()
	for out.Scan() && (until == "" || out.Text() != until) {
		seq, err := strconv.ParseInt(out.Text(), 10, 64)
		if err != nil {
			t.Fatalf("writer printed %q", out.Text())
		}
		committed[seq] = true
	}
}

// readSeqsN reads the next n sequence numbers a writer child prints into
// committed.
func readSeqsN(t testing.TB, out *bufio.Scanner, n int, committed map[int64]bool) {
	t.Helper()
	for range n {
		if !out.Scan() {
			t.Fatal("writer exited early")
		}
		seq, err := strconv.ParseInt(out.Text(), 10, 64)
		if err != nil {
			t.Fatalf("writer printed %q", out.Text())
		}
		committed[seq] = true
	}
}

// killWriter kills a writer child, reads the sequence numbers it printed
// before it died into committed, and waits for it.
func killWriter(t testing.TB, cmd *exec.Cmd, out *bufio.Scanner, committed map[int64]bool) {
	t.Helper()
	_ = cmd.Process.Signal(syscall.SIGKILL)
	readSeqs(t, out, "", committed)
	waitKilled(t, cmd, "writer")
}

// reapKilled reads what a child killed by SIGKILL printed until it exited,
// every sequence number into committed (other lines, such as "ready", are
// passed over), and asserts that SIGKILL killed it. It returns how many
// sequence numbers it read.
func reapKilled(t testing.TB, cmd *exec.Cmd, out *bufio.Scanner, committed map[int64]bool, what string) int {
	t.Helper()
	n := 0
	for out.Scan() {
		if seq, err := strconv.ParseInt(out.Text(), 10, 64); err == nil {
			committed[seq] = true
			n++
		}
	}
	waitKilled(t, cmd, what)
	return n
}

// waitKilled waits for a child and asserts that SIGKILL killed it; what
// names it, for the failure.
func waitKilled(t testing.TB, cmd *exec.Cmd, what string) {
	t.Helper()
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("%s: %v, want killed by SIGKILL", what, err)
	}
}

// TestKillBetweenCommitAndPersist: writers killed after commits that were
// captured in memory and not staged. Alone, the next commit of another
// process rebuilds from the file; with a second process writing at the
// same time, that process finds the dead one's unstaged commits and
// stages them with its own. Either way every committed transaction is in
// the database and the snapshot equals it.
func TestKillBetweenCommitAndPersist(t *testing.T) {
	t.Run("one writer", func(t *testing.T) {
		e := newEnv(t)
		path := e.path("held.db")
		db := parentConn(t, path, "")
		committed := map[int64]bool{}
		for i := range 10 {
			cmd, out := startReady(t, "heldwriter",
				"BOULE_TEST_DB="+path, "BOULE_TEST_SPOOL="+e.spool,
				fmt.Sprint("BOULE_TEST_SEED=", 100+i), "BOULE_TEST_STEPS=1000")
			readSeqs(t, out, "", committed)
			waitKilled(t, cmd, "writer")
			m, err := spool.ReadMarker(mustDB(t, path).Dir())
			if err != nil || m.State != spool.MarkerSet || m.Committed <= m.Persisted {
				t.Fatalf("marker after the kill %+v, %v; want set, with commits captured and not persisted", m, err)
			}
			verifyAfterCrash(t, db, path, committed)
		}
	})
	t.Run("two writers", func(t *testing.T) {
		e := newEnv(t)
		path := e.path("held2.db")
		db := parentConn(t, path, "")
		for i := range 5 {
			committed := map[int64]bool{}
			other, otherOut := startReady(t, "writer",
				"BOULE_TEST_DB="+path, "BOULE_TEST_SPOOL="+e.spool, fmt.Sprint("BOULE_TEST_SEED=", 200+i), "BOULE_TEST_STEPS=40")
			held, heldOut := startReady(t, "heldwriter",
				"BOULE_TEST_DB="+path, "BOULE_TEST_SPOOL="+e.spool, fmt.Sprint("BOULE_TEST_SEED=", 300+i), "BOULE_TEST_STEPS=1000")
			readSeqs(t, heldOut, "", committed)
			waitKilled(t, held, "held writer")
			readSeqs(t, otherOut, "", committed)
			if err := other.Wait(); err != nil {
				t.Fatalf("second writer: %v", err)
			}
			// No commit of ours: the survivor's last snapshot must be right
			// as it is, unless the dead writer committed last.
			m, err := spool.ReadMarker(mustDB(t, path).Dir())
			if err != nil {
				t.Fatal(err)
			}
			if m.State == spool.MarkerClean {
				checkSnapshot(t, db, path)
			}
			verifyAfterCrash(t, db, path, committed)
		}
	})
}
