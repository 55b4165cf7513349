// Package fsutil holds small file system helpers shared by the spool, the
// stores, the caches, the uploader, restores, read replicas, package vfs
// and vfsctl.
//
// It owns how Boule opens what it reads. Every file Boule reads from a
// store, a cache, a read_only directory or the spool is opened with
// [Open] (or [OpenFollow]) and read with [ReadFile] or [ReadFileMax]:
// open(2) never waits (a named pipe at a file's name would otherwise
// block until something writes to it, where no signal can reach), and
// anything but a regular file is an error, wrapping [ErrNotRegular], that
// names it. Directories are opened with [ReadDir], which never blocks
// either. It also creates temporary files ([CreateTemp]), tells a full
// disk ([NoSpace]), who owns a file ([Owner]) and which permission bits
// a copy of it may keep ([CopyPerm]).
//
// Production code imports it. It must not know where any file goes: it
// spells no spool path, store key or cache layout, and imports no other
// package of this module. It is pure Go, without cgo.
package fsutil
