package restore

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boule-vfs/boule/internal/sqlshell"
	"github.com/boule-vfs/boule/internal/testchild"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/dir"
	"github.com/boule-vfs/boule/store/storetest"
)

// restoreChildEnv names the output path of the restore that
// TestRestoreFileKilled runs in a child process of the test binary.
const restoreChildEnv = "BOULE_TEST_RESTORE_CHILD"

// killedChunks is the size of the killed restore's database: 16 MiB.
const killedChunks = 256

// restoreBytes returns the database m describes, restored in memory.
func restoreBytes(t testing.TB, m *manifest.Manifest) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(context.Background(), []store.Store{&chunkSource{}}, m, &buf, Options{}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// restoreTemps returns the names of the restore temp files of base in
// dir.
func restoreTemps(t testing.TB, dir, base string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if isRestoreTemp(e.Name(), base) {
			out = append(out, e.Name())
		}
	}
	return out
}

// restoreChild restores synthetic(killedChunks) to out and, an eighth of
// the way, prints "ready BYTES" and waits for its standard input to close:
// the parent kills it there.
func restoreChild(out string) {
	m := synthetic(killedChunks)
	err := File(context.Background(), []store.Store{&chunkSource{}}, m, out, Options{
		Concurrency: 2,
		Progress: func(done, total int64) {
			if done >= total/8 {
				fmt.Printf("ready %d\n", done)
				_, _ = io.Copy(io.Discard, os.Stdin)
				os.Exit(3)
			}
		},
	})
	fmt.Println("restore ended:", err)
	os.Exit(4)
}

// TestRestoreFileKilled: a restore killed by a signal leaves its temp
// file holding no more space than the bytes it had written (nothing is
// preallocated), a restore that runs meanwhile leaves it alone (its owner
// is alive), and the next restore to the same path removes it.
func TestRestoreFileKilled(t *testing.T) {
	if out := os.Getenv(restoreChildEnv); out != "" {
		restoreChild(out)
		return
	}
	m := synthetic(killedChunks)
	want := restoreBytes(t, m)
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGHUP} {
		t.Run(sig.String(), func(t *testing.T) {
			dir := t.TempDir()
			out := filepath.Join(dir, "out.db")
			cmd := exec.Command(os.Args[0], "-test.run=^TestRestoreFileKilled$", "-test.count=1")
			cmd.Env = append(os.Environ(), restoreChildEnv+"="+out)
			stdin, stdout := testchild.Pipes(t, cmd)
			defer stdin.Close()
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
			line, err := bufio.NewReader(stdout).ReadString('\n')
			written, perr := strconv.ParseInt(strings.TrimPrefix(strings.TrimSpace(line), "ready "), 10, 64)
			if err != nil || perr != nil {
				t.Fatalf("child restore said %q, %v; want \"ready BYTES\"", line, err)
			}

			temps := restoreTemps(t, dir, "out.db")
			if len(temps) != 1 {
				t.Fatalf("temp files of the restore under way: %q, want one", temps)
			}
			tmp := filepath.Join(dir, temps[0])
			var st syscall.Stat_t
			if err := syscall.Stat(tmp, &st); err != nil {
				t.Fatal(err)
			}
			// Half the database: room for what was written and for a file
			// system's own allocation past the end (XFS's speculative
			// preallocation), not for the whole database.
			if allocated := st.Blocks * 512; st.Size != written || allocated > m.Size/2 {
				t.Fatalf("temp file of a restore %d bytes in: size %d, %d bytes allocated; want about what was written (the database has %d)",
					written, st.Size, allocated, m.Size)
			}

			// A restore meanwhile leaves the live restore's temp file.
			if err := File(context.Background(), []store.Store{&chunkSource{}}, m, out, Options{}); err != nil {
				t.Fatalf("RestoreFile() while another runs=%v", err)
			}
			if _, err := os.Lstat(tmp); err != nil {
				t.Fatalf("a restore removed the temp file of a restore under way: %v", err)
			}

			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Wait(); err == nil {
				t.Fatalf("child exited 0 after %v", sig)
			}
			if _, err := os.Lstat(tmp); err != nil {
				t.Fatalf("the killed restore removed its temp file (%v): the test shows nothing", err)
			}

			if err := File(context.Background(), []store.Store{&chunkSource{}}, m, out, Options{Replace: true}); err != nil {
				t.Fatalf("RestoreFile() after the kill=%v", err)
			}
			if left := restoreTemps(t, dir, "out.db"); len(left) != 0 {
				t.Fatalf("after a restore, temp files of the killed one remain: %q", left)
			}
			if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("restored file: %d bytes, %v; want the database's %d", len(got), err, len(want))
			}
		})
	}
}

