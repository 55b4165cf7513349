package vfs_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mattn/go-sqlite3"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/miniotest"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/dir"
	"github.com/boule-vfs/boule/vfs"
)

// flushedSource opens name, in the env's directory, through boule, runs
// setup on it and flushes it: the source that a replica test reads. It
// returns the database's path and the connection.
func (e *env) flushedSource(t testing.TB, name, setup string) (string, *sql.DB) {
	t.Helper()
	path := e.path(name)
	src := open(t, path, "boule", "")
	mustExec(t, src, setup)
	mustFlush(t, path)
	return path, src
}

// openReplica opens the replica of path on this host through
// boule_snapshot.
func openReplica(t testing.TB, path, params string) *sql.DB {
	t.Helper()
	return open(t, "boule://"+path, "boule_snapshot", params)
}

type querier interface {
	Query(string, ...any) (*sql.Rows, error)
}

// dump returns every row of the workload's tables, in a canonical order.
func dump(t testing.TB, db querier) string {
	t.Helper()
	s, err := dumpDB(db)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func dumpDB(db querier) (string, error) {
	var b strings.Builder
	rows, err := db.Query("SELECT name FROM sqlite_schema WHERE type='table' ORDER BY name")
	if err != nil {
		return "", fmt.Errorf("list tables: %w", err)
	}
	var tables []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return "", err
		}
		tables = append(tables, n)
	}
	rows.Close()
	for _, tb := range tables {
		rows, err := db.Query(fmt.Sprintf("SELECT * FROM %q ORDER BY 1", tb))
		if err != nil {
			return "", fmt.Errorf("dump %s: %w", tb, err)
		}
		cols, _ := rows.Columns()
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		for rows.Next() {
			if err := rows.Scan(ptrs...); err != nil {
				return "", err
			}
			fmt.Fprintf(&b, "%s %v\n", tb, vals)
		}
		if err := rows.Err(); err != nil {
			return "", fmt.Errorf("dump %s: %w", tb, err)
		}
		rows.Close()
	}
	return b.String(), nil
}

func sqliteCode(err error) sqlite3.ErrNo {
	var se sqlite3.Error
	if errors.As(err, &se) {
		return se.Code
	}
	return -1
}

// TestReplicaQueries: a replica answers queries exactly as the source does,
// sees new commits after a flush and a refresh, and refuses writes. The
// replica of a WAL database needs no log or shm for it.
func TestReplicaQueries(t *testing.T) {
	for _, tc := range []struct {
		name, kind, params string
		seed               uint64
	}{
		{"dir", "dir", "", 11},
		{"s3", "s3", "", 11},
		{"WAL", "dir", "_journal_mode=WAL", 21},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg, _ := kindTarget(t, tc.kind)
			e := replEnv(t, tg)
			path, db := e.writer(t, "src.db", tc.params)
			runWorkload(t, db, tc.seed, 120)
			mustFlush(t, path)
			want := dump(t, db)

			rdb := openReplica(t, path, "")
			rdb.SetMaxOpenConns(1)
			if got := dump(t, rdb); got != want {
				t.Fatalf("replica differs from source:\nreplica %d bytes, source %d bytes", len(got), len(want))
			}
			checkIntegrity(t, rdb)
			_, err := rdb.Exec("CREATE TABLE nope(x)")
			if code := sqliteCode(err); code != sqlite3.ErrReadonly {
				t.Fatalf("write to a replica: err=%v (code %d), want SQLITE_READONLY", err, code)
			}

			// New commits appear after a flush and a refresh, not before.
			runWorkload(t, db, tc.seed+1, 40)
			mustFlush(t, path)
			want2 := dump(t, db)
			if want2 == want {
				t.Fatal("the workload changed nothing")
			}
			if got := dump(t, rdb); got != want {
				t.Fatal("the replica changed without a refresh")
			}
			refresh(t, rdb)
			if got := dump(t, rdb); got != want2 {
				t.Fatalf("after refresh the replica differs from the source")
			}
			// A snapshot of a WAL database reads as a rollback one: the
			// reading SQLite wants no log nor shm of a replica.
			var mode string
			if err := rdb.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil || mode == "wal" {
				t.Fatalf("the replica's journal_mode=%q, %v; want no WAL", mode, err)
			}
		})
	}
}

