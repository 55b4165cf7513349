package snapshot

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/boule-vfs/boule/internal/osuser"
	"github.com/boule-vfs/boule/internal/testchild"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/cache"
	"github.com/boule-vfs/boule/store/dir"
	"golang.org/x/sys/unix"
)

// mappedFiles returns the files this process has mapped, from
// /proc/self/maps.
func mappedFiles(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// chunkBytes returns chunk i of image.
func chunkBytes(image []byte, i int) []byte {
	off := i * manifest.ChunkSize
	return image[off:min(off+manifest.ChunkSize, len(image))]
}

// TestCacheMapsOnlyWhatNobodyElseCanChange: a cache file is mapped (and
// the page cache shared) only when nobody but this process's user can
// change it; otherwise it is read, verified and copied. Either way the
// bytes served are the chunk's.
func TestCacheMapsOnlyWhatNobodyElseCanChange(t *testing.T) {
	for _, tc := range []struct {
		name   string
		spoil  func(t *testing.T, cacheDir, p string)
		mapped bool
	}{
		{"private cache", func(*testing.T, string, string) {}, true},
		{"file with a write bit", func(t *testing.T, _, p string) { chmod(t, p, 0o644) }, false},
		{"shard writable by others", func(t *testing.T, _, p string) { chmod(t, filepath.Dir(p), 0o777) }, false},
		{"cache directory writable by its group", func(t *testing.T, tmpdir, _ string) { chmod(t, tmpdir, 0o770) }, false},
		{"file of another user", func(t *testing.T, _, p string) {
			if err := os.Chown(p, 54321, 54321); err != nil {
				t.Fatal(err)
			}
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if os.Geteuid() != 0 && tc.name == "file of another user" {
				t.Skip("chown takes root")
			}
			f := newFixture(t)
			image := db(51, 3)
			m := publish(t, f.store, "/map.db", image, time.Now())
			want := chunkBytes(image, 1)
			if err := f.cache.PutChunk(context.Background(), m.Chunks[1], want); err != nil {
				t.Fatal(err)
			}
			p := f.cache.Path(m.Chunks[1])
			tc.spoil(t, f.cache.Dir(), p)
			_, c := f.open("/map.db", Options{Prefetch: -1})
			before := f.store.chunks.Load()
			got, err := c.Snapshot().Chunk(context.Background(), 1)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("Chunk(1)=%d bytes, %v, want the chunk's %d bytes", len(got), err, len(want))
			}
			if n := f.store.chunks.Load() - before; n != 0 {
				t.Errorf("the chunk was fetched %d times from the store, want it read from the cache", n)
			}
			if mapped := strings.Contains(mappedFiles(t), p); mapped != tc.mapped {
				t.Errorf("cache file mapped=%v, want %v", mapped, tc.mapped)
			}
		})
	}
}

