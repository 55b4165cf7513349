package spool

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/boule-vfs/boule/internal/fsutil"
)

// The txn marker of a database is a control block shared, through a
// MAP_SHARED mapping, by every process that writes the database through
// boule, and by the C half of the VFS. It says which commits the staged
// snapshot holds, which are captured but not yet staged, and which
// transaction is in flight. Its words are read and written atomically;
// the layout is native-endian, like the spool itself one boot's and one
// host's (doc/FORMAT.md, "Spool layout"):
//
//	0    magic      "BOULETX2"
//	8    txn        owner of the write transaction in flight, 0 if none
//	16   committed  generation of the last commit captured
//	24   owner      owner of that commit
//	32   persisted  generation of the staged snapshot
//	40   state      0 replicating, 'F' snapshots fail, 'W' WAL, 'R' rebuild
//	48   since      Unix ns of the oldest commit the staged snapshot lacks
//	56   errlen     bytes of err
//	64   err        the error of the last failed snapshot
//
// An owner is a process: its pid in the high 32 bits, the low 32 bits of
// its start time (in clock ticks since boot) in the low 32, so that a
// reused pid is a different owner.
//
// The protocol:
//
//   - The VFS, at the first write of a transaction to the database file
//     (which SQLite does only with an EXCLUSIVE lock), exchanges txn with
//     its owner. A non-zero old value is a writer that died mid-transaction
//     (no live writer can hold the lock meanwhile): the transaction must be
//     snapshotted by a rebuild. So must it when state is not 0.
//   - At the lock downgrade, the capture (DB.Capture) takes generation
//     committed+1 and clears txn, while SHARED keeps other writers out.
//     If earlier commits are not persisted yet and their owner is another
//     process, it waits for that process's persister, or rebuilds when the
//     owner is dead.
//   - A persister stages captures in generation order and stores persisted.
//     A rebuild stages the file itself and sets committed and persisted to
//     a new generation: captures at or below it are obsolete.
//   - state records what stops incremental snapshots: a failed snapshot
//     (with its error), WAL mode, or an invalidation ('R') by the
//     uploader. The next transaction rebuilds and clears it.
const (
	ctlMagic     = "BOULETX2"
	ctlSize      = 4096
	ctlTxn       = 8
	ctlCommitted = 16
	ctlOwner     = 24
	ctlPersisted = 32
	ctlState     = 40
	ctlSince     = 48
	ctlErrLen    = 56
	ctlErr       = 64
	ctlErrMax    = 1024

	stateOK      = 0
	stateFailed  = 'F'
	stateWAL     = 'W'
	stateRebuild = 'R'
)

// CtlSinceFromTxn is where the since word is, in words from the txn word:
// the VFS sets it through the address of the txn word (BOULE_CTL_SINCE_FROM_TXN).
const CtlSinceFromTxn = (ctlSince - ctlTxn) / 8

// Where the words a commit in WAL mode takes its generation with are, in
// words from the txn word, for the VFS's commits that need not enter Go
// (captureLazy): BOULE_CTL_*_FROM_TXN.
const (
	CtlCommittedFromTxn = (ctlCommitted - ctlTxn) / 8
	CtlOwnerFromTxn     = (ctlOwner - ctlTxn) / 8
	CtlPersistedFromTxn = (ctlPersisted - ctlTxn) / 8
	CtlStateFromTxn     = (ctlState - ctlTxn) / 8
	CtlWALModeFromTxn   = (ctlWALMode - ctlTxn) / 8
	CtlWALLazyFromTxn   = (ctlWALLazy - ctlTxn) / 8
)

// ctl is a mapped control block.
type ctl struct {
	mem []byte
	ino uint64
}

func (c *ctl) word(off int) *uint64 { return (*uint64)(unsafe.Pointer(&c.mem[off])) }

func (c *ctl) load(off int) uint64     { return atomic.LoadUint64(c.word(off)) }
func (c *ctl) store(off int, v uint64) { atomic.StoreUint64(c.word(off), v) }
func (c *ctl) cas(off int, old, v uint64) bool {
	return atomic.CompareAndSwapUint64(c.word(off), old, v)
}

// TxnWord returns the address of the txn word, for the VFS to exchange at
// the first write of each transaction.
func (c *ctl) TxnWord() unsafe.Pointer { return unsafe.Pointer(c.word(ctlTxn)) }

// close unmaps the block.
func (c *ctl) close() { _ = syscall.Munmap(c.mem) }

// setState records state, with err for stateFailed; since is set to now if
// it is 0 (the oldest commit not staged is at least this old).
func (c *ctl) setState(state uint64, err error) {
	if state == stateFailed && err != nil {
		msg := []byte(err.Error())
		if len(msg) > ctlErrMax {
			msg = msg[:ctlErrMax]
		}
		for i, b := range msg {
			if b == '\n' || b == '\r' {
				msg[i] = ' '
			}
		}
		copy(c.mem[ctlErr:ctlErr+ctlErrMax], msg)
		c.store(ctlErrLen, uint64(len(msg)))
	}
	c.cas(ctlSince, 0, uint64(time.Now().UnixNano()))
	c.store(ctlState, state)
}

