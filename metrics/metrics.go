package metrics

import (
	"net/http"
	"time"

	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/upload"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const (
	namespace = "boule"
	labelDB   = "db"
	labelTgt  = "target"
)

// metric describes one exported metric and how to read it.
type metric[T any] struct {
	name, help string
	desc       *prometheus.Desc
	typ        prometheus.ValueType
	value      func(T) float64
}

func newMetric[T any](subsystem, name, help, label string, typ prometheus.ValueType, value func(T) float64) metric[T] {
	fq := prometheus.BuildFQName(namespace, subsystem, name)
	return metric[T]{
		name:  fq,
		help:  help,
		desc:  prometheus.NewDesc(fq, help, []string{label}, nil),
		typ:   typ,
		value: value,
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// unixSeconds returns t in seconds since the Unix epoch, or 0 for the zero
// time (never happened).
func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.Unix()) + float64(t.Nanosecond())/1e9
}

// dbMetrics are exported once per replicated database.
var dbMetrics = []metric[upload.Status]{
	newMetric("replication", "lag_seconds",
		"Replication lag: the age in seconds of the oldest commit of the database that is not yet in the store (0 when the store is current).",
		labelDB, prometheus.GaugeValue, func(s upload.Status) float64 { return s.Lag.Seconds() }),
	newMetric("replication", "pending_bytes",
		"Bytes of snapshots (chunks and manifests) in the database's spool that are waiting for upload.",
		labelDB, prometheus.GaugeValue, func(s upload.Status) float64 { return float64(s.PendingBytes) }),
	newMetric("replication", "uploads_total",
		"Snapshots of the database (manifests) uploaded by this process.",
		labelDB, prometheus.CounterValue, func(s upload.Status) float64 { return float64(s.Uploads) }),
	newMetric("replication", "chunks_total",
		"Chunks of the database uploaded by this process.",
		labelDB, prometheus.CounterValue, func(s upload.Status) float64 { return float64(s.Chunks) }),
	newMetric("replication", "calls_total",
		"Store calls made by this process to replicate the database, all targets together.",
		labelDB, prometheus.CounterValue, func(s upload.Status) float64 { return float64(s.Calls) }),
	newMetric("replication", "failures_total",
		"Uploads of the database that failed (each after the store calls' own retries).",
		labelDB, prometheus.CounterValue, func(s upload.Status) float64 { return float64(s.Failures) }),
	newMetric("replication", "blocked",
		"1 if replication of the database stopped on a permanent error (such as bad credentials) until it is flushed or reconfigured, else 0.",
		labelDB, prometheus.GaugeValue, func(s upload.Status) float64 { return boolValue(s.Blocked) }),
	newMetric("replication", "not_replicated",
		"1 if the database's commits cannot reach the store whatever the store does (its snapshots fail, say on a full spool disk, or a commit changed it that no writer could record in the spool), else 0.",
		labelDB, prometheus.GaugeValue, func(s upload.Status) float64 { return boolValue(s.NotReplicated) }),
	newMetric("replication", "last_upload_timestamp_seconds",
		"When this process last uploaded a snapshot of the database, in seconds since the Unix epoch; 0 if it has not yet.",
		labelDB, prometheus.GaugeValue, func(s upload.Status) float64 { return unixSeconds(s.LastUpload) }),
	newMetric("replication", "uploader_alive",
		"1 if an uploader serving the database (in any process) wrote its heartbeat in the spool lately, else 0: a lag with no live uploader is a writer that exited before its uploads were done, not a store outage.",
		labelDB, prometheus.GaugeValue, func(s upload.Status) float64 { return boolValue(s.UploaderAlive) }),
	newMetric("replication", "uploader_last_seen_timestamp_seconds",
		"When an uploader serving the database last wrote its heartbeat, in seconds since the Unix epoch; 0 if none did in this boot.",
		labelDB, prometheus.GaugeValue, func(s upload.Status) float64 { return unixSeconds(s.UploaderSeen) }),
}

// targetMetrics are exported once per replication target.
var targetMetrics = []metric[store.Stats]{
	newMetric("store", "calls_total",
		"Calls made to the target's store, each attempt counted, retries included.",
		labelTgt, prometheus.CounterValue, func(s store.Stats) float64 { return float64(s.Calls) }),
	newMetric("store", "retries_total",
		"Attempts that retried a failed call to the target's store.",
		labelTgt, prometheus.CounterValue, func(s store.Stats) float64 { return float64(s.Retries) }),
	newMetric("store", "failures_total",
		"Calls to the target's store that failed for good, after their retries (not-found answers aside).",
		labelTgt, prometheus.CounterValue, func(s store.Stats) float64 { return float64(s.Failures) }),
	newMetric("store", "bytes_up_total",
		"Bytes sent to the target's store by successful puts, before compression.",
		labelTgt, prometheus.CounterValue, func(s store.Stats) float64 { return float64(s.BytesUp) }),
	newMetric("store", "bytes_down_total",
		"Bytes received from the target's store by successful gets, after decompression.",
		labelTgt, prometheus.CounterValue, func(s store.Stats) float64 { return float64(s.BytesDown) }),
}

type collector struct {
	status  func() []upload.Status
	targets func() map[string]store.Stats
}

// NewCollector returns a collector of Boule's replication metrics (see the
// package documentation). At each scrape it calls status for the
// databases replicated by this process and targets for the statistics of
// each replication target (vfs.ReplicationStatus and vfs.TargetStats in a
// program that uses the VFS). Either may be nil.
//
// A database is labelled with its source path, or its spool directory
// when the source is unknown; should two report the same label, the first
// is kept.
func NewCollector(status func() []upload.Status, targets func() map[string]store.Stats) prometheus.Collector {
	return &collector{status: status, targets: targets}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range dbMetrics {
		ch <- m.desc
	}
	for _, m := range targetMetrics {
		ch <- m.desc
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	if c.status != nil {
		seen := map[string]bool{}
		for _, s := range c.status() {
			db := s.Source
			if db == "" {
				db = s.Dir
			}
			if seen[db] {
				continue
			}
			seen[db] = true
			for _, m := range dbMetrics {
				ch <- prometheus.MustNewConstMetric(m.desc, m.typ, m.value(s), db)
			}
		}
	}
	if c.targets != nil {
		for name, s := range c.targets() {
			for _, m := range targetMetrics {
				ch <- prometheus.MustNewConstMetric(m.desc, m.typ, m.value(s), name)
			}
		}
	}
}

// Handler returns an HTTP handler that serves, in the Prometheus
// exposition formats, the metrics of c alone (in a registry of its own,
// without the Go runtime and process metrics).
func Handler(c prometheus.Collector) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}