// TestRestoreFileInUse: even with Replace, RestoreFile refuses a
// database that a sqlite3 process holds a lock on, or only has open (its
// next write would go to the replaced file, and be lost), and leaves it
// as it was; once the process is gone, it replaces it.
func TestRestoreFileInUse(t *testing.T) {
	m := synthetic(5)
	dir := t.TempDir()
	out := filepath.Join(dir, "live.db")
	sh := sqlshell.Start(t, out)
	sh.Do(t, "CREATE TABLE t(x); INSERT INTO t VALUES (1);", "created")
	before, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	pid := sh.Pid()

	// The kernel's lock table, as F_GETLK sees it.
	sh.Do(t, "BEGIN IMMEDIATE;", "locked")
	if got, held, err := sqliteLockHolder(out); err != nil || !held || got != pid {
		t.Fatalf("sqliteLockHolder()=%d, %v, %v; want %d, true (sqlite3 holds RESERVED)", got, held, err, pid)
	}
	check := func(state string) {
		t.Helper()
		err := File(context.Background(), []store.Store{&chunkSource{}}, m, out, Options{Replace: true})
		if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), strconv.Itoa(pid)) {
			t.Fatalf("RestoreFile() over a database sqlite3 %s=%v, want ErrInUse naming process %d", state, err, pid)
		}
		if got, _ := os.ReadFile(out); !bytes.Equal(got, before) {
			t.Fatalf("RestoreFile() changed the database sqlite3 %s", state)
		}
		if left := restoreTemps(t, dir, "live.db"); len(left) != 0 {
			t.Fatalf("refused restore left %q", left)
		}
	}
	check("holds a lock on")

	sh.Do(t, "COMMIT;", "idle")
	if _, held, err := sqliteLockHolder(out); err != nil || held {
		t.Fatalf("sqliteLockHolder() after COMMIT=%v, %v; want no lock", held, err)
	}
	check("has open, unlocked")

	sh.Close()
	if err := File(context.Background(), []store.Store{&chunkSource{}}, m, out, Options{Replace: true}); err != nil {
		t.Fatalf("RestoreFile() once sqlite3 is gone=%v", err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, restoreBytes(t, m)) {
		t.Fatal("the restored database differs from the manifest's")
	}
}

// TestRestoreFileOpenHere: a database this process has open is in use
// too, and RestoreFile does not open it (closing a descriptor of it
// would drop this process's SQLite locks).
func TestRestoreFileOpenHere(t *testing.T) {
	out := filepath.Join(t.TempDir(), "mine.db")
	writeFile(t, out, "mine")
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = File(context.Background(), []store.Store{&chunkSource{}}, synthetic(2), out, Options{Replace: true})
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), strconv.Itoa(os.Getpid())) {
		t.Fatalf("RestoreFile() over a file open here=%v, want ErrInUse naming process %d", err, os.Getpid())
	}
}

// TestWriteFileMissingDir: a file to write in a directory that does not
// exist fails naming that directory, not the temp file.
func TestWriteFileMissingDir(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nodir")
	err := WriteFile(filepath.Join(missing, "x.bin"), Options{}, func(w io.Writer) error {
		_, err := io.WriteString(w, "x")
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "directory "+missing+" does not exist") || strings.Contains(err.Error(), restoreTempSuffix) {
		t.Fatalf("WriteFile() in a missing directory=%v, want it naming %s", err, missing)
	}
}

// TestRestoreFileMode: the restored file is 0600, or opts.Perm, less the
// umask, and no more readable than a file it replaces.
func TestRestoreFileMode(t *testing.T) {
	m := synthetic(2)
	for _, tc := range []struct {
		name     string
		umask    int
		perm     fs.FileMode
		existing fs.FileMode // 0: none
		want     fs.FileMode
	}{
		{"default under 022", 0o022, 0, 0, 0o600},
		{"source bits under 022", 0o022, 0o640, 0, 0o640},
		{"source bits under 077", 0o077, 0o644, 0, 0o600},
		{"no exec or special bits", 0o022, fs.ModeSetuid | 0o755, 0, 0o644},
		{"replacing a private file", 0o022, 0o644, 0o600, 0o600},
		{"replacing a wider file", 0o022, 0o640, 0o666, 0o640},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := syscall.Umask(tc.umask)
			defer syscall.Umask(old)
			out := filepath.Join(t.TempDir(), "out.db")
			if tc.existing != 0 {
				writeFile(t, out, "old")
				if err := os.Chmod(out, tc.existing); err != nil {
					t.Fatal(err)
				}
			}
			err := File(context.Background(), []store.Store{&chunkSource{}}, m, out, Options{Perm: tc.perm, Replace: tc.existing != 0})
			if err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(out)
			if err != nil {
				t.Fatal(err)
			}
			if got := st.Mode(); got != tc.want {
				t.Fatalf("restored file's mode %v, want %v", got, tc.want)
			}
		})
	}
}

