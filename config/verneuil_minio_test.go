package config_test

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/faultproxy"
	"github.com/boule-vfs/boule/internal/miniotest"
	"github.com/boule-vfs/boule/manifest"
	s3store "github.com/boule-vfs/boule/store/s3"
	"github.com/boule-vfs/boule/store/storetest"
)

// TestRegionShorthandMinio: a region written "name.host:port", without an
// endpoint, reaches the store at https://host:port and signs for region
// "name", as Verneuil's parse_s3_region_specification reads it. MinIO
// answers over TLS through a proxy whose certificate AWS_CA_BUNDLE
// vouches for (the shorthand always means https).
func TestRegionShorthandMinio(t *testing.T) {
	srv := miniotest.Start(t)
	srv.SetEnv(t)
	p := faultproxy.Start(t, srv.Endpoint)
	tlsSrv := httptest.NewUnstartedServer(p)
	tlsSrv.StartTLS()
	t.Cleanup(tlsSrv.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_CA_BUNDLE", ca)
	u, err := url.Parse(tlsSrv.URL)
	if err != nil {
		t.Fatal(err)
	}

	region := miniotest.Region + "." + u.Host // us-east-1.127.0.0.1:PORT
	doc, err := json.Marshal(map[string]any{"replication_targets": []any{map[string]any{"s3": map[string]any{
		"region": region, "chunk_bucket": "chunks", "manifest_bucket": "manifests",
		"domain_addressing": false, "create_buckets_on_demand": true,
	}}}})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(doc)
	if err != nil {
		t.Fatalf("Parse(region %q)=%v, want nil error", region, err)
	}
	target := *cfg.ReplicationTargets[0].S3
	if target.Region != miniotest.Region || target.Endpoint != "https://"+u.Host {
		t.Fatalf("Parse() region, endpoint=%q, %q, want %q, %q", target.Region, target.Endpoint, miniotest.Region, "https://"+u.Host)
	}

	s, err := s3store.New(context.Background(), target, s3store.Options{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	data := storetest.Compressible(5000)
	if err := s.PutChunk(ctx, manifest.Sum(data), data); err != nil {
		t.Fatalf("PutChunk()=%v, want nil", err)
	}
	got, err := s.GetChunk(ctx, manifest.Sum(data))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("GetChunk()=%d bytes, %v, want the %d bytes put", len(got), err, len(data))
	}
	if p.Count(http.MethodPut) == 0 || p.Count(http.MethodGet) == 0 {
		t.Errorf("requests through the TLS proxy: %v, want PUTs and GETs", p.Counts())
	}
}
