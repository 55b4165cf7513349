// Package store is where Boule's snapshots live: the narrow [Store]
// interface every backend implements (content-addressed chunk and pack
// blobs, manifest blobs by key, their versions), its errors, the object
// keys and blob codecs, [Limited] (the rate-limited, retrying and
// counting wrapper every caller goes through), and [Open], which turns
// the configuration's replication targets into stores.
//
// The object keys and blob encodings are a public contract, specified in
// doc/FORMAT.md, "Store layout and object keys"; this package is its
// reference implementation and the only place that spells them.
//
// The backends are subpackages, each registering itself when imported:
// store/s3 (S3 and S3-compatible services), store/dir (a local
// directory), store/cache (the local chunk cache). store/storetest holds
// the conformance suite every backend runs, and a fake for unit tests.
//
// This package knows nothing of SQLite, the spool or the uploader.
package store
