package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/time/rate"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/faultproxy"
	"github.com/boule-vfs/boule/internal/miniotest"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/storetest"
)

// bucketName returns a fresh bucket name.
func bucketName(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// s3Target returns a target at endpoint with fresh bucket names.
func s3Target(endpoint string, create bool) config.S3Target {
	return config.S3Target{
		Region:                miniotest.Region,
		Endpoint:              endpoint,
		ChunkBucket:           bucketName("chunks"),
		ManifestBucket:        bucketName("manifests"),
		CreateBucketsOnDemand: create,
	}
}

func newS3(t testing.TB, tg config.S3Target, opts Options) *Store {
	t.Helper()
	s, err := New(context.Background(), tg, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestS3 runs every test that needs a MinIO server against one server.
func TestS3(t *testing.T) {
	srv := miniotest.Start(t)
	srv.SetEnv(t)

	t.Run("Conformance", func(t *testing.T) {
		s := newS3(t, s3Target(srv.Endpoint, true), Options{})
		storetest.Run(t, s3Harness(t, s, srv.SecretKey))
	})
	t.Run("LimitedConformance", func(t *testing.T) {
		s := newS3(t, s3Target(srv.Endpoint, true), Options{})
		storetest.RunLimited(t, s3Harness(t, s, srv.SecretKey))
	})
	t.Run("WrongCredentials", func(t *testing.T) { testWrongCredentials(t, srv) })
	t.Run("MissingBucket", func(t *testing.T) { testMissingBucket(t, srv) })
	t.Run("CreateBuckets", func(t *testing.T) { testCreateBuckets(t, srv) })
	t.Run("ReadersCreateNothing", func(t *testing.T) { testReadersCreateNothing(t, srv) })
	t.Run("WrongRegion", func(t *testing.T) { testWrongRegion(t, srv) })
	t.Run("UnversionedVersions", func(t *testing.T) { testUnversioned(t, srv) })
	t.Run("CABundle", func(t *testing.T) { testCABundle(t, srv) })
	t.Run("CABundleTLS", func(t *testing.T) { testCABundleTLS(t, srv) })
	t.Run("PayloadSigned", func(t *testing.T) { testPayloadSigned(t, srv) })
	t.Run("RequestTimeout", func(t *testing.T) { testRequestTimeout(t, srv) })
	t.Run("Limited", func(t *testing.T) { testLimitedMinio(t, srv) })
}

func s3Harness(t *testing.T, s *Store, secret string) storetest.Harness {
	ctx := context.Background()
	if err := s.EnsureBuckets(ctx); err != nil {
		t.Fatal(err)
	}
	head := func(t *testing.T, fp manifest.Fingerprint) time.Time {
		out, err := s.Client().HeadObject(ctx, &s3.HeadObjectInput{
			Bucket: aws.String(s.ChunkBucket()), Key: aws.String(store.ChunkKey(fp)),
		})
		if err != nil {
			t.Fatal(err)
		}
		return aws.ToTime(out.LastModified)
	}
	return storetest.Harness{
		Store: s,
		Tamper: func(t *testing.T, fp manifest.Fingerprint, blob []byte) {
			_, err := s.Client().PutObject(ctx, &s3.PutObjectInput{
				Bucket: aws.String(s.ChunkBucket()), Key: aws.String(store.ChunkKey(fp)),
				Body: bytes.NewReader(blob),
			})
			if err != nil {
				t.Fatal(err)
			}
		},
		EnableVersions: func(t *testing.T) {
			if err := s.EnableVersioning(ctx); err != nil {
				t.Fatal(err)
			}
		},
		ChunkModTime: head,
		Secret:       secret,
	}
}

func testWrongCredentials(t *testing.T, srv *miniotest.Server) {
	const secret = "not-the-secret-c4f3b4b3"
	for name, env := range map[string][2]string{
		"secret":     {srv.AccessKey, secret},
		"access key": {"UNKNOWNKEY", secret},
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv("AWS_ACCESS_KEY_ID", env[0])
			t.Setenv("AWS_SECRET_ACCESS_KEY", env[1])
			for _, create := range []bool{false, true} {
				s := newS3(t, s3Target(srv.Endpoint, create), Options{})
				err := s.PutChunk(context.Background(), manifest.ZeroChunk, make([]byte, manifest.ChunkSize))
				if !errors.Is(err, store.ErrPermanent) || store.IsRetryable(err) {
					t.Fatalf("create=%v: err %v, want a permanent error", create, err)
				}
				msg := err.Error()
				if !strings.Contains(msg, "access denied") || !strings.Contains(msg, "check credentials (from EnvConfigCredentials)") ||
					!strings.HasPrefix(msg, "store: s3 ") || !strings.Contains(msg, "403") {
					t.Errorf("message %q does not say access was denied", msg)
				}
				if strings.Contains(msg, secret) || strings.Contains(msg, srv.SecretKey) {
					t.Errorf("message %q leaks a secret", msg)
				}
				t.Logf("create=%v: %v", create, err)
			}
		})
	}
	t.Run("none", func(t *testing.T) {
		t.Setenv("AWS_ACCESS_KEY_ID", "")
		t.Setenv("AWS_SECRET_ACCESS_KEY", "")
		s := newS3(t, s3Target(srv.Endpoint, false), Options{})
		err := s.PutChunk(context.Background(), manifest.ZeroChunk, make([]byte, manifest.ChunkSize))
		if !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), "credentials") {
			t.Fatalf("no credentials: %v", err)
		}
		t.Logf("no credentials: %v", err)
	})
}

