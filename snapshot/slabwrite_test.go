package snapshot

import (
	"io/fs"
	"testing"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store/cache"
)

// flushCache waits for the chunks queued for the cache, and seals the
// slabs they went to: the cache's files are then all in place.
func (r *Reader) flushCache() {
	r.cachePending.Wait()
	r.sealAll()
}

// stampFile is fi's stamp, for a chunk in a file of its own.
func stampFile(t testing.TB, fi fs.FileInfo) FileStamp {
	t.Helper()
	st, ok := stampOf(fi)
	if !ok {
		t.Fatalf("no stamp for %s", fi.Name())
	}
	return st
}

// cachedStamp returns the stamp of the cache file that holds chunk i of
// m (its pack's slab, or a file of its own) and the file's path; false if
// the cache does not hold it.
func cachedStamp(t testing.TB, c *cache.Store, m *manifest.Manifest, i int) (FileStamp, string, bool) {
	t.Helper()
	fp := m.Chunks[i]
	if ref, ok := m.PackRefs()[uint32(i)]; ok {
		if f, fi, off, _, _, err := c.OpenPacked(ref.ID, fp); err == nil {
			f.Close()
			st := stampFile(t, fi)
			st.Slab, st.Off = cache.SlabKey(ref.ID), off
			return st, f.Name(), true
		}
	}
	f, fi, _, err := c.OpenChunk(fp)
	if err != nil {
		return FileStamp{}, "", false
	}
	f.Close()
	return stampFile(t, fi), f.Name(), true
}
