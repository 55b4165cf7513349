// Package spool keeps the local, crash-safe replication buffer of Boule: for
// each source database, the current snapshot (a manifest plus the chunks it
// references) and the snapshots waiting for upload.
//
// # Layout
//
// Under the configured replication_spooling_dir (doc/FORMAT.md, "Spool
// layout", is the reference; layout.go spells the names):
//
//	boule-v2.<boot id>/            state of this boot only
//	  <mangled source path>/       one directory per source database
//	    source                     the absolute source path, for tools
//	    txn                        the control block, mapped by every writer (ctl.go)
//	    staging/manifest           the current snapshot: a whole manifest, or
//	                               from 2,048 chunks a head (head.go)
//	    staging/base.<id>          the base that head is over
//	    staging/chunks/<fp>        chunks not yet handed to the uploader, each a
//	                               link to the segment that holds it (segment.go)
//	    ready/<unique>/            a snapshot published for upload
//	    consuming/<unique>/        a snapshot the uploader is uploading
//	    tmp/                       scratch; everything is written here first
//
// # Crash safety without fsync
//
// Every file is written whole under tmp/, made read-only, then published by
// rename or link (a file that replaces another swaps names with it, so that
// ext4 does not write it out: replace_linux.go); directories change state
// only by rename. Nothing is ever fsynced. A process crash loses nothing
// (the page cache keeps what was written), and an OS crash changes the boot
// id, so a torn state from an earlier boot is never read again: it is
// deleted and the next transaction rebuilds the snapshot from the database
// itself.
//
// # Captures and incremental updates
//
// At each commit the VFS hands [DB.Capture] what the transaction changed,
// copied while SQLite still holds its lock; the database's persister
// goroutine stages queued captures as one incremental snapshot, off the
// commit path (capture.go, persist.go; WAL mode: wal.go). The control
// block's generations order captures across processes. An incremental
// update rewrites only the dirty chunks, and is used only when the staged
// snapshot provably describes the file as it was just before: the header
// (with its change counter), the size and the ctime match what was
// staged, and no writer died mid-transaction or left commits unstaged.
// Otherwise the snapshot is rebuilt from the database itself, which is
// always correct. doc/DESIGN.md, "Capture at the commit, persist after
// it", describes the protocol.
//
// # Bounded size
//
// staging/chunks holds only chunks referenced by the staged manifest (at
// most the database size, plus the superseded chunks their segments keep:
// an eighth of it, or 4 MiB, before compaction), and ready/ and consuming/ hold one
// snapshot each (each at most the database's size when it was taken, plus
// what its segments keep), so the spool of a database stays within about
// three and a half times the database size however long the uploader is
// stuck. While a snapshot runs, the chunks it stages sit
// beside those they replace until its manifest is written: about four
// times at the peak. A snapshot that fails deletes the chunks it staged;
// one whose process is killed leaves them, and its scratch files in tmp/,
// to the next snapshot: the rebuild that follows a dead writer deletes the
// staged chunks no manifest references before it stages, and every
// snapshot first deletes the scratch files of processes that are gone, so
// that leftovers cannot keep a full spool full.
// The one exception to the bound is a database that shrinks a lot while a
// larger snapshot waits in ready/ or consuming/: that snapshot keeps its
// size until it is uploaded.
package spool