func testMissingBucket(t *testing.T, srv *miniotest.Server) {
	tg := s3Target(srv.Endpoint, false)
	s := newS3(t, tg, Options{})
	ctx := context.Background()
	err := s.PutChunk(ctx, manifest.ZeroChunk, make([]byte, manifest.ChunkSize))
	if !errors.Is(err, store.ErrPermanent) || store.IsRetryable(err) {
		t.Fatalf("PutChunk to a missing bucket: %v", err)
	}
	for _, want := range []string{fmt.Sprintf("%q", tg.ChunkBucket), "does not exist", "create_buckets_on_demand is off"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q lacks %q", err, want)
		}
	}
	// A read is not "not found" but the same permanent error.
	_, err = s.GetChunk(ctx, manifest.ZeroChunk)
	if !errors.Is(err, store.ErrPermanent) || errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetChunk from a missing bucket: %v", err)
	}
	_, err = s.GetManifest(ctx, storetest.MustKey(t, "h", "/p"))
	if !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), tg.ManifestBucket) ||
		!strings.Contains(err.Error(), "check its name") || strings.Contains(err.Error(), "create_buckets_on_demand") {
		t.Fatalf("GetManifest from a missing bucket: %v; want it to say to check the name, not to create buckets", err)
	}
	if err := s.EnsureBuckets(ctx); !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), "create_buckets_on_demand is off") {
		t.Fatalf("EnsureBuckets: %v", err)
	}
	t.Log(err)
}

