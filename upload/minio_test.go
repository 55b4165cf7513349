package upload

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/faultproxy"
	"github.com/boule-vfs/boule/internal/miniotest"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store/s3"
	"github.com/boule-vfs/boule/store/storetest"
)

// minioTarget returns an S3 store on fresh buckets of srv, reached
// through a fault proxy, and the name of its manifest bucket.
func minioTarget(t *testing.T, srv *miniotest.Server) (*s3.Store, *faultproxy.Proxy, string) {
	t.Helper()
	p := faultproxy.Start(t, srv.Endpoint)
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	suffix := hex.EncodeToString(b)
	tg := config.S3Target{
		Region: miniotest.Region, Endpoint: p.URL,
		ChunkBucket: "chunks-" + suffix, ManifestBucket: "manifests-" + suffix,
		CreateBucketsOnDemand: true,
	}
	s, err := s3.New(context.Background(), tg, s3.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.EnsureBuckets(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s, p, tg.ManifestBucket
}

// isManifestPut selects the PUTs of manifests to bucket.
func isManifestPut(bucket string) func(*http.Request) bool {
	return func(r *http.Request) bool {
		return r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/"+bucket+"/")
	}
}

// capturedRequest is a request the proxy held back: sent again later, it
// stands for a put delayed on the way, arriving after its retry.
type capturedRequest struct {
	method, url, host string
	header            http.Header
	body              []byte
}

// send sends the request to endpoint, as the proxy would have, and
// returns the status of the answer.
func (c *capturedRequest) send(t *testing.T, endpoint string) int {
	t.Helper()
	req, err := http.NewRequest(c.method, endpoint+c.url, bytes.NewReader(c.body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = c.header.Clone()
	req.Host = c.host // SigV4 signed the proxy's host
	req.ContentLength = int64(len(c.body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// TestUploaderDelayedPutMinio: with the manifest gap off, a manifest put
// held back on the way (the client times out and its retry lands) that
// reaches MinIO after a newer manifest landed must not replace it. With
// conditional puts MinIO refuses it (412); a store without them would
// go back to the older manifest, which the NoConditionalPuts case shows
// (so the test can fail). And a store that answers 501 to conditional
// puts keeps the gap.
func TestUploaderDelayedPutMinio(t *testing.T) {
	srv := miniotest.Start(t)
	srv.SetEnv(t)
	for _, tc := range []struct {
		name      string
		noCond    bool
		wantDelay int  // status of the delayed put at MinIO
		regresses bool // the store goes back to the older manifest
	}{
		{"Conditional", false, http.StatusPreconditionFailed, false},
		{"NoConditionalPuts", true, http.StatusOK, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, p, bucket := minioTarget(t, srv)
			now := storetest.NewClock()
			opts := uploadOpts(now, Target{Name: "minio", Store: s})
			opts.ManifestGap = -1
			opts.ConditionalGap = -1
			opts.NoConditionalPuts = tc.noCond
			u := newTestUploader(t, opts)
			d := newTestSpool(t, t.TempDir(), "/data/delayed.db")
			ctx := context.Background()

			s1 := d.stageNew(testData(800, 3*manifest.ChunkSize), now.Now())
			mustFlush(t, u, d.dir)

			// The next manifest put is held back: the proxy answers 503
			// and keeps the request; the client's retry lands.
			var (
				mu   sync.Mutex
				held *capturedRequest
			)
			match := isManifestPut(bucket)
			p.Observe(func(r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				if held != nil || !match(r) {
					return
				}
				body, err := io.ReadAll(r.Body)
				if err != nil {
					t.Error(err)
					return
				}
				r.Body = io.NopCloser(bytes.NewReader(body))
				held = &capturedRequest{method: r.Method, url: r.URL.RequestURI(), host: r.Host, header: r.Header.Clone(), body: body}
			})
			p.Set(faultproxy.Fault{Kind: faultproxy.Status, Status: http.StatusServiceUnavailable, Count: 1, Match: match})
			s2 := d.stageNew(withChunk(s1.data, 1, 801), now.Now())
			mustFlush(t, u, d.dir)
			p.Observe(nil)
			mu.Lock()
			delayed := held
			mu.Unlock()
			if delayed == nil {
				t.Fatal("test setup: no manifest put was held back")
			}

			s3m := d.stageNew(withChunk(s2.data, 2, 802), now.Now())
			mustFlush(t, u, d.dir)

			// The held-back put of s2 arrives now.
			if got := delayed.send(t, srv.Endpoint); got != tc.wantDelay {
				t.Errorf("the delayed put answered %d, want %d", got, tc.wantDelay)
			}
			got, err := s.GetManifest(ctx, d.key())
			if err != nil {
				t.Fatal(err)
			}
			want := s3m
			if tc.regresses {
				want = s2
			}
			if !bytes.Equal(got, want.mb) {
				gm, _ := manifest.Decode(got)
				t.Fatalf("stored manifest is #%d, want #%d", counterOf(gm), want.m.ChangeCounter)
			}
		})
	}

	// A store that answers 501 Not Implemented to conditional puts: the
	// uploader falls back to plain puts, the manifest gap between them.
	t.Run("NotImplementedKeepsGap", func(t *testing.T) {
		const gap = 300 * time.Millisecond
		s, p, _ := minioTarget(t, srv)
		p.Set(faultproxy.Fault{Kind: faultproxy.Status, Status: http.StatusNotImplemented, Code: "NotImplemented",
			Match: func(r *http.Request) bool {
				return r.Header.Get("If-Match") != "" || r.Header.Get("If-None-Match") != ""
			}})
		now := storetest.NewClock() // frozen: the gap is measured from the last upload
		opts := uploadOpts(now, Target{Name: "minio", Store: s})
		opts.ManifestGap = gap
		opts.ConditionalGap = -1
		u := newTestUploader(t, opts)
		d := newTestSpool(t, t.TempDir(), "/data/fallback.db")
		s1 := d.stageNew(testData(810, 3*manifest.ChunkSize), now.Now())
		mustFlush(t, u, d.dir)
		if got, _ := u.manifestGap(u.bg); got != gap {
			t.Errorf("manifestGap()=%v, want %v", got, gap)
		}
		s2 := d.stageNew(withChunk(s1.data, 1, 811), now.Now())
		start := time.Now()
		mustFlush(t, u, d.dir)
		if el := time.Since(start); el < gap {
			t.Errorf("second manifest %v after the first, want at least %v", el, gap)
		}
		got, err := s.GetManifest(context.Background(), d.key())
		if err != nil || !bytes.Equal(got, s2.mb) {
			t.Fatalf("GetManifest()=%d bytes, %v, want the second manifest", len(got), err)
		}
	})
}

func counterOf(m *manifest.Manifest) int {
	if m == nil {
		return -1
	}
	return int(m.ChangeCounter)
}
