package upload

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/storetest"
)

// appendWorkload returns the manifest of upload k of a database of size
// bytes to which each upload appends 16 KiB: the last chunk changes at
// every upload, a new one starts every fourth, and chunk 0 (inline, for
// its header) changes too.
func appendWorkload(size int64, k int) *manifest.Manifest {
	const step = 16 << 10
	sz := size + int64(k)*step
	n := manifest.NumChunks(sz)
	m := &manifest.Manifest{
		Hostname: testHost, SourcePath: "/data/append.db", Generator: "delta test",
		Size: sz, PageSize: 4096, ChangeCounter: uint32(k),
		Created: time.Unix(1700000000, 0).Add(time.Duration(k) * time.Second).UTC(),
	}
	m.SourceCtime = m.Created
	m.Chunks = make([]manifest.Fingerprint, n)
	for i := range m.Chunks {
		m.Chunks[i] = manifest.Fingerprint{byte(i), byte(i >> 8), byte(i >> 16), 31: 1}
	}
	m.Chunks[n-1][30] = byte(k) // the last chunk grows at every upload
	m.Chunks[n-1][29] = byte(k >> 8)
	c0 := bytes.Repeat([]byte{byte(k)}, manifest.ChunkSize)
	m.Chunks[0] = manifest.Sum(c0)
	m.Inline = map[uint32][]byte{0: c0}
	return m
}

// TestDeltaBytesPerUpload: for an append workload, the bytes of
// manifests and bases put per upload, the inline chunk 0 aside, stay a
// small fraction of the whole manifest for large databases, and every
// head put reads back as the manifest it stands for. Small databases
// keep whole v1 manifests. The logged table is doc/BENCHMARKS.md's.
func TestDeltaBytesPerUpload(t *testing.T) {
	sizes := []struct {
		name    string
		size    int64
		maxFrac float64 // most bytes per upload, as a fraction of a whole manifest
	}{
		{"10MiB", 10 << 20, 1},
		{"1GiB", 1 << 30, 0.1},
		{"4GiB", 4 << 30, 0.1},
	}
	// BOULE_DELTA_BENCH=1 runs the numbers of doc/BENCHMARKS.md: 1500
	// uploads, and 4 GiB (minutes).
	long := os.Getenv("BOULE_DELTA_BENCH") == "1"
	uploads := 400
	if long {
		uploads = 1500
	}
	ctx := context.Background()
	for _, sz := range sizes {
		t.Run(sz.name, func(t *testing.T) {
			if !long && sz.size > 1<<30 {
				t.Skip("4 GiB takes minutes: BOULE_DELTA_BENCH=1")
			}
			now := storetest.NewClock()
			fake := storetest.NewFake("s3")
			u := newTestUploader(t, uploadOpts(now, target(fake)))
			st := newDBState(spool.OpenDir(t.TempDir()))
			var whole, inline int64
			for k := range uploads {
				m := appendWorkload(sz.size, k)
				mb, err := m.MarshalBinary()
				if err != nil {
					t.Fatal(err)
				}
				whole += int64(len(mb))
				inline += manifest.ChunkSize
				put, _, err := u.storeEncoding(ctx, st, m, mb, u.bg)
				if err != nil {
					t.Fatalf("storeEncoding()=%v", err)
				}
				if err := fake.PutManifest(ctx, "k", put); err != nil {
					t.Fatal(err)
				}
				if k%250 == 0 || k == uploads-1 {
					got, err := store.DecodeManifest(ctx, fake, put, nil)
					if err != nil {
						t.Fatalf("upload %d: DecodeManifest()=%v", k, err)
					}
					if gb, _ := got.MarshalBinary(); !bytes.Equal(gb, mb) {
						t.Fatalf("upload %d: the manifest put reads back as another", k)
					}
				}
			}
			putBytes := fake.BytesPut(storetest.OpPutManifest) + fake.BytesPut(storetest.OpPutBase)
			perUpload := float64(putBytes) / float64(uploads)
			perWhole := float64(whole) / float64(uploads)
			frac := float64(putBytes-inline) / float64(whole-inline)
			t.Logf("%s: whole v1 manifest %.0f bytes per upload; put %.0f bytes per upload (%.0f without the inline chunk 0; bases %d bytes in all)",
				sz.name, perWhole, perUpload, float64(putBytes-inline)/float64(uploads), fake.BytesPut(storetest.OpPutBase))
			if sz.maxFrac == 1 {
				if putBytes != whole {
					t.Errorf("put %d bytes, want the whole manifests' %d: a small database keeps v1", putBytes, whole)
				}
				return
			}
			if frac > sz.maxFrac {
				t.Errorf("bytes per upload beyond the inline chunk = %.3f of a whole manifest's, want at most %.3f", frac, sz.maxFrac)
			}
		})
	}
}

