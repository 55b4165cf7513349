package spool

import (
	"os"
	"testing"
)

// BenchmarkStage64Chunks measures what the persister does for a 4 MiB
// transaction of a bulk load: an incremental snapshot that stages 64 new
// chunks, and its hand-over to ready/, which an uploader then empties
// (not timed). Its cost is the spool's files, not the database: the
// synthetic source costs almost nothing to read.
//
//	go test -run '^$' -bench Stage64Chunks -benchtime 200x ./spool
func BenchmarkStage64Chunks(b *testing.B) {
	const n, per = 4096, 64 // a 256 MiB database, 4 MiB per transaction
	db, src, ctime := synthDB(b, n)
	drain := func() {
		if err := os.RemoveAll(db.readyDir()); err != nil {
			b.Fatal(err)
		}
	}
	drain()
	before := db.Stats()
	b.ResetTimer()
	for i := range b.N {
		ch := Change{Wrote: true, PreOK: true, PreHeader: src.header(), PreSize: int64(n) * cs, PreCtime: ctime}
		idx := []int{0}
		for k := range per {
			idx = append(idx, 1+(i*per+k)%(n-1))
		}
		src.change(idx[1:]...)
		ch.Dirty = dirtyBitmap(idx)
		if err := db.Snapshot(src, ch); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		drain()
		b.StartTimer()
	}
	b.StopTimer()
	after := db.Stats()
	if got := after.ChunksStaged - before.ChunksStaged; got != int64(b.N*per) {
		b.Fatalf("staged %d chunks in %d snapshots, want %d each", got, b.N, per)
	}
}
