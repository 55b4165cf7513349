package vfs_test

import (
	"bytes"
	"database/sql"
	"os"
	"path/filepath"
	"testing"

	_ "github.com/mattn/go-sqlite3"

	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/vfs"
)

func TestSmoke(t *testing.T) {
	dir := t.TempDir()
	if err := vfs.Register(vfs.Config{ReplicationSpoolingDir: filepath.Join(dir, "spool")}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "app.db")
	db, err := sql.Open("sqlite3", "file:"+path+"?vfs=boule")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range []string{"CREATE TABLE t(x)", "INSERT INTO t VALUES (randomblob(200000))", "INSERT INTO t VALUES (1)"} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	d, _ := vfs.Spool().DB(path)
	var buf bytes.Buffer
	m, err := spool.Assemble(d.Dir(), &buf)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(path)
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("snapshot differs: %d vs %d bytes", buf.Len(), len(want))
	}
	t.Logf("manifest %d chunks, stats %+v, go calls %d", len(m.Chunks), d.Stats(), vfs.GoCalls())
}
