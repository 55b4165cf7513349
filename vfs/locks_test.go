package vfs_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boule-vfs/boule/internal/sqlshell"
)

// TestFailedExclusiveReleasesPending: when a connection at SHARED asks for
// EXCLUSIVE and another process's SHARED lock makes that fail, the unix
// VFS of SQLite 3.40 (Debian bookworm's) keeps the PENDING lock it took on
// the way, and SQLite drops it by unlocking to SHARED. Boule, which still
// thought the file was at SHARED, did not pass that unlock on: in
// locking_mode=EXCLUSIVE, the PENDING lock then outlived the failed
// statement and locked every new reader out. SQLite's walnoshm-2.2.3 found
// it. The SQLite that mattn/go-sqlite3 bundles takes no PENDING lock on
// that path, so this test runs the sqlite3 shell with the extension.
func TestFailedExclusiveReleasesPending(t *testing.T) {
	shell := sqlshell.Path(t)
	e := newEnv(t)
	ext := e.path("libboule.so")
	if out, err := exec.Command("go", "build", "-buildmode=c-shared", "-tags", "boule_ext", "-o", ext, "../cmd/libboule").CombinedOutput(); err != nil {
		t.Fatalf("build extension: %v\n%s", err, out)
	}
	p := e.path("wal.db")
	// This process holds SHARED for as long as a is open in WAL mode.
	a := open(t, p, "unix", "")
	a.SetMaxOpenConns(1)
	mustExec(t, a, "PRAGMA journal_mode=WAL")
	mustExec(t, a, "CREATE TABLE t(x)")
	mustExec(t, a, "INSERT INTO t VALUES (1)")

	cfg, _ := json.Marshal(map[string]any{"make_default": true, "replication_spooling_dir": filepath.Join(e.dir, "shell-spool")})
	cmd := exec.Command(shell, "-batch")
	cmd.Env = append(os.Environ(), "BOULE_CONFIG="+string(cfg))
	// The shell's connection is boule's; a holds SHARED, so leaving WAL
	// mode fails, and the shell stays at SHARED in exclusive mode.
	got := sqlshell.StartCmd(t, cmd).Output(t, ".load "+ext+"\n.open "+p+"\nPRAGMA locking_mode=EXCLUSIVE;\nPRAGMA journal_mode=DELETE;", "READY")
	if out := strings.Join(got, "\n"); !strings.Contains(out, "database is locked") {
		t.Fatalf("shell output %q, want database is locked", out)
	}
	// Another process: in this one, a's SHARED lock would let a new
	// connection in without asking the OS.
	out, err := exec.Command(shell, "-batch", p, "SELECT count(*) FROM t").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Fatalf("read from another process=%q, %v; want 1: the shell's failed EXCLUSIVE lock left PENDING held", out, err)
	}
}
