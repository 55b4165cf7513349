// Package dir is the directory backend of package store: the same layout
// as the S3 buckets, as files under one directory, with kept manifest
// versions for point-in-time restores (doc/FORMAT.md, "Directory
// layout"). It registers itself with store.Open for "dir" targets.
//
// Files are read only when regular and without blocking, and written no
// more readable than the source database (store.WithSourcePerm).
package dir
