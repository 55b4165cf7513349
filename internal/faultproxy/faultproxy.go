package faultproxy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// Kind is what the proxy does to a request.
type Kind int

const (
	// Pass forwards the request and its answer unchanged.
	Pass Kind = iota
	// Status answers with Fault.Status (500 if zero) and an S3-style XML
	// error body, without forwarding.
	Status
	// Reset closes the connection without answering, with a TCP RST,
	// without forwarding.
	Reset
	// Stall waits Fault.Delay, or until the client gives up, and then
	// forwards the request.
	Stall
	// Truncate forwards the request, then sends the answer's headers
	// (with the full Content-Length) and only the first half of its body
	// before closing the connection.
	Truncate
	// CorruptRequest forwards the request with one bit of its body
	// flipped (requests without a body pass unchanged), as a damaged
	// upload.
	CorruptRequest
)

func (k Kind) String() string {
	switch k {
	case Pass:
		return "pass"
	case Status:
		return "status"
	case Reset:
		return "reset"
	case Stall:
		return "stall"
	case Truncate:
		return "truncate"
	case CorruptRequest:
		return "corrupt-request"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Fault describes the proxy's behaviour.
type Fault struct {
	Kind Kind
	// Status is the HTTP status for Kind Status; zero means 500.
	Status int
	// Code is the S3 error code in the body for Kind Status; empty means
	// one that suits Status, such as "SlowDown" for 503.
	Code string
	// Delay is how long Kind Stall waits.
	Delay time.Duration
	// Count, if positive, applies the fault to the next Count matching
	// requests only; then the proxy passes everything again.
	Count int
	// Match, if set, selects the requests the fault applies to; the
	// others pass.
	Match func(*http.Request) bool
}

// Fail returns a fault that answers the next n requests (all of them if
// n is 0) with status.
func Fail(status, n int) Fault { return Fault{Kind: Status, Status: status, Count: n} }

// ResetNext returns a fault that resets the connection of the next n
// requests (all of them if n is 0).
func ResetNext(n int) Fault { return Fault{Kind: Reset, Count: n} }

// TruncateNext returns a fault that truncates the answers to the next n
// requests (all of them if n is 0).
func TruncateNext(n int) Fault { return Fault{Kind: Truncate, Count: n} }

// CorruptNext returns a fault that flips a bit in the bodies of the next
// n requests that have one (all of them if n is 0).
func CorruptNext(n int) Fault {
	return Fault{Kind: CorruptRequest, Count: n, Match: func(r *http.Request) bool { return r.ContentLength != 0 }}
}

// StallNext returns a fault that delays the next n requests (all of them
// if n is 0) by d.
func StallNext(d time.Duration, n int) Fault { return Fault{Kind: Stall, Delay: d, Count: n} }

// Methods returns a Match function selecting requests by HTTP method.
func Methods(methods ...string) func(*http.Request) bool {
	return func(r *http.Request) bool {
		for _, m := range methods {
			if r.Method == m {
				return true
			}
		}
		return false
	}
}

// Proxy is a running fault-injecting proxy.
type Proxy struct {
	// URL is the proxy's address, "http://127.0.0.1:PORT"; point clients
	// at it instead of the server.
	URL string

	target *url.URL
	srv    *http.Server
	ln     net.Listener
	tr     *http.Transport

	mu       sync.Mutex
	fault    Fault
	byMethod map[string]int
	total    int
	faulted  int
	observe  func(*http.Request)
}

// Start starts a proxy in front of target (such as a MinIO server's
// endpoint) and closes it when the test ends.
func Start(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatalf("faultproxy: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// New starts a proxy in front of target. The caller must Close it.
func New(target string) (*Proxy, error) {
	u, err := url.Parse(target)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("bad target %q", target)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{
		URL:      "http://" + ln.Addr().String(),
		target:   u,
		ln:       ln,
		byMethod: map[string]int{},
		tr: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 64,
			DisableCompression:  true,
		},
	}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

// Close stops the proxy, dropping the connections in progress.
func (p *Proxy) Close() {
	p.srv.Close()
	p.tr.CloseIdleConnections()
}

// Set replaces the proxy's behaviour.
func (p *Proxy) Set(f Fault) {
	p.mu.Lock()
	p.fault = f
	p.mu.Unlock()
}

// Pass makes the proxy forward everything unchanged.
func (p *Proxy) Pass() { p.Set(Fault{}) }

// Observe registers a function called with each request as it arrives,
// before any fault; nil removes it. It must not consume the body.
func (p *Proxy) Observe(f func(*http.Request)) {
	p.mu.Lock()
	p.observe = f
	p.mu.Unlock()
}

// Count returns how many requests with the method arrived so far,
// faulted or not.
func (p *Proxy) Count(method string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.byMethod[method]
}

// Counts returns the number of requests by method.
func (p *Proxy) Counts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int, len(p.byMethod))
	for k, v := range p.byMethod {
		out[k] = v
	}
	return out
}

// Total returns how many requests arrived so far.
func (p *Proxy) Total() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.total
}

// Faulted returns how many requests had a fault applied.
func (p *Proxy) Faulted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.faulted
}

