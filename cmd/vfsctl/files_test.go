//go:build cgo

package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/boule-vfs/boule/internal/osuser"
	"github.com/boule-vfs/boule/internal/testfs"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
)

// builds are the vfsctl binaries built for the tests, by their name:
// "vfsctl", and "vfsctl-nocgo" for the pure-Go build.
var builds struct {
	sync.Mutex
	dir  string
	done map[string]error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builds.dir != "" {
		os.RemoveAll(builds.dir)
	}
	os.Exit(code)
}

// binary returns the path of a vfsctl built from this package, once per
// test run, in a directory every user can reach.
func binary(t testing.TB) string {
	t.Helper()
	return build(t, "vfsctl")
}

// build builds this package once per test run as name, with the
// environment env added, and returns its path.
func build(t testing.TB, name string, env ...string) string {
	t.Helper()
	builds.Lock()
	defer builds.Unlock()
	if builds.dir == "" {
		dir, err := os.MkdirTemp("", "vfsctl-bin-")
		if err != nil {
			t.Fatal(err)
		}
		builds.dir, builds.done = dir, map[string]error{}
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(builds.dir, name)
	err, ok := builds.done[name]
	if !ok {
		cmd := exec.Command("go", "build", "-o", bin, ".")
		cmd.Env = append(os.Environ(), env...)
		if out, berr := cmd.CombinedOutput(); berr != nil {
			err = fmt.Errorf("%s go build: %v %s", strings.Join(env, " "), berr, out)
		}
		builds.done[name] = err
	}
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// hasOpen returns a test of whether process pid has a file whose path
// starts with prefix open: it waits on a lock of that file.
func hasOpen(prefix string) func(pid int) bool {
	return func(pid int) bool {
		tmpdir := fmt.Sprintf("/proc/%d/fd", pid)
		entries, _ := os.ReadDir(tmpdir)
		for _, e := range entries {
			if p, err := os.Readlink(filepath.Join(tmpdir, e.Name())); err == nil && strings.HasPrefix(p, prefix) {
				return true
			}
		}
		return false
	}
}

// inFIFOOpen reports whether a thread of process pid waits in open(2) for
// the other end of a named pipe.
func inFIFOOpen(pid int) bool {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/wchan", pid))
	for _, p := range tasks {
		if b, err := os.ReadFile(p); err == nil && string(b) == "wait_for_partner" {
			return true
		}
	}
	return false
}

// fifo makes a named pipe at p, in place of what is there, and lets a
// reader still blocked on it go when the test ends.
func fifo(t *testing.T, p string) {
	t.Helper()
	testfs.Mkfifo(t, p)
	t.Cleanup(func() {
		if w, err := os.OpenFile(p, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			w.Close()
		}
	})
}

// TestSignalEndsCommand: SIGTERM ends a vfsctl command within a second,
// wherever it waits, even where no context reaches; and a named pipe at a
// store key makes restore fail at once, naming it, where it used to wait
// forever in open(2), deaf to SIGTERM.
func TestSignalEndsCommand(t *testing.T) {
	bin := binary(t)
	for _, tc := range []struct {
		name string
		// setup prepares the fixture and returns the arguments, and a
		// test of whether the command waits where the case wants it to.
		setup func(t *testing.T, f *fixture) (args []string, waits func(pid int) bool)
		// stderr after SIGTERM must contain one of these.
		stderr []string
		// If the command may end by itself, before it waits, its stderr
		// must contain one of these.
		self []string
	}{
		{
			name: "restore from a store with a named pipe at the manifest key",
			setup: func(t *testing.T, f *fixture) ([]string, func(int) bool) {
				key, err := store.ManifestKey(hostname(t), f.db)
				if err != nil {
					t.Fatal(err)
				}
				fifo(t, filepath.Join(f.store, "manifests", filepath.FromSlash(key)))
				return []string{"--config", f.config(), "restore", "--source-path", f.db, "--out", filepath.Join(f.dir, "out.db")}, inFIFOOpen
			},
			self: []string{"is a named pipe"},
		},
		{
			name: "flush waiting for another process's upload",
			setup: func(t *testing.T, f *fixture) ([]string, func(int) bool) {
				dirs, err := spool.List(f.spool)
				if err != nil || len(dirs) != 1 {
					t.Fatalf("spool directories %v, %v; want one", dirs, err)
				}
				sp := spool.OpenDir(dirs[0].Dir)
				unlock, err := sp.LockUpload(context.Background(), true)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(unlock)
				return []string{"--config", f.config(), "flush", f.spool}, hasOpen(sp.UploadLockFile())
			},
			stderr: []string{"context canceled"},
		},
		{
			name: "sync of a database another process holds locked",
			setup: func(t *testing.T, f *fixture) ([]string, func(int) bool) {
				db, err := sql.Open("sqlite3", "file:"+f.db)
				if err != nil {
					t.Fatal(err)
				}
				db.SetMaxOpenConns(1)
				t.Cleanup(func() { db.Close() })
				if _, err := db.Exec("BEGIN EXCLUSIVE"); err != nil {
					t.Fatal(err)
				}
				return []string{"--config", f.config(), "sync", f.db}, hasOpen(f.db)
			},
			stderr: []string{"context canceled"},
		},
		{
			// Where no context reaches, vfsctl leaves without the
			// command.
			name: "configuration read from a named pipe nobody writes to",
			setup: func(t *testing.T, f *fixture) ([]string, func(int) bool) {
				p := filepath.Join(f.dir, "config.pipe")
				fifo(t, p)
				return []string{"--config", "@" + p, "ls"}, inFIFOOpen
			},
			stderr: []string{"interrupted"},
			self:   []string{"config.pipe"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := flushed(t)
			args, waits := tc.setup(t, f)
			var stderr bytes.Buffer
			cmd := exec.Command(bin, args...)
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cmd.Process.Kill() })
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()

			for !waits(cmd.Process.Pid) {
				select {
				case err := <-exited:
					if tc.self == nil {
						t.Fatalf("%v ended before it waited: %v %s", args, err, stderr.String())
					}
					checkEnded(t, err, stderr.String(), -1, tc.self)
					return
				case <-time.After(5 * time.Millisecond):
				}
			}
			sent := time.Now()
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-exited:
				took := time.Since(sent)
				t.Logf("ended %v after SIGTERM", took)
				if took > time.Second {
					t.Errorf("ended %v after SIGTERM, want within a second", took)
				}
				if tc.stderr == nil {
					t.Fatalf("%v waited (and ended on SIGTERM: %v %s), want it to end by itself", args, err, stderr.String())
				}
				checkEnded(t, err, stderr.String(), exitFail, tc.stderr)
			case <-time.After(5 * time.Second):
				t.Fatalf("%v still running 5 s after SIGTERM; stderr: %s", args, stderr.String())
			}
		})
	}
}

