/*
** How the C sources of package vfs reach SQLite. Linked into a Go program
** next to another SQLite, or into the C library, they call sqlite3_*
** directly. Built as a loadable extension (BOULE_EXTENSION), every call goes
** through the sqlite3_api_routines table, which boule_vfs.c defines
** (SQLITE_EXTENSION_INIT1) and the other units declare (INIT3).
*/
#ifndef BOULE_SQLITE_H
#define BOULE_SQLITE_H

#ifdef BOULE_EXTENSION
#include "sqlite3ext.h"
#ifndef BOULE_DEFINE_API
SQLITE_EXTENSION_INIT3
#endif
#else
#include "sqlite3.h"
#endif

#endif /* BOULE_SQLITE_H */
