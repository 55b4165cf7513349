// Package memtest measures the heap memory code allocates, for the tests
// that bound what hostile input can cost: a decoder's tests and fuzz
// targets assert that it allocates at most a small multiple of the size
// its input declares, not only that it does not panic. [Allocated] is
// exact and stops the world; [Roughly] is cheap and approximate;
// [AtMost] combines them for fuzz targets.
//
// Only tests import it. It must not import another package of this
// module.
package memtest
