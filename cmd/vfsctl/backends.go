package main

// The store backends a replication target can name; each registers itself
// with package store when imported.
import (
	_ "github.com/boule-vfs/boule/store/cache"
	_ "github.com/boule-vfs/boule/store/dir"
	_ "github.com/boule-vfs/boule/store/s3"
)