// testReadersCreateNothing: stores opened for reading, with a writer's
// configuration that creates buckets on demand, create no bucket: a
// reader never writes, and a missing bucket is reported as missing, with
// a hint at its name.
func testReadersCreateNothing(t *testing.T, srv *miniotest.Server) {
	tg := s3Target(srv.Endpoint, true)
	ctx := context.Background()
	stores, err := store.OpenForReading(ctx, config.Config{ReplicationTargets: []config.Target{{S3: &tg}}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = stores[0].GetManifest(ctx, storetest.MustKey(t, "h", "/p"))
	if !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), "does not exist") || !strings.Contains(err.Error(), "check its name") {
		t.Errorf("GetManifest from a missing bucket: %v; want it reported missing", err)
	}
	if _, err := stores[0].GetChunk(ctx, manifest.ZeroChunk); !errors.Is(err, store.ErrPermanent) {
		t.Errorf("GetChunk from a missing bucket: %v; want a permanent error", err)
	}
	out, err := newS3(t, tg, Options{}).Client().ListBuckets(ctx, &s3.ListBucketsInput{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range out.Buckets {
		if name := aws.ToString(b.Name); name == tg.ChunkBucket || name == tg.ManifestBucket {
			t.Errorf("a reader created bucket %s", name)
		}
	}
}

func testCreateBuckets(t *testing.T, srv *miniotest.Server) {
	tg := s3Target(srv.Endpoint, true)
	tg.ManifestBucket = tg.ChunkBucket // one bucket for both is allowed
	ctx := context.Background()
	s := newS3(t, tg, Options{})
	data := storetest.RandomBytes(20, 1000)
	if err := s.PutChunk(ctx, manifest.Sum(data), data); err != nil {
		t.Fatal(err)
	}
	key := storetest.MustKey(t, "h", "/p")
	if err := s.PutManifest(ctx, key, storetest.Manifest(t, "h", "/p", 1, 1)); err != nil {
		t.Fatal(err)
	}
	// A second store finds the buckets already there.
	s2 := newS3(t, tg, Options{})
	got, err := s2.GetChunk(ctx, manifest.Sum(data))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("second store: %v", err)
	}
	// Concurrent first uses of a fresh store race to create the buckets.
	fresh := newS3(t, s3Target(srv.Endpoint, true), Options{})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := storetest.RandomBytes(uint64(30+i), 100)
			if err := fresh.PutChunk(ctx, manifest.Sum(d), d); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	// The bucket vanishing later is noticed and fixed by the next call.
	if _, err := s.Client().DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(tg.ChunkBucket), Key: aws.String(store.ChunkKey(manifest.Sum(data)))}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client().DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(tg.ChunkBucket), Key: aws.String(key)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client().DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: aws.String(tg.ChunkBucket)}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutChunk(ctx, manifest.Sum(data), data); !errors.Is(err, store.ErrPermanent) {
		t.Fatalf("PutChunk after the bucket was deleted: %v", err)
	}
	if err := s.PutChunk(ctx, manifest.Sum(data), data); err != nil {
		t.Fatalf("PutChunk did not recreate the bucket: %v", err)
	}
}

func testWrongRegion(t *testing.T, srv *miniotest.Server) {
	for _, create := range []bool{false, true} {
		tg := s3Target(srv.Endpoint, create)
		tg.Region = "eu-west-3"
		s := newS3(t, tg, Options{})
		err := s.PutChunk(context.Background(), manifest.ZeroChunk, make([]byte, 100))
		if !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), "check region") {
			t.Errorf("create=%v: %v, want a permanent region error", create, err)
		}
		t.Logf("create=%v: %v", create, err)
	}
}

func testUnversioned(t *testing.T, srv *miniotest.Server) {
	s := newS3(t, s3Target(srv.Endpoint, true), Options{})
	ctx := context.Background()
	key := storetest.MustKey(t, "h", "/unversioned.db")
	for i := range 3 {
		if err := s.PutManifest(ctx, key, storetest.Manifest(t, "h", "/unversioned.db", 1, uint32(i))); err != nil {
			t.Fatal(err)
		}
	}
	vs, err := s.ManifestVersions(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 1 || !vs[0].IsLatest {
		t.Fatalf("unversioned bucket lists %+v, want the latest only", vs)
	}
	got, err := s.GetManifestVersion(ctx, key, vs[0].ID)
	if err != nil || !bytes.Equal(got, storetest.Manifest(t, "h", "/unversioned.db", 1, 2)) {
		t.Fatalf("GetManifestVersion(%q): %v", vs[0].ID, err)
	}
	t.Logf("unversioned version ID %q", vs[0].ID)
}

// testCABundle checks that a store works with AWS_CA_BUNDLE set to a
// valid bundle, against a plain-HTTP endpoint, and that the trap the
// store avoids is real: the SDK refuses a plain *http.Client then.
func testCABundle(t *testing.T, srv *miniotest.Server) {
	bundle := "/etc/ssl/certs/ca-certificates.crt"
	if _, err := os.Stat(bundle); err != nil {
		bundle = writeSelfSignedPEM(t)
	}
	t.Setenv("AWS_CA_BUNDLE", bundle)
	ctx := context.Background()
	s := newS3(t, s3Target(srv.Endpoint, true), Options{Timeout: 10 * time.Second})
	data := storetest.Compressible(10000)
	if err := s.PutChunk(ctx, manifest.Sum(data), data); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetChunk(ctx, manifest.Sum(data)); err != nil || !bytes.Equal(got, data) {
		t.Fatal(err)
	}
	_, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithHTTPClient(&http.Client{}))
	if err == nil || !strings.Contains(err.Error(), "unable to add custom RootCAs HTTPClient") {
		t.Errorf("plain http.Client with AWS_CA_BUNDLE: %v; the SDK changed", err)
	}
	// A bundle that is not there is a permanent configuration error.
	t.Setenv("AWS_CA_BUNDLE", filepath.Join(t.TempDir(), "missing.pem"))
	if _, err := New(ctx, s3Target(srv.Endpoint, true), Options{}); !errors.Is(err, store.ErrPermanent) {
		t.Errorf("missing CA bundle: %v", err)
	}
}

