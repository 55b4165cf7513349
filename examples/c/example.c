/*
** A C program that replicates a database with Boule, then restores it.
**
**     example DB SPOOL_DIR STORE_DIR OUT
**
** It configures Boule with a spool directory and a "dir" store, writes DB
** through the "boule" VFS, flushes it to the store, prints the replication
** status, restores the replica to OUT, and checks that OUT holds the same
** rows. It also reads the replica through the "boule_snapshot" VFS.
**
** Build (see the Makefile's example target):
**     cc -I build examples/c/example.c build/libboule.a -lsqlite3 -lpthread -lm -o example
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "boule.h"

static int fail(const char *what, const char *msg) {
  fprintf(stderr, "example: %s: %s\n", what, msg ? msg : "failed");
  return 1;
}

static int exec(sqlite3 *db, const char *sql) {
  char *err = NULL;
  if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
    fail(sql, err);
    sqlite3_free(err);
    return 1;
  }
  return 0;
}

static int count_rows(const char *uri, const char *vfs, long long *n) {
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_open_v2(uri, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, vfs);
  if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(db, "SELECT count(*) FROM t", -1, &st, NULL);
  if (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
    *n = sqlite3_column_int64(st, 0);
  } else {
    fail(uri, sqlite3_errmsg(db));
    rc = SQLITE_ERROR;
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  return rc != SQLITE_OK;
}

int main(int argc, char **argv) {
  char config[8192], name[4200];
  char *err = NULL, *info = NULL;
  sqlite3 *db = NULL;
  long long restored = 0, replica = 0;

  if (argc != 5) {
    fprintf(stderr, "usage: example DB SPOOL_DIR STORE_DIR OUT\n");
    return 2;
  }
  snprintf(config, sizeof(config),
           "{\"replication_spooling_dir\": \"%s\", \"replication_targets\": [{\"dir\": {\"path\": \"%s\"}}]}",
           argv[2], argv[3]);
  if (boule_configure(config, &err)) return fail("boule_configure", err);

  if (sqlite3_open_v2(argv[1], &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, "boule") != SQLITE_OK) {
    return fail(argv[1], sqlite3_errmsg(db));
  }
  if (exec(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)") ||
      exec(db, "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 1000) "
               "INSERT INTO t(v) SELECT randomblob(500) FROM c")) {
    return 1;
  }
  sqlite3_close(db);

  if (boule_flush(argv[1], &err)) return fail("boule_flush", err);
  if (boule_replication_info(&info, &err)) return fail("boule_replication_info", err);
  printf("replication: %s\n", info);
  free(info);

  snprintf(name, sizeof(name), "boule://%s", argv[1]);
  if (boule_restore(name, argv[4], &err)) return fail("boule_restore", err);
  if (count_rows(argv[4], NULL, &restored)) return 1;
  printf("restored %s: %lld rows\n", argv[4], restored);

  snprintf(name, sizeof(name), "file:boule://%s?vfs=boule_snapshot", argv[1]);
  if (count_rows(name, NULL, &replica)) return 1;
  printf("replica %s: %lld rows\n", name, replica);
  return restored == 1000 && replica == 1000 ? 0 : fail("row counts", "not 1000");
}
