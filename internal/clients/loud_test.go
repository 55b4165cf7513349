package clients

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boule-vfs/boule/internal/testfs"
)

// The failures that stop replication, as the stock sqlite3 shell with the
// extension and the vfsctl binary show them with default settings: an
// ERROR line on stderr, a flush pragma that returns 0, vfsctl flush and
// status that exit 1 naming the database and the cause.

// exitCode returns the exit status of a finished command, 0 for success.
func exitCode(t *testing.T, err error) int {
	t.Helper()
	if err == nil {
		return 0
	}
	ee, ok := err.(*exec.ExitError)
	if !ok {
		t.Fatalf("command did not run: %v", err)
	}
	return ee.ExitCode()
}

// statusRow runs vfsctl status --json on the fixture's spool and returns
// its exit code and the row of the fixture's database.
func (f *fixture) statusRow(t *testing.T) (int, map[string]any) {
	t.Helper()
	out, errs, err := run(t, nil, "", vfsctl(t), "status", "--json", f.spool)
	code := exitCode(t, err)
	var rows []map[string]any
	if jerr := json.Unmarshal([]byte(out), &rows); jerr != nil {
		t.Fatalf("vfsctl status --json: %v, stdout %q, stderr %q", jerr, out, errs)
	}
	for _, r := range rows {
		if r["source"] == f.db {
			return code, r
		}
	}
	t.Fatalf("vfsctl status --json: no row for %s in %s", f.db, out)
	return 0, nil
}

// TestShellFullSpool: a 20 MB transaction through a 12 MB spool, after a
// flushed one. The flush pragma returns 0 and the shell's stderr says why
// at the default log level; vfsctl status shows the database as not
// replicated, with a lag, and exits 1; vfsctl flush fails naming it and
// the full disk. With room again, vfsctl flush takes the snapshot itself
// and the restore has every row.
func TestShellFullSpool(t *testing.T) {
	shell, lib, f, env := shellFixture(t)
	env = append(env, "BOULE_LOG=")
	testfs.MountTmpfs(t, f.spool, "12m")
	script := fmt.Sprintf(`.load %s
.open file:%s?vfs=boule
CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
INSERT INTO t(v) VALUES (randomblob(100));
PRAGMA boule_flush_replication_data;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 5000) INSERT INTO t(v) SELECT randomblob(4000) FROM n;
PRAGMA boule_flush_replication_data;
`, lib, f.db)
	out, errs, err := run(t, env, script, shell, "-batch")
	if err != nil || out != "1\n0\n" {
		t.Fatalf("sqlite3 shell: %v, stdout %q, stderr %q; want the flush pragma to print 1, then 0", err, out, errs)
	}
	for _, want := range []string{"level=ERROR", "replication paused", "flush failed", "no space left on device", f.db} {
		if !strings.Contains(errs, want) {
			t.Fatalf("shell stderr lacks %q:\n%s", want, errs)
		}
	}

	code, row := f.statusRow(t)
	if code != 1 || row["not_replicated"] != true || !strings.Contains(fmt.Sprint(row["problem"]), "no space left on device") || row["lag_seconds"].(float64) <= 0 {
		t.Fatalf("vfsctl status=%d %v; want exit 1, not replicated because the disk is full, and a lag", code, row)
	}
	out, _, err = run(t, nil, "", vfsctl(t), "status", f.spool)
	if exitCode(t, err) != 1 || !strings.Contains(out, "NOT REPLICATED") {
		t.Fatalf("vfsctl status table=%v %q; want exit 1 and NOT REPLICATED", err, out)
	}
	out, errs, err = run(t, env, "", vfsctl(t), "flush", f.spool)
	if exitCode(t, err) != 1 || !strings.Contains(out, "FAILED  "+f.db) || !strings.Contains(errs, "no space left on device") {
		t.Fatalf("vfsctl flush with the spool full=%v, stdout %q, stderr %q; want exit 1 naming the database and the full disk", err, out, errs)
	}

	testfs.RemountTmpfs(t, f.spool, "128m")
	out, errs, err = run(t, env, "", vfsctl(t), "flush", f.spool)
	if err != nil || !strings.Contains(out, "ok      "+f.db) {
		t.Fatalf("vfsctl flush with room=%v, stdout %q, stderr %q; want ok", err, out, errs)
	}
	f.restoreAndCompare(t)
	if code, row := f.statusRow(t); code != 0 || row["not_replicated"] != false || row["lag_seconds"].(float64) != 0 {
		t.Fatalf("vfsctl status after the flush=%d %v; want exit 0, replicated, no lag", code, row)
	}
}

