package miniotest

import (
	"net/http"
	"testing"
	"time"
)

// TestKillRestart: a SIGKILLed server stops answering at once, and
// Restart brings it back on the same endpoint.
func TestKillRestart(t *testing.T) {
	s := Start(t)
	if got := live(t, s); got != http.StatusOK {
		t.Fatalf("health before Kill=%d, want 200", got)
	}
	endpoint := s.Endpoint
	s.Kill()
	if got := live(t, s); got != 0 {
		t.Fatalf("health after Kill=%d, want no answer", got)
	}
	s.Kill() // idempotent
	start := time.Now()
	if err := s.Restart(); err != nil {
		t.Fatalf("Restart() after Kill=%v", err)
	}
	t.Logf("restarted after SIGKILL in %v", time.Since(start))
	if s.Endpoint != endpoint {
		t.Fatalf("endpoint after Restart=%s, want %s", s.Endpoint, endpoint)
	}
	if got := live(t, s); got != http.StatusOK {
		t.Fatalf("health after Restart=%d, want 200", got)
	}
}