// openCtl maps the control block at p, creating it when it does not exist
// with the database's mode db (ctlMode). The file is only ever created
// whole (written in tmp, then linked into place), so that no process maps
// a half-made one.
func openCtl(p, tmp string, db fs.FileMode) (*ctl, error) {
	for range 2 {
		f, err := os.OpenFile(p, os.O_RDWR|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
		if errors.Is(err, fs.ErrNotExist) {
			if err := createCtl(p, tmp, ctlMode(db)); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("spool: open txn marker %s: %w", p, pathless(err))
		}
		c, err := mapCtl(f, p)
		f.Close()
		return c, err
	}
	return nil, fmt.Errorf("spool: open txn marker %s: %w", p, fs.ErrNotExist)
}

// ctlMode is the mode of the control block of a database whose mode is db:
// it holds the last error of a snapshot, which may quote the database, so
// it is no more readable than the database; its owner (and those who may
// write the database) map it read-write.
func ctlMode(db fs.FileMode) fs.FileMode { return 0o600 | db&0o066 }

func createCtl(p, tmp string, mode fs.FileMode) error {
	b := make([]byte, ctlSize)
	copy(b, ctlMagic)
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return fmt.Errorf("spool: create %s: %w", tmp, pathless(err))
	}
	t := fmt.Sprintf("%s/%s%s", tmp, ctlTempPrefix, uniqueName())
	if err := writeFileMode(t, b, mode); err != nil {
		_ = os.Remove(t)
		return fmt.Errorf("spool: create txn marker %s: %w", p, pathless(err))
	}
	defer os.Remove(t)
	if err := os.Link(t, p); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("spool: create txn marker %s: %w", p, pathless(err))
	}
	return nil
}

func mapCtl(f *os.File, p string) (*ctl, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("spool: txn marker %s: %w", p, pathless(err))
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("spool: txn marker %s is %s, not a regular file", p, fsutil.FileKind(fi.Mode()))
	}
	if fi.Size() != ctlSize {
		return nil, fmt.Errorf("spool: txn marker %s: %d bytes, want %d (a marker of another version of boule?)", p, fi.Size(), ctlSize)
	}
	mem, err := syscall.Mmap(int(f.Fd()), 0, ctlSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("spool: map txn marker %s: %w", p, err)
	}
	if string(mem[:len(ctlMagic)]) != ctlMagic {
		_ = syscall.Munmap(mem)
		return nil, fmt.Errorf("spool: txn marker %s: bad magic (a marker of another version of boule?)", p)
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	return &ctl{mem: mem, ino: ino}, nil
}

// readCtl reads the control block at p without mapping it, for status and
// tools; a missing file reads as a zero block.
func readCtl(p string) ([]byte, error) {
	f, _, err := fsutil.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		b := make([]byte, ctlSize)
		copy(b, ctlMagic)
		return b, nil
	}
	if err != nil {
		return nil, fmt.Errorf("spool: read txn marker %s: %w", p, err)
	}
	defer f.Close()
	b := make([]byte, ctlSize)
	n, err := io.ReadFull(f, b)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("spool: read txn marker %s: %w", p, err)
	}
	if n != ctlSize || !bytes.HasPrefix(b, []byte(ctlMagic)) {
		return nil, fmt.Errorf("spool: txn marker %s: not a marker of this version of boule", p)
	}
	return b, nil
}

func le64(b []byte, off int) uint64 {
	return *(*uint64)(unsafe.Pointer(&b[off]))
}

// --- Owners ----------------------------------------------------------------

var (
	selfOnce sync.Once
	selfID   uint64
)

// self is this process's owner ID.
func self() uint64 {
	selfOnce.Do(func() {
		pid := os.Getpid()
		start, _ := processStart(pid)
		selfID = uint64(pid)<<32 | uint64(uint32(start))
	})
	return selfID
}

// Self is this process's owner ID in the txn marker, for the VFS.
func Self() uint64 { return self() }

// processStart returns the start time of process pid, in clock ticks
// since boot (field 22 of /proc/PID/stat).
func processStart(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("spool: /proc/%d/stat: no command name", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	// fields[0] is field 3 (state): field 22 is fields[19].
	if len(fields) < 20 {
		return 0, fmt.Errorf("spool: /proc/%d/stat: %d fields", pid, len(fields)+2)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// ownerAlive reports whether the process id names is still running. An
// owner whose liveness cannot be told is taken for alive: waiting on it is
// bounded, and a rebuild is always correct.
func ownerAlive(id uint64) bool {
	if id == 0 {
		return false
	}
	if id == self() {
		return true
	}
	pid := int(id >> 32)
	start, err := processStart(pid)
	if errors.Is(err, fs.ErrNotExist) {
		return false
	}
	if err != nil {
		return true
	}
	return uint32(start) == uint32(id)
}

// writeFileMode writes a new file at p with exactly mode, whatever the
// umask.
func writeFileMode(p string, b []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(mode)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
