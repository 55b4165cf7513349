package replicate

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boule-vfs/boule/manifest"
)

// chunkSource serves synthetic chunks: chunk fp[0..1] is filled with
// fp[2]; it fails for bad, and counts calls.
type chunkSource struct {
	Store
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
	err := Restore(context.Background(), []Store{src}, m, &buf, RestoreOptions{Concurrency: 8, Progress: func(done, total int64) {
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
				done <- Restore(context.Background(), []Store{tc.src}, m, tc.w, RestoreOptions{Concurrency: 2})
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
