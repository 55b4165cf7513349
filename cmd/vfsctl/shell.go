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
	"strings"

	"github.com/boule-vfs/boule/config"
)

// extensionCandidates are where shell looks for the loadable extension
// when --vfs is not given: next to vfsctl, then in ../lib, then the
// dynamic loader's search path.
func extensionCandidates() []string {
	var out []string
	if exe, err := os.Executable(); err == nil {
		dir := filepath.Dir(exe)
		out = append(out, filepath.Join(dir, "libboule.so"), filepath.Join(dir, "..", "lib", "libboule.so"))
	}
	return out
}

func cmdShell(ctx context.Context, g *globals, args []string) error {
	var host, manifestArg, exe, lib string
	fs, err := subcommand(g, "shell", "[--hostname H] [--executable sqlite3] [--vfs LIB] (SOURCE | --manifest URI|FILE) [-- SQLITE3_ARGS...]",
		"Opens the sqlite3 shell on a read replica of SOURCE (a database path or a\nboule:// name): it loads the extension and opens the replica with the\nboule_snapshot VFS, with this configuration in BOULE_CONFIG.", args,
		func(fs *flag.FlagSet) {
			fs.StringVar(&host, "hostname", "", "the source's host (default: this one)")
			fs.StringVar(&manifestArg, "manifest", "", "boule://HOST/abs/path, or a manifest file")
			fs.StringVar(&exe, "executable", "sqlite3", "the sqlite3 shell to run")
			fs.StringVar(&lib, "vfs", "", "the loadable extension (default: libboule.so next to vfsctl, then ../lib, then the loader's path)")
		})
	if err != nil {
		return err
	}
	rest := fs.Args()
	var src source
	switch {
	case manifestArg != "":
		src, err = manifestSource(manifestArg)
	case len(rest) > 0:
		src, err = parseSource(rest[0], host)
		rest = rest[1:]
	default:
		return usagef("want a SOURCE or --manifest")
	}
	if err != nil {
		return err
	}
	if len(rest) > 0 && rest[0] == "--" {
		rest = rest[1:]
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
	if lib == "" {
		for _, c := range extensionCandidates() {
			if _, err := os.Stat(c); err == nil {
				lib = c
				break
			}
		}
		if lib == "" {
			lib = "libboule"
		}
	}
	path, err := exec.LookPath(exe)
	if err != nil {
		return usagef("--executable %q: %v", exe, err)
	}
	name := src.file
	if name == "" {
		name = src.String()
	}
	shellArgs := []string{
		"-cmd", ".load '" + strings.TrimSuffix(lib, ".so") + "'",
		"-cmd", ".open 'file:" + uriPath(name) + "?vfs=boule_snapshot'",
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
