//go:build cgo

package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boule-vfs/boule/internal/sqlshell"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/dir"
)

// TestRestoreRefusesExistingOut: restore --out leaves an existing file
// alone (exit 2, naming it) unless --force, which replaces it.
func TestRestoreRefusesExistingOut(t *testing.T) {
	f := flushed(t)
	want := f.bytes(t)
	out := filepath.Join(f.dir, "existing.db")
	if err := os.WriteFile(out, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errs := vfsctl(t, "--config", f.config(), "restore", "--source-path", f.db, "--out", out)
	if code != exitUsage || !strings.Contains(errs, "--out "+out+" exists; refusing to replace it (give --force") {
		t.Fatalf("restore over an existing file=%d %q; want exit %d naming it", code, errs, exitUsage)
	}
	if got, _ := os.ReadFile(out); string(got) != "precious" {
		t.Fatalf("the refused restore changed %s", out)
	}
	if code, _, errs := vfsctl(t, "--config", f.config(), "restore", "--source-path", f.db, "--force"); code != exitUsage || !strings.Contains(errs, "--force needs --out") {
		t.Fatalf("restore --force to standard output=%d %q; want exit %d", code, errs, exitUsage)
	}
	if code, _, errs := vfsctl(t, "--config", f.config(), "restore", "--source-path", f.db, "--out", out, "--force"); code != exitOK {
		t.Fatalf("restore --force=%d %q", code, errs)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		t.Fatalf("restore --force: %s holds %d bytes, not the database's %d", out, len(got), len(want))
	}
}

// TestRestoreOverOpenDatabase: restore --force refuses to replace the
// live source database while a sqlite3 process holds a lock on it or has
// it open, or a boule connection of this process has it open: the writer
// would go on writing to the replaced file, and lose its commits. Once
// they are gone it restores in place.
func TestRestoreOverOpenDatabase(t *testing.T) {
	f := flushed(t)
	args := []string{"--config", f.config(), "restore", "--source-path", f.db, "--out", f.db, "--force"}
	refused := func(state string, pid int) {
		t.Helper()
		before := f.bytes(t)
		code, _, errs := vfsctl(t, args...)
		if code != exitFail || !strings.Contains(errs, "in use") || !strings.Contains(errs, strconv.Itoa(pid)) {
			t.Fatalf("restore --force over a database %s=%d %q; want exit 1, in use by process %d", state, code, errs, pid)
		}
		if !bytes.Equal(f.bytes(t), before) {
			t.Fatalf("the refused restore changed the database %s", state)
		}
	}

	sh := sqlshell.Start(t, f.db)
	sh.Do(t, "BEGIN IMMEDIATE;", "locked")
	refused("sqlite3 holds a lock on", sh.Pid())
	sh.Do(t, "COMMIT;", "committed")
	refused("sqlite3 has open", sh.Pid())
	sh.Close()

	db, err := sql.Open("sqlite3", "file:"+f.db+"?vfs=boule")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("INSERT INTO t(v) VALUES ('through boule')"); err != nil {
		t.Fatal(err)
	}
	refused("a boule connection of this process has open", os.Getpid())
	db.Close()

	if code, _, errs := vfsctl(t, "--config", f.config(), "flush", f.spool); code != exitOK {
		t.Fatalf("flush=%d %q", code, errs)
	}
	want := f.bytes(t)
	if code, _, errs := vfsctl(t, args...); code != exitOK {
		t.Fatalf("restore --force in place, nothing open=%d %q", code, errs)
	}
	if !bytes.Equal(f.bytes(t), want) {
		t.Fatal("the database restored in place differs from what was flushed")
	}
}

// TestRestoreToDevNullAndPipe: standard output may be /dev/null (a
// character device, not a terminal) or a pipe.
func TestRestoreToDevNullAndPipe(t *testing.T) {
	f := flushed(t)
	want := f.bytes(t)
	args := []string{"--config", f.config(), "restore", "--source-path", f.db}

	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()
	var stderr bytes.Buffer
	if code := run(context.Background(), args, devNull, &stderr); code != exitOK {
		t.Fatalf("restore > /dev/null=%d %q", code, stderr.String())
	}
	stderr.Reset()
	if code := run(context.Background(), []string{"--config", f.config(), "manifest", f.db}, devNull, &stderr); code != exitOK {
		t.Fatalf("manifest > /dev/null=%d %q", code, stderr.String())
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(r)
		got <- b
	}()
	stderr.Reset()
	code := run(context.Background(), args, w, &stderr)
	w.Close()
	if b := <-got; code != exitOK || !bytes.Equal(b, want) {
		t.Fatalf("restore | reader=%d, %d bytes (want %d); %q", code, len(b), len(want), stderr.String())
	}
}

// TestOutModes: restore --out and manifest --out (which holds the first
// chunk of the database) are no more readable than the source database,
// 0600 when it is not here, and honour the umask.
func TestOutModes(t *testing.T) {
	f := flushed(t)
	for _, tc := range []struct {
		name   string
		umask  int
		source fs.FileMode // 0: the source is not on this host any more
		want   fs.FileMode
	}{
		{"umask 077", 0o077, 0o644, 0o600},
		{"source 0640", 0o022, 0o640, 0o640},
		{"source 0600", 0o022, 0o600, 0o600},
		{"source 0666", 0o022, 0o666, 0o644},
		{"source gone", 0o022, 0, 0o600},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.source != 0 {
				if err := os.Chmod(f.db, tc.source); err != nil {
					t.Fatal(err)
				}
			} else {
				if err := os.Rename(f.db, f.db+".away"); err != nil {
					t.Fatal(err)
				}
				defer os.Rename(f.db+".away", f.db)
			}
			old := syscall.Umask(tc.umask)
			defer syscall.Umask(old)
			tmpdir := t.TempDir()
			for _, args := range [][]string{
				{"restore", "--source-path", f.db, "--out", filepath.Join(tmpdir, "restore.out")},
				{"manifest", "--out", filepath.Join(tmpdir, "manifest.out"), f.db},
			} {
				if code, _, errs := vfsctl(t, append([]string{"--config", f.config()}, args...)...); code != exitOK {
					t.Fatalf("vfsctl %s=%d %q", args[0], code, errs)
				}
			}
			for _, name := range []string{"restore.out", "manifest.out"} {
				st, err := os.Stat(filepath.Join(tmpdir, name))
				if err != nil {
					t.Fatal(err)
				}
				if got := st.Mode(); got != tc.want {
					t.Errorf("%s: mode %v, want %v", name, got, tc.want)
				}
			}
		})
	}
}

