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
** The configuration keys are documented in doc/CONFIG.md.
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

#ifdef __cplusplus
}
#endif

#endif /* BOULE_H */
