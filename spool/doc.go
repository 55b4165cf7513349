// Package spool keeps the local, crash-safe replication buffer of Boule: for
// each source database, the current snapshot (a manifest plus the chunks it
// references) and the snapshots waiting for upload.
//
// # Layout
//
// Under the configured replication_spooling_dir:
//
//	boule-v2.<boot id>/            state of this boot only
//	  <mangled source path>/       one directory per source database
//	    source                     the absolute source path, for tools
//	    txn                        marker: '0' clean, '1' a transaction in flight
//	                               or unfinished, 'F' failed, 'W' WAL (marker.go)
//	    staging/manifest           the current snapshot's manifest
//	    staging/chunks/<fp>        chunks not yet handed to the uploader
//	    ready/<unique>/            a snapshot published for upload
//	    consuming/<unique>/        a snapshot the uploader is uploading
//	    tmp/                       scratch; everything is written here first
//
// # Crash safety without fsync
//
// Every file is written whole under tmp/, made read-only, then published by
// rename or link; directories change state only by rename. Nothing is ever
// fsynced. A process crash loses nothing (the page cache keeps what was
// written), and an OS crash changes the boot id, so a torn state from an
// earlier boot is never read again: it is deleted and the next transaction
// rebuilds the snapshot from the database itself.
//
// # Incremental updates
//
// The VFS calls [DB.Snapshot] once per write transaction, while SQLite still
// holds a SHARED lock, so no writer in any process can change the file
// meanwhile. An incremental update rewrites only the dirty chunks. It is
// used only when the staged manifest provably describes the file as it was
// just before the transaction:
//
//   - the header (including the change counter at offset 24), the size and
//     the ctime captured before the transaction's first write equal what the
//     staged manifest recorded; a write by any other program (the sqlite3
//     shell, a restore) changes at least the counter or the ctime;
//   - the txn marker was clean before the transaction's first write. A
//     writer turns a clean marker into '1' and the time before writing, and
//     a published snapshot makes it '0' again (the file is rewritten in
//     place, never created per transaction), so a transaction that crashed
//     leaves it '1', one whose snapshot failed (full disk) 'F' with the
//     error, one that found the database in WAL mode 'W', and the next
//     writer rebuilds. The time stays that of the first transaction the
//     staged snapshot lacks: flushes and status read the marker
//     ([ReadMarker]) to tell whether the staged snapshot is current, and
//     since when it is not.
//
// Otherwise the snapshot is rebuilt from scratch, which is always correct.
//
// # Bounded size
//
// staging/chunks holds only chunks referenced by the staged manifest (at
// most the database size), and ready/ and consuming/ hold one snapshot each
// (each at most the database's size when it was taken), so the spool of a
// database stays within about three times the database size however long
// the uploader is stuck. While a snapshot runs, the chunks it stages sit
// beside those they replace until its manifest is written: about four
// times at the peak. A snapshot that fails deletes the chunks it staged.
// The one exception to the bound is a database that shrinks a lot while a
// larger snapshot waits in ready/ or consuming/: that snapshot keeps its
// size until it is uploaded.
package spool