// refresh makes a replica connection read the newest snapshot now.
func refresh(t testing.TB, rdb *sql.DB) {
	t.Helper()
	var ts string
	if err := rdb.QueryRow("PRAGMA boule_snapshot_refresh=1").Scan(&ts); err != nil {
		t.Fatalf("refresh: %v", err)
	}
}

// TestReplicaManifestFile: a replica opens from a manifest file.
func TestReplicaManifestFile(t *testing.T) {
	e, sto := dirEnv(t)
	path := e.path("mf.db")
	db := open(t, path, "boule", "")
	runWorkload(t, db, 3, 60)
	mustFlush(t, path)
	key, _ := store.ManifestKey(vfs.Reader().Hostname(), path)
	b, err := sto.GetManifest(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	mf := filepath.Join(e.dir, "saved.manifest")
	if err := os.WriteFile(mf, b, 0o644); err != nil {
		t.Fatal(err)
	}
	rdb := open(t, mf, "boule_snapshot", "")
	if got, want := dump(t, rdb), dump(t, db); got != want {
		t.Fatal("replica from a manifest file differs from the source")
	}
}

func init() {
	children["replica"] = childReplica
}

// childReplicaDB registers boule from BOULE_CONFIG and opens the replica
// named by BOULE_TEST_DB, in a child process.
func childReplicaDB() (*sql.DB, error) {
	if err := vfs.RegisterFromEnv(); err != nil {
		return nil, err
	}
	return sql.Open("sqlite3", "file:"+os.Getenv("BOULE_TEST_DB")+"?vfs=boule_snapshot")
}

// childReplica opens the replica named by BOULE_TEST_DB with BOULE_CONFIG
// and prints its dump.
func childReplica() error {
	db, err := childReplicaDB()
	if err != nil {
		return err
	}
	defer db.Close()
	s, err := dumpDB(db)
	if err != nil {
		return err
	}
	if _, err := os.Stdout.WriteString(s); err != nil {
		return err
	}
	db.Close()
	vfs.Reader().Close() // write what is queued for the chunk cache
	return nil
}

// TestReplicaOtherProcess: a replica opened by another OS process, with
// its own chunk cache, returns the same query results as the source.
func TestReplicaOtherProcess(t *testing.T) {
	srv, tg, _ := minioTarget(t)
	e := replEnv(t, tg)
	path, db := e.writer(t, "other.db", "")
	runWorkload(t, db, 21, 100)
	// Past chunk 0 (inline in the manifest) whatever the workload's random
	// sizes: the child must fetch, and so cache, some chunks.
	mustExec(t, db, "CREATE TABLE bulk AS WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 300) SELECT i, randomblob(1000) AS v FROM c")
	mustFlush(t, path)
	cfg := fmt.Sprintf(`{"replication_targets": [{"s3": {"region": %q, "endpoint": %q, "chunk_bucket": "chunks", "manifest_bucket": "manifests", "domain_addressing": false}},
		{"local": {"directory": %q, "num_shards": 2, "capacity": 1000}}]}`, miniotest.Region, srv.Endpoint, filepath.Join(e.dir, "child-cache"))
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "BOULE_TEST_CHILD=replica", "BOULE_CONFIG="+cfg, "BOULE_TEST_DB=boule://"+path)
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("child: %v %s", err, stderr)
	}
	if want := dump(t, db); string(out) != want {
		t.Fatalf("the replica in another process returned %d bytes of rows, the source %d", len(out), len(want))
	}
	if ents, _ := os.ReadDir(filepath.Join(e.dir, "child-cache")); len(ents) == 0 {
		t.Fatal("the child's local cache is empty: chunks were not cached")
	}
}

