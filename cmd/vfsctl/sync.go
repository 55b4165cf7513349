package main

import (
	"context"
	"fmt"
	"os"
)

func cmdSync(ctx context.Context, g *globals, args []string) error {
	fs, err := subcommand(g, "sync", "DB",
		"Uploads a fresh snapshot of the database file DB, whether or not it was written\nthrough boule, and prints its manifest name. Opens DB read-only. Needs a vfsctl\nbuilt with cgo: it reads DB through SQLite.", args, nil)
	if err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("want exactly one DB, got %d arguments", fs.NArg())
	}
	return syncDB(ctx, g, fs.Arg(0))
}

// syncPath makes a DB argument absolute, symlinks resolved, as the spool
// names it, and checks that it is a regular file.
func syncPath(arg string) (string, error) {
	path, err := absReal(arg)
	if err != nil {
		return "", err
	}
	if st, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("database %s: %w", path, err)
	} else if !st.Mode().IsRegular() {
		return "", fmt.Errorf("database %s: not a regular file", path)
	}
	return path, nil
}
