package restore

import (
	"os"

	"golang.org/x/sys/unix"
)

// writebackEvery is how many bytes a restore writes before it asks the
// kernel to start writing them to disk.
const writebackEvery = 32 << 20

// writebackWriter writes to f and starts the writeback of every
// writebackEvery bytes without waiting for it (sync_file_range with
// SYNC_FILE_RANGE_WRITE), so that the disk works while the restore
// fetches, and the final fsync waits only for the tail. Its errors are
// ignored: the fsync that follows is what makes the file durable.
//
// It allocates no space ahead of what it writes: a restore that is
// killed leaves a temp file no larger than what it had fetched, which the
// next restore to the same path removes.
type writebackWriter struct {
	f               *os.File
	written, queued int64
}

func newWritebackWriter(f *os.File) *writebackWriter {
	return &writebackWriter{f: f}
}

func (w *writebackWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.written += int64(n)
	if w.written-w.queued >= writebackEvery {
		_ = unix.SyncFileRange(int(w.f.Fd()), w.queued, w.written-w.queued, unix.SYNC_FILE_RANGE_WRITE)
		w.queued = w.written
	}
	return n, err
}
