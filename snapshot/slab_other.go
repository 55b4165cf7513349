//go:build !linux

package snapshot

// hugePages does nothing where transparent huge pages are not asked for.
func hugePages(mem []byte) {}
