package metrics

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/upload"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// header returns the HELP and TYPE lines of the metric named name.
func header(t *testing.T, name string) string {
	t.Helper()
	lines := func(help string, typ prometheus.ValueType) string {
		kind := map[prometheus.ValueType]string{prometheus.GaugeValue: "gauge", prometheus.CounterValue: "counter"}[typ]
		return fmt.Sprintf("# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
	}
	for _, m := range dbMetrics {
		if m.name == name {
			return lines(m.help, m.typ)
		}
	}
	for _, m := range targetMetrics {
		if m.name == name {
			return lines(m.help, m.typ)
		}
	}
	t.Fatalf("no metric %s", name)
	return ""
}

var (
	lastUpload = time.Unix(1700000000, 250_000_000)
	statuses   = []upload.Status{
		{
			Dir: "/spool/%23x.db", Source: "/x.db", Lag: 1500 * time.Millisecond, PendingBytes: 65536 + 120,
			Uploads: 7, Chunks: 30, Calls: 41, Failures: 2, LastUpload: lastUpload, LastError: "boom",
			UploaderAlive: true, UploaderSeen: lastUpload.Add(2 * time.Second),
		},
		{
			Dir: "/spool/%23y.db", Source: "/y.db", Blocked: true, Failures: 1, NotReplicated: true, Problem: "snapshots fail",
		},
		{
			// Same source as the first: dropped.
			Dir: "/other/%23x.db", Source: "/x.db", Lag: time.Hour,
		},
		{
			// No source known: labelled with the spool directory.
			Dir: "/spool/unknown", Uploads: 1,
		},
	}
	stats = map[string]store.Stats{
		"s3:backup": {Calls: 100, Retries: 4, Failures: 1, BytesUp: 1 << 20, BytesDown: 512},
		"dir:/mnt":  {Calls: 3, BytesUp: 10},
	}
)

func TestCollectorValues(t *testing.T) {
	c := NewCollector(func() []upload.Status { return statuses }, func() map[string]store.Stats { return stats })
	// Each series lists its values in the order of its labels, sorted as the
	// text format sorts them.
	dbs := []string{"/spool/unknown", "/x.db", "/y.db"}
	targets := []string{"dir:/mnt", "s3:backup"}
	tests := []struct {
		name   string
		values []string
	}{
		{"boule_replication_lag_seconds", []string{"0", "1.5", "0"}},
		{"boule_replication_pending_bytes", []string{"0", "65656", "0"}},
		{"boule_replication_uploads_total", []string{"1", "7", "0"}},
		{"boule_replication_chunks_total", []string{"0", "30", "0"}},
		{"boule_replication_calls_total", []string{"0", "41", "0"}},
		{"boule_replication_failures_total", []string{"0", "2", "1"}},
		{"boule_replication_blocked", []string{"0", "0", "1"}},
		{"boule_replication_not_replicated", []string{"0", "0", "1"}},
		{"boule_replication_last_upload_timestamp_seconds", []string{"0", "1.70000000025e+09", "0"}},
		{"boule_replication_uploader_alive", []string{"0", "1", "0"}},
		{"boule_replication_uploader_last_seen_timestamp_seconds", []string{"0", "1.70000000225e+09", "0"}},
		{"boule_store_calls_total", []string{"3", "100"}},
		{"boule_store_retries_total", []string{"0", "4"}},
		{"boule_store_failures_total", []string{"0", "1"}},
		{"boule_store_bytes_up_total", []string{"10", "1.048576e+06"}},
		{"boule_store_bytes_down_total", []string{"0", "512"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			label, keys := "db", dbs
			if strings.HasPrefix(tt.name, "boule_store_") {
				label, keys = "target", targets
			}
			if len(tt.values) != len(keys) {
				t.Fatalf("%d values for %d labels", len(tt.values), len(keys))
			}
			want := header(t, tt.name)
			for i, key := range keys {
				want += fmt.Sprintf("%s{%s=%q} %s\n", tt.name, label, key, tt.values[i])
			}
			if err := testutil.CollectAndCompare(c, strings.NewReader(want), tt.name); err != nil {
				t.Errorf("CollectAndCompare(%s)=%v, want nil", tt.name, err)
			}
		})
	}
	if n, want := testutil.CollectAndCount(c), 3*len(dbMetrics)+2*len(targetMetrics); n != want {
		t.Errorf("CollectAndCount()=%d, want %d", n, want)
	}
	problems, err := testutil.CollectAndLint(c)
	if err != nil || len(problems) != 0 {
		t.Errorf("CollectAndLint()=%v, %v, want no problems", problems, err)
	}
}

func TestCollectorDescriptions(t *testing.T) {
	tests := []struct {
		name string
		want string // a phrase the description must contain
	}{
		{"boule_replication_lag_seconds", "oldest commit"},
		{"boule_replication_pending_bytes", "waiting for upload"},
		{"boule_replication_blocked", "permanent error"},
		{"boule_replication_not_replicated", "no writer could record"},
		{"boule_replication_last_upload_timestamp_seconds", "Unix epoch"},
		{"boule_replication_uploader_alive", "wrote its heartbeat"},
		{"boule_store_retries_total", "retried"},
		{"boule_store_bytes_up_total", "before compression"},
		{"boule_store_bytes_down_total", "after decompression"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if h := header(t, tt.name); !strings.Contains(h, tt.want) {
				t.Errorf("description %q does not say %q", h, tt.want)
			}
		})
	}
}

