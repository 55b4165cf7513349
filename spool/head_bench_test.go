package spool

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// synthSource is a database of n chunks that holds no more than a version
// number per chunk: chunk i is its index and version, then zeros, so that
// a benchmark can snapshot a 4 GiB database in a few MiB of memory.
type synthSource struct {
	mu  sync.Mutex
	ver []uint32
	hdr [HeaderSize]byte
}

func newSynthSource(n int) *synthSource {
	s := &synthSource{ver: make([]uint32, n)}
	copy(s.hdr[:], sqliteMagic)
	binary.BigEndian.PutUint16(s.hdr[16:], 4096)
	s.hdr[18], s.hdr[19] = 1, 1
	binary.BigEndian.PutUint32(s.hdr[28:], uint32(int64(n)*cs/4096))
	return s
}

func (s *synthSource) Size() (int64, error)    { return int64(len(s.ver)) * cs, nil }
func (s *synthSource) Reserved() (bool, error) { return false, nil }

func (s *synthSource) ReadAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	size := int64(len(s.ver)) * cs
	if off >= size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), size-off))
	clear(p[:n])
	for k := 0; k < n; {
		at := off + int64(k)
		i, rel := at/cs, int(at%cs)
		var head [HeaderSize]byte
		if i == 0 {
			head = s.hdr
		} else {
			binary.BigEndian.PutUint64(head[:], uint64(i))
			binary.BigEndian.PutUint32(head[8:], s.ver[i])
		}
		end := min(n, k+cs-rel)
		if rel < HeaderSize {
			copy(p[k:end], head[rel:])
		}
		k = end
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// change gives the chunks idx new content and bumps the change counter.
func (s *synthSource) change(idx ...int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, i := range idx {
		s.ver[i]++
	}
	binary.BigEndian.PutUint32(s.hdr[24:], binary.BigEndian.Uint32(s.hdr[24:])+1)
}

func (s *synthSource) header() (h [HeaderSize]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hdr
}

// BenchmarkSnapshotManifest measures an incremental snapshot of two
// changed chunks (and chunk 0) at database sizes up to 4 GiB, with the
// staged manifest written whole (format v1, as before heads) and as a head
// over a base, side by side: the time and the spool bytes a snapshot
// writes should follow the change, not the size.
//
//	go test -run '^$' -bench SnapshotManifest -benchtime 2000x ./spool
func BenchmarkSnapshotManifest(b *testing.B) {
	for _, n := range []int{160, 16384, 65536} { // 10 MiB, 1 GiB, 4 GiB
		for _, form := range []string{"whole", "head"} {
			b.Run(fmt.Sprintf("size=%dMiB/form=%s", n/16, form), func(b *testing.B) {
				old := headMinChunks
				headMinChunks = 2048
				if form == "whole" {
					headMinChunks = 1 << 30
				}
				b.Cleanup(func() { headMinChunks = old })
				benchSnapshots(b, n)
			})
		}
	}
}

// synthDB returns a spool database of n synthetic chunks in a fresh
// spool, its source, and the change time of its file, after a first full
// snapshot.
func synthDB(b *testing.B, n int) (*DB, *synthSource, time.Time) {
	dir := b.TempDir()
	sp, err := Open(Options{Dir: filepath.Join(dir, "spool"), BootID: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(dir, "synth.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		b.Fatal(err)
	}
	db, err := sp.DB(path)
	if err != nil {
		b.Fatal(err)
	}
	src := newSynthSource(n)
	if err := db.Snapshot(src, Change{Wrote: true, Force: true}); err != nil {
		b.Fatal(err)
	}
	return db, src, ctimeOf(b, path)
}

func benchSnapshots(b *testing.B, n int) {
	db, src, ctime := synthDB(b, n)
	rng := rand.New(rand.NewPCG(1, 2))
	before := db.Stats()
	b.ResetTimer()
	for range b.N {
		ch := Change{Wrote: true, PreOK: true, PreHeader: src.header(), PreSize: int64(n) * cs, PreCtime: ctime}
		x, y := 1+rng.IntN(n-1), 1+rng.IntN(n-1)
		src.change(x, y)
		ch.Dirty = dirtyBitmap([]int{0, x, y})
		if err := db.Snapshot(src, ch); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	after := db.Stats()
	if got := after.Incremental - before.Incremental; got != int64(b.N) {
		b.Fatalf("%d incremental snapshots of %d", got, b.N)
	}
	b.ReportMetric(float64(after.ManifestBytes-before.ManifestBytes)/float64(b.N)/1024, "manifest-KiB/op")
	b.ReportMetric(float64(after.BytesStaged-before.BytesStaged)/float64(b.N)/1024, "chunk-KiB/op")
}
