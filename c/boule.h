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
** a complete program. Logs go to standard error, at the level the
** BOULE_LOG environment variable sets (error by default).
*/
#ifndef BOULE_H
#define BOULE_H

#ifdef __cplusplus
extern "C" {
#endif

/*
** Registers the "boule" VFS. json is the configuration as JSON, or
** "@/path/to/file.json", or NULL to read the BOULE_CONFIG environment
** variable. Safe to call again; later calls apply to databases opened
** afterwards. Returns 0 on success. On failure returns non-zero and, if
** errmsg is not NULL, stores there a message naming what was wrong, which
** the caller releases with free().
*/
int boule_configure(const char *json, char **errmsg);

/*
** Uploads everything spooled for the database at path (as opened through
** boule), or for every database this process replicates when path is
** NULL, and waits until it is in every replication target. Returns 0 on
** success, non-zero with *errmsg set (as above) otherwise.
*/
int boule_flush(const char *path, char **errmsg);

/*
** Stores in *out a JSON array with one object per database this process
** replicates: {"source", "lag_seconds", "pending_bytes", "uploads",
** "failures", "last_error"}. The caller releases *out with free().
** Returns 0 on success.
*/
int boule_replication_info(char **out, char **errmsg);

/*
** Writes the newest replicated snapshot of name to the file at out:
** name is "boule://HOST/abs/path/to.db", "boule:///abs/path/to.db" for
** this host, or the path of a manifest file. The file appears atomically
** (a temp file renamed over out) and every chunk is verified against its
** fingerprint. Returns 0 on success.
*/
int boule_restore(const char *name, const char *out, char **errmsg);

#ifdef __cplusplus
}
#endif

#endif /* BOULE_H */