func chmod(t *testing.T, p string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// Environment of the child process of TestCacheChangedByAnotherUser.
const (
	envCacheChild = "BOULE_TEST_CACHE_CHILD" // "store dir|cache dir|chunk index"
)

// TestCacheChangedByAnotherUser: in a cache directory another user can
// write, a cache file of theirs is verified when a replica first reads it;
// rewriting it in place afterwards must not change what new connections
// read, and truncating it must not kill the reader (SIGBUS).
func TestCacheChangedByAnotherUser(t *testing.T) {
	if v := os.Getenv(envCacheChild); v != "" {
		cacheChild(t, v)
		return
	}
	other := osuser.Other(t)
	for _, tc := range []struct {
		name  string
		shell string // run by the other user on the cache file "$1"
	}{
		{"rewritten in place", `chmod u+w "$1" && printf HACKED | dd of="$1" bs=1 seek=100 conv=notrunc 2>/dev/null`},
		{"truncated", `chmod u+w "$1" && truncate -s 0 "$1"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			image := db(52, 3)
			m := publish(t, f.store, "/shared.db", image, time.Now())
			// The other user's file, in a shard and a cache directory
			// anyone may write.
			if err := f.cache.PutChunk(context.Background(), m.Chunks[1], chunkBytes(image, 1)); err != nil {
				t.Fatal(err)
			}
			p := f.cache.Path(m.Chunks[1])
			chmod(t, f.cache.Dir(), 0o777)
			chmod(t, filepath.Dir(p), 0o777)
			if err := os.Chown(p, other.UID, other.GID); err != nil {
				t.Fatal(err)
			}
			osuser.Reachable(t, filepath.Dir(p))

			// The reader runs in a child process, so that a SIGBUS kills
			// only the child.
			cmd := exec.Command(os.Args[0], "-test.run=^TestCacheChangedByAnotherUser$", "-test.v")
			cmd.Env = append(os.Environ(), envCacheChild+"="+filepath.Join(f.dir, "store")+"|"+f.cache.Dir()+"|1")
			stdin, stdout := testchild.Pipes(t, cmd)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			lines := bufio.NewScanner(stdout)
			var out strings.Builder
			waitFor := func(want string) {
				t.Helper()
				for lines.Scan() {
					out.WriteString(lines.Text() + "\n")
					if lines.Text() == want {
						return
					}
				}
				t.Fatalf("child ended before %q: %v\nstdout:\n%s\nstderr:\n%s", want, cmd.Wait(), out.String(), stderr.String())
			}
			waitFor("verified")
			if _, err := other.Run("sh", "-c", tc.shell, "sh", p); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintln(stdin, "again")
			waitFor("same bytes")
			if err := cmd.Wait(); err != nil {
				t.Fatalf("child: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), stderr.String())
			}
		})
	}
}

// cacheChild is the reader of TestCacheChangedByAnotherUser: it reads the
// chunk once through a replica, says "verified", waits for a line on
// stdin, reads it again through a new connection, and says "same bytes"
// if they are unchanged.
func cacheChild(t *testing.T, arg string) {
	parts := strings.Split(arg, "|")
	ds, err := dir.New(parts[0])
	if err != nil {
		t.Fatal(err)
	}
	cache, err := cache.New(parts[1], 4, 1000)
	if err != nil {
		t.Fatal(err)
	}
	r := NewReader(Options{Remote: []store.Store{ds}, Cache: cache, Hostname: testHost, Prefetch: -1})
	defer r.Close()
	ctx := context.Background()
	c1 := mustOpen(t, r, "boule:///shared.db")
	defer c1.Close()
	first, err := c1.Snapshot().Chunk(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(first)
	fmt.Println("verified")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	c2 := mustOpen(t, r, "boule:///shared.db")
	defer c2.Close()
	got, err := c2.Snapshot().Chunk(ctx, 1)
	if err != nil {
		t.Fatalf("chunk 1 through a new connection: %v", err)
	}
	if !bytes.Equal(got, want) || manifest.Sum(got) != c2.Snapshot().M.Chunks[1] {
		t.Fatalf("chunk 1 through a new connection changed: %q…", got[:min(len(got), 120)])
	}
	fmt.Println("same bytes")
}

// TestChunkFIFO: a named pipe at a chunk's name in the local cache or in
// a read_only directory is refused at once, named, and the chunk is read
// from the store; without the store the error names the pipe.
func TestChunkFIFO(t *testing.T) {
	for _, where := range []string{"local cache", "read_only directory"} {
		for _, inStore := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s, in the store %v", where, inStore), func(t *testing.T) {
				f := newFixture(t)
				image := db(53, 3)
				m := publish(t, f.store, "/fifo.db", image, time.Now())
				ro := ReadOnlyDir{Dir: filepath.Join(f.dir, "seed")}
				p := ro.path(m.Chunks[1])
				if where == "local cache" {
					p = f.cache.Path(m.Chunks[1])
				}
				if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := syscall.Mkfifo(p, 0o600); err != nil {
					t.Fatal(err)
				}
				if !inStore {
					if err := os.Remove(filepath.Join(f.dir, "store", "chunks", store.ChunkKey(m.Chunks[1]))); err != nil {
						t.Fatal(err)
					}
				}
				_, c := f.open("/fifo.db", Options{Prefetch: -1, ReadOnly: []ReadOnlyDir{ro}})
				type result struct {
					b   []byte
					err error
				}
				done := make(chan result, 1)
				go func() {
					b, err := c.Snapshot().Chunk(context.Background(), 1)
					done <- result{b, err}
				}()
				var res result
				select {
				case res = <-done:
				case <-time.After(10 * time.Second):
					// Let the blocked open go, so that the test can end.
					if w, err := os.OpenFile(p, os.O_WRONLY, 0); err == nil {
						w.Close()
					}
					t.Fatalf("reading a chunk whose %s file is a named pipe blocked", where)
				}
				if inStore {
					if res.err != nil || !bytes.Equal(res.b, chunkBytes(image, 1)) {
						t.Fatalf("Chunk(1)=%d bytes, %v, want the chunk from the store", len(res.b), res.err)
					}
					return
				}
				if res.err == nil || !strings.Contains(res.err.Error(), p+": is a named pipe") {
					t.Fatalf("Chunk(1)=%v, want an error naming the named pipe %s", res.err, p)
				}
				if fi, err := os.Lstat(p); err != nil || fi.Mode().Type() != os.ModeNamedPipe {
					t.Errorf("the named pipe was removed or replaced: %v %v", fi, err)
				}
			})
		}
	}
}

// TestCacheFileWrittenHereIsKnown: a chunk this process fetched, verified
// and wrote to the cache is mapped from its file later without being
// hashed again, but only while the file is the one it wrote, unchanged: a
// file rewritten in place or replaced since is verified, and its damage
// found (the chunk is fetched again).
func TestCacheFileWrittenHereIsKnown(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spoil func(t *testing.T, p string, garbage []byte)
		known bool // the file is still the one written
	}{
		{"unchanged", func(*testing.T, string, []byte) {}, true},
		{"rewritten in place", func(t *testing.T, p string, garbage []byte) {
			before, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			chmod(t, p, 0o600)
			if err := os.WriteFile(p, garbage, 0o600); err != nil {
				t.Fatal(err)
			}
			chmod(t, p, 0o400)
			// The change time has the file system's clock's resolution:
			// chmod again until it shows a change (the owner rewriting
			// the file within one tick of its creation is trusted, as
			// for a mapped file; see loadCached).
			for ctime(t, p) == statCtime(before) {
				chmod(t, p, 0o400)
			}
		}, false},
		{"replaced", func(t *testing.T, p string, garbage []byte) {
			tmp := p + ".new"
			if err := os.WriteFile(tmp, garbage, 0o400); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, p); err != nil {
				t.Fatal(err)
			}
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			image := db(61, 3)
			m := publish(t, f.store, "/known.db", image, time.Now())
			want := chunkBytes(image, 1)
			r, c := f.open("/known.db", Options{Prefetch: -1})
			if got, err := c.Snapshot().Chunk(context.Background(), 1); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("Chunk(1)=%d bytes, %v, want the chunk's %d bytes", len(got), err, len(want))
			}
			c.Close() // lets the chunk go: the next read maps the cache file
			r.flushCache()
			p := f.cache.Path(m.Chunks[1])
			st, err := os.Stat(p)
			if err != nil {
				t.Fatalf("the chunk was not cached: %v", err)
			}
			if !r.written.same(m.Chunks[1], stampFile(t, st)) {
				t.Fatalf("written.same(the file just written)=false, want true")
			}
			garbage := bytes.Repeat([]byte{0xa5}, len(want))
			tc.spoil(t, p, garbage)
			if st, err = os.Stat(p); err != nil {
				t.Fatal(err)
			}
			if got := r.written.same(m.Chunks[1], stampFile(t, st)); got != tc.known {
				t.Errorf("written.same()=%v after the change, want %v", got, tc.known)
			}

			before := f.store.chunks.Load()
			c = mustOpen(t, r, "boule:///known.db")
			defer c.Close()
			if got, err := c.Snapshot().Chunk(context.Background(), 1); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("Chunk(1) after the change=%d bytes, %v, want the chunk's %d bytes", len(got), err, len(want))
			}
			fetched := f.store.chunks.Load() - before
			if tc.known && fetched != 0 {
				t.Errorf("the chunk was fetched %d times from the store, want it read from the cache", fetched)
			}
			if !tc.known && fetched == 0 {
				t.Errorf("the damaged cache file was served: fetched 0 times from the store, want 1")
			}
		})
	}
}

func ctime(t *testing.T, p string) syscall.Timespec {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		return syscall.Timespec{}
	}
	return statCtime(fi)
}

func statCtime(fi os.FileInfo) syscall.Timespec { return fi.Sys().(*syscall.Stat_t).Ctim }

// TestClosedReaderKeepsNoSlab: once its connections and the reader are
// closed, a reader that copied chunks into slabs gives every slab back.
func TestClosedReaderKeepsNoSlab(t *testing.T) {
	f := newFixture(t)
	image := db(71, 3)
	publish(t, f.store, "/slabs.db", image, time.Now())
	r, c := f.open("/slabs.db", Options{Prefetch: -1})
	for i := range len(c.Snapshot().M.Chunks) {
		if _, err := c.Snapshot().Chunk(context.Background(), i); err != nil {
			t.Fatal(err)
		}
	}
	if n := r.slabs.count(); n == 0 {
		t.Fatal("slabs.count()=0 with chunks copied, want at least 1: the test proves nothing")
	}
	c.Close()
	r.Close()
	if n := r.slabs.count(); n != 0 {
		t.Errorf("slabs.count() after Close=%d, want 0", n)
	}
}

// TestUnmapFilesRuns: mappings released together that are adjacent in
// memory are unmapped with one call per run (one call per mapping was a
// quarter of a warm scan's time for a replica larger than the chunks
// held); a mapping between them that is still held stays mapped.
func TestUnmapFilesRuns(t *testing.T) {
	const size = manifest.ChunkSize
	for _, tc := range []struct {
		name    string
		release []int // of four adjacent regions
		calls   int
	}{
		{"one run, out of order", []int{2, 0, 1}, 1},
		{"two runs around a held one", []int{0, 2, 3}, 2},
		{"alone", []int{1}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ptr, err := unix.MmapPtr(-1, 0, nil, 4*size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
			if err != nil {
				t.Fatal(err)
			}
			all := unsafe.Slice((*byte)(ptr), 4*size)
			var regions [][]byte
			released := map[int]bool{}
			for _, k := range tc.release {
				regions = append(regions, all[k*size:(k+1)*size])
				released[k] = true
			}
			if got := unmapFiles(regions); got != tc.calls {
				t.Errorf("unmapFiles(regions %v)=%d calls, want %d", tc.release, got, tc.calls)
			}
			for k := range 4 {
				if !released[k] {
					all[k*size] = 1 // still mapped: no fault
					_ = unix.MunmapPtr(unsafe.Pointer(&all[k*size]), size)
				}
			}
		})
	}
}
