// Command demo shows Boule's main job on the embedded default: it writes a
// database through the boule VFS and shows what each commit left in the
// spool, then proves the spooled snapshot is byte-identical to the file.
//
//	go run ./cmd/demo [-dir DIR]
package main

import (
	"bytes"
	"database/sql"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	_ "github.com/mattn/go-sqlite3"

	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/vfs"
)

func main() {
	dir := flag.String("dir", "", "working directory (default: a new temp dir, removed at exit)")
	flag.Parse()
	if err := run(*dir); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(dir string) error {
	if dir == "" {
		d, err := os.MkdirTemp("", "boule-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	spoolDir := filepath.Join(dir, "spool")
	cfg := vfs.Config{
		ReplicationSpoolingDir: spoolDir,
		Logger:                 slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	if err := vfs.Register(cfg); err != nil {
		return err
	}
	path := filepath.Join(dir, "app.db")
	fmt.Printf("1. Open %s with vfs=boule, spooling to %s\n\n", path, spoolDir)
	db, err := sql.Open("sqlite3", "file:"+path+"?vfs=boule&_journal_mode=TRUNCATE")
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)

	steps := []struct{ what, sql string }{
		{"create a table", "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, blob BLOB)"},
		{"insert 1,000 rows (about 300 KB)", "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 1000) INSERT INTO notes(body, blob) SELECT 'note ' || i, randomblob(300) FROM n"},
		{"update one row", "UPDATE notes SET body = 'edited' WHERE id = 500"},
		{"delete half the rows", "DELETE FROM notes WHERE id % 2 = 0"},
		{"VACUUM", "VACUUM"},
	}
	d, err := vfs.Spool().DB(path)
	if err != nil {
		return err
	}
	fmt.Println("2. Each commit leaves a complete snapshot in the spool:")
	fmt.Printf("   %-36s %10s %7s %12s %14s\n", "transaction", "db bytes", "chunks", "incremental", "chunk files")
	for _, s := range steps {
		before := d.Stats()
		if _, err := db.Exec(s.sql); err != nil {
			return fmt.Errorf("%s: %w", s.what, err)
		}
		st := d.Stats()
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		kind := "rebuild"
		if st.Incremental > before.Incremental {
			kind = "yes"
		}
		fmt.Printf("   %-36s %10d %7d %12s %8d written\n", s.what, fi.Size(), (fi.Size()+65535)/65536, kind, st.ChunksStaged-before.ChunksStaged)
	}

	fmt.Printf("\n3. The spool directory of this database (%s):\n", d.Dir())
	if err := printTree(d.Dir()); err != nil {
		return err
	}

	var buf bytes.Buffer
	m, err := spool.Assemble(d.Dir(), &buf)
	if err != nil {
		return err
	}
	want, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	fmt.Printf("\n4. The staged manifest: host %q, path %s, %d bytes, page size %d, change counter %d, %d chunks (%d inline)\n",
		m.Hostname, m.SourcePath, m.Size, m.PageSize, m.ChangeCounter, len(m.Chunks), len(m.Inline))
	if !bytes.Equal(buf.Bytes(), want) {
		return fmt.Errorf("the snapshot reassembled from the spool differs from the database")
	}
	fmt.Printf("   Reassembled from its chunks, the snapshot is byte-identical to %s (%d bytes).\n", filepath.Base(path), len(want))
	fmt.Println("\nNext (later issues): an uploader ships ready/ to S3 or a directory store; replicas read it back.")
	return nil
}

func printTree(root string) error {
	return filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		depth := strings.Count(rel, string(filepath.Separator))
		name := e.Name()
		if len(name) > 24 && !e.IsDir() {
			name = name[:12] + "…"
		}
		if e.IsDir() {
			n, _ := os.ReadDir(p)
			fmt.Printf("   %s%s/ (%d entries)\n", strings.Repeat("  ", depth), name, len(n))
			if strings.HasSuffix(p, "chunks") {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		fmt.Printf("   %s%s  %d bytes  %v\n", strings.Repeat("  ", depth), name, info.Size(), info.Mode().Perm())
		return nil
	})
}
