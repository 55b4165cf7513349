// Command demo tells Boule's story on the embedded default, a dir store in
// a temp folder, with nothing to configure: it writes a database through
// the boule VFS, shows what each commit left in the spool and the
// replication lag until the store caught up, opens a read replica in a
// second process and shows a fresh commit arriving there, then restores
// the database and proves the restore byte-identical.
//
//	go run ./cmd/demo [-dir DIR]
package main

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	_ "github.com/mattn/go-sqlite3"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/vfs"
)

func main() {
	dir := flag.String("dir", "", "working directory (default: a new temp dir, removed at exit)")
	replica := flag.String("replica", "", "run as the read-replica process for this database (used by the demo itself)")
	flag.Parse()
	if *replica != "" {
		if err := replicaMain(*replica); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		return
	}
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
	storeDir := filepath.Join(dir, "store")
	if err := os.MkdirAll(storeDir, 0o755); err != nil {
		return err
	}
	cfg := vfs.Config{
		ReplicationSpoolingDir: spoolDir,
		ReplicationTargets:     []config.Target{{Dir: &config.DirTarget{Path: storeDir}}},
		Logger:                 slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	if err := vfs.Register(cfg); err != nil {
		return err
	}
	path := filepath.Join(dir, "app.db")
	fmt.Printf("1. Open %s with vfs=boule, spooling to %s and replicating to the dir store %s\n\n", path, spoolDir, storeDir)
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

	mb, err := os.ReadFile(d.StagingManifestPath())
	if err != nil {
		return err
	}
	m, err := manifest.Decode(mb)
	if err != nil {
		return err
	}
	want, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	fmt.Printf("\n4. The staged manifest: host %q, path %s, %d bytes, page size %d, change counter %d, %d chunks (%d inline)\n",
		m.Hostname, m.SourcePath, m.Size, m.PageSize, m.ChangeCounter, len(m.Chunks), len(m.Inline))

	ctx := context.Background()
	fmt.Println("\n5. Replication runs in the background, rate-limited; its lag, until the store has the last commit:")
	start := time.Now()
	for {
		st := vfs.ReplicationStatus()
		if len(st) == 1 && st[0].Lag == 0 && st[0].Uploads > 0 {
			fmt.Printf("   caught up %v after the last commit: %d manifests and %d chunks uploaded in %d calls, %d failures\n",
				time.Since(start).Round(time.Millisecond), st[0].Uploads, st[0].Chunks, st[0].Calls, st[0].Failures)
			break
		}
		if len(st) == 1 && time.Since(start) < 30*time.Second {
			fmt.Printf("   %6v  lag %-8v pending %d bytes\n", time.Since(start).Round(time.Millisecond), st[0].Lag.Round(time.Millisecond), st[0].PendingBytes)
			time.Sleep(250 * time.Millisecond)
			continue
		}
		return fmt.Errorf("replication did not catch up in 30 s: %+v", st)
	}

	fmt.Println("\n6. A read replica in a second process (boule_snapshot), as the writer commits:")
	child, err := startReplica(path, cfg)
	if err != nil {
		return err
	}
	defer child.close()
	if err := child.ask("count"); err != nil {
		return err
	}
	if _, err := db.Exec("INSERT INTO notes(body) VALUES ('hello from the writer')"); err != nil {
		return err
	}
	fmt.Println("   writer: INSERT 'hello from the writer'; PRAGMA boule_flush_replication_data")
	if r := flushPragma(db); r != "1" {
		return fmt.Errorf("flush pragma returned %q", r)
	}
	if err := child.ask("refresh"); err != nil {
		return err
	}

	fmt.Println("\n7. Restore (as vfsctl restore does), every chunk verified:")
	out := filepath.Join(dir, "restored.db")
	if err := vfs.Restore(ctx, "boule://"+path, out); err != nil {
		return err
	}
	want, err = os.ReadFile(path)
	if err != nil {
		return err
	}
	got, err := os.ReadFile(out)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("the restored file differs from the database")
	}
	key, err := store.ManifestKey(vfs.Spool().Hostname(), path)
	if err != nil {
		return err
	}
	fmt.Printf("   %s (%d bytes) is byte-identical to %s.\n   Its manifest is %s in %s.\n", out, len(got), path, key, storeDir)
	return nil
}

func flushPragma(db *sql.DB) string {
	var r string
	if err := db.QueryRow("PRAGMA boule_flush_replication_data").Scan(&r); err != nil {
		return err.Error()
	}
	return r
}

// replicaProc is this program re-run as a reader in a second process.
type replicaProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startReplica(path string, cfg vfs.Config) (*replicaProc, error) {
	cfg.Logger = nil
	cfg.ReplicationSpoolingDir = "" // a reader needs only the targets
	js, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-replica", path)
	cmd.Env = append(os.Environ(), config.EnvVar+"="+string(js))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &replicaProc{cmd: cmd, in: in, out: bufio.NewScanner(out)}, nil
}

// ask sends the reader a command and prints its one-line answer.
func (p *replicaProc) ask(what string) error {
	if _, err := fmt.Fprintln(p.in, what); err != nil {
		return err
	}
	if !p.out.Scan() {
		return fmt.Errorf("the replica process stopped: %v", p.out.Err())
	}
	line := p.out.Text()
	if strings.HasPrefix(line, "error") {
		return fmt.Errorf("replica process: %s", line)
	}
	fmt.Printf("   reader (pid %d): %s\n", p.cmd.Process.Pid, line)
	return nil
}

func (p *replicaProc) close() {
	p.in.Close()
	_ = p.cmd.Wait()
}

// replicaMain is the second process: it opens a read replica of path with
// the configuration in BOULE_CONFIG and answers commands on stdin.
func replicaMain(path string) error {
	if err := vfs.RegisterFromEnv(); err != nil {
		return err
	}
	db, err := sql.Open("sqlite3", "file:boule://"+path+"?vfs=boule_snapshot")
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "refresh" {
			var ts string
			if err := db.QueryRow("PRAGMA boule_snapshot_refresh=1").Scan(&ts); err != nil {
				fmt.Println("error:", err)
				continue
			}
		}
		var n int
		var last string
		if err := db.QueryRow("SELECT count(*), (SELECT body FROM notes ORDER BY id DESC LIMIT 1) FROM notes").Scan(&n, &last); err != nil {
			fmt.Println("error:", err)
			continue
		}
		fmt.Printf("%s: %d rows, the newest says %q\n", in.Text(), n, last)
	}
	return in.Err()
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
