package vfs

// This file compiles the C half of the VFS, which lives in ../c so that the
// C library and the loadable extension build from the same sources. It must
// not contain //export functions: their preamble may hold declarations only.

/*
#cgo CFLAGS: -I${SRCDIR}/../c -O2 -Wall -Wextra -Wno-unused-parameter
#include "boule_vfs.c"
#include "boule_snapshot.c"
*/
import "C"
