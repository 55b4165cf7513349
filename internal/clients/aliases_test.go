package clients

import (
	"fmt"
	"strings"
	"testing"
)

// TestVerneuilAliasesShell: in Debian's sqlite3 shell, Verneuil's
// verneuil_* pragmas and verneuil:// replica names do what Boule's do,
// with the same arguments and results.
func TestVerneuilAliasesShell(t *testing.T) {
	shell, lib, f, env := shellFixture(t)
	script := fmt.Sprintf(`.load %s
.open file:%s?vfs=boule
CREATE TABLE t(x); INSERT INTO t VALUES ('written');
PRAGMA verneuil_flush_replication_data;
PRAGMA verneuil_flush_replication_data=1;
PRAGMA boule_flush_replication_data=0;
`, lib, f.db)
	out, errs, err := run(t, env, script, shell, "-batch")
	if want := "1\n0\n1\n"; err != nil || out != want {
		t.Fatalf("verneuil_flush_replication_data in the shell: %v, stdout %q (want %q), stderr %q", err, out, want, errs)
	}
	f.restoreAndCompare(t)

	script = fmt.Sprintf(`.load %s
.open file:verneuil://%s?vfs=boule_snapshot
SELECT x FROM t;
PRAGMA verneuil_snapshot_ctime;
PRAGMA boule_snapshot_ctime;
PRAGMA verneuil_snapshot_auto_refresh=1;
PRAGMA boule_snapshot_auto_refresh;
PRAGMA verneuil_snapshot_async_reload;
PRAGMA verneuil_snapshot_refresh=maybe;
`, lib, f.db)
	out, errs, err = run(t, env, script, shell, "-batch")
	lines := strings.Split(out, "\n")
	if err == nil || len(lines) != 7 || lines[0] != "written" || lines[1] == "" || lines[1] != lines[2] ||
		lines[3] != "0" || lines[4] != "1" || lines[5] != "0" || !strings.Contains(errs, "boule_snapshot_refresh: want 0, 1, 2") {
		t.Fatalf("verneuil:// replica and verneuil_snapshot_* pragmas in the shell: %v\nstdout %q\nwant the row, ctime twice, 0, 1, 0, then the refresh pragma's error\nstderr %q", err, out, errs)
	}
}
