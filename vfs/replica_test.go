package vfs_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mattn/go-sqlite3"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/miniotest"
	"github.com/boule-vfs/boule/replicate"
	"github.com/boule-vfs/boule/vfs"
)

// openReplica opens the replica of path on this host through
// boule_snapshot.
func openReplica(t testing.TB, path, params string) *sql.DB {
	t.Helper()
	return open(t, "boule://"+path, "boule_snapshot", params)
}

// dump returns every row of the workload's tables, in a canonical order.
func dump(t testing.TB, db interface {
	Query(string, ...any) (*sql.Rows, error)
}) string {
	t.Helper()
	var b strings.Builder
	rows, err := db.Query("SELECT name FROM sqlite_schema WHERE type='table' ORDER BY name")
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	var tables []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, n)
	}
	rows.Close()
	for _, tb := range tables {
		rows, err := db.Query(fmt.Sprintf("SELECT * FROM %q ORDER BY 1", tb))
		if err != nil {
			t.Fatalf("dump %s: %v", tb, err)
		}
		cols, _ := rows.Columns()
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		for rows.Next() {
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "%s %v\n", tb, vals)
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("dump %s: %v", tb, err)
		}
		rows.Close()
	}
	return b.String()
}

func sqliteCode(err error) sqlite3.ErrNo {
	var se sqlite3.Error
	if errors.As(err, &se) {
		return se.Code
	}
	return -1
}

// TestReplicaQueries: a replica answers queries exactly as the source does,
// sees new commits after a flush and a refresh, and refuses writes.
func TestReplicaQueries(t *testing.T) {
	for _, kind := range []string{"dir", "s3"} {
		t.Run(kind, func(t *testing.T) {
			var tg config.Target
			if kind == "dir" {
				tg, _ = dirTarget(t)
			} else {
				srv := miniotest.Start(t)
				srv.SetEnv(t)
				tg, _ = s3Target(t, srv.Endpoint, true)
			}
			e := replEnv(t, tg)
			path := e.path("src.db")
			db := open(t, path, "boule", "")
			db.SetMaxOpenConns(1)
			runWorkload(t, db, 11, 120)
			if err := vfs.Flush(context.Background(), path); err != nil {
				t.Fatal(err)
			}
			want := dump(t, db)

			rdb := openReplica(t, path, "")
			rdb.SetMaxOpenConns(1)
			if got := dump(t, rdb); got != want {
				t.Fatalf("replica differs from source:\nreplica %d bytes, source %d bytes", len(got), len(want))
			}
			var ok string
			if err := rdb.QueryRow("PRAGMA integrity_check").Scan(&ok); err != nil || ok != "ok" {
				t.Fatalf("integrity_check=%q, %v", ok, err)
			}
			_, err := rdb.Exec("CREATE TABLE nope(x)")
			if code := sqliteCode(err); code != sqlite3.ErrReadonly {
				t.Fatalf("write to a replica: err=%v (code %d), want SQLITE_READONLY", err, code)
			}

			// New commits appear after a flush and a refresh, not before.
			runWorkload(t, db, 12, 40)
			if err := vfs.Flush(context.Background(), path); err != nil {
				t.Fatal(err)
			}
			want2 := dump(t, db)
			if want2 == want {
				t.Fatal("the workload changed nothing")
			}
			if got := dump(t, rdb); got != want {
				t.Fatal("the replica changed without a refresh")
			}
			var ts string
			if err := rdb.QueryRow("PRAGMA boule_snapshot_refresh=1").Scan(&ts); err != nil {
				t.Fatalf("refresh: %v", err)
			}
			if got := dump(t, rdb); got != want2 {
				t.Fatalf("after refresh the replica differs from the source")
			}
		})
	}
}

// TestReplicaManifestFile: a replica opens from a manifest file.
func TestReplicaManifestFile(t *testing.T) {
	tg, store := dirTarget(t)
	e := replEnv(t, tg)
	path := e.path("mf.db")
	db := open(t, path, "boule", "")
	runWorkload(t, db, 3, 60)
	if err := vfs.Flush(context.Background(), path); err != nil {
		t.Fatal(err)
	}
	key, _ := replicate.ManifestKey(vfs.Reader().Hostname(), path)
	b, err := store.GetManifest(context.Background(), key)
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
