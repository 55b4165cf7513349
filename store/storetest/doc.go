// Package storetest tests stores: [Run] is the conformance suite every
// backend of package store must pass (through [FileHarness] for those
// that keep a file per chunk, and [RunLimited] behind store.Limited), and
// [Fake] an in-memory store that records its calls, for the unit tests of
// the uploader, restores and replicas.
//
// It owns the behaviour all stores share; what is particular to one
// backend (its layout, its permissions, S3's errors) is tested in that
// backend's package. It is for tests only.
package storetest
