// Package lowprio runs replication's background work below the CPU
// priority of the application it replicates.
//
// The persister that stages captured commits and the uploader's workers
// compete for the same cores as the program that commits. Left at the
// same priority, a commit that has little to do can wait a whole
// scheduler slice for a core while they hash, write and compress: on a
// 2-core machine, the p99 of a 50 µs WAL commit was 2 to 5 times plain
// WAL's. Their threads run at a niceness raised by [Nice] instead, so the
// kernel runs a woken committer first. Nice is not SCHED_IDLE: a busy
// machine still gives the background threads a share of the CPU, so
// replication never stops, and a commit that waits for the persister (a
// full capture budget) waits for a thread that makes progress.
//
// Niceness is per thread on Linux. A lowered thread is locked to a
// goroutine of this package's pool for good ([Go], [Do]): no other code
// ever runs on it at the lower priority, and it never ends, since the
// kernel kills, with the thread that forked them, the children started
// with a parent-death signal (a lowered goroutine that exited once ended
// its thread, and with it a test's MinIO server, forked from that thread
// earlier by another goroutine). Elsewhere, both functions run f at
// normal priority.
package lowprio
