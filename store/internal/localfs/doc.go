// Package localfs holds what the stores that keep files on the local file
// system, store/dir and store/cache, do alike: write a file whole under a
// temporary name, and tell whether this process's user owns a file, which
// decides what it may narrow and what it may trust. Where files go and
// what they hold is the stores' own business.
package localfs
