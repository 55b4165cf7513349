// Command benchpeers runs Boule and Litestream side by side on the same
// workloads, against the same minio on loopback, and reports commit
// latency, replication lag, S3 requests and bytes, local disk, restore
// time and time to a first query on a cold replica. `make bench-peers`
// runs it; doc/BENCHMARKS.md ("Boule against Litestream") has the method
// and the figures.
//
//	go run ./cmd/benchpeers -litestream .tools/bin/litestream [-only rate10,rate100,bulk,restore,idle] [-out doc/bench]
//	go run ./cmd/benchpeers -replot -out doc/bench
//
// Each tool talks to minio through its own counting proxy (proxy.go), so
// requests and bytes are counted the same way for both. Every commit also
// rewrites one marker row holding its sequence number; a poller reads the
// store directly (not through the proxy) and finds the newest marker it
// holds, which dates each commit's arrival the same way for both tools
// (see Visible in boule.go and litestream.go; package internal/lagtrack
// keeps the dates).
//
// It owns the benchmark's method: the workloads, the marker row, the
// counting proxy, and results.json and the plots drawn from it (plot.go)
// in the -out directory, doc/bench by default. It drives Boule only as a user would, through packages vfs,
// store, store/s3 and restore: it spells no store key, spool path or
// manifest encoding. Litestream runs as its own process; its store is
// read with the AWS SDK and github.com/superfly/ltx. Nothing imports
// this command, and the module's other code must not depend on it.
package main