// TestShellWAL: Debian's sqlite3 shell switches a database to WAL mode,
// and creates another in it: the flush pragma returns 1 in WAL mode, with
// the log open and holding frames; vfsctl status says replicated; a
// restore is the logical database, byte for byte.
func TestShellWAL(t *testing.T) {
	shell, lib, f, env := shellFixture(t)
	env = append(env, "BOULE_LOG=")
	script := fmt.Sprintf(`.load %s
.open file:%s?vfs=boule
CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
INSERT INTO t(v) VALUES (randomblob(3000));
PRAGMA boule_flush_replication_data;
PRAGMA journal_mode=WAL;
INSERT INTO t(v) VALUES (randomblob(3000));
INSERT INTO t(v) SELECT randomblob(2000) FROM t;
PRAGMA boule_flush_replication_data;
.shell %s restore --source-path %s --out %s
`, lib, f.db, vfsctl(t), f.db, filepath.Join(f.dir, "during.db"))
	out, errs, err := run(t, env, script, shell, "-batch")
	if err != nil || out != "1\nwal\n1\n" {
		t.Fatalf("sqlite3 shell: %v, stdout %q, stderr %q; want 1, wal, 1", err, out, errs)
	}
	if strings.Contains(errs, "level=ERROR") || strings.Contains(errs, "level=WARN") {
		t.Fatalf("shell stderr has warnings or errors:\n%s", errs)
	}
	// The restore taken while the shell had the log open is the database
	// the shell left (its close checkpointed the log into the file).
	testfs.WantSameFile(t, filepath.Join(f.dir, "during.db"), f.db)
	if code, row := f.statusRow(t); code != 0 || row["not_replicated"] != false {
		t.Fatalf("vfsctl status=%d %v; want exit 0 and replicated", code, row)
	}
	out, errs, err = run(t, env, "", vfsctl(t), "flush", f.spool)
	if err != nil || !strings.Contains(out, "ok      "+f.db) {
		t.Fatalf("vfsctl flush of a WAL database=%v, stdout %q, stderr %q; want ok", err, out, errs)
	}
	f.restoreAndCompare(t)

	created := newFixture(t)
	created.spool, created.store = f.spool, f.store
	script = fmt.Sprintf(".load %s\n.open file:%s?vfs=boule\nPRAGMA journal_mode=WAL;\nCREATE TABLE t(v);\nINSERT INTO t VALUES (1);\nPRAGMA boule_flush_replication_data;\n", lib, created.db)
	if out, errs, err := run(t, env, script, shell, "-batch"); err != nil || out != "wal\n1\n" {
		t.Fatalf("sqlite3 shell on a database created in WAL mode: %v, stdout %q, stderr %q; want wal, 1", err, out, errs)
	}
	created.restoreAndCompare(t)
}

// TestMissingConfig: loading the extension without BOULE_CONFIG says that
// nothing will be replicated; with it, nothing of the kind is said.
func TestMissingConfig(t *testing.T) {
	shell, lib, f, _ := shellFixture(t)
	for _, c := range []struct {
		name string
		env  []string
		says bool
	}{
		{"unset", []string{"BOULE_CONFIG=", "BOULE_LOG="}, true},
		{"set", []string{"BOULE_CONFIG=" + f.cfg(), "BOULE_LOG="}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, errs, err := run(t, c.env, ".load "+lib+"\nSELECT 'loaded';\n", shell, "-batch", "-bail")
			if err != nil || out != "loaded\n" {
				t.Fatalf("load: %v, stdout %q, stderr %q", err, out, errs)
			}
			if got := strings.Contains(errs, "level=WARN") && strings.Contains(errs, "BOULE_CONFIG is not set"); got != c.says {
				t.Fatalf("stderr %q; want it to say BOULE_CONFIG is not set: %v", errs, c.says)
			}
		})
	}
}
