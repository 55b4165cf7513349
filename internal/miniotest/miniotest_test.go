package miniotest

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func live(t *testing.T, s *Server) int {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(s.Endpoint + "/minio/health/live")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestStartRestartStop(t *testing.T) {
	start := time.Now()
	s := Start(t)
	t.Logf("minio ready in %v at %s", time.Since(start), s.Endpoint)
	if !strings.HasPrefix(s.Endpoint, "http://127.0.0.1:") {
		t.Errorf("Endpoint = %q, want a loopback URL", s.Endpoint)
	}
	if s.AccessKey == "" || len(s.SecretKey) < 8 || s.DataDir == "" {
		t.Errorf("credentials or data dir missing: %+v", s)
	}
	if got := live(t, s); got != http.StatusOK {
		t.Fatalf("health = %d, want 200", got)
	}
	// Objects survive a restart: MinIO keeps its format in the data dir.
	if _, err := os.Stat(filepath.Join(s.DataDir, ".minio.sys")); err != nil {
		t.Errorf("data dir not initialized: %v", err)
	}
	endpoint := s.Endpoint
	start = time.Now()
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	t.Logf("restarted in %v", time.Since(start))
	if s.Endpoint != endpoint {
		t.Errorf("endpoint changed from %s to %s", endpoint, s.Endpoint)
	}
	if got := live(t, s); got != http.StatusOK {
		t.Fatalf("health after restart = %d, want 200", got)
	}
	s.Stop()
	if got := live(t, s); got != 0 {
		t.Errorf("health after Stop = %d, want no answer", got)
	}
	s.Stop() // idempotent
}

func TestEnv(t *testing.T) {
	s := &Server{AccessKey: "AK", SecretKey: "SK"}
	env := strings.Join(s.Env(), "\n")
	for _, want := range []string{"AWS_ACCESS_KEY_ID=AK", "AWS_SECRET_ACCESS_KEY=SK", "AWS_REGION=us-east-1"} {
		if !strings.Contains(env, want) {
			t.Errorf("Env() lacks %s", want)
		}
	}
	s.SetEnv(t)
	if os.Getenv("AWS_ACCESS_KEY_ID") != "AK" || os.Getenv("AWS_EC2_METADATA_DISABLED") != "true" {
		t.Errorf("SetEnv did not set the variables")
	}
}

func TestBinaryOverride(t *testing.T) {
	t.Setenv(EnvBinary, filepath.Join(t.TempDir(), "nope"))
	if got := Binary(); got != "" {
		t.Errorf("Binary() = %q for a missing override, want \"\"", got)
	}
}
