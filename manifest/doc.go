// Package manifest defines Boule's snapshot manifest, format v1.
//
// A snapshot of a SQLite database file is a manifest plus a set of
// content-addressed chunks. The file is cut into ChunkSize-aligned pieces
// (the last one may be short) and each piece is identified by its
// Fingerprint, the BLAKE3-256 hash of its bytes. The manifest records where
// the file came from, its size and a few fields of the SQLite header, and the
// ordered list of chunk fingerprints. It may also carry some chunks' bytes
// inline, which saves storing one object per commit for chunk 0, whose
// header changes on every write transaction.
//
// The binary encoding produced by [Manifest.MarshalBinary] and read by
// [Decode] is a public contract, specified byte by byte in doc/FORMAT.md.
// The encoding is canonical: every byte string that Decode accepts is
// exactly the encoding of the manifest it returns.
package manifest
