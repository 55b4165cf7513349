package spool

import (
	"os"
	"testing"
)

// TestMain lowers the size from which the staged manifest is a head, so
// that the tests' databases of a few chunks are staged both ways: up to 3
// chunks whole, from 4 as heads over a base; and the superseded chunks
// that make a compaction, so that their staging is compacted.
func TestMain(m *testing.M) {
	headMinChunks = 4
	compactFloor = cs
	os.Exit(m.Run())
}
