package restore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boule-vfs/boule/internal/testfs"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/cache"
	"github.com/boule-vfs/boule/store/storetest"
)

// chunkSource serves synthetic chunks: chunk fp[0..1] is filled with
// fp[2]; it fails for bad, and counts calls.
type chunkSource struct {
	store.Store
	bad   manifest.Fingerprint
	calls atomic.Int64
	delay time.Duration
}

func (c *chunkSource) GetChunk(ctx context.Context, fp manifest.Fingerprint) ([]byte, error) {
	c.calls.Add(1)
	if c.delay > 0 {
		time.Sleep(c.delay)
	}
	if fp == c.bad {
		return nil, errors.New("boom")
	}
	return bytes.Repeat([]byte{fp[2]}, manifest.ChunkSize), nil
}

func (c *chunkSource) String() string { return "synthetic" }

// synthetic returns a manifest of n chunks where chunk i is filled with
// byte i%7 (so chunks repeat every 7).
func synthetic(n int) *manifest.Manifest {
	m := &manifest.Manifest{Size: int64(n) * manifest.ChunkSize, Chunks: make([]manifest.Fingerprint, n)}
	for i := range m.Chunks {
		m.Chunks[i][0], m.Chunks[i][1], m.Chunks[i][2] = byte(i%7), 1, byte(i%7)
	}
	return m
}

func TestRestoreOrderAndDedup(t *testing.T) {
	m := synthetic(200)
	src := &chunkSource{}
	var buf bytes.Buffer
	var last int64
	err := Write(context.Background(), []store.Store{src}, m, &buf, Options{Concurrency: 8, Progress: func(done, total int64) {
		if done <= last || total != m.Size {
			t.Errorf("progress %d/%d after %d", done, total, last)
		}
		last = done
	}})
	if err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	if int64(len(b)) != m.Size || last != m.Size {
		t.Fatalf("restored %d bytes, progress %d, want %d", len(b), last, m.Size)
	}
	for i := range 200 {
		if b[i*manifest.ChunkSize] != byte(i%7) || b[(i+1)*manifest.ChunkSize-1] != byte(i%7) {
			t.Fatalf("chunk %d out of place", i)
		}
	}
	if n := src.calls.Load(); n >= 200 {
		t.Errorf("%d fetches for 200 chunks with 7 distinct, want fewer", n)
	}
}

// TestRestoreFailsFast: a failed fetch or write ends the restore with the
// error, promptly, whatever the database size.
func TestRestoreFailsFast(t *testing.T) {
	m := synthetic(300)
	for _, tc := range []struct {
		name string
		src  *chunkSource
		w    io.Writer
		want string
	}{
		{"fetch", &chunkSource{bad: m.Chunks[5]}, io.Discard, "boom"},
		{"write", &chunkSource{}, failingWriter{after: 10}, "disk full"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				done <- Write(context.Background(), []store.Store{tc.src}, m, tc.w, Options{Concurrency: 2})
			}()
			select {
			case err := <-done:
				if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
					t.Fatalf("Restore()=%v, want %q", err, tc.want)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("Restore hung after a failure")
			}
		})
	}
}

type failingWriter struct{ after int }

var writes atomic.Int64

func (f failingWriter) Write(p []byte) (int, error) {
	if writes.Add(1) > int64(f.after) {
		return 0, errors.New("disk full")
	}
	return len(p), nil
}

// packedStore returns a fake store holding a database of n random chunks
// (chunk 0 inline), with chunks 1 to n-2 in packs of per chunks and the
// last one alone, and the manifest that describes it.
func packedStore(t *testing.T, n, per int) (*storetest.Fake, *manifest.Manifest, []byte) {
	t.Helper()
	ctx := context.Background()
	s := storetest.NewFake("packs")
	data := storetest.RandomBytes(90, n*manifest.ChunkSize-5)
	m := &manifest.Manifest{Hostname: "h", SourcePath: "/p.db", Size: int64(len(data)), Created: time.Unix(1, 0)}
	var chunks []store.PackedChunk
	for i := range manifest.NumChunks(m.Size) {
		c := data[i*manifest.ChunkSize : i*manifest.ChunkSize+manifest.ChunkLen(m.Size, i)]
		m.Chunks = append(m.Chunks, manifest.Sum(c))
		switch {
		case i == 0:
			m.Inline = map[uint32][]byte{0: c}
		case i == n-1:
			if err := s.PutChunk(ctx, m.Chunks[i], c); err != nil {
				t.Fatal(err)
			}
		default:
			chunks = append(chunks, store.PackedChunk{FP: m.Chunks[i], Data: c})
		}
	}
	placed := map[manifest.Fingerprint]manifest.PackRef{}
	for len(chunks) > 0 {
		k := min(per, len(chunks))
		blob, id, refs := store.EncodePack(chunks[:k])
		if err := s.PutPack(ctx, id, blob); err != nil {
			t.Fatal(err)
		}
		for j, c := range chunks[:k] {
			placed[c.FP] = refs[j]
		}
		chunks = chunks[k:]
	}
	return s, withPacks(m, placed), data
}

