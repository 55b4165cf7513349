// Package clients holds the tests that drive Boule from outside Go: the
// loadable extension in Debian's sqlite3 shell and in /usr/bin/python3's
// sqlite3 module, the static library in a C program (examples/c), and the
// vfsctl binary. It has no code of its own.
package clients
