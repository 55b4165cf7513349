// Package metrics exports the state of Boule's replication as Prometheus
// metrics. It lives apart from the core packages so that they do not
// depend on the Prometheus client: a program that wants the metrics
// imports this package and passes it the status functions, typically
// vfs.ReplicationStatus and vfs.TargetStats:
//
//	c := metrics.NewCollector(vfs.ReplicationStatus, vfs.TargetStats)
//	prometheus.MustRegister(c)                 // into the program's registry, or
//	http.Handle("/metrics", metrics.Handler(c)) // a registry of its own
//
// Every metric is computed when scraped; nothing is cached. Per database
// (label "db", the source database path):
//
//	boule_replication_lag_seconds                     gauge
//	boule_replication_pending_bytes                   gauge
//	boule_replication_uploads_total                   counter
//	boule_replication_chunks_total                    counter
//	boule_replication_calls_total                     counter
//	boule_replication_failures_total                  counter
//	boule_replication_blocked                         gauge, 0 or 1
//	boule_replication_not_replicated                  gauge, 0 or 1
//	boule_replication_last_upload_timestamp_seconds   gauge
//	boule_replication_uploader_alive                  gauge, 0 or 1
//	boule_replication_uploader_last_seen_timestamp_seconds  gauge
//
// Per replication target (label "target", the target's name):
//
//	boule_store_calls_total       counter
//	boule_store_retries_total     counter
//	boule_store_failures_total    counter
//	boule_store_bytes_up_total    counter
//	boule_store_bytes_down_total  counter
//
// The counters count from the start of the process.
package metrics