// TestRestorePacks: a packed database restores byte for byte with one GET
// per pack; a damaged pack member is an error, unless a cache has the
// chunk.
func TestRestorePacks(t *testing.T) {
	ctx := context.Background()
	s, m, data := packedStore(t, 100, 32) // packs of 32, 32, 32, 2 and a lone chunk
	if len(m.Packs) != 4 {
		t.Fatalf("%d packs, want 4", len(m.Packs))
	}
	var buf bytes.Buffer
	if err := Write(ctx, []store.Store{s}, m, &buf, Options{Concurrency: 3}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), data) {
		t.Fatal("restored bytes differ")
	}
	calls := s.CallLog()
	if g, c := storetest.CountOps(calls, storetest.OpGetPack), storetest.CountOps(calls, storetest.OpGetChunk); g != 4 || c != 1 {
		t.Errorf("%d pack and %d chunk GETs, want 4 and 1; calls %v", g, c, calls)
	}

	// Flip a byte of chunk 40's blob in its pack.
	ref := m.PackRefs()[40]
	s.FlipPackByte(ref.ID, int(ref.Offset+ref.Length/2))
	err := Write(ctx, []store.Store{s}, m, io.Discard, Options{})
	if !errors.Is(err, store.ErrCorrupt) || !strings.Contains(err.Error(), "chunk 40") {
		t.Fatalf("Restore with a damaged pack member: %v, want ErrCorrupt naming chunk 40", err)
	}
	// A cache that holds the chunk heals the restore.
	cache, err := cache.New(t.TempDir(), 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.PutChunk(ctx, m.Chunks[40], data[40*manifest.ChunkSize:41*manifest.ChunkSize]); err != nil {
		t.Fatal(err)
	}
	buf.Reset()
	if err := Write(ctx, []store.Store{cache, s}, m, &buf, Options{}); err != nil || !bytes.Equal(buf.Bytes(), data) {
		t.Fatalf("Restore with the chunk cached: %v (equal %v)", err, bytes.Equal(buf.Bytes(), data))
	}
	// FetchChunk and Reassemble read packs too.
	if got, err := store.FetchChunk(ctx, []store.Store{s}, m, 77); err != nil || !bytes.Equal(got, data[77*manifest.ChunkSize:78*manifest.ChunkSize]) {
		t.Errorf("FetchChunk(77): %v", err)
	}
	s.DeletePack(m.PackRefs()[70].ID)
	if _, err := store.FetchChunk(ctx, []store.Store{s}, m, 70); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("FetchChunk of a chunk whose pack is gone: %v, want ErrNotFound", err)
	}
}

