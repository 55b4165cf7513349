/*
** A C program that replicates a database with Boule, then restores it.
**
**     example DB SPOOL_DIR STORE_DIR OUT
**
** It configures Boule with a spool directory and a "dir" store, writes DB
** through the "boule" VFS, flushes it to the store, prints the replication
** status, restores the replica to OUT, and checks that OUT holds the same
** rows. It also reads the replica through the "boule_snapshot" VFS. It
** may be run again with the same arguments: it writes table t afresh, and
** replaces OUT.
**
** Build, after `make install` (internal/clients TestCExample runs this
** very command, with -Wall -Werror, with PREFIX a temporary directory in
** place of /usr/local; after `make lib`, build/ holds the same files):
**     cc -I /usr/local/include examples/c/example.c /usr/local/lib/libboule.a -lsqlite3 -lpthread -lm -o example
*/
#define _XOPEN_SOURCE 700 /* realpath */

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

/* utf8_len returns the length of the well-formed UTF-8 sequence at s, or
** 0 if there is none (a stray byte, an overlong form, a surrogate). */
static size_t utf8_len(const unsigned char *s) {
  size_t n, i;
  unsigned long c = s[0], min;
  if (c < 0x80) return 1;
  if (c < 0xC2) return 0;
  if (c < 0xE0) n = 2, min = 0x80, c &= 0x1F;
  else if (c < 0xF0) n = 3, min = 0x800, c &= 0x0F;
  else if (c < 0xF5) n = 4, min = 0x10000, c &= 0x07;
  else return 0;
  for (i = 1; i < n; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0; /* also stops at the NUL */
    c = (c << 6) | (s[i] & 0x3F);
  }
  return c < min || (c >= 0xD800 && c <= 0xDFFF) || c > 0x10FFFF ? 0 : n;
}

/* json_string writes s into dst (of size n) as a JSON string, quotes
** included: '"', '\\' and control characters are escaped. JSON text is
** UTF-8, so a path that is not (Linux allows any bytes but '/' and NUL)
** cannot be written in the configuration; it is refused rather than
** handed to a decoder that would replace its bytes and name another
** directory. Returns 0, or -1 for such a path or when dst is too small. */
static int json_string(char *dst, size_t n, const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  size_t o = 0, k;
  if (n < 3) return -1;
  dst[o++] = '"';
  while (*p) {
    if (*p == '"' || *p == '\\') {
      if (o + 2 >= n) return -1;
      dst[o++] = '\\';
      dst[o++] = (char)*p++;
    } else if (*p < 0x20) {
      if (o + 6 >= n) return -1;
      snprintf(dst + o, 7, "\\u%04x", *p++);
      o += 6;
    } else {
      if ((k = utf8_len(p)) == 0 || o + k >= n) return -1;
      memcpy(dst + o, p, k);
      o += k, p += k;
    }
  }
  if (o + 2 > n) return -1;
  dst[o++] = '"';
  dst[o] = 0;
  return 0;
}

/* uri_path writes s into dst (of size n) escaped for the path of an
** SQLite URI: '?' and '#' would end the path, '%' starts an escape.
** Returns 0, or -1 when dst is too small. */
static int uri_path(char *dst, size_t n, const char *s) {
  size_t o = 0;
  for (; *s; s++) {
    if (*s == '?' || *s == '#' || *s == '%') {
      if (o + 3 >= n) return -1;
      snprintf(dst + o, 4, "%%%02X", (unsigned char)*s);
      o += 3;
    } else {
      if (o + 1 >= n) return -1;
      dst[o++] = *s;
    }
  }
  dst[o] = 0;
  return 0;
}

int main(int argc, char **argv) {
  static char config[65536], spool[24600], store[24600], uri[16384], name[16384 + 64];
  char *err = NULL, *info = NULL, *db_path = NULL;
  sqlite3 *db = NULL;
  long long restored = 0, replica = 0;

  if (argc != 5) {
    fprintf(stderr, "usage: example DB SPOOL_DIR STORE_DIR OUT\n");
    return 2;
  }
  if (json_string(spool, sizeof(spool), argv[2]) || json_string(store, sizeof(store), argv[3])) {
    return fail("configuration", "SPOOL_DIR or STORE_DIR is too long, or not UTF-8, which JSON cannot carry");
  }
  snprintf(config, sizeof(config),
           "{\"replication_spooling_dir\": %s, \"replication_targets\": [{\"dir\": {\"path\": %s}}]}",
           spool, store);
  if (boule_configure(config, &err)) return fail("boule_configure", err);

  if (sqlite3_open_v2(argv[1], &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, "boule") != SQLITE_OK) {
    return fail(argv[1], sqlite3_errmsg(db));
  }
  /* The table starts over, so that the example can be run again on the
  ** same DB and find the same 1000 rows. */
  if (exec(db, "DROP TABLE IF EXISTS t") ||
      exec(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)") ||
      exec(db, "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 1000) "
               "INSERT INTO t(v) SELECT randomblob(500) FROM c")) {
    return 1;
  }
  sqlite3_close(db);

  if (boule_flush(argv[1], &err)) return fail("boule_flush", err);
  if (boule_replication_info(&info, &err)) return fail("boule_replication_info", err);
  printf("replication: %s\n", info);
  free(info);

  /* A replica is named by the database's absolute path, symlinks
  ** resolved, as SQLite's full pathname (the one replicated) has them. */
  if ((db_path = realpath(argv[1], NULL)) == NULL) return fail(argv[1], "realpath failed");
  snprintf(name, sizeof(name), "boule://%s", db_path);
  if (boule_restore(name, argv[4], &err)) return fail("boule_restore", err);
  if (count_rows(argv[4], NULL, &restored)) return 1;
  printf("restored %s: %lld rows\n", argv[4], restored);

  if (uri_path(uri, sizeof(uri), db_path)) return fail(db_path, "path too long");
  snprintf(name, sizeof(name), "file:boule://%s?vfs=boule_snapshot", uri);
  free(db_path);
  if (count_rows(name, NULL, &replica)) return 1;
  printf("replica %s: %lld rows\n", name, replica);
  return restored == 1000 && replica == 1000 ? 0 : fail("row counts", "not 1000");
}
