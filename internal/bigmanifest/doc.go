// Package bigmanifest writes the hostile inputs of Boule's memory-bound
// tests: valid manifests of huge databases of zero chunks, which zstd
// compresses a thousand to one, so that a blob of a few hundred kilobytes
// decodes to gigabytes. It streams them, and never holds a decoded
// manifest in memory; [DeclareSize] rewrites a zstd frame's header to
// declare a decoded size, true or not.
//
// Only tests import it. Package manifest owns the format
// (doc/FORMAT.md, "Manifest v1"); this package spells the v1 layout
// again so that it can write a manifest without building one, and must
// not be used to write a manifest anywhere but in a test.
package bigmanifest