func writeSelfSignedPEM(t *testing.T) string {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// testCABundleTLS reaches MinIO over HTTPS through a proxy whose
// certificate only AWS_CA_BUNDLE vouches for.
func testCABundleTLS(t *testing.T, srv *miniotest.Server) {
	p := faultproxy.Start(t, srv.Endpoint)
	tlsSrv := httptest.NewUnstartedServer(p)
	tlsSrv.StartTLS()
	t.Cleanup(tlsSrv.Close)
	endpoint := tlsSrv.URL
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	data := storetest.Compressible(3000)

	// Without the bundle, the certificate is refused, permanently.
	t.Setenv("AWS_CA_BUNDLE", "")
	s := newS3(t, s3Target(endpoint, true), Options{Timeout: 10 * time.Second})
	err := s.PutChunk(ctx, manifest.Sum(data), data)
	if !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("untrusted certificate: %v", err)
	}
	t.Log(err)

	// Over TLS the SDK does not sign the payload; Content-MD5 protects
	// uploads instead.
	var mu sync.Mutex
	var puts []string
	p.Observe(func(r *http.Request) {
		if r.Method == http.MethodPut && r.ContentLength > 0 {
			mu.Lock()
			puts = append(puts, r.Header.Get("X-Amz-Content-Sha256")+" md5="+r.Header.Get("Content-Md5"))
			mu.Unlock()
		}
	})
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		t.Logf("uploads over TLS: %q", puts)
		if len(puts) == 0 {
			t.Error("no upload observed")
		}
		for _, h := range puts {
			if _, md5, _ := strings.Cut(h, " md5="); len(md5) != 24 {
				t.Errorf("PUT over TLS without Content-MD5: %q", h)
			}
		}
	}()
	t.Setenv("AWS_CA_BUNDLE", ca)
	s = newS3(t, s3Target(endpoint, true), Options{Timeout: 10 * time.Second})
	if err := s.PutChunk(ctx, manifest.Sum(data), data); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetChunk(ctx, manifest.Sum(data)); err != nil || !bytes.Equal(got, data) {
		t.Fatal(err)
	}
	if p.Count(http.MethodPut) == 0 {
		t.Error("no PUT went through the TLS proxy")
	}
}

// testPayloadSigned checks that uploads are protected in transit, since
// the SDK's CRC checksums are turned off: over plain HTTP by SigV4's
// payload hash, and always by Content-MD5.
func testPayloadSigned(t *testing.T, srv *miniotest.Server) {
	p := faultproxy.Start(t, srv.Endpoint)
	hashes := make(chan string, 100)
	p.Observe(func(r *http.Request) {
		if r.Method == http.MethodPut && r.ContentLength > 0 {
			hashes <- r.Header.Get("X-Amz-Content-Sha256")
			if len(r.Header.Get("Content-Md5")) != 24 {
				t.Errorf("PUT without Content-MD5")
			}
		}
	})
	s := newS3(t, s3Target(p.URL, true), Options{})
	data := storetest.RandomBytes(21, 2000)
	if err := s.PutChunk(context.Background(), manifest.Sum(data), data); err != nil {
		t.Fatal(err)
	}
	close(hashes)
	n := 0
	for h := range hashes {
		n++
		if len(h) != 64 {
			t.Errorf("PUT with x-amz-content-sha256 %q, want a payload hash", h)
		}
	}
	if n == 0 {
		t.Fatal("no PUT observed")
	}
}

