/*
** The SQLITE_EXTRA_INIT function of the conformance testfixture (see
** scripts/conformance.sh). SQLite calls it at the end of every
** sqlite3_initialize().
**
** With BOULE_CONFIG unset or empty it does nothing, and the suite runs on
** the plain unix VFS: that is the baseline. Otherwise BOULE_CONFIG holds
** the boule configuration, which makes boule the default VFS.
*/
#include <stdio.h>
#include <stdlib.h>

#include "sqlite3.h"
#include "boule.h"

int boule_conformance_init(const char *unused) {
  static int configured;
  const char *cfg = getenv("BOULE_CONFIG");
  sqlite3_vfs *vfs;
  (void)unused;

  if (cfg == NULL || cfg[0] == 0) {
    return SQLITE_OK;
  }
  if (!configured) {
    char *err = NULL;
    if (boule_configure(NULL, &err) != 0) {
      fprintf(stderr, "boule_conformance_init: %s\n", err ? err : "boule_configure failed");
      free(err);
      return SQLITE_ERROR;
    }
    configured = 1;
    return SQLITE_OK;
  }
  /*
  ** The suite shuts SQLite down and initializes it again, often. Each
  ** sqlite3_initialize() registers unix as the default VFS again, so put
  ** boule back, without configuring it (and restarting its uploader) anew.
  */
  vfs = sqlite3_vfs_find("boule");
  if (vfs == NULL) {
    fprintf(stderr, "boule_conformance_init: the boule VFS is not registered\n");
    return SQLITE_ERROR;
  }
  return sqlite3_vfs_register(vfs, 1);
}
