package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/boule-vfs/boule/config"
)

// extensionEnv names the loadable extension when --vfs is not given.
const extensionEnv = "BOULE_EXTENSION"

// extensionCandidates are where shell looks for the loadable extension
// when neither --vfs nor BOULE_EXTENSION names it, in order: next to
// vfsctl; in ../lib, where make install puts it (PREFIX/bin/vfsctl,
// PREFIX/lib/libboule.so); and in build/ of a Boule checkout, where make
// ext puts it, for a vfsctl built in the checkout or run from it with go
// run. exe is vfsctl's path and wd the working directory; either may be
// empty when unknown.
func extensionCandidates(exe, wd string) []string {
	var out []string
	if exe != "" {
		dir := filepath.Dir(exe)
		out = append(out, filepath.Join(dir, "libboule.so"), filepath.Join(dir, "..", "lib", "libboule.so"))
		if isCheckout(dir) {
			out = append(out, filepath.Join(dir, "build", "libboule.so"))
		}
	}
	if wd != "" && isCheckout(wd) {
		out = append(out, filepath.Join(wd, "build", "libboule.so"))
	}
	return out
}

// isCheckout reports whether dir is the root of a checkout of Boule: only
// there is build/ trusted to hold its extension.
func isCheckout(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	first, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimSpace(first) == "module github.com/boule-vfs/boule"
}

// findExtension returns the extension shell loads: lib (from --vfs) when
// set, else env (BOULE_EXTENSION) when set, else the first of the
// candidates that exists. It fails with a usage error naming --vfs and
// every place it looked.
func findExtension(lib, env string, candidates []string) (string, error) {
	switch {
	case lib != "":
		return lib, checkExtension("--vfs", lib)
	case env != "":
		return env, checkExtension(extensionEnv, env)
	}
	for _, c := range candidates {
		if st, err := os.Stat(c); err == nil && st.Mode().IsRegular() {
			return c, nil
		}
	}
	return "", usagef("cannot find the loadable extension libboule.so: looked in %s (%s unset); give its path with --vfs PATH or in %s (make ext builds build/libboule.so, make install puts it in PREFIX/lib)",
		strings.Join(candidates, ", "), extensionEnv, extensionEnv)
}

// openedCheck is a statement that fails when the shell's main database
// is in memory: a failed .open only prints an error and falls back to an
// in-memory database, which .bail does not catch. It prints nothing when
// the replica is open. Only core SQL (abs of the smallest integer
// overflows), so that it works in every shell; the shell's own error line
// before it says why the replica did not open.
const openedCheck = "SELECT 1 FROM pragma_database_list WHERE name = 'main' AND abs(CASE file WHEN '' THEN -9223372036854775807 - 1 ELSE 0 END);"

// checkExtension returns a usage error when lib, given by what (--vfs or
// BOULE_EXTENSION), names a file by a path with a slash that exists
// neither as given nor with ".so" appended (as the shell's .load tries
// it). A bare name is left to the dynamic loader's search path.
func checkExtension(what, lib string) error {
	if !strings.Contains(lib, "/") {
		return nil
	}
	for _, p := range []string{lib, lib + ".so"} {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return nil
		}
	}
	return usagef("%s %s: no such library (nor %s.so)", what, lib, lib)
}

func cmdShell(ctx context.Context, g *globals, args []string) error {
	var exe, lib string
	src, rest, err := sourceCommand(g, "shell", "[--hostname H] [--executable sqlite3] [--vfs LIB] (SOURCE | --manifest URI|FILE) [-- SQLITE3_ARGS...]",
		"Opens the sqlite3 shell on a read replica of SOURCE (a database path or a\nboule:// name): it loads the extension and opens the replica with the\nboule_snapshot VFS, with this configuration in BOULE_CONFIG. It fails, without\nstarting the shell, when the replica's manifest cannot be fetched, and exits\nwith an error when the shell cannot load the extension or open the replica.", args, sourceArgs{withManifest: true, trailing: true},
		func(fs *flag.FlagSet) {
			fs.StringVar(&exe, "executable", "sqlite3", "the sqlite3 shell to run")
			fs.StringVar(&lib, "vfs", "", "the loadable extension (default: $BOULE_EXTENSION, else libboule.so next to vfsctl, in ../lib, or in build/ of a Boule checkout)")
		})
	if err != nil {
		return err
	}
	cfg, err := loadConfig(g)
	if err != nil {
		return err
	}
	cfg.Logger = nil
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	exePath, _ := os.Executable()
	wd, _ := os.Getwd()
	if lib, err = findExtension(lib, os.Getenv(extensionEnv), extensionCandidates(exePath, wd)); err != nil {
		return err
	}
	path, err := exec.LookPath(exe)
	if err != nil {
		return usagef("--executable %q: %v", exe, err)
	}
	// The shell only prints an error when the replica does not open, and
	// goes on with an empty in-memory database: check first that its
	// manifest can be fetched, so that a typo fails here.
	if _, _, _, err := fetchSource(ctx, g, src, ""); err != nil {
		return err
	}
	name := src.file
	if name == "" {
		name = src.String()
	}
	// The setup steps bail out, so that a failure the checks above cannot
	// see (a library the loader cannot find or load, a replica that fails
	// to open all the same) ends the shell with an error. Then bail is off
	// again, unless the caller asked for -bail.
	shellArgs := []string{
		"-cmd", ".bail on",
		"-cmd", ".load '" + strings.TrimSuffix(lib, ".so") + "'",
		"-cmd", ".open 'file:" + uriPath(name) + "?vfs=boule_snapshot'",
		"-cmd", openedCheck,
	}
	if !slices.Contains(rest, "-bail") && !slices.Contains(rest, "--bail") {
		shellArgs = append(shellArgs, "-cmd", ".bail off")
	}
	shellArgs = append(shellArgs, rest...)
	cmd := exec.CommandContext(ctx, path, shellArgs...)
	cmd.Env = append(os.Environ(), config.EnvVar+"="+string(cfgJSON))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = g.stdin, g.stdout, g.stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return fmt.Errorf("%s exited with status %d", exe, ee.ExitCode())
		}
		return err
	}
	return nil
}
