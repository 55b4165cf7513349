package spool

import "errors"

var (
	// ErrWAL is returned by [DB.Snapshot] for a database in WAL mode whose
	// log holds frames, given only the database file: the file alone is
	// not the database. [DB.CaptureWAL] reads the log too.
	ErrWAL = errors.New("spool: the database is in WAL mode and its log is not open through boule")

	// ErrHotJournal is returned by [DB.Snapshot] when a hot rollback journal
	// exists: the transaction did not commit, and the file is not in a state
	// worth replicating. The next transaction rebuilds the snapshot.
	ErrHotJournal = errors.New("spool: hot journal present")

	// ErrNotDatabase is returned by [DB.Snapshot] when the file does not
	// start with the SQLite header.
	ErrNotDatabase = errors.New("spool: not an SQLite database")

	// ErrNotSpool is returned by [List] when the directory given is not a
	// replication_spooling_dir: it holds neither the current boot's
	// directory nor an earlier boot's, and is not empty.
	ErrNotSpool = errors.New("spool: not a spool directory")

	// ErrCorrupt is returned when a manifest in the spool does not decode:
	// it is never uploaded.
	ErrCorrupt = errors.New("spool: spool file corrupt")

	// ErrBootID is returned by [Open] when the kernel boot id cannot be
	// read; without it the spool cannot tell a crashed boot's state apart.
	ErrBootID = errors.New("spool: cannot read the boot id")
)
