// Package fanout runs the iterations of a loop on a fixed number of
// goroutines: the fan-out that the read replicas' prefetch (package
// snapshot), vfsctl's reading of manifest versions and the store
// benchmarks share.
//
// It owns that loop, [Each], and nothing else: each goroutine takes the
// next index in turn, one that gets false from the function takes no
// more, and nothing is allocated per index. Errors, cancellation and what each
// iteration does are the caller's, in its function.
//
// Production code imports it. It must not do I/O or import another
// package of this module: it imports sync and sync/atomic only.
package fanout