// checkEnded fails t unless the command failed, with status code unless
// it is -1, and a message containing one of want.
func checkEnded(t *testing.T, err error, stderr string, code int, want []string) {
	t.Helper()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() <= 0 || code >= 0 && ee.ExitCode() != code {
		t.Errorf("exit: %v, want a failure (status %d); stderr: %s", err, code, stderr)
	}
	for _, w := range want {
		if strings.Contains(stderr, w) {
			return
		}
	}
	t.Errorf("stderr %q, want it to say one of %q", stderr, want)
}

// TestCopiesArePrivate: every copy vfsctl sync writes of a database (the
// dir store, the local cache) is at most as readable as the database,
// within the umask; the same user restores it all, and another user reads
// only what the database lets them.
func TestCopiesArePrivate(t *testing.T) {
	bin := binary(t)
	other := osuser.Other(t)
	for _, tc := range []struct {
		name              string
		mode              fs.FileMode
		umask             string
		file, dir         fs.FileMode // in the store
		cacheFile         fs.FileMode
		otherCanRestore   bool
		otherCanReadChunk bool
	}{
		{"0600 database", 0o600, "022", 0o400, 0o700, 0o400, false, false},
		{"0644 database under umask 077", 0o644, "077", 0o400, 0o700, 0o400, false, false},
		{"0640 database", 0o640, "022", 0o440, 0o750, 0o440, false, false},
		{"0644 database", 0o644, "022", 0o444, 0o755, 0o444, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmpdir := testfs.TempDir(t)
			osuser.Reachable(t, tmpdir)
			if err := os.Chmod(tmpdir, 0o755); err != nil {
				t.Fatal(err)
			}
			sto, cache, spoolDir, db := filepath.Join(tmpdir, "store"), filepath.Join(tmpdir, "cache"), filepath.Join(tmpdir, "spool"), filepath.Join(tmpdir, "secret.db")
			if err := os.Mkdir(sto, 0o755); err != nil {
				t.Fatal(err)
			}
			sdb, err := sql.Open("sqlite3", "file:"+db)
			if err != nil {
				t.Fatal(err)
			}
			for _, q := range []string{
				"CREATE TABLE t(v TEXT)",
				"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 2000) INSERT INTO t SELECT 'secret ' || i || hex(randomblob(60)) FROM n",
			} {
				if _, err := sdb.Exec(q); err != nil {
					t.Fatal(err)
				}
			}
			sdb.Close()
			if err := os.Chmod(db, tc.mode); err != nil {
				t.Fatal(err)
			}
			cfg := fmt.Sprintf(`{"replication_spooling_dir": %q, "replication_targets": [{"local": {"directory": %q, "num_shards": 4, "capacity": 1000}}, {"dir": {"path": %q}}]}`, spoolDir, cache, sto)
			if out, err := exec.Command("sh", "-c", `umask "$1" && exec "$2" --config "$3" sync "$4"`, "sh", tc.umask, bin, cfg, db).CombinedOutput(); err != nil {
				t.Fatalf("vfsctl sync: %v %s", err, out)
			}

			files := 0
			walk(t, sto, func(rel string, mode fs.FileMode) {
				want := tc.file
				switch {
				case rel == "tmp":
					want = fs.ModeDir | 0o700
				case mode.IsDir():
					want = fs.ModeDir | tc.dir
				default:
					files++
				}
				if mode != want {
					t.Errorf("store %s: %v, want %v", rel, mode, want)
				}
			})
			walk(t, cache, func(rel string, mode fs.FileMode) {
				want := tc.cacheFile
				if mode.IsDir() {
					want = fs.ModeDir | 0o700
				}
				if mode != want {
					t.Errorf("cache %s: %v, want %v", rel, mode, want)
				}
			})
			walk(t, spoolDir, func(rel string, mode fs.FileMode) {
				// Lock files are empty, and every writer opens them.
				if mode.IsRegular() && !strings.HasSuffix(rel, ".lock") && mode.Perm()&0o044&^tc.mode != 0 {
					t.Errorf("spool %s: %v, more readable than the database's %v", rel, mode, tc.mode)
				}
			})
			if files < 3 {
				t.Fatalf("the store holds %d files, want a manifest, its version and chunks", files)
			}

			want, err := os.ReadFile(db)
			if err != nil {
				t.Fatal(err)
			}
			// The same user restores it, under the same umask.
			out := filepath.Join(tmpdir, "restored.db")
			if b, err := exec.Command("sh", "-c", `umask "$1" && exec "$2" --config "$3" restore --source-path "$4" --out "$5"`, "sh", tc.umask, bin, cfg, db, out).CombinedOutput(); err != nil {
				t.Fatalf("vfsctl restore as the same user: %v %s", err, b)
			}
			if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("restored %d bytes, %v, want the database's %d", len(got), err, len(want))
			}

			// Another user: a chunk file, and a whole restore.
			var chunk string
			walk(t, filepath.Join(sto, "chunks"), func(rel string, mode fs.FileMode) {
				if mode.IsRegular() && chunk == "" {
					chunk = filepath.Join(sto, "chunks", rel)
				}
			})
			_, err = other.Run("cat", chunk)
			if (err == nil) != tc.otherCanReadChunk {
				t.Errorf("another user reads %s: %v, want possible=%v", chunk, err, tc.otherCanReadChunk)
			}
			home := filepath.Join(tmpdir, "other")
			if err := os.Mkdir(home, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(home, other.UID, other.GID); err != nil {
				t.Fatal(err)
			}
			ocfg := fmt.Sprintf(`{"tempdir": %q, "replication_targets": [{"dir": {"path": %q}}]}`, home, sto)
			oout := filepath.Join(home, "restored.db")
			b, err := other.Command(bin, "--config", ocfg, "restore", "--source-path", db, "--out", oout).CombinedOutput()
			if (err == nil) != tc.otherCanRestore {
				t.Errorf("another user's restore: %v %s, want success=%v", err, b, tc.otherCanRestore)
			}
			if tc.otherCanRestore {
				if got, err := os.ReadFile(oout); err != nil || !bytes.Equal(got, want) {
					t.Errorf("another user restored %d bytes, %v, want the database's %d", len(got), err, len(want))
				}
			} else if !strings.Contains(string(b), "permission denied") {
				t.Errorf("another user's restore said %q, want permission denied", b)
			}
		})
	}
}

// walk calls f with the path relative to root and the mode of everything
// under root, in the order of the paths.
func walk(t *testing.T, root string, f func(rel string, mode fs.FileMode)) {
	t.Helper()
	modes := testfs.Modes(t, root)
	for _, rel := range slices.Sorted(maps.Keys(modes)) {
		f(rel, modes[rel])
	}
}
