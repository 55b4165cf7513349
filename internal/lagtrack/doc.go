// Package lagtrack measures replication lag for the benchmarks: how long
// each commit takes, from its return to the application, to be visible
// in the store. Commits are numbered in order, and a store that shows
// commit v shows every commit up to v (a manifest's change counter, or
// benchpeers' marker row).
//
// It owns the bookkeeping only: a [Tracker] notes when each commit
// returned, polls a function the caller gives it for the newest commit
// the store shows, and dates each commit's arrival. How a store is read,
// and what a commit number is, are the caller's.
//
// Only benchmarks import it: cmd/benchpeers and package vfs's lag
// benchmark. It must not do I/O itself or import another package of this
// module.
package lagtrack
