package vfs

// The C half of the VFS lives in this directory: boule_vfs.c (the
// replicating VFS), boule_snapshot.c (the read-replica VFS), the internal
// header boule_vfs.h they share with the Go half, and boule.h, the public
// header of the C library. cgo compiles each .c file on its own, and the
// go command rebuilds when any of them changes. This file holds no
// //export functions: their preamble may hold declarations only.

/*
#cgo CFLAGS: -O2 -Wall -Wextra -Wno-unused-parameter
*/
import "C"
