//go:build !linux

package spool

import "os"

// replaceFile renames tmp to dst, replacing the file at dst atomically
// (see replace_linux.go for why Linux does more).
func replaceFile(tmp, dst string) error { return os.Rename(tmp, dst) }
