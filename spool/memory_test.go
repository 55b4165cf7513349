package spool

import (
	"fmt"
	"runtime"
	"testing"
)

// liveHeap returns the bytes of the live Go heap, after a collection.
func liveHeap(t testing.TB) int64 {
	t.Helper()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// TestIdleDatabaseHeap holds what an open database whose snapshot is
// staged keeps in the Go heap between transactions: a process replicates
// thousands of them, and issue #14 allows Boule 64 KiB per database in
// all. The staged manifest it keeps must not hold the bytes of its inline
// chunk (64 KiB), whether it wrote the manifest or read it back.
func TestIdleDatabaseHeap(t *testing.T) {
	const (
		dbs      = 64
		size     = 4 * cs // 256 KiB, as in BenchmarkManyDatabases
		maxPerDB = 16 << 10
	)
	rng := newRand(t)
	sp := openSpool(t, testOptions(t))
	srcs := make([]*fakeSource, dbs)
	for i := range srcs {
		srcs[i] = newDBFile(t, fmt.Sprintf("db-%d.db", i), makeDB(rng, size, 4096), 0o644)
	}
	opened := make([]*DB, dbs)
	base := liveHeap(t)
	perDB := func() int64 {
		n := (liveHeap(t) - base) / dbs
		t.Logf("%d bytes of heap per database", n)
		return n
	}
	for i, src := range srcs {
		db, err := sp.DB(src.path)
		if err != nil {
			t.Fatalf("DB(%q)=%v, want nil", src.path, err)
		}
		opened[i] = db
		mustTxn(t, db, src, rewrite(rng, 2*cs, 100), 2)
	}
	if got := perDB(); got > maxPerDB {
		t.Errorf("after a snapshot each: %d bytes of heap per database, want at most %d", got, maxPerDB)
	}
	// Publish reads the staged manifest back from its file.
	for i, db := range opened {
		if _, err := db.Publish(); err != nil {
			t.Fatalf("Publish() of database %d=%v, want nil", i, err)
		}
	}
	if got := perDB(); got > maxPerDB {
		t.Errorf("after reading the staged manifests: %d bytes of heap per database, want at most %d", got, maxPerDB)
	}
	for i, db := range opened {
		// Still incremental, and still exact: the inline chunk is
		// read anew by each snapshot.
		mustTxn(t, db, srcs[i], rewrite(rng, 3*cs, 100), 3)
		assertExact(t, db, srcs[i])
		if got := db.Stats().Incremental; got != 1 {
			t.Fatalf("Stats().Incremental of database %d=%d, want 1", i, got)
		}
	}
	runtime.KeepAlive(opened)
}
