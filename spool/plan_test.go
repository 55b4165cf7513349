package spool

import (
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/boule-vfs/boule/manifest"
)

func TestPlanReads(t *testing.T) {
	const c = manifest.ChunkSize
	prev := func(size int64) *manifest.Manifest {
		return &manifest.Manifest{Size: size, Chunks: make([]manifest.Fingerprint, manifest.NumChunks(size))}
	}
	bits := func(idx ...int) []uint64 { return dirtyBitmap(idx) }
	for _, tc := range []struct {
		name  string
		prev  *manifest.Manifest
		size  int64
		dirty []uint64
		want  []int
	}{
		{"rebuild reads every chunk", nil, 3*c + 10, bits(1), []int{0, 1, 2, 3}},
		{"rebuild of an empty file", nil, 0, nil, []int{}},
		{"dirty chunks and the inline one", prev(5 * c), 5 * c, bits(3, 1), []int{0, 1, 3}},
		{"dirty beyond the end are dropped", prev(2 * c), 2 * c, bits(1, 70), []int{0, 1}},
		{"growth reads the old last chunk and the new ones", prev(2*c + 5), 4 * c, bits(), []int{0, 2, 3}},
		{"shrink reads the new last chunk", prev(4 * c), 2*c + 7, bits(), []int{0, 2}},
		{"no change still reads the inline chunk", prev(3 * c), 3 * c, nil, []int{0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := planReads(tc.prev, tc.size, tc.dirty); !slices.Equal(got, tc.want) {
				t.Errorf("planReads()=%v, want %v", got, tc.want)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	var hdr [HeaderSize]byte
	copy(hdr[:], sqliteMagic)
	hdr[24] = 7
	other := hdr
	other[24] = 8
	at := time.Unix(1700000000, 5).UTC()
	staged := &cached{m: &manifest.Manifest{VersionID: versionID(hdr), Size: 4096, SourceCtime: at}}
	f := fileState{size: 4096, hdr: hdr, ctime: at}
	pre := Change{Wrote: true, PreOK: true, PreHeader: hdr, PreSize: 4096, PreCtime: at}
	clean := func() bool { return false }
	set := func() bool { return true }
	for _, tc := range []struct {
		name   string
		cur    *cached
		ch     Change
		f      fileState
		marker func() bool
		want   action
	}{
		{"nothing staged", nil, pre, f, clean, actRebuild},
		{"forced", staged, Change{Wrote: true, Force: true, PreOK: true, PreHeader: hdr, PreSize: 4096, PreCtime: at}, f, clean, actRebuild},
		{"write on the staged state", staged, pre, f, clean, actIncremental},
		{"write without the state before", staged, Change{Wrote: true}, f, clean, actRebuild},
		{"write after another program's", staged, Change{Wrote: true, PreOK: true, PreHeader: other, PreSize: 4096, PreCtime: at}, f, clean, actRebuild},
		{"write after a resize", staged, Change{Wrote: true, PreOK: true, PreHeader: hdr, PreSize: 8192, PreCtime: at}, f, clean, actRebuild},
		{"write after a ctime change", staged, Change{Wrote: true, PreOK: true, PreHeader: hdr, PreSize: 4096, PreCtime: at.Add(1)}, f, clean, actRebuild},
		{"read, up to date", staged, Change{}, f, clean, actNone},
		{"read, marker set", staged, Change{}, f, set, actRebuild},
		{"read, another program wrote", staged, Change{}, fileState{size: 4096, hdr: other, ctime: at}, clean, actRebuild},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := classify(tc.cur, tc.ch, tc.f, tc.marker); got != tc.want {
				t.Errorf("classify()=%v, want %v", got, tc.want)
			}
		})
	}
}

// TestPlanReadsFromFollowsChange: planning the reads of a commit, which
// happens on the commit path, allocates for the chunks it reads and not
// for the size of the database. It used to build a fingerprint list of
// the whole database to call planReads: 2 MiB per commit at 4 GiB.
func TestPlanReadsFromFollowsChange(t *testing.T) {
	const c = manifest.ChunkSize
	perCall := func(size int64) uint64 {
		dirty := dirtyBitmap([]int{3, 17})
		const calls = 50
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range calls {
			if got := planReadsFrom(size, size, dirty); len(got) != 3 {
				t.Fatalf("planReadsFrom(%d)=%v, want 3 chunks", size, got)
			}
		}
		runtime.ReadMemStats(&after)
		return (after.TotalAlloc - before.TotalAlloc) / calls
	}
	small, large := perCall(160*c), perCall(65536*c) // 10 MiB, 4 GiB
	if large > 4<<10 {
		t.Fatalf("planReadsFrom at 4 GiB allocates %d bytes per commit (%d at 10 MiB); want under 4 KiB, whatever the size", large, small)
	}
}