func TestCollectorNilFuncs(t *testing.T) {
	tests := []struct {
		name    string
		status  func() []upload.Status
		targets func() map[string]store.Stats
		want    int
	}{
		{"both nil", nil, nil, 0},
		{"no targets", func() []upload.Status { return statuses[:1] }, nil, len(dbMetrics)},
		{"no databases", nil, func() map[string]store.Stats { return stats }, 2 * len(targetMetrics)},
		{"empty", func() []upload.Status { return nil }, func() map[string]store.Stats { return nil }, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewCollector(tt.status, tt.targets)
			if n := testutil.CollectAndCount(c); n != tt.want {
				t.Errorf("CollectAndCount()=%d, want %d", n, tt.want)
			}
			// Registering describes every metric, with or without values.
			reg := prometheus.NewPedanticRegistry()
			if err := reg.Register(c); err != nil {
				t.Fatalf("Register()=%v", err)
			}
			if _, err := reg.Gather(); err != nil {
				t.Errorf("Gather()=%v", err)
			}
		})
	}
}

func TestHandler(t *testing.T) {
	calls := 0
	c := NewCollector(func() []upload.Status {
		calls++
		return []upload.Status{{Source: "/x.db", Lag: 1500 * time.Millisecond}}
	}, func() map[string]store.Stats { return stats })
	srv := httptest.NewServer(Handler(c))
	defer srv.Close()

	for i := 1; i <= 2; i++ {
		resp, err := http.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
			t.Fatalf("GET=%d %q, want 200 text/plain", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		text := string(body)
		for _, want := range []string{
			`boule_replication_lag_seconds{db="/x.db"} 1.5` + "\n",
			"# TYPE boule_replication_lag_seconds gauge\n",
			`boule_store_calls_total{target="s3:backup"} 100` + "\n",
		} {
			if !strings.Contains(text, want) {
				t.Errorf("scrape %d lacks %q:\n%s", i, want, text)
			}
		}
		// Only the collector's metrics: no Go runtime or process ones.
		if strings.Contains(text, "go_goroutines") || strings.Contains(text, "process_") {
			t.Errorf("scrape %d serves more than the collector:\n%s", i, text)
		}
		if calls != i {
			t.Errorf("status called %d times after %d scrapes, want once per scrape", calls, i)
		}
	}
}
