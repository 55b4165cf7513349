/*
** Boule: a replicating SQLite VFS. Public C API of libboule.a.
**
** Link a C program that uses SQLite (the amalgamation or -lsqlite3) with
** build/libboule.a, -lpthread and -lm, then call boule_configure once
** before opening databases with the "boule" VFS:
**
**     char *err = NULL;
**     if (boule_configure("{\"replication_spooling_dir\":\"/var/spool/boule\"}", &err)) {
**         fprintf(stderr, "%s\n", err);
**         free(err);
**     }
**     sqlite3_open_v2("app.db", &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, "boule");
**
** Read replicas open with the "boule_snapshot" VFS, read-only:
**
**     sqlite3_open_v2("file:boule:///var/lib/app.db?vfs=boule_snapshot", &ro,
**                     SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL);
**
** The configuration keys are documented in doc/CONFIG.md; examples/c has
** a complete program. Logs go to standard error, or appended to the file
** BOULE_LOG_FILE names, at the level the BOULE_LOG environment variable
** sets (warn by default: what stops the replication of a database is one
** ERROR line, its recovery one WARN).
**
** ORDER. Call boule_configure first. Until it has succeeded once, SQLite
** knows neither VFS (opens naming them fail with "no such vfs"),
** boule_flush fails ("database is not replicated by this process"),
** boule_restore fails ("boule is not registered"), and
** boule_replication_info succeeds with "[]".
**
** RESULTS AND ERRORS. Every function returns 0 on success and 1 on
** failure, never another value. On failure, if errmsg is not NULL, *errmsg
** is set to a message allocated with malloc(), which the caller releases
** with free(); whatever *errmsg held before is overwritten, not freed. On
** success *errmsg is not touched, so set it to NULL before the call if you
** test it afterwards. Other output pointers (the *out of
** boule_replication_info) are set only on success. A Go panic inside the
** library is returned as a failure ("boule: panic: ...") and does not
** cross into the caller.
**
** THREADS. Every function may be called from any thread, and concurrently
** with each other and with SQLite calls on other threads. Concurrent calls
** to boule_configure are serialized inside the library, and each one
** swaps the configuration in force atomically. boule_configure calls
** sqlite3_vfs_register, with the thread-safety SQLite gives that function
** (none when SQLite is built with SQLITE_THREADSAFE=0). boule_flush,
** boule_replication_info and boule_restore make no SQLite call and hold
** no SQLite lock, so connections keep working while they run; two flushes
** of one database wait for each other, flushes of different databases
** run in parallel. No function calls back into the caller. None is
** async-signal-safe: they allocate and enter the Go runtime, so do not
** call them from a signal handler. A process runs one Go runtime: do not
** also load the extension (libboule.so) into a program linked with
** libboule.a.
**
** BLOCKING. boule_flush and boule_restore block the calling thread until
** they finish, with no overall timeout (unlike PRAGMA
** boule_flush_replication_data, which gives up after 10 minutes). Each
** store request is retried a bounded number of times (S3 requests also
** have a per-request timeout), so a store that keeps failing makes them
** fail; but a large upload or download takes as long as it takes, and
** boule_flush first waits, for as long as it lasts, for an upload of the
** same database already under way in this process or another.
*/
#ifndef BOULE_H
#define BOULE_H

#ifdef __cplusplus
extern "C" {
#endif

/*
** Registers both VFSes, "boule" (replicating) and "boule_snapshot" (read
** replicas), neither as SQLite's default unless the configuration sets
** make_default. json is the configuration as JSON, or
** "@/path/to/file.json", or NULL to read the BOULE_CONFIG environment
** variable (or Verneuil's VERNEUIL_CONFIG when BOULE_CONFIG is unset or
** empty, with a warning); an empty configuration (NULL with neither set)
** registers boule without replication, and logs a warning saying so.
** BOULE_LOG and BOULE_LOG_FILE are read at each call; a bad level, or a
** log file that cannot be opened for appending, fails it. Safe to call again: a later call applies to
** databases opened afterwards. A configuration that does not parse or
** validate changes nothing; the message names the bad key.
** Returns 0 on success, 1 on failure with *errmsg set (see RESULTS AND
** ERRORS above).
*/
int boule_configure(const char *json, char **errmsg);

/*
** Uploads everything spooled for the database at path (as opened through
** boule; a relative path is made absolute and symlinks are resolved), or
** for every database this process replicates when path is NULL, and waits
** until it is in every replication target. Succeeds only if every
** replication target then holds a snapshot with every transaction
** committed through boule before the call; when the database's last
** snapshot failed or never finished, it first takes a new one (opening
** the database through boule for a read transaction). Fails when the
** configuration has no replication_spooling_dir or no replication target,
** when the upload fails (store missing, down, or refusing the
** credentials), when a snapshot cannot be taken (a full spool disk), and
** when the database is in WAL mode, which is not replicated; the message
** names the database and the cause. With path NULL, the message joins the
** failures of every database (databases deleted since are skipped).
** Returns 0 on success, 1 on failure with *errmsg set. Blocks with no
** timeout (see BLOCKING above).
*/
int boule_flush(const char *path, char **errmsg);

/*
** Stores in *out a JSON array with one object per database this process
** replicates: {"source", "lag_seconds", "pending_bytes", "uploads",
** "failures", "last_error", "blocked", "not_replicated", "problem"},
** last_error and problem only when there is one. not_replicated is true
** when the database's commits cannot reach the store whatever it does
** (failing snapshots, WAL mode), problem says why; blocked, when a
** permanent store error stopped its uploads. "[]"
** before boule_configure or without replication. The caller releases
** *out with free(). Returns 0 on success; 1 on failure (out is NULL),
** with *errmsg set and *out untouched.
*/
int boule_replication_info(char **out, char **errmsg);

/*
** Writes the newest replicated snapshot of name to the file at out:
** name is "boule://HOST/abs/path/to.db", "boule:///abs/path/to.db" for
** this host, or the path of a manifest file. The file appears atomically
** (a temp file in out's directory, synced, then renamed over out) and
** every chunk is verified against its fingerprint. On failure, out is left
** as it was and the temp file is removed. It refuses to write out when a
** -journal, -wal or -shm file sits next to it, as SQLite would apply it
** to the restored file, and when a process has out open or holds a SQLite
** lock on it. The file's mode is 0600 less the umask, and no more than
** what a file it replaces grants. Returns 0 on success, 1 on failure
** with *errmsg set. Blocks with no timeout (see BLOCKING above).
*/
int boule_restore(const char *name, const char *out, char **errmsg);

#ifdef __cplusplus
}
#endif

#endif /* BOULE_H */
