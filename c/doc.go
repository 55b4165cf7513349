//go:build boule_c_sources

// Package c holds the C sources and public header of Boule. They are
// compiled as part of package vfs (see vfs/cgo.go), not on their own; this
// file only keeps the directory a Go package for tools that vendor modules.
package c
