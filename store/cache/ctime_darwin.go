package cache

import "syscall"

// statCtim is the change time in a stat result: Ctimespec on macOS.
func statCtim(s *syscall.Stat_t) syscall.Timespec { return s.Ctimespec }
