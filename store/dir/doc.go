// Package dir is the directory backend of package store: the same layout
// as the S3 buckets, as files under one directory, with kept manifest
// versions for point-in-time restores (doc/FORMAT.md, "Directory
// layout"). It registers itself with store.Open for "dir" targets.
//
// It owns that layout, the writing of files whole under temporary names,
// the retention of manifest versions, and the classification of file
// system errors into store's kinds. Keys, encodings and how readable its
// files may be come from package store (store.WithSourcePerm); it never
// creates its root directory, which is the user's.
//
// Files are read only when regular and without blocking, and written no
// more readable than the source database.
package dir
