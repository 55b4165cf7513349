package snapshot

import "syscall"

// hugePages asks for transparent huge pages for a slab (MADV_HUGEPAGE);
// a hint only.
func hugePages(mem []byte) { _ = syscall.Madvise(mem, 14) }