func testRequestTimeout(t *testing.T, srv *miniotest.Server) {
	p := faultproxy.Start(t, srv.Endpoint)
	tg := s3Target(p.URL, true)
	ctx := context.Background()
	// The buckets first, at the default timeout: a loaded machine (make
	// test under -race beside other work) took more than 300 ms.
	if err := newS3(t, tg, Options{}).EnsureBuckets(ctx); err != nil {
		t.Fatal(err)
	}
	s := newS3(t, tg, Options{Timeout: 300 * time.Millisecond})
	p.Set(faultproxy.StallNext(time.Minute, 1))
	err := s.PutChunk(ctx, manifest.ZeroChunk, make([]byte, manifest.ChunkSize))
	if !store.IsRetryable(err) || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("stalled PUT: %v, want a retryable timeout", err)
	}
	t.Log(err)

	// Nothing listening: retryable.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close()
	s = newS3(t, s3Target(dead, false), Options{Timeout: 2 * time.Second})
	err = s.PutChunk(ctx, manifest.ZeroChunk, make([]byte, manifest.ChunkSize))
	if !store.IsRetryable(err) || errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("nothing listening: %v, want a retryable connection error", err)
	}
	t.Log(err)
	s = newS3(t, s3Target(dead, true), Options{Timeout: 2 * time.Second})
	if _, err := s.GetChunk(ctx, manifest.ZeroChunk); !store.IsRetryable(err) {
		t.Fatalf("nothing listening, create on demand: %v", err)
	}

	// The caller's cancellation is not retryable.
	s = newS3(t, s3Target(p.URL, true), Options{Timeout: 10 * time.Second})
	if err := s.EnsureBuckets(ctx); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	p.Set(faultproxy.StallNext(time.Minute, 1))
	err = s.PutChunk(cctx, manifest.ZeroChunk, make([]byte, manifest.ChunkSize))
	if store.IsRetryable(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("caller's deadline: %v", err)
	}
}