// TestManifestAtFutureVersion: a dir store version named by a writer whose
// clock ran a day ahead makes the next version's name later still; --at
// takes the versions in order with their true times, so the newer version
// is the one for any time after it was stored.
func TestManifestAtFutureVersion(t *testing.T) {
	d, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	base := time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)
	key := storetest.MustKey(t, "h", "/a.db")
	put := func(at time.Time, fill byte) {
		t.Helper()
		d.SetClock(func() time.Time { return at })
		if err := d.PutManifest(ctx, key, tinyManifest(t, fill, at, at)); err != nil {
			t.Fatal(err)
		}
	}
	future := base.Add(24 * time.Hour)
	put(base, 0)                    // a correct clock
	put(future, 1)                  // a clock a day ahead
	put(base.Add(time.Minute), 2)   // the clock put right
	put(base.Add(2*time.Minute), 3) // and again
	vs, err := d.ManifestVersions(ctx, key)
	if err != nil || len(vs) != 4 {
		t.Fatalf("ManifestVersions()=%v, %v; want 4", vs, err)
	}
	if !vs[0].LastModified.Equal(base.Add(2*time.Minute)) || !vs[1].LastModified.Equal(base.Add(time.Minute)) {
		t.Errorf("ManifestVersions() times %v, %v; want the writes' %v, %v", vs[0].LastModified, vs[1].LastModified, base.Add(2*time.Minute), base.Add(time.Minute))
	}
	for _, tc := range []struct {
		at   time.Time
		want byte
	}{
		{base.Add(30 * time.Second), 0},
		{base.Add(time.Minute + time.Second), 2},
		{base.Add(2*time.Minute + 10*time.Second), 3},
		{future.Add(time.Hour), 3},
	} {
		m, _, _, err := ManifestAt(ctx, []store.Store{d}, key, tc.at)
		if err != nil {
			t.Fatalf("ManifestAt(%v)=%v", tc.at, err)
		}
		if got := m.Inline[0][0]; got != tc.want {
			t.Errorf("ManifestAt(%v)=version %d, want %d", tc.at, got, tc.want)
		}
	}
}

// TestManifestAtNewestByCreation: the newest version is the one for any
// time at or after its creation, even when the store dates it later (an
// upload that took a while, or a store clock ahead of the writer's).
func TestManifestAtNewestByCreation(t *testing.T) {
	base := time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)
	s := &secondStore{bodies: map[string][]byte{}}
	for i, v := range []struct{ created, stored time.Duration }{
		{0, 5 * time.Second},             // newest: stored 5 s after it was made
		{-time.Minute, -time.Minute + 1}, // older
	} {
		s.add(t, i, base.Add(v.created), base, base.Add(v.stored))
	}
	for _, tc := range []struct {
		at   time.Duration
		want byte
	}{
		{-time.Second, 1},
		{0, 0},
		{2 * time.Second, 0},
		{10 * time.Second, 0},
	} {
		m, _, _, err := ManifestAt(context.Background(), []store.Store{s}, "k", base.Add(tc.at))
		if err != nil {
			t.Fatal(err)
		}
		if got := m.Inline[0][0]; got != tc.want {
			t.Errorf("ManifestAt(+%v)=version %d, want %d", tc.at, got, tc.want)
		}
	}
}
