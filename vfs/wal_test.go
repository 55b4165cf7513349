package vfs_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boule-vfs/boule/internal/sqlshell"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/vfs"
)

// logicalImage is the database at path as a reader of its last commit sees
// it: a copy of the file and its log, checkpointed whole by plain SQLite
// (unix VFS), which recovers the log as it would after a crash. The copy
// opens and closes descriptors on the file, which drops this process's
// POSIX locks on it: no transaction may be open on path meanwhile.
func logicalImage(t testing.TB, path string) []byte {
	t.Helper()
	cp := filepath.Join(t.TempDir(), "copy.db")
	copyWithLog(t, path, cp)
	db, err := sql.Open("sqlite3", "file:"+cp+"?vfs=unix")
	if err != nil {
		t.Fatal(err)
	}
	var busy, logged, done int
	if err := db.QueryRow("PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &logged, &done); err != nil || busy != 0 {
		t.Fatalf("checkpoint of the copy: busy=%d, %v", busy, err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(cp)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// copyWithLog copies the database file at path and its log, if any, to
// dst and dst's log.
func copyWithLog(t testing.TB, path, dst string) {
	t.Helper()
	for _, suffix := range []string{"", "-wal"} {
		b, err := os.ReadFile(path + suffix)
		if os.IsNotExist(err) && suffix != "" {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst+suffix, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// checkLogical asserts that the staged snapshot of path is its logical
// database byte for byte, and that the database passes integrity_check.
func checkLogical(t testing.TB, db *sql.DB, path string) {
	t.Helper()
	checkIntegrity(t, db)
	got, err := assemble(path)
	if err != nil {
		t.Fatalf("assemble(%s)=%v", path, err)
	}
	want := logicalImage(t, path)
	if !bytes.Equal(got, want) {
		t.Fatalf("snapshot of %s: %d bytes, logical database %d bytes; first difference at %d", path, len(got), len(want), firstDiff(got, want))
	}
}

// TestWALRandomWorkload: random transactions in WAL mode, with checkpoints
// of every kind between them; after every one, the staged snapshot is the
// logical database, and most snapshots are incremental.
func TestWALRandomWorkload(t *testing.T) {
	for _, tc := range []struct {
		name   string
		params string
		steps  int
	}{
		{"normal", "_journal_mode=WAL&_sync=NORMAL", 200},
		{"full", "_journal_mode=WAL&_sync=FULL", 100},
		{"exclusive", "_locking_mode=EXCLUSIVE&_journal_mode=WAL", 100},
		{"autocheckpoint", "_journal_mode=WAL&_sync=OFF&_auto_vacuum=incremental", 150},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			path, db := e.writer(t, "w.db", tc.params)
			if tc.name == "autocheckpoint" {
				mustExec(t, db, "PRAGMA wal_autocheckpoint=20")
			}
			checkpoints := []string{"PASSIVE", "FULL", "RESTART", "TRUNCATE"}
			kinds := randomSteps(t, db, uint64(len(tc.name))*104729, tc.steps, func(w *workload, kinds map[string]int) {
				if w.rng.IntN(10) == 0 {
					mode := checkpoints[w.rng.IntN(len(checkpoints))]
					mustExec(t, db, "PRAGMA wal_checkpoint("+mode+")")
					kinds["checkpoint "+mode]++
				}
				if tc.name != "exclusive" {
					checkLogical(t, db, path)
				}
			})
			if tc.name == "exclusive" {
				// The copy would need the locks this connection holds
				// for as long as it is open.
				waitStaged(t, mustDB(t, path))
				db.Close()
				checkLogical(t, open(t, path, "boule", "_journal_mode=WAL"), path)
			}
			e.checkIncremental(t, path, kinds)
		})
	}
}

// TestWALCheckpointsAreFree: checkpoints copy into the file what the
// snapshot holds already: no snapshot, no chunk staged.
func TestWALCheckpointsAreFree(t *testing.T) {
	e := newEnv(t)
	path, db := e.tableWriter(t, "ck.db", "_journal_mode=WAL")
	for i := range 50 {
		mustExec(t, db, "INSERT INTO t VALUES (randomblob(3000 + ?))", i)
	}
	d := mustDB(t, path)
	waitStaged(t, d)
	before := d.Stats()
	for _, mode := range []string{"PASSIVE", "FULL", "RESTART", "TRUNCATE"} {
		mustExec(t, db, "PRAGMA wal_checkpoint("+mode+")")
	}
	waitStaged(t, d)
	if after := d.Stats(); after.Snapshots != before.Snapshots || after.ChunksStaged != before.ChunksStaged {
		t.Fatalf("checkpoints staged %d snapshots and %d chunks, want none",
			after.Snapshots-before.Snapshots, after.ChunksStaged-before.ChunksStaged)
	}
	mustExec(t, db, "INSERT INTO t VALUES (1)")
	checkLogical(t, db, path)
	if after := d.Stats(); after.Incremental != before.Incremental+1 {
		t.Fatalf("the commit after the checkpoints: %d incremental snapshots, want 1 (no rebuild)", after.Incremental-before.Incremental)
	}
}

// TestWALModeSwitches: rollback, WAL, rollback, WAL: replication follows
// every switch, with no gap.
func TestWALModeSwitches(t *testing.T) {
	e := newEnv(t)
	path, db := e.tableWriter(t, "sw.db", "")
	for round := range 2 {
		for _, mode := range []string{"WAL", "DELETE"} {
			mustExec(t, db, "PRAGMA journal_mode="+mode)
			for i := range 20 {
				mustExec(t, db, "INSERT INTO t VALUES (?)", fmt.Sprint(round, mode, i))
			}
			checkLogical(t, db, path)
		}
	}
}

// TestWALOutsideWriter: commits by a program that does not use boule, in
// WAL mode, are in the next snapshot: frames appended to the log, and a
// log the other program checkpointed and restarted.
func TestWALOutsideWriter(t *testing.T) {
	e := newEnv(t)
	path, db := e.tableWriter(t, "out.db", "_journal_mode=WAL")
	mustExec(t, db, "INSERT INTO t VALUES ('boule 1')")
	plain := open(t, path, "unix", "_journal_mode=WAL")
	plain.SetMaxOpenConns(1)
	mustExec(t, plain, "INSERT INTO t VALUES ('plain 1')")
	mustExec(t, db, "INSERT INTO t VALUES ('boule 2')")
	checkLogical(t, db, path)

	// The plain connection checkpoints and restarts the log.
	mustExec(t, plain, "INSERT INTO t VALUES ('plain 2')")
	mustExec(t, plain, "PRAGMA wal_checkpoint(TRUNCATE)")
	mustExec(t, plain, "INSERT INTO t VALUES ('plain 3')")
	mustExec(t, db, "INSERT INTO t VALUES ('boule 3')")
	checkLogical(t, db, path)
	var n int
	if err := db.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil || n != 6 {
		t.Fatalf("count=%d, %v; want 6", n, err)
	}
}

// checkLogicalReplica asserts that the store's replica of path is its
// logical database.
func checkLogicalReplica(t testing.TB, s store.Store, path string) {
	t.Helper()
	want := logicalImage(t, path)
	if got := replica(t, s, path); !bytes.Equal(got, want) {
		t.Fatalf("replica of %s: %d bytes, logical database %d bytes, first difference at %d", path, len(got), len(want), firstDiff(got, want))
	}
}

// TestWALCloseReopen: the last connection's close checkpoints the log and
// deletes it; the next connection's commits follow the staged snapshot
// incrementally, with nothing logged.
func TestWALCloseReopen(t *testing.T) {
	e := newEnv(t)
	path := e.path("cr.db")
	for round := range 3 {
		db := open(t, path, "boule", "_journal_mode=WAL")
		db.SetMaxOpenConns(1)
		mustExec(t, db, "CREATE TABLE IF NOT EXISTS t(v)")
		d := mustDB(t, path)
		waitStaged(t, d)
		before := d.Stats()
		mustExec(t, db, "INSERT INTO t VALUES (randomblob(5000))")
		checkLogical(t, db, path)
		if after := d.Stats(); round > 0 && after.Incremental != before.Incremental+1 {
			t.Fatalf("round %d: the first commit after a reopen: %d incremental snapshots of %d, want 1 (no rebuild)",
				round, after.Incremental-before.Incremental, after.Snapshots-before.Snapshots)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(path + "-wal"); !os.IsNotExist(err) {
			t.Fatalf("round %d: the log after the last close: %v, want deleted", round, err)
		}
	}
	e.noWarnings(t)
}

// TestWALCloseDuringPersisterRead: the last connection closes while the
// persister reads the log through a connection of its own. That
// connection must not be the one that finds itself last, checkpoints the
// log and deletes it, through unix, unstaged: the next transaction would
// rebuild the whole snapshot. The close waits for the read; the log is
// staged and deleted by boule, and the next connection's first commit is
// incremental.
func TestWALCloseDuringPersisterRead(t *testing.T) {
	vfs.SetPersistGap(t, time.Millisecond)
	inRead, release := make(chan struct{}), make(chan struct{})
	var armed atomic.Bool
	vfs.SetWALOpenHook(t, func(string) {
		if armed.CompareAndSwap(true, false) {
			close(inRead)
			<-release
		}
	})
	e := newEnv(t)
	path := e.path("closeread.db")
	db := open(t, path, "boule", "_journal_mode=WAL")
	db.SetMaxOpenConns(1)
	mustExec(t, db, "CREATE TABLE t(v)")
	d := mustDB(t, path)
	waitStaged(t, d)
	armed.Store(true)
	mustExec(t, db, "INSERT INTO t VALUES (randomblob(5000))")
	<-inRead // the persister reads that commit, and waits

	held := make(chan struct{}, 1)
	vfs.SetExportHook(t, func(fn string) {
		if fn == "bouleGoHoldReads" {
			select {
			case held <- struct{}{}:
			default:
			}
		}
	})
	closed := make(chan error, 1)
	go func() { closed <- db.Close() }()
	var err error
	select {
	case <-held: // the close waits for the read
		close(release)
		err = <-closed
	case err = <-closed:
		t.Errorf("the last connection closed (%v) while the persister's connection was open: the persister's close deletes the log", err)
		close(release)
	}
	if err != nil {
		t.Fatal(err)
	}
	waitStaged(t, d)
	if _, err := os.Stat(path + "-wal"); !os.IsNotExist(err) {
		t.Fatalf("the log after the last close: %v, want deleted", err)
	}

	db = open(t, path, "boule", "_journal_mode=WAL")
	db.SetMaxOpenConns(1)
	before := d.Stats()
	mustExec(t, db, "INSERT INTO t VALUES (randomblob(5000))")
	waitStaged(t, d)
	checkLogical(t, db, path)
	if after := d.Stats(); after.Incremental != before.Incremental+1 {
		t.Errorf("the first commit after the reopen: %d incremental snapshots of %d, want 1 (no rebuild)",
			after.Incremental-before.Incremental, after.Snapshots-before.Snapshots)
	}
	e.noWarnings(t)
}

// TestWALSeveralProcesses: three processes write one database in WAL mode
// through boule at once, while this one holds it open; every commit is in
// the database, and the staged snapshot is its logical database.
func TestWALSeveralProcesses(t *testing.T) {
	e := newEnv(t)
	path := e.path("procs.db")
	db := parentConn(t, path, "_journal_mode=WAL")
	type result struct {
		seqs []int64
		err  error
	}
	results := make(chan result, 3)
	for i := range 3 {
		cmd, out := startChild(t, "writer",
			"BOULE_TEST_DB="+path, "BOULE_TEST_SPOOL="+e.spool, "BOULE_TEST_PARAMS=_journal_mode=WAL",
			fmt.Sprint("BOULE_TEST_SEED=", 2000+i), "BOULE_TEST_STEPS=60")
		go func() {
			var r result
			for out.Scan() {
				if seq, err := strconv.ParseInt(out.Text(), 10, 64); err == nil {
					r.seqs = append(r.seqs, seq)
				}
			}
			r.err = cmd.Wait()
			results <- r
		}()
	}
	var seqs []int64
	for range 3 {
		r := <-results
		if r.err != nil {
			t.Fatalf("writer process: %v", r.err)
		}
		seqs = append(seqs, r.seqs...)
	}
	mustExec(t, db, "INSERT INTO t(k, v) VALUES (-1, randomblob(100))")
	checkLogical(t, db, path)
	var n int
	if err := db.QueryRow("SELECT count(*) FROM log").Scan(&n); err != nil || n != len(seqs) || n < 150 {
		t.Fatalf("log rows=%d, %v; want the %d the writers committed", n, err, len(seqs))
	}
}

// TestWALSIGKILLWriter kills a writer in WAL mode at random points, at
// least 60 times.
func TestWALSIGKILLWriter(t *testing.T) {
	killWriters(t, "_journal_mode=WAL", 60, 44, checkLogical)
}

// TestWALFlushInsideWriteTransaction: in WAL mode, a flush from a
// transaction that holds the log's write lock fails at once, saying to
// commit first, instead of waiting for the lock its own transaction holds.
func TestWALFlushInsideWriteTransaction(t *testing.T) {
	tg, sto := dirTarget(t)
	e := replEnv(t, tg)
	path, db := e.tableWriter(t, "inside.db", "_journal_mode=WAL")
	for i := range 2 {
		// The insert stays in SQLite's cache until the commit: the
		// transaction holds the log's write lock and has written no frame.
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec("INSERT INTO t VALUES (randomblob(5000))"); err != nil {
			t.Fatal(err)
		}
		var r string
		if err := tx.QueryRow("PRAGMA boule_flush_replication_data").Scan(&r); err != nil || r != "0" {
			t.Fatalf("transaction %d: flush pragma inside a write transaction=%q, %v; want 0", i, r, err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.log.count(slog.LevelError, "commit it first"); got != 2 {
		t.Fatalf("errors saying to commit first=%d, want 2; log:\n%s", got, e.log)
	}
	e.mustFlushPragma(t, db, "after the commits")
	checkLogicalReplica(t, sto, path)
}

func init() { children["walleaver"] = childWALLeaver }

// childWALLeaver commits logged transactions in WAL mode, waits until the
// last is staged, prints "staged" and waits to be killed: it leaves a log
// whose every frame is committed and staged.
func childWALLeaver() error {
	c := readChildEnv()
	db, err := c.open("PRAGMA wal_autocheckpoint=0")
	if err != nil {
		return err
	}
	if err := setupLogged(db); err != nil {
		return err
	}
	w := newWorkload(c.seed)
	for range c.steps {
		seq, err := loggedTxn(db, w)
		if err != nil {
			return err
		}
		fmt.Println(seq)
	}
	d, err := vfs.Spool().DB(c.db)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.WaitStaged(ctx); err != nil {
		return err
	}
	fmt.Println("staged")
	select {}
}

// leaveWAL runs childWALLeaver on path, its workload seeded with seed, for
// steps transactions; once they are staged, it kills it, and returns the
// log seqs it committed.
func (e *env) leaveWAL(t testing.TB, path string, seed, steps int) map[int64]bool {
	t.Helper()
	cmd, out := startChild(t, "walleaver",
		"BOULE_TEST_DB="+path, "BOULE_TEST_SPOOL="+e.spool, "BOULE_TEST_PARAMS=_journal_mode=WAL",
		fmt.Sprint("BOULE_TEST_SEED=", seed), fmt.Sprint("BOULE_TEST_STEPS=", steps))
	committed := map[int64]bool{}
	readSeqs(t, out, "staged", committed)
	killWriter(t, cmd, out, committed)
	return committed
}

// TestWALRawFrames: another program appends valid frames to a log that
// boule staged up to its end, while no connection has the database open
// (SQLite recovers them at the next open), or leaves a log of its own where
// there was none. The next commit's snapshot through boule is the logical
// database, appended frames included: frames past the staged position of
// the same log are read like any outside writer's commits, and a log boule
// has no position in forces a rebuild.
func TestWALRawFrames(t *testing.T) {
	for _, tc := range []struct {
		name    string
		append  bool // append to the log the writer left, or replace a missing one
		rebuild bool // the next commit must rebuild
	}{
		{"append to a staged log", true, false},
		{"log left where there was none", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			path := e.path("raw.db")
			committed := e.leaveWAL(t, path, 7, 20)
			if len(committed) != 20 {
				t.Fatalf("writer committed %d transactions, want 20", len(committed))
			}
			left, err := os.ReadFile(path + "-wal")
			if err != nil || len(left) <= 32 {
				t.Fatalf("log the writer left: %d bytes, %v; want frames", len(left), err)
			}
			if !tc.append {
				// Checkpoint the writer's log with plain SQLite and
				// delete it: the file alone is the database, and the
				// staged snapshot still matches it.
				checkpointed := logicalImage(t, path)
				if err := os.WriteFile(path, checkpointed, 0o600); err != nil {
					t.Fatal(err)
				}
				for _, suffix := range []string{"-wal", "-shm"} {
					if err := os.Remove(path + suffix); err != nil {
						t.Fatal(err)
					}
				}
				left = nil
			}

			// Plain SQLite writes the frames on a copy of the database
			// and its log; their bytes past the log's end are what the
			// other program appends.
			scratch := filepath.Join(t.TempDir(), "scratch.db")
			copyWithLog(t, path, scratch)
			other := open(t, scratch, "unix", "_journal_mode=WAL")
			other.SetMaxOpenConns(1)
			mustExec(t, other, "PRAGMA wal_autocheckpoint=0")
			for range 5 {
				res, err := other.Exec("INSERT INTO log DEFAULT VALUES")
				if err != nil {
					t.Fatal(err)
				}
				seq, err := res.LastInsertId()
				if err != nil {
					t.Fatal(err)
				}
				committed[seq] = true
				mustExec(t, other, "INSERT INTO t(k, v) VALUES (?, randomblob(3000))", -seq)
			}
			written, err := os.ReadFile(scratch + "-wal")
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(written, left) || len(written) <= len(left) {
				t.Fatalf("plain SQLite's log (%d bytes) does not extend the writer's (%d bytes)", len(written), len(left))
			}
			f, err := os.OpenFile(path+"-wal", os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(written[len(left):]); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}

			d := mustDB(t, path)
			before := d.Stats()
			db := parentConn(t, path, "_journal_mode=WAL")
			mustExec(t, db, "INSERT INTO t(k, v) VALUES (-1000, randomblob(100))")
			checkLogical(t, db, path)
			checkCommitted(t, db, committed, "after the raw frames")
			after := d.Stats()
			if rebuilt := (after.Snapshots - after.Incremental) - (before.Snapshots - before.Incremental); tc.rebuild && rebuilt < 1 {
				t.Fatalf("snapshots rebuilt after the raw frames=%d, want at least 1 (stats before %+v, after %+v)", rebuilt, before, after)
			}
		})
	}
}

// countResets counts the calls of the hook before a restart or a
// truncation of a log, until the test ends.
func countResets(t testing.TB) *atomic.Int64 {
	var n atomic.Int64
	vfs.SetExportHook(t, func(fn string) {
		if fn == "bouleGoWALReset" {
			n.Add(1)
		}
	})
	return &n
}

// TestWALRestartCarriesOver: a commit that restarts the log stages
// nothing. What the old log held beyond the staged snapshot is carried
// over to the persister's next read, which stages it with the new log's
// commits: with the persister's squash window held open, dozens of
// restarts publish no snapshot until a flush asks for one, and that
// snapshot is the logical database. The restarts read no frame but
// their headers.
func TestWALRestartCarriesOver(t *testing.T) {
	vfs.SetPersistGap(t, time.Hour)
	e := newEnv(t)
	path, db := e.writer(t, "restart.db", "_journal_mode=WAL")
	mustExec(t, db, "PRAGMA wal_autocheckpoint=16")
	mustExec(t, db, "CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB)")
	d := mustDB(t, path)
	waitStaged(t, d)
	resets := countResets(t)
	before := d.Stats()
	for i := range 300 {
		mustExec(t, db, "INSERT OR REPLACE INTO t VALUES (?, randomblob(3000))", i%150)
	}
	during := d.Stats()
	if n := resets.Load(); n < 20 {
		t.Fatalf("log restarts=%d, want at least 20", n)
	}
	if got := during.Snapshots - before.Snapshots; got != 0 {
		t.Fatalf("snapshots staged during %d commits and %d restarts of the log=%d, want 0 (the persister's window is open)",
			300, resets.Load(), got)
	}
	// A restart reads the frame headers of the old log, on the commit
	// path; checksumming the whole log there took 3 ms a restart.
	if got := during.LogBytesScanned - before.LogBytesScanned; got != 0 {
		t.Errorf("%d restarts scanned %d bytes of the log, want 0: they read frame headers only", resets.Load(), got)
	}
	// The connection that restarts the log wrote its frames: it knows
	// their pages, and reads at most one frame header, to see the log end
	// there. Reading the frames took 1 ms of a restart of a 1,000-frame
	// log, the slowest 0.3% of a busy writer's commits at 1 GiB.
	if got, most := during.RestartBytesRead-before.RestartBytesRead, 24*resets.Load(); got > most {
		t.Errorf("%d restarts read %d bytes of the log, want at most %d (a frame header each)", resets.Load(), got, most)
	}
	waitStaged(t, d)
	checkLogical(t, db, path)
	after := d.Stats()
	if got := after.Snapshots - during.Snapshots; got != 1 || after.Incremental-during.Incremental != 1 {
		t.Fatalf("snapshots staged by the flush=%d (%d incremental), want 1 incremental", got, after.Incremental-during.Incremental)
	}
	e.noWarnings(t)
}

// TestWALRestartAfterOtherWriters: the pages of the frames a connection
// wrote are trusted at a restart only as far as the committed log bears
// them out. Two connections of one process take turns; one spills frames
// of transactions it rolls back (a tiny page cache), which the other's
// commits then overwrite with frames of other pages. Each restart's carry
// still names every page the old log changed: the staged snapshot is the
// logical database.
func TestWALRestartAfterOtherWriters(t *testing.T) {
	vfs.SetPersistGap(t, time.Hour)
	e := newEnv(t)
	path, a := e.writer(t, "writers.db", "_journal_mode=WAL")
	b := open(t, path, "boule", "")
	b.SetMaxOpenConns(1)
	// Rows of most of a page each, a's in the first half of the file and
	// b's in the second: a page of b's left out of a carry is a chunk no
	// frame of a's carries over.
	const rows = 2000
	mustExec(t, a, "CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB)")
	mustExec(t, a, fmt.Sprintf("WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM n WHERE i < %d) INSERT INTO t SELECT i, randomblob(3000) FROM n", rows-1))
	for _, db := range []*sql.DB{a, b} {
		mustExec(t, db, "PRAGMA wal_autocheckpoint=16; PRAGMA cache_size=4")
	}
	d := mustDB(t, path)
	waitStaged(t, d)
	resets := countResets(t)
	rng := rand.New(rand.NewPCG(3, 4))
	for range 400 {
		switch rng.IntN(4) {
		case 0: // a commits
			mustExec(t, a, "UPDATE t SET v = randomblob(3000) WHERE k = ?", rng.IntN(rows/2))
		case 1: // a spills frames, and rolls them back
			tx, err := a.Begin()
			if err != nil {
				t.Fatal(err)
			}
			for range 1 + rng.IntN(12) {
				if _, err := tx.Exec("UPDATE t SET v = randomblob(3000) WHERE k = ?", rng.IntN(rows/2)); err != nil {
					t.Fatal(err)
				}
			}
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
		default: // b commits, over frames a rolled back, maybe
			tx, err := b.Begin()
			if err != nil {
				t.Fatal(err)
			}
			for range 1 + rng.IntN(6) {
				if _, err := tx.Exec("UPDATE t SET v = randomblob(3000) WHERE k = ?", rows/2+rng.IntN(rows/2)); err != nil {
					t.Fatal(err)
				}
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := resets.Load(); n < 20 {
		t.Fatalf("log restarts=%d, want at least 20", n)
	}
	waitStaged(t, d)
	checkLogical(t, a, path)
	e.noWarnings(t)
}

// TestWALCarryOtherProcess: this process restarts the log with commits
// its persister has not staged (carried over, in its memory only), then
// another process commits and stages. That process's snapshot holds the
// carried commits too (it waits for the carry's owner, then rebuilds),
// and so does this process's next one.
func TestWALCarryOtherProcess(t *testing.T) {
	vfs.SetPersistGap(t, time.Hour)
	e := newEnv(t)
	path := e.path("carry.db")
	db := parentConn(t, path, "_journal_mode=WAL")
	mustExec(t, db, "PRAGMA wal_autocheckpoint=16")
	mustExec(t, db, "CREATE TABLE big(k INTEGER PRIMARY KEY, v BLOB)")
	mustExec(t, db, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 2000) INSERT INTO big SELECT i, randomblob(1000) FROM n")
	d := mustDB(t, path)
	waitStaged(t, d)
	resets := countResets(t)
	// Changes all over the file, then small commits elsewhere until the
	// log restarts: the carry holds chunks the new log does not.
	mustExec(t, db, "UPDATE big SET v = randomblob(1000) WHERE k % 20 = 0")
	for i := 0; resets.Load() < 2; i++ {
		if i == 1000 {
			t.Fatalf("the log did not restart in %d commits", i)
		}
		mustExec(t, db, "INSERT INTO t(k, v) VALUES (?, randomblob(3000))", -1-i)
	}
	if m, err := spool.ReadMarker(d.Dir()); err != nil || m.Committed == m.Persisted {
		t.Fatalf("marker %+v, %v: want commits not staged", m, err)
	}
	committed := e.leaveWAL(t, path, 9, 10)
	checkLogical(t, db, path)
	checkCommitted(t, db, committed, "after the other process's commits")
	mustExec(t, db, "INSERT INTO t(k, v) VALUES (-5000, randomblob(3000))")
	waitStaged(t, d)
	checkLogical(t, db, path)
	e.noWarnings(t)
}

// TestWALBulkLoad: 4 MiB transactions in WAL mode, each one restarting
// the log (carried over): every snapshot is incremental, and the last is
// the logical database.
func TestWALBulkLoad(t *testing.T) {
	e := newEnv(t)
	path, db := e.writer(t, "bulk.db", "_journal_mode=WAL&_sync=NORMAL")
	mustExec(t, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, k INT, v BLOB); CREATE INDEX t_k ON t(k)")
	d := mustDB(t, path)
	waitStaged(t, d)
	before := d.Stats()
	for i := range 20 {
		insertRows(t, db, i*4096, (i+1)*4096, 1024)
	}
	waitStaged(t, d)
	checkLogical(t, db, path)
	after := d.Stats()
	if n, inc := after.Snapshots-before.Snapshots, after.Incremental-before.Incremental; n == 0 || inc != n {
		t.Errorf("%d snapshots of the bulk load, %d incremental; want all incremental", n, inc)
	}
	e.noWarnings(t)
}

// bigReadWriter opens name in WAL mode for writing, in a spool of its own
// whose capture budget is 1 MiB and whose persister waits an hour between
// reads, runs pragmas, and writes 3000 rows of 1000 bytes to table t(k, v),
// staged before it returns.
func bigReadWriter(t testing.TB, name string, pragmas ...string) (*env, string, *sql.DB, *spool.DB) {
	t.Helper()
	vfs.SetPersistGap(t, time.Hour)
	e := tempEnv(t)
	register(t, vfs.Config{ReplicationSpoolingDir: e.spool, Logger: slog.New(e.log), CaptureMemoryMiB: 1})
	path, db := e.writer(t, name, "_journal_mode=WAL")
	for _, p := range pragmas {
		mustExec(t, db, p)
	}
	mustExec(t, db, "CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB)")
	mustExec(t, db, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 3000) INSERT INTO t SELECT i, randomblob(1000) FROM n")
	d := mustDB(t, path)
	waitStaged(t, d)
	return e, path, db, d
}

// TestWALBigReadSpills: commits that the persister reads all at once,
// more than the capture budget, are staged incrementally from a file the
// read copied them to, not rebuilt under the log's write lock (which
// stalled writers for seconds at 1 GiB).
func TestWALBigReadSpills(t *testing.T) {
	e, path, db, d := bigReadWriter(t, "big.db")
	before := d.Stats()
	// Changes all over the file, in 40 commits the persister's open
	// window leaves for one read: about 3 MiB of chunks.
	for i := range 40 {
		mustExec(t, db, "UPDATE t SET v = randomblob(1000) WHERE k % 40 = ?", i)
	}
	waitStaged(t, d)
	checkLogical(t, db, path)
	after := d.Stats()
	if got := after.Snapshots - before.Snapshots; got != 1 || after.Incremental-before.Incremental != 1 || after.ChunksStaged-before.ChunksStaged < 16 {
		t.Fatalf("snapshots=%d (%d incremental), chunks staged=%d; want 1 incremental snapshot of over 16 chunks (1 MiB)",
			got, after.Incremental-before.Incremental, after.ChunksStaged-before.ChunksStaged)
	}
	e.noWarnings(t)
}

// TestWALCloseStagesBigRead: the last connection's close stages what the
// log holds beyond the staged snapshot; when that is more than the
// capture budget, it stages those chunks straight from the log it keeps
// still, not the whole database again (at 4 GiB a close rebuilt for
// minutes).
func TestWALCloseStagesBigRead(t *testing.T) {
	e, path, db, d := bigReadWriter(t, "close.db", "PRAGMA wal_autocheckpoint=0")
	before := d.Stats()
	for i := range 40 { // about 3 MiB of chunks, the persister held off
		mustExec(t, db, "UPDATE t SET v = randomblob(1000) WHERE k % 40 = ?", i)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + "-wal"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the log is still there after the last close (%v)", err)
	}
	after := d.Stats()
	if got := after.Incremental - before.Incremental; got < 1 || after.Snapshots-before.Snapshots != got {
		t.Errorf("close: %d snapshots, %d incremental; want incremental ones only", after.Snapshots-before.Snapshots, got)
	}
	img, err := assemble(path)
	if err != nil {
		t.Fatalf("assemble(%s)=%v", path, err)
	}
	if local, err := os.ReadFile(path); err != nil || !bytes.Equal(img, local) {
		t.Fatalf("the staged snapshot (%d bytes) differs from the closed database (%d bytes, %v); log:\n%s", len(img), len(local), err, e.log)
	}
	if got := e.log.count(slog.LevelWarn, ""); got != 0 {
		t.Fatalf("warnings and errors logged=%d, want 0; log:\n%s", got, e.log)
	}
}

func init() { children["carrier"] = childCarrier }

// childCarrier commits logged transactions in WAL mode, its persister's
// window held open, until the log has restarted twice (the old logs'
// commits carried over, in its memory only), prints "carried" and waits
// to be killed.
func childCarrier() error {
	vfs.SetPersistGap(nil, time.Hour)
	c := readChildEnv()
	db, err := c.open("PRAGMA wal_autocheckpoint=16")
	if err != nil {
		return err
	}
	w := newWorkload(c.seed)
	var salt []byte
	for restarts := 0; restarts < 2; {
		seq, err := loggedTxn(db, w)
		if err != nil {
			return err
		}
		fmt.Println(seq)
		hdr := make([]byte, 24)
		f, err := os.Open(c.db + "-wal")
		if err != nil {
			return err
		}
		_, err = f.ReadAt(hdr, 0)
		f.Close()
		if err != nil {
			return err
		}
		if salt != nil && !bytes.Equal(salt, hdr[16:24]) {
			restarts++
		}
		salt = hdr[16:24]
	}
	fmt.Println("carried")
	select {}
}

// TestWALKilledCarrier: a writer killed while it holds a restart's carry
// (commits of the old log staged nowhere, its persister's window open).
// The next commit of this process rebuilds: every committed transaction
// is in the snapshot.
func TestWALKilledCarrier(t *testing.T) {
	e := newEnv(t)
	path := e.path("carrier.db")
	db := parentConn(t, path, "_journal_mode=WAL")
	waitStaged(t, mustDB(t, path))
	committed := map[int64]bool{}
	for i := range 3 {
		cmd, out := startChild(t, "carrier",
			"BOULE_TEST_DB="+path, "BOULE_TEST_SPOOL="+e.spool,
			"BOULE_TEST_PARAMS=_journal_mode=WAL", fmt.Sprint("BOULE_TEST_SEED=", 70+i))
		readSeqs(t, out, "carried", committed)
		m, err := spool.ReadMarker(mustDB(t, path).Dir())
		if err != nil || m.Committed == m.Persisted {
			t.Fatalf("round %d: marker %+v, %v: want commits the writer did not stage", i, m, err)
		}
		// The control block's walCarry word (doc/FORMAT.md) names the
		// writer.
		if b, err := os.ReadFile(mustDB(t, path).MarkerPath()); err != nil || len(b) < 2104 || binary.LittleEndian.Uint64(b[2096:]) == 0 {
			t.Fatalf("round %d: control block (%d bytes, %v): want a carry", i, len(b), err)
		}
		killWriter(t, cmd, out, committed)
		mustExec(t, db, "INSERT INTO t(k, v) VALUES (?, randomblob(100))", -1-i)
		checkLogical(t, db, path)
		checkCommitted(t, db, committed, fmt.Sprintf("after kill %d", i))
	}
}

// holdFirstFile makes the spool, once armed, hold the first file it
// creates until release is closed; entered is closed when it does. The
// spools are reset, to take the hook, and again at the end of the test.
func holdFirstFile(t testing.TB) (armed *atomic.Bool, entered, release chan struct{}) {
	armed = new(atomic.Bool)
	entered, release = make(chan struct{}), make(chan struct{})
	vfs.SetFaultHook(func(op, path string) error {
		if op == "create" && armed.CompareAndSwap(true, false) {
			close(entered)
			<-release
		}
		return nil
	})
	vfs.ResetSpools()
	t.Cleanup(func() {
		vfs.SetFaultHook(nil)
		vfs.ResetSpools()
	})
	return armed, entered, release
}

// flushedWAL makes a database in WAL mode, replicated to a dir store,
// with a 300 KB row, flushed.
func flushedWAL(t testing.TB, name string) (string, *sql.DB, store.Store) {
	t.Helper()
	tg, s := dirTarget(t)
	e := replEnv(t, tg)
	path, db := e.writer(t, name, "_journal_mode=WAL")
	mustExec(t, db, "CREATE TABLE t(v)")
	mustExec(t, db, "INSERT INTO t VALUES (randomblob(300000))")
	mustFlush(t, path)
	return path, db, s
}

// TestWALLazyRebuildLetsWritersOn: when the persister finds that a
// program without boule restarted the log, it rebuilds the snapshot from
// the logical database in a read transaction of its own connection, not
// under the log's write lock: a rebuild reads the whole database, and
// boule's writers must not wait for it (with a short busy timeout, they
// would fail). Their commits during the rebuild are staged after it, and
// a flush waits for them.
func TestWALLazyRebuildLetsWritersOn(t *testing.T) {
	armed, inRebuild, release := holdFirstFile(t)
	path, db, s := flushedWAL(t, "rebuild.db")

	// A plain connection checkpoints and restarts the log: the next
	// lazy read of boule's commits finds a log it cannot follow.
	plain := open(t, path, "unix", "_journal_mode=WAL")
	plain.SetMaxOpenConns(1)
	mustExec(t, plain, "PRAGMA wal_checkpoint(TRUNCATE)")
	mustExec(t, plain, "INSERT INTO t VALUES (randomblob(200000))")
	armed.Store(true)
	mustExec(t, db, "INSERT INTO t VALUES (randomblob(100000))")
	select {
	case <-inRebuild:
	case <-time.After(30 * time.Second):
		close(release)
		t.Fatal("no rebuild staged a chunk within 30 s of the commit after the plain restart")
	}

	// The rebuild is under way. A writer with a short busy timeout
	// commits meanwhile.
	mustExec(t, db, "PRAGMA busy_timeout=200")
	_, err := db.Exec("INSERT INTO t VALUES ('during the rebuild')")
	close(release)
	if err != nil {
		t.Fatalf("a commit during the persister's rebuild: %v; want it to go on (the rebuild holds the log's write lock?)", err)
	}
	checkIntegrity(t, db)
	mustFlush(t, path)
	checkLogicalReplica(t, s, path)
	var n int
	if err := db.QueryRow("SELECT count(*) FROM t WHERE v = 'during the rebuild'").Scan(&n); err != nil || n != 1 {
		t.Fatalf("count=%d, %v; want 1", n, err)
	}
}

// TestWALRebuildDueIsLazy: when the marker says a rebuild is due (the
// uploader invalidated the spool, a capture was lost) or the last
// snapshot failed (a full spool disk), the next commit in WAL mode leaves the
// rebuild to the persister, which reads the logical database in a read
// transaction of its own: the commit returns while the rebuild is held
// inside its first staged chunk, where a rebuild under the log's write
// lock would hold the commit. A flush then finds every commit staged.
func TestWALRebuildDueIsLazy(t *testing.T) {
	for name, mark := range map[string]func(sp spool.Dir) error{
		"invalidated": spool.Dir.Invalidate,
		"failed": func(sp spool.Dir) error {
			m, err := sp.Marker()
			if err != nil {
				return err
			}
			m.State, m.Err = spool.MarkerFailed, "test"
			return sp.WriteMarker(m)
		},
	} {
		t.Run(name, func(t *testing.T) {
			armed, inRebuild, release := holdFirstFile(t)
			path, db, s := flushedWAL(t, "due.db")
			if err := mark(spool.OpenDir(spoolDir(t, path))); err != nil {
				t.Fatal(err)
			}

			armed.Store(true)
			errc := make(chan error, 1)
			go func() {
				_, err := db.Exec("INSERT INTO t VALUES (randomblob(100000))")
				errc <- err
			}()
			select {
			case <-inRebuild:
			case <-time.After(30 * time.Second):
				close(release)
				t.Fatal("no rebuild staged a chunk within 30 s of the commit")
			}
			select {
			case err := <-errc:
				if err != nil {
					close(release)
					t.Fatalf("commit=%v", err)
				}
			case <-time.After(10 * time.Second):
				close(release)
				t.Fatal("the commit waited for the rebuild: it rebuilt under the log's write lock")
			}
			close(release)
			mustFlush(t, path)
			checkLogicalReplica(t, s, path)
		})
	}
}

// TestWALRestartStaleFrameRecord: connection a spills frames and rolls
// them back; another process (the sqlite3 shell, which this process's
// index of the log knows nothing of) then commits over the same frame
// numbers with pages of its own, and the log is checkpointed whole; a's
// next write restarts the log and carries it over. a's record of the
// frames it wrote still names its rolled-back pages at those positions:
// the check at its write lock must drop it, or the carry takes a's pages
// for the shell's frames and the staged snapshot misses its commit.
func TestWALRestartStaleFrameRecord(t *testing.T) {
	vfs.SetPersistGap(t, time.Hour)
	e := newEnv(t)
	path, a := e.writer(t, "stale.db", "_journal_mode=WAL")
	const rows = 2000
	mustExec(t, a, "CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB)")
	mustExec(t, a, fmt.Sprintf("WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM n WHERE i < %d) INSERT INTO t SELECT i, randomblob(3000) FROM n", rows-1))
	mustExec(t, a, "PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=4")
	d := mustDB(t, path)
	waitStaged(t, d)
	resets := countResets(t)

	// A commit first, so that the log holds frames and the spill below
	// does not restart it: the shell then writes with the same salts.
	mustExec(t, a, "UPDATE t SET v = randomblob(3000) WHERE k = 0")
	// a spills many frames (rows in the first half), and rolls back.
	tx, err := a.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for k := range 40 {
		if _, err := tx.Exec("UPDATE t SET v = randomblob(3000) WHERE k = ?", k*20); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	// The shell commits a few frames over them (rows in the second half),
	// and checkpoints the whole log without restarting it.
	sql := fmt.Sprintf("PRAGMA wal_autocheckpoint=0; UPDATE t SET v = randomblob(3000) WHERE k IN (%d, %d); PRAGMA wal_checkpoint(PASSIVE);", rows-7, rows/2+3)
	out, err := exec.Command(sqlshell.Path(t), path, sql).CombinedOutput()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if f := strings.Split(lines[len(lines)-1], "|"); err != nil || len(f) != 3 || f[0] != "0" || f[1] != f[2] || f[1] == "0" {
		t.Fatalf("sqlite3: %v: %q; want a checkpoint of the whole log (the test's premise)", err, out)
	}
	before := resets.Load()
	mustExec(t, a, "UPDATE t SET v = randomblob(3000) WHERE k = 1")
	if resets.Load() == before {
		t.Fatal("a's write after the checkpoint did not restart the log (the test's premise)")
	}
	waitStaged(t, d)
	checkLogical(t, a, path)
}