// ResetCounts zeroes the counters.
func (p *Proxy) ResetCounts() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.byMethod = map[string]int{}
	p.total, p.faulted = 0, 0
}

// pick counts r and decides what to do with it.
func (p *Proxy) pick(r *http.Request) (Fault, func(*http.Request)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.byMethod[r.Method]++
	p.total++
	f := p.fault
	if f.Kind == Pass || (f.Match != nil && !f.Match(r)) {
		return Fault{}, p.observe
	}
	if f.Count > 0 {
		p.fault.Count--
		if p.fault.Count == 0 {
			p.fault = Fault{}
		}
	}
	p.faulted++
	return f, p.observe
}

// ServeHTTP implements http.Handler.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f, observe := p.pick(r)
	if observe != nil {
		observe(r)
	}
	switch f.Kind {
	case Status:
		// Drain the request so the client is not blocked writing it.
		_, _ = io.Copy(io.Discard, r.Body)
		writeError(w, r, f)
		return
	case Reset:
		reset(w)
		return
	case Stall:
		// Read the body first, so that the server notices when the
		// client gives up and hangs up.
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		t := time.NewTimer(f.Delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	if f.Kind == CorruptRequest {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		if len(body) > 0 {
			body[len(body)/2] ^= 0x01
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	resp, err := p.forward(r)
	if err != nil {
		http.Error(w, "faultproxy: "+err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	h := w.Header()
	for k, vs := range resp.Header {
		h[k] = vs
	}
	if f.Kind != Truncate {
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
		return
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil || len(body) == 0 {
		reset(w)
		return
	}
	h.Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(body[:len(body)/2])
	if fl, ok := w.(http.Flusher); ok {
		fl.Flush()
	}
	// Abort: the server closes the connection without finishing the
	// body, and without logging a stack trace.
	panic(http.ErrAbortHandler)
}

// hopHeaders are not forwarded.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Upgrade",
}

func (p *Proxy) forward(r *http.Request) (*http.Response, error) {
	u := *p.target
	u.Path = r.URL.Path
	u.RawPath = r.URL.RawPath
	u.RawQuery = r.URL.RawQuery
	out, err := http.NewRequestWithContext(r.Context(), r.Method, u.String(), r.Body)
	if err != nil {
		return nil, err
	}
	if r.ContentLength == 0 {
		out.Body = http.NoBody
	}
	out.ContentLength = r.ContentLength
	out.TransferEncoding = r.TransferEncoding
	out.Header = r.Header.Clone()
	for _, h := range hopHeaders {
		out.Header.Del(h)
	}
	out.Host = r.Host // SigV4 signed the proxy's host
	return p.tr.RoundTrip(out)
}

// reset closes the client's connection with a TCP RST.
func reset(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	conn.Close()
}

// defaultCodes are the S3 error codes used for common statuses.
var defaultCodes = map[int]string{
	400: "BadRequest",
	403: "AccessDenied",
	404: "NoSuchKey",
	408: "RequestTimeout",
	429: "TooManyRequests",
	500: "InternalError",
	502: "BadGateway",
	503: "SlowDown",
	504: "GatewayTimeout",
}

func writeError(w http.ResponseWriter, r *http.Request, f Fault) {
	status := f.Status
	if status == 0 {
		status = http.StatusInternalServerError
	}
	code := f.Code
	if code == "" {
		code = defaultCodes[status]
		if code == "" {
			code = strings.ReplaceAll(http.StatusText(status), " ", "")
		}
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+
		`<Error><Code>%s</Code><Message>injected by faultproxy</Message><Resource>%s</Resource><RequestId>faultproxy</RequestId></Error>`,
		code, xmlEscape(r.URL.Path))
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("X-Amz-Request-Id", "faultproxy")
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return
	}
	w.Header().Set("Content-Length", fmt.Sprint(b.Len()))
	w.WriteHeader(status)
	_, _ = w.Write(b.Bytes())
}

func xmlEscape(s string) string {
	var b strings.Builder
	for _, c := range s {
		switch c {
		case '<':
			b.WriteString("&lt;")
		case '>':
			b.WriteString("&gt;")
		case '&':
			b.WriteString("&amp;")
		default:
			b.WriteRune(c)
		}
	}
	return b.String()
}