// TestOutModeManifestFile: a manifest file may name any file of this
// host as its source; a restore from one takes 0600, not that file's
// mode, whatever it is.
func TestOutModeManifestFile(t *testing.T) {
	f := flushed(t)
	if err := os.Chmod(f.db, 0o666); err != nil {
		t.Fatal(err)
	}
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	tmpdir := t.TempDir()
	mf, out := filepath.Join(tmpdir, "m.bin"), filepath.Join(tmpdir, "restore.out")
	for _, args := range [][]string{
		{"manifest", "--out", mf, f.db},
		{"restore", "--manifest", mf, "--out", out},
	} {
		if code, _, errs := vfsctl(t, append([]string{"--config", f.config()}, args...)...); code != exitOK {
			t.Fatalf("vfsctl %s=%d %q", args[0], code, errs)
		}
	}
	if st, err := os.Stat(out); err != nil || st.Mode() != 0o600 {
		t.Fatalf("restore --manifest: mode %v (%v), want 0600", st.Mode(), err)
	}
}

// TestOutModeOtherGroup: the restored file gets this process's group; a
// source database of another group lends it no group bits, which would
// open it to a group the database does not include.
func TestOutModeOtherGroup(t *testing.T) {
	f := flushed(t)
	if err := os.Chown(f.db, -1, os.Getegid()+4242); err != nil {
		t.Skipf("chown: %v (needs root)", err)
	}
	if err := os.Chmod(f.db, 0o640); err != nil {
		t.Fatal(err)
	}
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	out := filepath.Join(t.TempDir(), "restore.out")
	if code, _, errs := vfsctl(t, "--config", f.config(), "restore", "--out", out, f.db); code != exitOK {
		t.Fatalf("vfsctl restore=%d %q", code, errs)
	}
	if st, err := os.Stat(out); err != nil || st.Mode() != 0o600 {
		t.Fatalf("restore of a 0640 database of another group: mode %v (%v), want 0600", st.Mode(), err)
	}
}