func TestS3StoreString(t *testing.T) {
	fakeCredentials(t)
	s, err := New(context.Background(), config.S3Target{
		Region: "us-east-1", Endpoint: "http://127.0.0.1:9000",
		ChunkBucket: "c", ManifestBucket: "m",
	}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.String(); got != "s3://c,m@127.0.0.1:9000" {
		t.Errorf("String() = %q", got)
	}
	s, err = New(context.Background(), config.S3Target{Region: "eu-west-3", ChunkBucket: "c", ManifestBucket: "m"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.String(); got != "s3://c,m@aws:eu-west-3" {
		t.Errorf("String() = %q", got)
	}
	if _, err := New(context.Background(), config.S3Target{Region: "r", Endpoint: "http://user:pw@host", ChunkBucket: "c", ManifestBucket: "m"}, Options{}); !errors.Is(err, store.ErrPermanent) || strings.Contains(err.Error(), "pw") {
		t.Errorf("endpoint with user info: %v", err)
	}
}

// TestS3EndpointRefused: New refuses an endpoint that no request
// could use, at once and without quoting a secret it holds: the SDK would
// accept one with a query, then fail every request with a message that
// quotes it whole.
func TestS3EndpointRefused(t *testing.T) {
	fakeCredentials(t)
	for _, tc := range []struct{ name, endpoint, want string }{
		{"query", "http://127.0.0.1:9000/?X-Amz-Signature=TopSecret", "must not have a query"},
		{"empty query", "http://127.0.0.1:9000/?", "must not have a query"},
		{"user information", "http://AKIAUSER:TopSecret@127.0.0.1:9000", "must not contain user information"},
		{"bad escape in the password", "http://AKIAUSER:TopSecret%zz@127.0.0.1:9000", "not an absolute http or https URL"},
		{"key and secret alone", "AKIAUSER:TopSecret", "not an absolute http or https URL"},
		{"no host, fragment", "http:///#TopSecret", "not an absolute http or https URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(context.Background(), config.S3Target{Region: "r", Endpoint: tc.endpoint, ChunkBucket: "c", ManifestBucket: "m"}, Options{})
			if !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New(%q)=%v, want ErrPermanent saying %q", tc.endpoint, err, tc.want)
			}
			if strings.Contains(err.Error(), "TopSecret") {
				t.Errorf("New(%q)=%v: the message quotes a secret", tc.endpoint, err)
			}
		})
	}
}

// TestS3CutErrorResponse: an error answer whose body is cut short (MinIO
// hangs up after a BadDigest; a proxy may do the same) says nothing about
// the request, so it is retried rather than taken as a permanent refusal
// that would stop replication until the configuration changes.
func TestS3CutErrorResponse(t *testing.T) {
	fakeCredentials(t)
	cut := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			return // the bucket exists
		}
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Length", "4096")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>BadDig`)
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close()
		}
	}))
	defer cut.Close()
	s := newS3(t, config.S3Target{Region: "us-east-1", Endpoint: cut.URL, ChunkBucket: "c", ManifestBucket: "m"}, Options{})
	data := storetest.Compressible(1000)
	err := s.PutChunk(context.Background(), manifest.Sum(data), data)
	if err == nil {
		t.Fatal("PutChunk succeeded")
	}
	if !store.IsRetryable(err) || errors.Is(err, store.ErrPermanent) {
		t.Fatalf("err %v: want a retryable error", err)
	}
	if !strings.Contains(err.Error(), "unreadable error response (400)") {
		t.Errorf("err %v: want it to say the answer was unreadable", err)
	}

	// A whole error answer with a code that means the request is wrong
	// stays permanent.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			return
		}
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidArgument</Code><Message>no</Message></Error>`)
	}))
	defer srv.Close()
	s = newS3(t, config.S3Target{Region: "us-east-1", Endpoint: srv.URL, ChunkBucket: "c", ManifestBucket: "m"}, Options{})
	if err := s.PutChunk(context.Background(), manifest.Sum(data), data); !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), "InvalidArgument") {
		t.Errorf("err %v: want a permanent InvalidArgument", err)
	}
}

// testLimitedMinio runs Limited over a real S3 store behind the fault
// proxy. The fake clock makes the backoffs instant.
func testLimitedMinio(t *testing.T, srv *miniotest.Server) {
	p := faultproxy.Start(t, srv.Endpoint)
	ctx := context.Background()
	tg := s3Target(p.URL, true)
	s := newS3(t, tg, Options{Timeout: 5 * time.Second})
	if err := s.EnsureBuckets(ctx); err != nil {
		t.Fatal(err)
	}
	// The same buckets with a short timeout, for stalls.
	fast := newS3(t, tg, Options{Timeout: 300 * time.Millisecond})
	if err := fast.EnsureBuckets(ctx); err != nil {
		t.Fatal(err)
	}
	data := storetest.Compressible(20000)
	fp := manifest.Sum(data)
	setup := func(f faultproxy.Fault) (*store.Limited, *storetest.SleepClock) {
		p.ResetCounts()
		p.Set(f)
		clk := &storetest.SleepClock{}
		st := s
		if f.Kind == faultproxy.Stall {
			st = fast
		}
		return store.NewLimited(st, rate.NewLimiter(rate.Inf, 1), store.RetryOptions{Clock: clk}), clk
	}
	put := func(l *store.Limited) error { return l.PutChunk(ctx, fp, data) }
	get := func(l *store.Limited) error {
		got, err := l.GetChunk(ctx, fp)
		if err == nil && !bytes.Equal(got, data) {
			return errors.New("wrong bytes")
		}
		return err
	}
	if err := s.PutChunk(ctx, fp, data); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name    string
		fault   faultproxy.Fault
		op      func(*store.Limited) error
		calls   int64 // Limited attempts
		reqs    int   // requests seen by the proxy
		wantErr error
	}{
		{"500 twice", faultproxy.Fail(500, 2), put, 3, 3, nil},
		{"503 once on GET", faultproxy.Fail(503, 1), get, 2, 2, nil},
		{"429 once", faultproxy.Fail(429, 1), put, 2, 2, nil},
		{"408 once", faultproxy.Fail(408, 1), put, 2, 2, nil},
		{"500 always", faultproxy.Fail(500, 0), put, 5, 5, errTransient},
		{"403", faultproxy.Fault{Kind: faultproxy.Status, Status: 403, Code: "AccessDenied"}, put, 1, 1, store.ErrPermanent},
		{"400", faultproxy.Fault{Kind: faultproxy.Status, Status: 400, Code: "InvalidRequest"}, put, 1, 1, store.ErrPermanent},
		{"reset PUT", faultproxy.ResetNext(1), put, 2, 2, nil},
		{"reset GET", faultproxy.ResetNext(2), get, 0, 0, nil},
		{"truncated GET", faultproxy.TruncateNext(1), get, 2, 2, nil},
		{"truncated GET twice", faultproxy.TruncateNext(2), get, 3, 3, nil},
		{"stall", faultproxy.StallNext(time.Minute, 1), put, 2, 2, nil},
		{"corrupted upload", faultproxy.CorruptNext(1), put, 2, 2, nil},
		{"corrupted manifest upload", faultproxy.CorruptNext(2), func(l *store.Limited) error {
			key := storetest.MustKey(t, "h", "/corrupt.db")
			m := storetest.Manifest(t, "h", "/corrupt.db", 3, 9)
			if err := l.PutManifest(ctx, key, m); err != nil {
				return err
			}
			got, err := s.GetManifest(ctx, key) // not through l
			if err == nil && !bytes.Equal(got, m) {
				return errors.New("wrong manifest bytes")
			}
			return err
		}, 3, 4, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, clk := setup(c.fault)
			defer p.Pass()
			err := c.op(l)
			st := l.Stats()
			t.Logf("err %v; stats %+v; proxy %v; slept %v", err, st, p.Counts(), clk.Sleeps())
			switch {
			case c.wantErr == nil && err != nil:
				t.Fatalf("err %v", err)
			case c.wantErr == errTransient && !store.IsRetryable(err):
				t.Fatalf("err %v, want a retryable error", err)
			case c.wantErr != nil && c.wantErr != errTransient && !errors.Is(err, c.wantErr):
				t.Fatalf("err %v, want %v", err, c.wantErr)
			}
			if c.calls > 0 {
				if st.Calls != c.calls || st.Retries != c.calls-1 {
					t.Errorf("Calls %d Retries %d, want %d and %d", st.Calls, st.Retries, c.calls, c.calls-1)
				}
				// One SDK attempt per Limited attempt: the SDK does not
				// retry on its own.
				if p.Total() != c.reqs {
					t.Errorf("proxy saw %d requests, want %d", p.Total(), c.reqs)
				}
			} else if st.Retries < 1 {
				t.Errorf("Retries %d, want at least 1", st.Retries)
			}
			if (c.wantErr == nil) != (st.Failures == 0) {
				t.Errorf("Failures %d", st.Failures)
			}
			if c.wantErr == nil && st.Retries > 0 && st.LastError == "" {
				t.Error("LastError not recorded")
			}
		})
	}
	t.Run("counters", func(t *testing.T) {
		l, _ := setup(faultproxy.Fault{})
		if err := put(l); err != nil {
			t.Fatal(err)
		}
		if err := get(l); err != nil {
			t.Fatal(err)
		}
		if st := l.Stats(); st.BytesUp != int64(len(data)) || st.BytesDown != int64(len(data)) || st.Calls != 2 || st.Failures != 0 {
			t.Errorf("stats %+v", st)
		}
		if got := p.Counts(); got[http.MethodPut] != 1 || got[http.MethodGet] != 1 {
			t.Errorf("proxy counts %v", got)
		}
	})
}

// errTransient is a retryable failure for the scripted tests.
var errTransient = &store.Error{Op: "test op", Detail: "transient", Retryable: true}

// TestRetryableCause: errors of the AWS SDK that did not come through a
// store.Error are retried by their status, or when the request was never
// sent; the generic causes are store.TransientCause's.
func TestRetryableCause(t *testing.T) {
	resp := func(code int) error {
		return &awshttp.ResponseError{ResponseError: &smithyhttp.ResponseError{
			Response: &smithyhttp.Response{Response: &http.Response{StatusCode: code}},
			Err:      errors.New("api error"),
		}}
	}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&smithyhttp.RequestSendError{Err: errors.New("boom")}, true},
		{resp(500), true},
		{resp(503), true},
		{resp(408), true},
		{resp(429), true},
		{resp(403), false},
		{resp(404), false},
		{resp(400), false},
		{io.ErrUnexpectedEOF, true},
		{context.Canceled, false},
		{store.ErrPermanent, false},
		{errors.New("something else"), false},
	} {
		if got := retryableCause(c.err); got != c.want {
			t.Errorf("retryableCause(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
