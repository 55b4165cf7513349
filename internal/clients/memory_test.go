package clients

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/boule-vfs/boule/internal/bigmanifest"
	"github.com/boule-vfs/boule/internal/testfs"
	"github.com/boule-vfs/boule/manifest"
)

// capAS is the address space a child may map (RLIMIT_AS, as ulimit -v
// sets it): a safety net that stops a child whose memory is not bounded
// before it takes the machine's. The Go runtime reserves about 1.7 GiB of
// address space it does not use, with GOMAXPROCS=2 (set for the children,
// so that the number of thread stacks does not depend on the machine).
const capAS = 4 << 30

// measure runs argv[3:] with RLIMIT_AS set to argv[1] and writes its peak
// resident memory, in KiB, to the file argv[2]. A child of the Go test
// cannot report its own: Go starts children with vfork, so the kernel
// counts the test's peak in theirs. This one forks from a small Python.
const measure = `
import resource, subprocess, sys
cap, out = int(sys.argv[1]), sys.argv[2]
r = subprocess.run(sys.argv[3:], preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))
with open(out, "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(r.returncode if r.returncode >= 0 else 128 - r.returncode)
`

// capped runs name with capAS and stdin, and returns its outputs, its
// error and its peak resident memory in bytes.
func capped(t *testing.T, env []string, stdin, name string, args ...string) (stdout, stderr string, rss uint64, err error) {
	t.Helper()
	rssFile := filepath.Join(t.TempDir(), "rss")
	cmd := exec.Command(need(t, "/usr/bin/python3"), append([]string{"-c", measure, strconv.Itoa(capAS), rssFile, name}, args...)...)
	cmd.Env = append(os.Environ(), append(env, "GOMAXPROCS=2")...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	b, rerr := os.ReadFile(rssFile)
	kib, perr := strconv.ParseUint(string(b), 10, 64)
	if rerr != nil || perr != nil {
		t.Fatalf("%s: no peak RSS measured: %v %v (%v, stderr %.2000s)", name, rerr, perr, err, errb.String())
	}
	return out.String(), errb.String(), kib << 10, err
}

// TestHostileManifestMemory opens manifests of a few hundred kilobytes
// that decode to gigabytes, in the sqlite3 shell as a replica and with
// vfsctl verify, each in a child process under a memory cap: a valid
// manifest of a 1 TiB database of zero chunks (512 MiB of fingerprints)
// must open in at most 2.5 times that, and one that decodes past the
// 2 GiB limit must be refused before it costs more than the decoder's
// window. Before bounded decoding, the first took 5.7 GB in the shell and
// 2.7 GB in verify, the second 8.2 GB in both.
func TestHostileManifestMemory(t *testing.T) {
	shell := need(t, "sqlite3")
	lib := strings.TrimSuffix(extension(t), ".so")
	ctl := vfsctl(t)
	f := newFixture(t)
	env := []string{"BOULE_CONFIG=" + f.cfg()}

	// Chunk 0 is a real database, inline in the manifest: the shell can
	// query it. The other chunks are zeros, never read.
	chunk0 := chunk0DB(t, shell, f.dir)

	write := func(name string, blob []byte) string {
		t.Helper()
		p := filepath.Join(f.dir, name)
		if err := os.WriteFile(p, blob, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	compress := func(s bigmanifest.Spec, declare bool) []byte {
		t.Helper()
		var z bytes.Buffer
		if err := s.Zstd(&z, declare); err != nil {
			t.Fatal(err)
		}
		return z.Bytes()
	}
	tib := bigmanifest.Spec{Size: 1 << 40, First: chunk0}
	over := bigmanifest.Spec{Size: manifest.MaxSize, First: chunk0}
	overStreamed := compress(over, false)
	overDeclared, err := bigmanifest.DeclareSize(overStreamed, uint64(over.EncodedLen()))
	if err != nil {
		t.Fatal(err)
	}
	if over.EncodedLen() <= 1<<31 {
		t.Fatalf("the manifest of %d bytes decodes to %d bytes, not over the limit", over.Size, over.EncodedLen())
	}
	okBound := uint64(tib.EncodedLen())*5/2 + 64<<20
	const refusedBound = 128 << 20

	for _, c := range []struct {
		name  string
		blob  []byte
		ok    bool
		bound uint64
	}{
		{"1 TiB of zero chunks", compress(tib, true), true, okBound},
		{"over the limit", overDeclared, false, refusedBound},
		{"over the limit, size not declared", overStreamed, false, refusedBound},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := write("m.zst", c.blob)
			script := fmt.Sprintf(".load %s\n.open file:%s?vfs=boule_snapshot\nSELECT x FROM t;\n", lib, path)
			out, errs, rss, err := capped(t, env, script, shell, "-batch")
			t.Logf("sqlite3 shell: %d KiB manifest, peak RSS %d MiB", len(c.blob)>>10, rss>>20)
			switch {
			case c.ok && (err != nil || out != "chunk 0\n"):
				t.Errorf("sqlite3 shell: %v, stdout %q, stderr %.2000s; want chunk 0", err, out, errs)
			case !c.ok && !strings.Contains(errs, "database disk image is malformed"):
				t.Errorf("sqlite3 shell: %v, stdout %q, stderr %.2000s; want the open refused as corrupt", err, out, errs)
			}
			if rss > c.bound {
				t.Errorf("sqlite3 shell: peak RSS %d MiB, want at most %d MiB", rss>>20, c.bound>>20)
			}

			// The zero chunk is in no store: verify names it.
			out, errs, rss, err = capped(t, env, "", ctl, "verify", "--manifest", path)
			t.Logf("vfsctl verify: peak RSS %d MiB", rss>>20)
			switch {
			case c.ok && !strings.Contains(errs, "1 of 1 chunks missing"):
				t.Errorf("vfsctl verify: %v, stdout %.2000s, stderr %.2000s; want the zero chunk missing", err, out, errs)
			case !c.ok && (err == nil || !strings.Contains(errs, "corrupt blob")):
				t.Errorf("vfsctl verify: %v, stdout %.2000s, stderr %.2000s; want a corrupt blob", err, out, errs)
			}
			if rss > c.bound {
				t.Errorf("vfsctl verify: peak RSS %d MiB, want at most %d MiB", rss>>20, c.bound>>20)
			}
		})
	}
}

// rssAnonScript is what a shell script ends with to print the shell's
// anonymous resident memory: RssAnon of its /proc status, in KiB, the
// memory the kernel cannot drop without swap.
const rssAnonScript = ".system grep '^RssAnon:' /proc/$PPID/status\n"

// rssAnon parses what rssAnonScript printed into bytes.
func rssAnon(t *testing.T, out string) uint64 {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "RssAnon:" {
			kib, err := strconv.ParseUint(f[1], 10, 64)
			if err == nil {
				return kib << 10
			}
		}
	}
	t.Fatalf("no RssAnon in the shell's output %q", out)
	return 0
}