// TestRestoreAtFutureVersion: a version stored by a writer whose clock ran
// a day ahead does not hide the versions stored after it, although the
// dir store names them later still; ls-versions shows when each was
// stored and created.
func TestRestoreAtFutureVersion(t *testing.T) {
	f := flushed(t)
	v1 := f.bytes(t)
	t1 := time.Now()

	// What a writer whose clock is a day ahead stores: a version named
	// and dated a day from now, of a manifest created then.
	key, err := store.ManifestKey(hostname(t), f.db)
	if err != nil {
		t.Fatal(err)
	}
	s, err := dir.New(f.store)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := s.GetManifest(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Decode(raw)
	if err != nil {
		t.Fatal(err)
	}
	future := time.Now().Add(24 * time.Hour)
	m.Created = future
	if raw, err = m.MarshalBinary(); err != nil {
		t.Fatal(err)
	}
	planted := filepath.Join(f.store, "versions", filepath.FromSlash(key), fmt.Sprintf("%020d", future.UnixNano()))
	if err := os.WriteFile(planted, store.EncodeManifestBlob(raw), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(planted, future, future); err != nil {
		t.Fatal(err)
	}

	// Two more versions by a clock put right: the dir store names them
	// after the future-dated one.
	var v [][]byte
	var times []time.Time
	for i := range 2 {
		f.write(t, fmt.Sprintf("INSERT INTO t(v) SELECT randomblob(%d) FROM t LIMIT 40", 1000*(i+1)))
		if code, _, errs := vfsctl(t, "--config", f.config(), "flush", f.spool); code != exitOK {
			t.Fatalf("flush=%d %q", code, errs)
		}
		v = append(v, f.bytes(t))
		times = append(times, time.Now())
	}
	v2, v3, t2, t3 := v[0], v[1], times[0], times[1]

	for _, tc := range []struct {
		name string
		at   []string
		want []byte
	}{
		{"latest", nil, v3},
		{"after the second flush", []string{"--at", t2.UTC().Format(time.RFC3339Nano)}, v2},
		{"after the third flush", []string{"--at", t3.UTC().Format(time.RFC3339Nano)}, v3},
		{"ten seconds from now", []string{"--at", t3.Add(10 * time.Second).UTC().Format(time.RFC3339Nano)}, v3},
		{"between the first flushes", []string{"--at", t1.UTC().Format(time.RFC3339Nano)}, v1},
	} {
		out := filepath.Join(t.TempDir(), "at.db")
		code, _, errs := vfsctl(t, append([]string{"--config", f.config(), "restore", "--source-path", f.db, "--out", out}, tc.at...)...)
		if code != exitOK {
			t.Fatalf("restore %s=%d %q", tc.name, code, errs)
		}
		if got, _ := os.ReadFile(out); !bytes.Equal(got, tc.want) {
			t.Errorf("restore %s: not the database's bytes then (%d bytes; v1 %d, v2 %d, v3 %d)", tc.name, len(got), len(v1), len(v2), len(v3))
		}
	}

	code, out, errs := vfsctl(t, "--config", f.config(), "ls-versions", "--json", f.db)
	var vs []versionJSON
	if code != exitOK || json.Unmarshal([]byte(out), &vs) != nil || len(vs) != 4 {
		t.Fatalf("ls-versions=%d %q %q; want 4 versions", code, out, errs)
	}
	stored, serr := time.Parse(time.RFC3339Nano, vs[0].Stored)
	created, cerr := time.Parse(time.RFC3339Nano, vs[0].Created)
	if serr != nil || cerr != nil || stored.After(t3) || created.After(stored) || !vs[0].Latest {
		t.Errorf("ls-versions: newest %+v; want it latest, stored before %v, created before it was stored", vs[0], t3)
	}
	if got, err := time.Parse(time.RFC3339Nano, vs[2].Created); err != nil || !got.Equal(future.UTC()) {
		t.Errorf("ls-versions: future-dated %+v; want created %v", vs[2], future.UTC())
	}
	code, out, _ = vfsctl(t, "--config", f.config(), "ls-versions", f.db)
	if code != exitOK || !strings.HasPrefix(out, "STORED") || !strings.Contains(out, "CREATED") || !strings.Contains(out, vs[0].Created) {
		t.Errorf("ls-versions=%d %q; want a CREATED column", code, out)
	}
}

// TestManifestRefusesExistingOut: manifest --out, like restore --out,
// leaves an existing file alone (exit 2, naming it) unless --force, and
// even with --force refuses a database that a process has open: the
// manifest replacing it would lose what that process writes next.
func TestManifestRefusesExistingOut(t *testing.T) {
	f := flushed(t)
	_, want, _ := vfsctl(t, "--config", f.config(), "manifest", f.db)
	out := filepath.Join(f.dir, "existing.bin")
	if err := os.WriteFile(out, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errs := vfsctl(t, "--config", f.config(), "manifest", "--out", out, f.db)
	if code != exitUsage || !strings.Contains(errs, "--out "+out+" exists; refusing to replace it (give --force") {
		t.Fatalf("manifest --out over an existing file=%d %q; want exit %d naming it", code, errs, exitUsage)
	}
	if got, _ := os.ReadFile(out); string(got) != "precious" {
		t.Fatalf("the refused manifest --out changed %s", out)
	}
	if code, _, errs := vfsctl(t, "--config", f.config(), "manifest", "--force", f.db); code != exitUsage || !strings.Contains(errs, "--force needs --out") {
		t.Fatalf("manifest --force to standard output=%d %q; want exit %d", code, errs, exitUsage)
	}
	if code, _, errs := vfsctl(t, "--config", f.config(), "manifest", "--out", out, "--force", f.db); code != exitOK {
		t.Fatalf("manifest --out --force=%d %q", code, errs)
	}
	if got, _ := os.ReadFile(out); string(got) != want {
		t.Fatalf("manifest --out --force: %s holds %d bytes, not the manifest's %d", out, len(got), len(want))
	}

	// Another database, which a sqlite3 process has open.
	live := filepath.Join(f.dir, "live.db")
	sh := sqlshell.Start(t, live)
	sh.Do(t, "CREATE TABLE u(x); INSERT INTO u VALUES (1);", "created")
	before, err := os.ReadFile(live)
	if err != nil {
		t.Fatal(err)
	}
	code, _, errs = vfsctl(t, "--config", f.config(), "manifest", "--out", live, "--force", f.db)
	if code != exitFail || !strings.Contains(errs, "in use") || !strings.Contains(errs, strconv.Itoa(sh.Pid())) {
		t.Fatalf("manifest --out --force over a database sqlite3 has open=%d %q; want exit 1, in use by process %d", code, errs, sh.Pid())
	}
	if got, _ := os.ReadFile(live); !bytes.Equal(got, before) {
		t.Fatalf("the refused manifest --out changed the database sqlite3 has open")
	}
	sh.Close()
}

// TestOutMissingDir: restore --out and manifest --out into a directory
// that does not exist name the directory, not the temp file they would
// have written there, and create nothing.
func TestOutMissingDir(t *testing.T) {
	f := flushed(t)
	missing := filepath.Join(f.dir, "nodir")
	out := filepath.Join(missing, "x.db")
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"restore", []string{"restore", "--out", out, f.db}},
		{"manifest", []string{"manifest", "--out", out, f.db}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := vfsctl(t, append([]string{"--config", f.config()}, tc.args...)...)
			want := "vfsctl " + tc.name + ": directory " + missing + " of --out does not exist"
			if code != exitUsage || !strings.HasPrefix(errs, want) || strings.Contains(errs, ".x.db.") {
				t.Fatalf("vfsctl %s --out in a missing directory=%d %q; want %d and %q", tc.name, code, errs, exitUsage, want)
			}
			if _, err := os.Stat(missing); !os.IsNotExist(err) {
				t.Fatalf("vfsctl %s --out created %s: %v", tc.name, missing, err)
			}
		})
	}
}

