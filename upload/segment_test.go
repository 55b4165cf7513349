package upload

import (
	"context"
	"errors"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store/storetest"
)

// The spool stages a snapshot's chunks in one segment file, linked under
// each chunk's name. An upload that stops part way releases the chunks it
// uploaded, and only those: the others still read, verified, from the
// segment; once every chunk is uploaded the segment is gone from the
// spool.
func TestUploadReleasesPartOfASegment(t *testing.T) {
	now, fake, u, d := oneTarget(t, "/data/segment.db", func(o *Options) { o.PackChunks = 4 })
	s := d.stageNew(testData(61, 13*manifest.ChunkSize), now.Now())
	staged := d.sp.StagedChunks()
	fps := d.stagedChunks()
	if len(fps) != 12 {
		t.Fatalf("staged %d chunks, want 12", len(fps))
	}
	// Held open, the segment keeps its inode (and its number) once its
	// last name goes: its link count then says it is gone.
	segf, err := os.Open(staged.Path(fps[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer segf.Close()
	seg, err := segf.Stat()
	if err != nil {
		t.Fatal(err)
	}
	for _, fp := range fps[1:] {
		if fi, err := os.Stat(staged.Path(fp)); err != nil || !os.SameFile(fi, seg) {
			t.Fatalf("chunk %s is not in the segment of the others (%v)", fp, err)
		}
	}

	// A background upload goes one pack at a time, in the order of the
	// chunks: the second pack fails.
	packs := 0
	fake.AddHook(func(_ context.Context, op, _ string) error {
		if op == storetest.OpPutPack {
			packs++
			if packs == 2 {
				return errors.New("store is down")
			}
		}
		return nil
	})
	err = u.uploadChunks(context.Background(), u.state(d.dir), staged, nil, s.m, u.bg)
	if err == nil {
		t.Fatal("uploadChunks()=nil, want the store's error")
	}
	left := d.stagedChunks()
	if len(left) != 8 {
		t.Fatalf("%d chunks left staged after one pack of 4 went up, want 8", len(left))
	}
	for _, fp := range s.m.Chunks[1:5] {
		if slices.Contains(left, fp) {
			t.Errorf("chunk %s went up in the first pack and is still staged", fp)
		}
	}
	for _, fp := range left {
		b, err := staged.Read(fp)
		if err != nil || manifest.Sum(b) != fp {
			t.Errorf("Read(%s) of a chunk not uploaded=%d bytes, %v; want its verified bytes", fp, len(b), err)
		}
	}

	fake.ClearHooks()
	mustFlush(t, u, d.dir)
	if left := d.stagedChunks(); len(left) != 0 {
		t.Errorf("%d chunks left staged after the flush, want none", len(left))
	}
	if fi, err := segf.Stat(); err != nil || fi.Sys().(*syscall.Stat_t).Nlink != 0 {
		t.Errorf("the segment has %d names left after all its chunks were uploaded (%v), want 0", fi.Sys().(*syscall.Stat_t).Nlink, err)
	}
	fake.CheckIntegrity(t)
	checkReassembled(t, fake, d, s)
}

// A spool an earlier version left holds a file per chunk, not segments:
// the uploader uploads and releases those chunks as it does segments'.
func TestUploadEarlierChunkFiles(t *testing.T) {
	now, fake, u, d := oneTarget(t, "/data/earlier.db", nil)
	s1 := d.snapshot(testData(71, 6*manifest.ChunkSize), now.Now())
	h := d.publish(spool.InConsuming, s1)
	s2 := d.snapshot(withChunk(s1.data, 2, 72), now.Now().Add(time.Second))
	d.stage(s2, s2.addedTo(s1)...)
	// Rewrite every chunk name as the earlier version wrote it: a file of
	// the chunk's bytes alone.
	for _, c := range []spool.Chunks{h.Chunks(), d.sp.StagedChunks()} {
		fps, err := c.List()
		if err != nil || len(fps) == 0 {
			t.Fatalf("List()=%v, %v; want chunks", fps, err)
		}
		for _, fp := range fps {
			b, err := c.Read(fp)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(c.Path(fp)); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(c.Path(fp), b, 0o444); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got, want := d.sp.StagedChunks().Bytes(), int64(manifest.ChunkSize); got != want {
		t.Errorf("StagedChunks().Bytes()=%d, want %d", got, want)
	}
	mustFlush(t, u, d.dir)
	if left := d.stagedChunks(); len(left) != 0 {
		t.Errorf("%d chunks left staged after the flush, want none", len(left))
	}
	if left := d.snapshots(); len(left) != 0 {
		t.Errorf("snapshots %v left after the flush, want none", left)
	}
	fake.CheckIntegrity(t)
	checkReassembled(t, fake, d, s2)
}