// TestUploaderDeltaManifest: with deltas on, a flush puts a base and a
// head that reads back as the snapshot's manifest; the next flush puts
// a head over the same base; WholeManifests puts v1 only.
func TestUploaderDeltaManifest(t *testing.T) {
	old := deltaMinChunks
	deltaMinChunks = 2
	t.Cleanup(func() { deltaMinChunks = old })
	for _, whole := range []bool{false, true} {
		t.Run(fmt.Sprintf("whole=%v", whole), func(t *testing.T) {
			now, fake, u, d := oneTarget(t, "/data/delta.db", func(o *Options) { o.WholeManifests = whole })
			data := testData(5, 20*manifest.ChunkSize)
			for k := range 3 {
				data = withChunk(data, 3+k, uint64(50+k))
				s := d.stageNew(data, now.Now())
				mustFlush(t, u, d.dir)
				put := fake.ManifestAt(d.key())
				v, err := manifest.FormatVersion(put)
				if err != nil {
					t.Fatal(err)
				}
				if want := map[bool]int{false: 2, true: 1}[whole]; v != want {
					t.Fatalf("flush %d: stored format %d, want %d", k, v, want)
				}
				m, _, err := store.FetchManifest(context.Background(), []store.Store{fake}, d.key())
				if err != nil {
					t.Fatalf("flush %d: FetchManifest()=%v", k, err)
				}
				if gb, _ := m.MarshalBinary(); !bytes.Equal(gb, s.mb) {
					t.Fatalf("flush %d: the stored manifest reads back as another", k)
				}
				now.Advance(time.Second)
			}
			fake.CheckIntegrity(t)
			bases := storetest.CountOps(fake.CallLog(), storetest.OpPutBase)
			if want := map[bool]int{false: 1, true: 0}[whole]; bases != want {
				t.Errorf("%d bases put, want %d", bases, want)
			}
		})
	}
}

// TestUploadedRecordFollowsChange: the spool's record of the last upload
// is what the store got, a head over a base written beside it once, and
// not the whole manifest each time: at 4 GiB that was 2 MiB written to
// the spool per upload, whatever changed. It still reads back as the
// uploaded snapshot, and a restarted uploader still knows it uploaded it.
func TestUploadedRecordFollowsChange(t *testing.T) {
	old := deltaMinChunks
	deltaMinChunks = 4
	t.Cleanup(func() { deltaMinChunks = old })
	const n = 64
	now, fake, u, d := oneTarget(t, "/data/record.db", nil)
	data := testData(7, n*manifest.ChunkSize)
	for k := range 6 {
		data = withChunk(data, 5+k, uint64(70+k))
		s := d.stageNew(data, now.Now())
		mustFlush(t, u, d.dir)
		if m, _, err := store.FetchManifest(context.Background(), []store.Store{fake}, d.key()); err != nil {
			t.Fatalf("upload %d: FetchManifest()=%v", k, err)
		} else if gb, _ := m.MarshalBinary(); !bytes.Equal(gb, s.mb) {
			t.Fatalf("upload %d: the stored manifest reads back as another", k)
		}
		now.Advance(2 * time.Second)
		st, err := os.Stat(d.sp.UploadedFile())
		if err != nil {
			t.Fatal(err)
		}
		// Every record after the first, which comes with the base, leaves
		// out the fingerprints of the chunks that did not change.
		if most := int64(len(s.mb)) - (n-8)*manifest.FingerprintSize; k > 0 && st.Size() > most {
			t.Errorf("upload %d: the spool's record of it is %d bytes, want at most %d (the whole manifest is %d)", k, st.Size(), most, len(s.mb))
		}
		m, err := d.sp.Uploaded()
		if err != nil || m == nil {
			t.Fatalf("upload %d: Uploaded()=%v, %v", k, m, err)
		}
		if got, want := mustPlainID(t, m), spool.ManifestID(s.mb); got != want {
			t.Fatalf("upload %d: the record reads back as another manifest", k)
		}
		if id, _ := d.sp.StagedID(); d.sp.UploadedID() != id {
			t.Fatalf("upload %d: UploadedID() is not the staged snapshot's ID after its upload", k)
		}
	}
	// A new uploader (a restart) finds nothing to upload.
	before := fake.NumCalls()
	mustFlush(t, newTestUploader(t, uploadOpts(now, target(fake))), d.dir)
	if calls := fake.CallsSince(before); storetest.CountOps(calls, storetest.OpPutManifest) != 0 {
		t.Errorf("a restarted uploader put the manifest again: %v", calls)
	}
}
