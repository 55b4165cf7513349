package faultproxy

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// backend echoes the request's method, Host and body, with a fixed-size
// answer for truncation checks.
func backend(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Host", r.Host)
		w.Header().Set("X-Method", r.Method)
		_, _ = io.WriteString(w, "body:"+string(body)+":"+strings.Repeat("x", 1000))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func client() *http.Client {
	// No keep-alive: every request gets its own connection, so that a
	// reset request is not transparently replayed by net/http.
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
}

func do(t *testing.T, method, url, body string) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client().Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

func TestPassPreservesHost(t *testing.T) {
	p := Start(t, backend(t).URL)
	resp, body, err := do(t, "PUT", p.URL+"/b/k?x=1", "hello")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "body:hello:") {
		t.Fatalf("got %d %q", resp.StatusCode, body[:20])
	}
	if got, want := resp.Header.Get("X-Host"), strings.TrimPrefix(p.URL, "http://"); got != want {
		t.Errorf("backend saw Host %q, want the proxy's %q", got, want)
	}
	if p.Count("PUT") != 1 || p.Total() != 1 || p.Faulted() != 0 {
		t.Errorf("counts: PUT %d total %d faulted %d", p.Count("PUT"), p.Total(), p.Faulted())
	}
}

func TestStatusNextN(t *testing.T) {
	p := Start(t, backend(t).URL)
	p.Set(Fail(503, 2))
	for i, want := range []int{503, 503, 200} {
		resp, body, err := do(t, "GET", p.URL+"/b/k", "")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != want {
			t.Fatalf("request %d: status %d, want %d", i, resp.StatusCode, want)
		}
		if want == 503 && !strings.Contains(string(body), "<Code>SlowDown</Code>") {
			t.Errorf("error body %q lacks the S3 code", body)
		}
	}
	if p.Faulted() != 2 || p.Count("GET") != 3 {
		t.Errorf("faulted %d, GET %d", p.Faulted(), p.Count("GET"))
	}
}

func TestMatch(t *testing.T) {
	p := Start(t, backend(t).URL)
	p.Set(Fault{Kind: Status, Status: 429, Match: Methods("PUT")})
	if resp, _, _ := do(t, "GET", p.URL+"/b/k", ""); resp == nil || resp.StatusCode != 200 {
		t.Errorf("GET was faulted")
	}
	if resp, _, _ := do(t, "PUT", p.URL+"/b/k", "x"); resp == nil || resp.StatusCode != 429 {
		t.Errorf("PUT was not faulted")
	}
	p.Pass()
	if resp, _, _ := do(t, "PUT", p.URL+"/b/k", "x"); resp == nil || resp.StatusCode != 200 {
		t.Errorf("PUT faulted after Pass")
	}
	if got := p.Counts(); got["GET"] != 1 || got["PUT"] != 2 {
		t.Errorf("Counts() = %v", got)
	}
	p.ResetCounts()
	if p.Total() != 0 {
		t.Errorf("ResetCounts did not reset")
	}
}

func TestReset(t *testing.T) {
	p := Start(t, backend(t).URL)
	p.Set(ResetNext(1))
	if _, _, err := do(t, "PUT", p.URL+"/b/k", "x"); err == nil {
		t.Fatal("reset request succeeded")
	}
	if _, _, err := do(t, "PUT", p.URL+"/b/k", "x"); err != nil {
		t.Fatalf("request after the reset failed: %v", err)
	}
}

func TestTruncate(t *testing.T) {
	p := Start(t, backend(t).URL)
	p.Set(TruncateNext(1))
	_, body, err := do(t, "GET", p.URL+"/b/k", "")
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated read: err %v after %d bytes, want unexpected EOF", err, len(body))
	}
	if _, body, err = do(t, "GET", p.URL+"/b/k", ""); err != nil || len(body) < 1000 {
		t.Fatalf("request after the truncation: %d bytes, %v", len(body), err)
	}
}

func TestStall(t *testing.T) {
	p := Start(t, backend(t).URL)
	p.Set(StallNext(time.Hour, 1))
	c := &http.Client{Timeout: 200 * time.Millisecond}
	_, err := c.Get(p.URL + "/b/k")
	var te interface{ Timeout() bool }
	if !errors.As(err, &te) || !te.Timeout() {
		t.Fatalf("stalled request: %v, want a timeout", err)
	}
	p.Set(StallNext(10*time.Millisecond, 1))
	if resp, _, err := do(t, "GET", p.URL+"/b/k", ""); err != nil || resp.StatusCode != 200 {
		t.Fatalf("short stall: %v", err)
	}
}

func TestCorruptRequest(t *testing.T) {
	p := Start(t, backend(t).URL)
	p.Set(CorruptNext(1))
	// A GET without a body is not counted against the fault.
	if _, body, err := do(t, "GET", p.URL+"/b/k", ""); err != nil || !strings.HasPrefix(string(body), "body::") {
		t.Fatalf("GET: %q %v", body[:10], err)
	}
	_, body, err := do(t, "PUT", p.URL+"/b/k", "hello")
	if err != nil || !strings.HasPrefix(string(body), "body:hemlo:") {
		t.Fatalf("corrupted PUT: %q, %v", body[:12], err)
	}
	_, body, _ = do(t, "PUT", p.URL+"/b/k", "hello")
	if !strings.HasPrefix(string(body), "body:hello:") {
		t.Fatalf("second PUT corrupted too: %q", body[:12])
	}
}
