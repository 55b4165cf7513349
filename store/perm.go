package store

import (
	"context"
	"io/fs"
)

// Every copy of a database that Boule writes is at most as readable as
// the database (doc/FORMAT.md, "Permissions"). The stores that write files,
// store/dir and store/cache, learn the database's permission bits from the
// context of each put, where the caller puts those of the database whose
// data it puts (WithSourcePerm). A put without them writes files only
// their owner can read.

type sourcePermKey struct{}

// WithSourcePerm returns a context carrying perm, the permission bits of
// the database whose chunks and manifests are put with it. A store that
// writes files (store/dir, store/cache) gives what it writes for that
// database the database's read access (see FilePerm and DirPerm), never
// more.
func WithSourcePerm(ctx context.Context, perm fs.FileMode) context.Context {
	return context.WithValue(ctx, sourcePermKey{}, perm.Perm())
}

// SourcePerm returns the permission bits WithSourcePerm put in ctx, or
// 0o600 (the owner's only) when there are none.
func SourcePerm(ctx context.Context) fs.FileMode {
	if p, ok := ctx.Value(sourcePermKey{}).(fs.FileMode); ok {
		return p
	}
	return 0o600
}

// FilePerm is the mode of a file holding data of a database of mode src:
// read for the owner (who wrote it, from a process that could read the
// database), and for group and others what src gives them. No write bits:
// stored files are never modified, only replaced.
func FilePerm(src fs.FileMode) fs.FileMode { return 0o400 | src&0o044 }

// DirPerm is the mode of a directory holding files of a database of mode
// src: rwx for the owner, and r-x for group and others where src gives
// them read.
func DirPerm(src fs.FileMode) fs.FileMode {
	m := fs.FileMode(0o700)
	if src&0o040 != 0 {
		m |= 0o050
	}
	if src&0o004 != 0 {
		m |= 0o005
	}
	return m
}
