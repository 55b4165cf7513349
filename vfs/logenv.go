package vfs

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
)

// LogEnvVar sets the log level of the loadable extension and the C
// library, which log to standard error: debug, info, warn (the default)
// or error. At warn, what stops the replication of a database (failed
// snapshots, WAL mode, a permanent store error, a store down for over a
// minute) shows as one ERROR line, and its recovery as one WARN line.
const LogEnvVar = "BOULE_LOG"

// StderrLogger returns a logger to standard error at the level LogEnvVar
// sets, for the entry points that have no Go caller to inject one.
func StderrLogger() (*slog.Logger, error) {
	level := slog.LevelWarn
	if v := strings.TrimSpace(os.Getenv(LogEnvVar)); v != "" {
		if err := level.UnmarshalText([]byte(v)); err != nil {
			return nil, fmt.Errorf("%s=%q: want debug, info, warn or error", LogEnvVar, v)
		}
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})), nil
}
