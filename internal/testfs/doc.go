// Package testfs has helpers for tests of what Boule does with the file
// system: named pipes where files should be (and unblocking an open(2)
// stuck on one), umasks and permission bits, byte-for-byte comparison of
// files, a tmpfs of a given size, and a [Site]: a temporary directory holding a
// database, a spool and a dir store, with the configuration that ties
// them.
//
// Only tests import it. It imports no other package of this module; the
// configuration a Site returns is JSON, as a user writes it.
package testfs
