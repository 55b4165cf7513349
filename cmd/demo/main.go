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
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/vfs"
)

func main() {
	dir := flag.String("dir", "", "working directory, kept after the demo (default: a new temp dir, removed at exit)")
	internals := flag.Bool("internals", false, "also show the spool's files and its staged manifest")
	replica := flag.String("replica", "", "run as the read-replica process for this database (used by the demo itself)")
	flag.Parse()
	if *replica != "" {
		if err := replicaMain(*replica); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*dir, *internals); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(dir string, internals bool) error {
	keep := dir != ""
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
	cfgJSON, err := json.Marshal(config.Config{ReplicationSpoolingDir: spoolDir, ReplicationTargets: cfg.ReplicationTargets})
	if err != nil {
		return err
	}
	fmt.Printf("Boule replicates %s to the dir store %s, through the spool %s.\n", path, storeDir, spoolDir)
	if keep {
		fmt.Println("The files stay in", dir, "after the demo. The lines starting with $ do the same by hand, with this configuration:")
	} else {
		fmt.Println("The files are removed at exit; run with -dir DIR to keep them and try the lines starting with $, with this configuration:")
	}
	fmt.Printf("   $ export BOULE_CONFIG='%s'\n\n", cfgJSON)

	fmt.Printf("1. Open the database with vfs=boule\n")
	// The shell opens the database named on its command line before
	// any -cmd: the VFS must be loaded first, and the database opened
	// after.
	fmt.Printf("   $ sqlite3 -cmd '.load /usr/local/lib/libboule' -cmd '.open file:%s?vfs=boule'   # after make install\n\n", path)
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
	fmt.Println("2. Commit five transactions; each one leaves a complete snapshot to upload.")
	fmt.Println("   file size:  the database file after the commit, in bytes")
	fmt.Println("   chunks:     the 64 KiB chunks that file is cut into; a snapshot is the list of them")
	fmt.Println("   new chunks: the chunks the commit changed, whose content the store may not have yet;")
	fmt.Println("               only these are uploaded (a tiny file travels inside its manifest instead)")
	fmt.Printf("   %-34s %10s %7s %11s\n", "transaction", "file size", "chunks", "new chunks")
	for _, s := range steps {
		before := d.Stats()
		if _, err := db.Exec(s.sql); err != nil {
			return fmt.Errorf("%s: %w", s.what, err)
		}
		// Commits are staged off the commit path: wait for this one.
		wctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := d.WaitStaged(wctx)
		cancel()
		if err != nil {
			return fmt.Errorf("%s: staging its snapshot: %w", s.what, err)
		}
		st := d.Stats()
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		fmt.Printf("   %-34s %10d %7d %11d\n", s.what, fi.Size(), (fi.Size()+65535)/65536, st.ChunksStaged-before.ChunksStaged)
	}
	if internals {
		if err := showSpool(d.Dir(), d.StagingManifestPath()); err != nil {
			return err
		}
	}

	ctx := context.Background()
	fmt.Println("\n3. Replication runs in the background, rate-limited; its lag, until the store has the last commit:")
	fmt.Printf("   $ vfsctl status %s\n", spoolDir)
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

	stores, err := vfs.ReadStores(ctx, cfg)
	if err != nil {
		return err
	}
	key, err := store.ManifestKey(vfs.Spool().Hostname(), path)
	if err != nil {
		return err
	}
	m, _, err := store.FetchManifest(ctx, stores, key)
	if err != nil {
		return err
	}
	fmt.Printf("\n4. The store holds the newest snapshot's manifest, %s, and its chunks:\n", key)
	fmt.Printf("   $ vfsctl manifest --json %s\n", path)
	fmt.Printf("   host %q, path %s, %d bytes, page size %d, %d chunks\n", m.Hostname, m.SourcePath, m.Size, m.PageSize, len(m.Chunks))

	fmt.Println("\n5. A read replica in a second process (boule_snapshot), as the writer commits:")
	fmt.Printf("   $ vfsctl shell %s\n", path)
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

	out := filepath.Join(dir, "restored.db")
	fmt.Println("\n6. Restore, every chunk verified:")
	fmt.Printf("   $ vfsctl restore --out %s %s\n", out, path)
	if err := vfs.Restore(ctx, "boule://"+path, out); err != nil {
		return err
	}
	want, err := os.ReadFile(path)
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
	fmt.Printf("   %s (%d bytes) is byte-identical to %s.\n", out, len(got), path)
	return nil
}

// showSpool prints the spool's files for the database and its staged
// manifest: how Boule works inside, not needed to use it (doc/FORMAT.md).
func showSpool(dir, manifestPath string) error {
	fmt.Printf("\n   Inside: the spool directory of this database (%s):\n", dir)
	if err := printTree(dir); err != nil {
		return err
	}
	s, err := spool.OpenDir(dir).Staged()
	if err != nil {
		return err
	}
	if s == nil {
		return fmt.Errorf("%s: %w", manifestPath, fs.ErrNotExist)
	}
	m := s.Manifest
	fmt.Printf("   Inside: the staged manifest: host %q, path %s, %d bytes, page size %d, change counter %d, %d chunks (%d inline)\n",
		m.Hostname, m.SourcePath, m.Size, m.PageSize, m.ChangeCounter, len(m.Chunks), len(m.Inline))
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
