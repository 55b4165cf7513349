package main

import (
	"context"
	"flag"
	"fmt"
	"os"
)

func cmdSync(ctx context.Context, g *globals, args []string) error {
	var optimize, full bool
	db, err := oneArgCommand(g, "sync", "[--full] [--optimize]", "DB",
		"Uploads a fresh snapshot of the database file DB, whether or not it was written\n"+
			"through boule, and prints its manifest name. Opens DB read-only. Needs a vfsctl\n"+
			"built with cgo: it reads DB through SQLite. Shows a progress bar on a terminal.\n\n"+
			"A sync uploads what changed since the last upload, trusting the store to keep\n"+
			"what it was given. --full uploads every chunk again: it repairs a store that\n"+
			"lost objects or holds corrupt ones (vfsctl verify names them). Run it on the\n"+
			"host that writes DB, with its config: the spool forgets what it uploaded, and\n"+
			"the writers' next uploads build on the repaired snapshot.\n\n"+
			"--optimize is accepted for verneuilctl's scripts and changes nothing: Verneuil's\n"+
			"rewrote the database first (64 KiB pages, then VACUUM); Boule's chunks are 64 KiB\n"+
			"whatever the page size, and sync does not write DB. To compact it, run VACUUM\n"+
			"yourself, then sync.", args,
		func(fs *flag.FlagSet) {
			fs.BoolVar(&full, "full", false, "upload every chunk again, whatever the store is believed to hold")
			fs.BoolVar(&optimize, "optimize", false, "accepted for verneuilctl compatibility; does nothing different (see above)")
		})
	if err != nil {
		return err
	}
	return syncDB(ctx, g, db, full)
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