// TestReplicaManifestAnonMemory opens in the sqlite3 shell a replica of
// a crafted manifest that declares a 1 TiB database (16 million chunks,
// 512 MiB of fingerprints, 104 KiB compressed), queries it, and reads
// the shell's RssAnon: the fingerprint list lies in a file-backed
// mapping that the kernel may evict (snapshot/filemem.go), so anonymous
// memory does not grow with the chunk count. It measured about 1 GiB of
// RssAnon when the manifest was decompressed and decoded into the heap.
// On a file system without room for the list, the open fails with an
// error that says so, and the shell is not killed by SIGBUS.
func TestReplicaManifestAnonMemory(t *testing.T) {
	shell := need(t, "sqlite3")
	lib := strings.TrimSuffix(extension(t), ".so")
	f := newFixture(t)
	env := []string{"BOULE_CONFIG=" + f.cfg(), "TMPDIR=" + t.TempDir()}

	chunk0 := chunk0DB(t, shell, f.dir)
	var z bytes.Buffer
	if err := (bigmanifest.Spec{Size: 1 << 40, First: chunk0}).Zstd(&z, true); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(f.dir, "m.zst")
	if err := os.WriteFile(path, z.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(".load %s\n.open file:%s?vfs=boule_snapshot\nSELECT x FROM t;\n%s", lib, path, rssAnonScript)

	// The shell alone, for the baseline: the same script without the
	// replica.
	base, errs, err := run(t, env, fmt.Sprintf(".load %s\nSELECT 'chunk 0';\n%s", lib, rssAnonScript), shell, "-batch")
	if err != nil {
		t.Fatalf("sqlite3 shell: %v, stderr %.2000s", err, errs)
	}
	idle := rssAnon(t, base)

	out, errs, err := run(t, env, script, shell, "-batch")
	if err != nil || !strings.HasPrefix(out, "chunk 0\n") {
		t.Fatalf("sqlite3 shell: %v, stdout %q, stderr %.2000s; want chunk 0", err, out, errs)
	}
	anon := rssAnon(t, out)
	t.Logf("sqlite3 shell: RssAnon %d MiB with the 1 TiB replica open, %d MiB without", anon>>20, idle>>20)
	// 64 MiB over the shell's own: an eighth of the list.
	if anon > idle+64<<20 {
		t.Errorf("sqlite3 shell: RssAnon %d MiB with a replica of 16 million chunks, %d MiB without; want at most 64 MiB more", anon>>20, idle>>20)
	}

	t.Run("disk full", func(t *testing.T) {
		small := filepath.Join(t.TempDir(), "small")
		testfs.MountTmpfs(t, small, "32m")
		env := []string{"BOULE_CONFIG=" + f.cfg(), "TMPDIR=" + small}
		out, errs, err := run(t, env, script, shell, "-batch")
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() < 0 {
			t.Fatalf("sqlite3 shell killed: %v, stderr %.2000s", err, errs)
		}
		if strings.HasPrefix(out, "chunk 0") || !strings.Contains(errs, "no room for a manifest") || !strings.Contains(errs, "no space left on device") {
			t.Errorf("sqlite3 shell: %v, stdout %q, stderr %.2000s; want the open refused for want of room", err, out, errs)
		}
	})
}

// chunk0DB returns chunk 0 of a small database the sqlite3 shell made in
// dir (a table t holding 'chunk 0'), padded to a whole chunk: crafted
// manifests put it inline, so that the shell can query their replicas.
func chunk0DB(t *testing.T, shell, dir string) []byte {
	t.Helper()
	first := filepath.Join(dir, "first.db")
	if out, err := exec.Command(shell, first, "PRAGMA page_size=4096; CREATE TABLE t(x); INSERT INTO t VALUES ('chunk 0');").CombinedOutput(); err != nil {
		t.Fatalf("sqlite3: %v %s", err, out)
	}
	b, err := os.ReadFile(first)
	if err != nil {
		t.Fatal(err)
	}
	chunk0 := make([]byte, manifest.ChunkSize)
	copy(chunk0, b)
	return chunk0
}