// TestRestoreProgress: on a terminal, restore draws its progress bar once
// it writes, up to 100%, and none when it refuses before writing.
func TestRestoreProgress(t *testing.T) {
	f := flushed(t)
	journaled := filepath.Join(f.dir, "journaled.db")
	for _, p := range []string{journaled, journaled + "-wal"} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name     string
		args     []string
		toTerm   bool // standard output is the terminal too
		code     int
		wantDraw bool
	}{
		{"restored", []string{"--out", filepath.Join(f.dir, "new.db")}, false, exitOK, true},
		{"refused: a WAL beside --out", []string{"--out", journaled, "--force"}, false, exitFail, false},
		{"refused: standard output a terminal", nil, true, exitUsage, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			term, screen, closed := pty(t)
			var stdout io.Writer = &bytes.Buffer{}
			if tc.toTerm {
				stdout = term
			}
			args := append([]string{"--config", f.config(), "restore", "--source-path", f.db}, tc.args...)
			code := run(context.Background(), args, stdout, term)
			term.Close()
			<-closed
			s := screen.String()
			drew := strings.Contains(s, "\rrestore [")
			if code != tc.code || drew != tc.wantDraw || (drew && !strings.Contains(s, "100.0%")) {
				t.Fatalf("restore on a terminal=%d, drew %q; want %d, a progress bar to 100%%: %v", code, s, tc.code, tc.wantDraw)
			}
		})
	}
}
