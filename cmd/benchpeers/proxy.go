package main

import (
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
)

// counter is a reverse proxy on loopback in front of minio that counts
// requests by method, and the body bytes that go up (requests) and down
// (responses). Both tools talk to the store only through their own
// counter, so their figures are measured the same way.
//
// The proxy keeps the Host header, so SigV4 signatures made for the
// proxy's address stay valid at minio.
type counter struct {
	URL string

	srv  *http.Server
	mu   sync.Mutex
	byOp map[string]int64
	up   atomic.Int64
	down atomic.Int64
}

// counts is a snapshot of a counter.
type counts struct {
	Requests  int64            `json:"requests"`
	ByMethod  map[string]int64 `json:"by_method"`
	BytesUp   int64            `json:"bytes_up"`
	BytesDown int64            `json:"bytes_down"`
}

func startCounter(target string) (*counter, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c := &counter{URL: "http://" + l.Addr().String(), byOp: map[string]int64{}}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(r *http.Response) error {
		r.Body = &countingBody{ReadCloser: r.Body, n: &c.down}
		return nil
	}
	c.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		op := r.Method
		if r.Method == http.MethodGet && r.URL.Query().Has("list-type") {
			op = "LIST"
		}
		c.mu.Lock()
		c.byOp[op]++
		c.mu.Unlock()
		if r.Body != nil {
			r.Body = &countingBody{ReadCloser: r.Body, n: &c.up}
		}
		rp.ServeHTTP(w, r)
	})}
	go func() { _ = c.srv.Serve(l) }()
	return c, nil
}

// Snapshot returns the counts so far.
func (c *counter) Snapshot() counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := counts{ByMethod: map[string]int64{}, BytesUp: c.up.Load(), BytesDown: c.down.Load()}
	for k, v := range c.byOp {
		s.ByMethod[k] = v
		s.Requests += v
	}
	return s
}

// Sub returns the counts made between b and s.
func (s counts) Sub(b counts) counts {
	d := counts{ByMethod: map[string]int64{}, Requests: s.Requests - b.Requests,
		BytesUp: s.BytesUp - b.BytesUp, BytesDown: s.BytesDown - b.BytesDown}
	for k, v := range s.ByMethod {
		if n := v - b.ByMethod[k]; n != 0 {
			d.ByMethod[k] = n
		}
	}
	return d
}

func (c *counter) Close() { _ = c.srv.Close() }

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}