// TestReplicaTransactionsSeeOneSnapshot: while the source commits and
// other connections refresh and auto-refresh, every read transaction on a
// replica sees one whole snapshot: two tables that every commit grows
// together always have equal counts and sums within a transaction.
func TestReplicaTransactionsSeeOneSnapshot(t *testing.T) {
	e, _ := dirEnv(t)
	path, src := e.writer(t, "txn.db", "")
	mustExec(t, src, "CREATE TABLE a(i INTEGER PRIMARY KEY, v BLOB, n INT); CREATE TABLE b(i INTEGER PRIMARY KEY, v BLOB, n INT)")
	commit := func(k int) {
		tx, err := src.Begin()
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{"INSERT INTO a(v, n) VALUES (randomblob(1500), ?)", "INSERT INTO b(v, n) VALUES (randomblob(1500), ?)"} {
			if _, err := tx.Exec(q, k); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	commit(0)
	mustFlush(t, path)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	var checked atomic.Int64
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rdb, err := sql.Open("sqlite3", "file:boule://"+path+"?vfs=boule_snapshot")
			if err != nil {
				errs <- err
				return
			}
			defer rdb.Close()
			rdb.SetMaxOpenConns(1)
			if r%2 == 0 {
				if _, err := rdb.Exec("PRAGMA boule_snapshot_auto_refresh=1"); err != nil {
					errs <- err
					return
				}
			}
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				if r%2 == 1 {
					if _, err := rdb.Exec("PRAGMA boule_snapshot_refresh=2"); err != nil {
						errs <- fmt.Errorf("refresh: %w", err)
						return
					}
				}
				tx, err := rdb.Begin()
				if err != nil {
					errs <- err
					return
				}
				var na, sa, nb, sb int64
				if err := tx.QueryRow("SELECT count(*), total(n) FROM a").Scan(&na, &sa); err != nil {
					errs <- err
					return
				}
				// Inside the transaction, refreshing is refused.
				if _, err := tx.Exec("PRAGMA boule_snapshot_refresh=2"); err == nil {
					errs <- errors.New("refresh inside a transaction succeeded")
					return
				}
				if err := tx.QueryRow("SELECT count(*), total(n) FROM b").Scan(&nb, &sb); err != nil {
					errs <- err
					return
				}
				tx.Rollback()
				if na != nb || sa != sb {
					errs <- fmt.Errorf("one transaction saw a: %d rows (sum %d) and b: %d rows (sum %d)", na, sa, nb, sb)
					return
				}
				checked.Add(1)
			}
		}()
	}
	for k := 1; k <= 60; k++ {
		commit(k)
		if k%5 == 0 {
			mustFlush(t, path)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if checked.Load() < 4 {
		t.Fatalf("only %d transactions checked", checked.Load())
	}
	// Finally the replica catches up exactly.
	rdb := openReplica(t, path, "")
	if got, want := dump(t, rdb), dump(t, src); got != want {
		t.Fatal("replica differs from the source after the last flush")
	}
}

// TestReplicaSwitchesBetweenTransactions: deterministically, a newer
// snapshot that the process fetched in the middle of an auto-refreshing
// connection's transaction is not seen by that transaction, and is seen
// by its next one.
func TestReplicaSwitchesBetweenTransactions(t *testing.T) {
	e, _ := dirEnv(t)
	path, src := e.flushedSource(t, "switch.db", "CREATE TABLE a(x); CREATE TABLE b(x); INSERT INTO a VALUES (1); INSERT INTO b VALUES (1)")
	ctx := context.Background()
	reader := openReplica(t, path, "")
	rc, err := reader.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := rc.ExecContext(ctx, "PRAGMA boule_snapshot_auto_refresh=1"); err != nil {
		t.Fatal(err)
	}
	other := openReplica(t, path, "")
	sum := func(q interface {
		QueryRowContext(context.Context, string, ...any) *sql.Row
	}, table string) int {
		t.Helper()
		var n int
		if err := q.QueryRowContext(ctx, "SELECT total(x) FROM "+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	tx, err := rc.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := sum(tx, "a"); got != 1 {
		t.Fatalf("a=%d, want 1", got)
	}
	mustExec(t, src, "UPDATE a SET x = 2; UPDATE b SET x = 2")
	if err := vfs.Flush(ctx, path); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Exec("PRAGMA boule_snapshot_refresh=2"); err != nil {
		t.Fatal(err)
	}
	if got := sum(other, "b"); got != 2 {
		t.Fatalf("the refreshed connection reads b=%d, want 2", got)
	}
	if got := sum(tx, "b"); got != 1 {
		t.Fatalf("mid-transaction, b=%d: the transaction saw the newer snapshot", got)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if got := sum(rc, "a") + sum(rc, "b"); got != 4 {
		t.Fatalf("next transaction: a+b=%d, want 4 (the newer snapshot)", got)
	}
}

func TestReplicaPragmas(t *testing.T) {
	e, _ := dirEnv(t)
	path, src := e.flushedSource(t, "pragmas.db", "CREATE TABLE t(x)")
	before := time.Now()
	rdb := openReplica(t, path, "")
	rdb.SetMaxOpenConns(1)
	str := func(q string) string {
		t.Helper()
		var s string
		if err := rdb.QueryRow(q).Scan(&s); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return s
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if got, want := str("PRAGMA boule_snapshot_ctime"), fmt.Sprintf("%d.%09d", sys.Ctim.Sec, sys.Ctim.Nsec); got != want {
		t.Errorf("ctime=%s, want the source file's %s", got, want)
	}
	upd := str("PRAGMA boule_snapshot_updated")
	var sec, nsec int64
	if _, err := fmt.Sscanf(upd, "%d.%d", &sec, &nsec); err != nil || time.Unix(sec, nsec).Before(before.Add(-time.Second)) {
		t.Errorf("updated=%q, want about now", upd)
	}
	if got := str("PRAGMA boule_snapshot_auto_refresh"); got != "0" {
		t.Errorf("auto_refresh=%s, want 0 by default", got)
	}
	if got := str("PRAGMA boule_snapshot_auto_refresh=on"); got != "0" {
		t.Errorf("setting auto_refresh returned %s, want the previous value 0", got)
	}
	if got := str("PRAGMA boule_snapshot_auto_refresh"); got != "1" {
		t.Errorf("auto_refresh=%s after setting it", got)
	}
	if got := str("PRAGMA boule_snapshot_async_reload"); got != "0" {
		t.Errorf("async_reload with nothing newer=%s, want 0", got)
	}
	if _, err := rdb.Exec("PRAGMA boule_snapshot_refresh=maybe"); err == nil || !strings.Contains(err.Error(), "want 0, 1, 2") {
		t.Errorf("refresh=maybe: %v", err)
	}
	// New data arrives with auto-refresh once something fetched it.
	mustExec(t, src, "INSERT INTO t VALUES (42)")
	mustFlush(t, path)
	other := openReplica(t, path, "")
	if _, err := other.Exec("PRAGMA boule_snapshot_refresh=2"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := rdb.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil || n != 1 {
		t.Fatalf("auto-refreshing replica sees %d rows, %v; want 1", n, err)
	}
	// Temp tables and big sorts work, on local disk.
	mustExec(t, rdb, "PRAGMA temp_store=FILE")
	mustExec(t, rdb, "CREATE TEMP TABLE big AS WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 20000) SELECT i, randomblob(200) AS v FROM c")
	var s int64
	if err := rdb.QueryRow("SELECT sum(i) FROM (SELECT i FROM big ORDER BY v)").Scan(&s); err != nil || s != 20000*20001/2 {
		t.Fatalf("sort over a temp table: %d, %v", s, err)
	}
}

func TestReplicaOpenErrors(t *testing.T) {
	tg, sto := dirTarget(t)
	e := replEnv(t, tg)
	path, _ := e.flushedSource(t, "errs.db", "CREATE TABLE t(x); INSERT INTO t VALUES (randomblob(300000))")
	for _, tc := range []struct{ name, params string }{
		{"boule://" + e.path("never-written.db"), ""},
		{"boule://h/a/../etc/passwd", ""},
		{"boule://" + strings.Repeat("x", 300) + "/a.db", ""},
		{"boule:///" + strings.Repeat("d/", 2100) + "x.db", ""},
		{e.path("no-such.manifest"), ""},
		{"boule://" + path, "mode=rw"},
	} {
		db := open(t, tc.name, "boule_snapshot", tc.params)
		var n int
		err := db.QueryRow("SELECT count(*) FROM sqlite_schema").Scan(&n)
		if code := sqliteCode(err); code != sqlite3.ErrCantOpen {
			t.Errorf("open %.60q %s: %v (code %d), want SQLITE_CANTOPEN", tc.name, tc.params, err, code)
		}
		// No stale errno from an unrelated system call posing as the cause.
		if err != nil && strings.Contains(err.Error(), "no such file") {
			t.Errorf("open %.60q %s: %v: a system error that is not the cause", tc.name, tc.params, err)
		}
	}
	if e.log.count(slog.LevelError, "cannot open replica") < 6 || !strings.Contains(e.log.String(), "never-written.db (manifest ") {
		t.Errorf("no error logged naming the missing database and its manifest")
	}

	key, _ := store.ManifestKey(vfs.Reader().Hostname(), path)
	b, err := sto.GetManifest(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}

	// A garbage or truncated manifest, in a file or in the store:
	// SQLITE_CORRUPT, at open.
	garbage := e.path("garbage.manifest")
	if err := os.WriteFile(garbage, bytes.Repeat([]byte("not a manifest "), 100), 0o644); err != nil {
		t.Fatal(err)
	}
	truncated := e.path("truncated.manifest")
	if err := os.WriteFile(truncated, b[:len(b)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(b)
	flipped[len(flipped)/2] ^= 0x10
	if err := sto.PutManifest(context.Background(), key, flipped); err != nil {
		t.Fatal(err)
	}
	register(t, vfs.Config{ReplicationTargets: []config.Target{tg}, Logger: slog.New(e.log)}) // no manifest remembered
	for _, name := range []string{garbage, truncated, "boule://" + path} {
		db := open(t, name, "boule_snapshot", "")
		var n int
		err := db.QueryRow("SELECT count(*) FROM sqlite_schema").Scan(&n)
		if code := sqliteCode(err); code != sqlite3.ErrCorrupt {
			t.Errorf("open %s with a damaged manifest: %v (code %d), want SQLITE_CORRUPT", name, err, code)
		}
		db.Close()
	}
	if err := sto.PutManifest(context.Background(), key, b); err != nil {
		t.Fatal(err)
	}

	// A chunk flipped in the store: SQLITE_CORRUPT, not wrong data.
	m, err := manifest.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	// The last chunk's blob: in its pack, or an object of its own.
	last := len(m.Chunks) - 1
	blob := filepath.Join(sto.(*dir.Store).Root(), "chunks", store.ChunkKey(m.Chunks[last]))
	off := -1
	if ref, ok := m.PackRefs()[uint32(last)]; ok {
		blob = filepath.Join(sto.(*dir.Store).Root(), "chunks", store.PackKey(ref.ID))
		off = int(ref.Offset + ref.Length/2)
	}
	raw, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	if off < 0 {
		off = len(raw) / 2
	}
	raw[off] ^= 0x40
	if err := os.WriteFile(blob, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	// Use a fresh, empty cache, so that the chunk comes from the store.
	lc := config.Target{Local: &config.LocalTarget{Directory: filepath.Join(e.dir, "cache2"), NumShards: 1, Capacity: 100}}
	register(t, vfs.Config{ReplicationTargets: []config.Target{lc, tg}, Logger: slog.New(e.log)})
	rdb := openReplica(t, path, "")
	var n int
	err = rdb.QueryRow("SELECT sum(length(hex(x))) FROM t").Scan(&n)
	if code := sqliteCode(err); code != sqlite3.ErrCorrupt && code != sqlite3.ErrIoErr {
		t.Fatalf("query over a tampered chunk: %v (code %d), want SQLITE_CORRUPT or SQLITE_IOERR", err, code)
	}
}

// TestReplicaStoreDown: with minio stopped, open replicas keep answering
// from the chunks they have, and a new process's open fails in bounded
// time.
func TestReplicaStoreDown(t *testing.T) {
	srv, tg, _ := minioTarget(t)
	e := replEnv(t, tg)
	path := e.path("down.db")
	src := open(t, path, "boule", "")
	runWorkload(t, src, 31, 60)
	mustFlush(t, path)
	want := dump(t, src)
	rdb := openReplica(t, path, "")
	rdb.SetMaxOpenConns(1)
	if got := dump(t, rdb); got != want {
		t.Fatal("replica differs")
	}
	srv.Stop()
	if got := dump(t, rdb); got != want {
		t.Fatal("with the store down, the open replica stopped answering")
	}
	if _, err := rdb.Exec("PRAGMA boule_snapshot_refresh=2"); err == nil {
		t.Fatal("refresh with the store down succeeded")
	}
	if got := dump(t, rdb); got != want {
		t.Fatal("after a failed refresh the replica stopped answering")
	}
	// A new process (a fresh registration) cannot open it.
	register(t, vfs.Config{ReplicationTargets: []config.Target{tg}, Logger: slog.New(e.log)})
	start := time.Now()
	db2 := openReplica(t, path, "")
	var n int
	err := db2.QueryRow("SELECT count(*) FROM sqlite_schema").Scan(&n)
	if code := sqliteCode(err); code != sqlite3.ErrIoErr {
		t.Fatalf("open with the store down: %v (code %d), want SQLITE_IOERR", err, code)
	}
	if d := time.Since(start); d > 45*time.Second {
		t.Fatalf("the failed open took %v", d)
	}
	t.Logf("open with the store down failed after %v", time.Since(start).Round(time.Millisecond))
}

// TestReplicaSwitchSameHeader: two snapshots whose header bytes 24..39
// are equal (here two databases with the same history but different
// data, swapped behind a manifest file) must not leave the old snapshot's
// pages in a connection's cache after a refresh.
func TestReplicaSwitchSameHeader(t *testing.T) {
	e, sto := dirEnv(t)
	manifestOf := func(name, val string) []byte {
		t.Helper()
		path := e.path(name)
		db := open(t, path, "boule", "")
		mustExec(t, db, "CREATE TABLE t(x TEXT)")
		mustExec(t, db, "INSERT INTO t VALUES (?)", val)
		db.Close()
		mustFlush(t, path)
		key, _ := store.ManifestKey(vfs.Reader().Hostname(), path)
		b, err := sto.GetManifest(context.Background(), key)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ma, mb := manifestOf("a.db", "AAAA"), manifestOf("b.db", "BBBB")
	mf := filepath.Join(e.dir, "saved.manifest")
	if err := os.WriteFile(mf, ma, 0o644); err != nil {
		t.Fatal(err)
	}
	rdb := open(t, mf, "boule_snapshot", "")
	rdb.SetMaxOpenConns(1)
	var x string
	if err := rdb.QueryRow("SELECT x FROM t").Scan(&x); err != nil || x != "AAAA" {
		t.Fatalf("before: %q, %v", x, err)
	}
	if err := os.WriteFile(mf+".new", mb, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(mf+".new", mf); err != nil {
		t.Fatal(err)
	}
	refresh(t, rdb)
	if err := rdb.QueryRow("SELECT x FROM t").Scan(&x); err != nil || x != "BBBB" {
		t.Fatalf("after the refresh the connection reads %q (%v), want BBBB", x, err)
	}
	checkIntegrity(t, rdb)
}

// TestVerneuilAliases: Verneuil's names, verneuil_* pragmas and
// verneuil:// replica names, work as Boule's do, with the same arguments
// and results.
func TestVerneuilAliases(t *testing.T) {
	e, _ := dirEnv(t)
	path, src := e.writer(t, "verneuil.db", "")
	mustExec(t, src, "CREATE TABLE t(x); INSERT INTO t VALUES ('from verneuil')")
	str := func(db *sql.DB, q string) string {
		t.Helper()
		var s string
		if err := db.QueryRow(q).Scan(&s); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return s
	}
	for _, c := range []struct{ pragma, want string }{
		{"PRAGMA verneuil_flush_replication_data", "1"},
		{"PRAGMA verneuil_flush_replication_data=on", "0"},
		{"PRAGMA boule_flush_replication_data=off", "1"},
		{"PRAGMA VERNEUIL_FLUSH_REPLICATION_DATA", "1"},
	} {
		if got := str(src, c.pragma); got != c.want {
			t.Errorf("%s=%q, want %q", c.pragma, got, c.want)
		}
	}
	if _, err := src.Exec("PRAGMA verneuil_flush_replication_data=maybe"); err == nil || !strings.Contains(err.Error(), "want 0, 1 or no argument") {
		t.Errorf("PRAGMA verneuil_flush_replication_data=maybe: %v, want the boule pragma's error", err)
	}

	rdb := open(t, "verneuil://"+path, "boule_snapshot", "")
	rdb.SetMaxOpenConns(1)
	if got := str(rdb, "SELECT x FROM t"); got != "from verneuil" {
		t.Fatalf("replica opened as verneuil://%s reads %q, want the row written", path, got)
	}
	if got, want := str(rdb, "PRAGMA verneuil_snapshot_ctime"), str(rdb, "PRAGMA boule_snapshot_ctime"); got != want || got == "" {
		t.Errorf("verneuil_snapshot_ctime=%q, want boule_snapshot_ctime's %q", got, want)
	}
	if got, want := str(rdb, "PRAGMA verneuil_snapshot_updated"), str(rdb, "PRAGMA boule_snapshot_updated"); got != want || got == "" {
		t.Errorf("verneuil_snapshot_updated=%q, want boule_snapshot_updated's %q", got, want)
	}
	if got := str(rdb, "PRAGMA verneuil_snapshot_auto_refresh=1"); got != "0" {
		t.Errorf("verneuil_snapshot_auto_refresh=1 returned %q, want the previous value 0", got)
	}
	if got := str(rdb, "PRAGMA boule_snapshot_auto_refresh"); got != "1" {
		t.Errorf("boule_snapshot_auto_refresh=%q after verneuil_snapshot_auto_refresh=1, want 1", got)
	}
	if _, err := rdb.Exec("PRAGMA verneuil_snapshot_refresh=maybe"); err == nil || !strings.Contains(err.Error(), "want 0, 1, 2") {
		t.Errorf("verneuil_snapshot_refresh=maybe: %v, want the boule pragma's error", err)
	}
	mustExec(t, src, "INSERT INTO t VALUES ('second')")
	if got := str(src, "PRAGMA verneuil_flush_replication_data"); got != "1" {
		t.Fatalf("second flush=%q, want 1", got)
	}
	str(rdb, "PRAGMA verneuil_snapshot_refresh=2")
	if got := str(rdb, "SELECT count(*) FROM t"); got != "2" {
		t.Errorf("after verneuil_snapshot_refresh=2 the replica has %s rows, want 2", got)
	}
	if got := str(rdb, "PRAGMA verneuil_snapshot_async_reload"); got != "0" {
		t.Errorf("verneuil_snapshot_async_reload with nothing newer=%q, want 0", got)
	}

	out := e.path("restored.db")
	if err := vfs.Restore(context.Background(), "verneuil://"+path, out); err != nil {
		t.Fatalf("Restore(verneuil://%s)=%v", path, err)
	}
	want, _ := os.ReadFile(path)
	if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Restore(verneuil://%s) wrote %d bytes (%v), want the database's %d", path, len(got), err, len(want))
	}
}

// TestReplicaReadErrorNoStaleErrno: a replica read that fails because the
// store cannot give a chunk reports an I/O error without the errno of an
// unrelated system call that failed earlier on the same thread: SQLite
// takes errno (unix's xGetLastError) as the cause of an I/O error, and a
// leftover "no such file or directory" read as the reason a store that
// answered 500 failed.
func TestReplicaReadErrorNoStaleErrno(t *testing.T) {
	tg, sto := dirTarget(t)
	e := tempEnv(t)
	lc := config.Target{Local: &config.LocalTarget{Directory: filepath.Join(e.dir, "cache"), NumShards: 1, Capacity: 100}}
	register(t, vfs.Config{ReplicationSpoolingDir: e.spool, ReplicationTargets: []config.Target{lc, tg}, Logger: slog.New(e.log),
		SnapshotLoadingPolicy: config.LoadingPolicy{Kind: "partial", Min: 1, Max: 1}}) // chunk 0 only: no prefetch
	path, _ := e.flushedSource(t, "errno.db", "CREATE TABLE t(x); INSERT INTO t VALUES (randomblob(300000))")
	// Every chunk but the inline chunk 0 is gone from the store, and
	// from the cache, which the writer filled too.
	for _, d := range []string{filepath.Join(sto.(*dir.Store).Root(), "chunks"), filepath.Join(e.dir, "cache", "000")} {
		if err := os.RemoveAll(d); err != nil {
			t.Fatal(err)
		}
	}

	// errno is per thread: the failed open and the read run on this one.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ctx := context.Background()
	rc, err := openReplica(t, path, "").Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var n int
	if err := rc.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema").Scan(&n); err != nil || n != 1 {
		t.Fatalf("schema from chunk 0: %d, %v", n, err)
	}
	// An open that fails with ENOENT leaves errno set on this thread.
	if err := open(t, filepath.Join(e.dir, "no", "such.db"), "unix", "mode=ro").PingContext(ctx); err == nil {
		t.Fatal("opened a database in a missing directory")
	}
	err = rc.QueryRowContext(ctx, "SELECT sum(length(hex(x))) FROM t").Scan(&n)
	if code := sqliteCode(err); code != sqlite3.ErrIoErr {
		t.Fatalf("read of a chunk the store lacks: %v (code %d), want SQLITE_IOERR", err, code)
	}
	var se sqlite3.Error
	if errors.As(err, &se) && se.SystemErrno != 0 {
		t.Errorf("read of a chunk the store lacks: %v: errno %d (%v), a system error that is not the cause", err, int(se.SystemErrno), se.SystemErrno)
	}
}
