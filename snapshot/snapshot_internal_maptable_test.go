package snapshot

import "testing"

// TestMapTableReleased: a released snapshot's table is empty, and a
// prefetch still finishing asks it for chunks: it must answer none, not
// panic.
func TestMapTableReleased(t *testing.T) {
	var empty mapTable
	if e := empty.get(5000); e != nil {
		t.Fatalf("get() on a released table=%v, want nil", e)
	}
	tab := newMapTable(10)
	if e := tab.get(9); e != nil {
		t.Fatalf("get() of a chunk never mapped=%v, want nil", e)
	}
}
