package vfs

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"syscall"
)

// LogEnvVar sets the log level of the loadable extension and the C
// library, which log to standard error: debug, info, warn (the default)
// or error. At warn, what stops the replication of a database (failed
// snapshots, WAL mode, a permanent store error, a store down for over a
// minute) shows as one ERROR line, and its recovery as one WARN line.
const LogEnvVar = "BOULE_LOG"

// LogFileEnvVar names a file that the loadable extension and the C
// library append their log to instead of standard error: for programs
// whose standard error is their output, or is read by something that
// takes any line on it for a failure.
const LogFileEnvVar = "BOULE_LOG_FILE"

// StderrLogger returns a logger at the level LogEnvVar sets, to standard
// error or to the file LogFileEnvVar names, for the entry points that have
// no Go caller to inject one.
func StderrLogger() (*slog.Logger, error) {
	level := slog.LevelWarn
	if v := strings.TrimSpace(os.Getenv(LogEnvVar)); v != "" {
		if err := level.UnmarshalText([]byte(v)); err != nil {
			return nil, fmt.Errorf("%s=%q: want debug, info, warn or error", LogEnvVar, v)
		}
	}
	var w io.Writer = os.Stderr
	if path := os.Getenv(LogFileEnvVar); path != "" {
		f, err := openLogFile(path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", LogFileEnvVar, err)
		}
		w = f
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})), nil
}

// openLogFile opens path to append to, creating it readable by its owner
// and group only: log lines name databases. It must be a regular file or
// a device such as /dev/null; a FIFO would block the first write until
// something reads it, so the open does not wait for a reader and the file
// is refused.
func openLogFile(path string) (*os.File, error) {
	fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_APPEND|syscall.O_CREAT|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0o640)
	if err == syscall.ENXIO {
		return nil, fmt.Errorf("%s is a FIFO that nothing reads: want a regular file", path)
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		syscall.Close(fd)
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if m := st.Mode & syscall.S_IFMT; m != syscall.S_IFREG && m != syscall.S_IFCHR {
		syscall.Close(fd)
		return nil, fmt.Errorf("%s is not a regular file or a device (mode %#o)", path, st.Mode)
	}
	if err := syscall.SetNonblock(fd, false); err != nil {
		syscall.Close(fd)
		return nil, &os.PathError{Op: "fcntl", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}