// TestRestoreFragmentedPack: a pack whose chunks were partly replaced by
// later uploads is cut into several segments, and still fetched once.
func TestRestoreFragmentedPack(t *testing.T) {
	ctx := context.Background()
	s := storetest.NewFake("frag")
	data := storetest.RandomBytes(91, 9*manifest.ChunkSize)
	m := &manifest.Manifest{Hostname: "h", SourcePath: "/f.db", Size: int64(len(data)), Created: time.Unix(1, 0)}
	var all []store.PackedChunk
	for i := range 9 {
		c := data[i*manifest.ChunkSize : (i+1)*manifest.ChunkSize]
		m.Chunks = append(m.Chunks, manifest.Sum(c))
		if i == 0 {
			m.Inline = map[uint32][]byte{0: c}
		} else {
			all = append(all, store.PackedChunk{FP: m.Chunks[i], Data: c})
		}
	}
	// P holds chunks 1 to 8; Q, uploaded later, chunks 3 and 6.
	pBlob, pID, pRefs := store.EncodePack(all)
	qBlob, qID, qRefs := store.EncodePack([]store.PackedChunk{all[2], all[5]})
	for _, p := range []struct {
		id   manifest.Fingerprint
		blob []byte
	}{{pID, pBlob}, {qID, qBlob}} {
		if err := s.PutPack(ctx, p.id, p.blob); err != nil {
			t.Fatal(err)
		}
	}
	var pm, qm []manifest.PackMember
	for i := 1; i <= 8; i++ {
		switch i {
		case 3:
			qm = append(qm, manifest.PackMember{Index: 3, Offset: qRefs[0].Offset, Length: qRefs[0].Length})
		case 6:
			qm = append(qm, manifest.PackMember{Index: 6, Offset: qRefs[1].Offset, Length: qRefs[1].Length})
		default:
			pm = append(pm, manifest.PackMember{Index: uint32(i), Offset: pRefs[i-1].Offset, Length: pRefs[i-1].Length})
		}
	}
	m.Packs = []manifest.Pack{{ID: pID, Members: pm}, {ID: qID, Members: qm}}
	if bytes.Compare(pID[:], qID[:]) > 0 {
		m.Packs[0], m.Packs[1] = m.Packs[1], m.Packs[0]
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	if n := len(segments(m)); n != 6 {
		t.Fatalf("%d segments, want 6 (chunk 0, then P, Q, P, Q, P)", n)
	}
	for _, conc := range []int{1, 4} {
		before := len(s.CallLog())
		var buf bytes.Buffer
		if err := Write(ctx, []store.Store{s}, m, &buf, Options{Concurrency: conc}); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf.Bytes(), data) {
			t.Fatalf("concurrency %d: restored bytes differ", conc)
		}
		if n := storetest.CountOps(s.CallLog()[before:], storetest.OpGetPack); n != 2 {
			t.Errorf("concurrency %d: %d pack GETs, want 2", conc, n)
		}
	}
}

// TestRestoreFileRefusesNonRegular: RestoreFile replaces a regular file
// when told to, refuses it otherwise, and refuses anything else at the
// path (a FIFO, a directory, a symbolic link) even when told to replace,
// leaving it as it was and fetching nothing.
func TestRestoreFileRefusesNonRegular(t *testing.T) {
	m := synthetic(3)
	for _, tc := range []struct {
		name string
		make func(t *testing.T, p string)
		kind string // "" when the restore must succeed
	}{
		{"regular file", func(t *testing.T, p string) { writeFile(t, p, "old") }, ""},
		{"regular file, not to be replaced", func(t *testing.T, p string) { writeFile(t, p, "old") }, "exists"},
		{"absent", func(t *testing.T, p string) {}, ""},
		{"fifo", func(t *testing.T, p string) { testfs.Mkfifo(t, p) }, "a named pipe (FIFO)"},
		{"directory", func(t *testing.T, p string) {
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}, "a directory"},
		{"symlink", func(t *testing.T, p string) {
			writeFile(t, p+".target", "old")
			if err := os.Symlink(p+".target", p); err != nil {
				t.Fatal(err)
			}
		}, "a symbolic link"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "out.db")
			tc.make(t, p)
			before, _ := os.Lstat(p)
			src := &chunkSource{}
			replace := tc.kind != "exists"
			err := File(context.Background(), []store.Store{src}, m, p, Options{Replace: replace})
			if tc.kind == "" {
				if err != nil {
					t.Fatalf("RestoreFile()=%v, want nil", err)
				}
				if st, err := os.Lstat(p); err != nil || !st.Mode().IsRegular() || st.Size() != m.Size {
					t.Fatalf("after RestoreFile, %s: %v, %v; want a regular file of %d bytes", p, st, err, m.Size)
				}
				return
			}
			switch {
			case !replace:
				if !errors.Is(err, ErrOutputExists) || !strings.Contains(err.Error(), p+"; refusing to replace it") {
					t.Fatalf("RestoreFile()=%v, want ErrOutputExists naming %s", err, p)
				}
			case !errors.Is(err, ErrNotRegularFile) || !strings.Contains(err.Error(), p+" is "+tc.kind):
				t.Fatalf("RestoreFile()=%v, want ErrNotRegularFile saying %s is %s", err, p, tc.kind)
			}
			after, lerr := os.Lstat(p)
			if lerr != nil || after.Mode() != before.Mode() || !os.SameFile(before, after) {
				t.Fatalf("RestoreFile changed %s: %v, %v; want it untouched (%v)", p, after, lerr, before.Mode())
			}
			if n := src.calls.Load(); n != 0 {
				t.Errorf("RestoreFile fetched %d chunks before refusing", n)
			}
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				if strings.Contains(e.Name(), "boule-restore") {
					t.Errorf("RestoreFile left %s behind", e.Name())
				}
			}
		})
	}
}

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// secondStore keeps manifest versions and reports their times truncated
// to the second, as S3 listings do.
type secondStore struct {
	store.Store
	vs     []store.Version // newest first
	bodies map[string][]byte
}

