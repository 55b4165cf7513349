package cache

import "syscall"

// statCtim is the change time in a stat result: Ctim on Linux.
func statCtim(s *syscall.Stat_t) syscall.Timespec { return s.Ctim }