// tinyManifest returns the encoded manifest of h:/a.db, a 100-byte
// database of the byte fill, created and with the source ctime given.
func tinyManifest(t testing.TB, fill byte, created, ctime time.Time) []byte {
	t.Helper()
	data := bytes.Repeat([]byte{fill}, 100)
	m := &manifest.Manifest{Hostname: "h", SourcePath: "/a.db", Generator: "test", Size: 100,
		Created: created, SourceCtime: ctime,
		Chunks: []manifest.Fingerprint{manifest.Sum(data)}, Inline: map[uint32][]byte{0: data}}
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// add appends version i, older than those added before it: a 100-byte
// database of byte i, created and with the source ctime given, that the
// store dates stored.
func (s *secondStore) add(t testing.TB, i int, created, ctime, stored time.Time) {
	t.Helper()
	id := string(rune('a' + i))
	s.bodies[id] = tinyManifest(t, byte(i), created, ctime)
	s.vs = append(s.vs, store.Version{ID: id, LastModified: stored})
}

func (s *secondStore) ManifestVersions(ctx context.Context, key string) ([]store.Version, error) {
	return s.vs, nil
}

func (s *secondStore) GetManifestVersion(ctx context.Context, key, id string) ([]byte, error) {
	return s.bodies[id], nil
}

func (s *secondStore) String() string { return "seconds" }

// TestManifestAtWithinASecond: with store times truncated to the second,
// --at picks the version that was the newest at that instant, not one
// stored later within the same second.
func TestManifestAtWithinASecond(t *testing.T) {
	base := time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)
	s := &secondStore{bodies: map[string][]byte{}}
	for i, off := range []time.Duration{700 * time.Millisecond, 100 * time.Millisecond, -2 * time.Second} {
		s.add(t, i, base.Add(off), base.Add(off), base.Add(off).Truncate(time.Second))
	}
	for _, tc := range []struct {
		at   time.Duration
		want time.Duration
	}{
		{300 * time.Millisecond, 100 * time.Millisecond},
		{800 * time.Millisecond, 700 * time.Millisecond},
		{50 * time.Millisecond, -2 * time.Second},
		{5 * time.Second, 700 * time.Millisecond},
	} {
		m, _, _, err := ManifestAt(context.Background(), []store.Store{s}, "k", base.Add(tc.at))
		if err != nil {
			t.Fatal(err)
		}
		if !m.Created.Equal(base.Add(tc.want)) {
			t.Errorf("at +%v: the version created at %v, want +%v", tc.at, m.Created.Sub(base), tc.want)
		}
	}
}

// withPacks returns m with the pack table that places its chunks as
// placed says.
func withPacks(m *manifest.Manifest, placed map[manifest.Fingerprint]manifest.PackRef) *manifest.Manifest {
	byID := map[manifest.Fingerprint][]manifest.PackMember{}
	for i, fp := range m.Chunks {
		if ref, ok := placed[fp]; ok && m.Inline[uint32(i)] == nil {
			byID[ref.ID] = append(byID[ref.ID], manifest.PackMember{Index: uint32(i), Offset: ref.Offset, Length: ref.Length})
		}
	}
	out := *m
	for id, members := range byID {
		out.Packs = append(out.Packs, manifest.Pack{ID: id, Members: members})
	}
	slices.SortFunc(out.Packs, func(a, b manifest.Pack) int { return bytes.Compare(a.ID[:], b.ID[:]) })
	return &out
}
