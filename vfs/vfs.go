package vfs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/snapshot"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/upload"
)

// Name is the name of the replicating VFS.
const Name = "boule"

// Log attribute keys.
const (
	logKeyDB    = "db"
	logKeyErr   = "err"
	logKeyStack = "stack"
)

// Config is Boule's configuration; see package config and doc/CONFIG.md.
type Config = config.Config

// ErrRegister is returned when SQLite refuses to register the VFS, for
// example because no "unix" VFS exists.
var ErrRegister = errors.New("vfs: cannot register the boule VFS")

// runtime is the configuration in force. Register swaps it atomically;
// connections keep the spool they were opened with.
type runtime struct {
	cfg    Config
	log    *slog.Logger
	spool  *spool.Spool     // nil: replication disabled
	up     *upload.Uploader // nil: nothing to upload to
	reader *snapshot.Reader // serves boule_snapshot opens
}

var (
	regMu   sync.Mutex
	current atomic.Pointer[runtime]
	spools  = map[string]*spool.Spool{} // by directory, so that connections share per-database state

	// faultHook, persistGap and compactFloor are set only by tests
	// (export_test.go).
	faultHook    func(op, path string) error
	persistGap   time.Duration
	compactFloor int64
)

// Register registers the "boule" VFS with cfg, or applies cfg to the VFS
// already registered: connections opened afterwards use it. It is safe to
// call from many goroutines and to call again. The cfg is validated first;
// an invalid one changes nothing. Without ReplicationSpoolingDir, boule
// behaves exactly like the unix VFS and replicates nothing.
func Register(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Logger
	if log == nil {
		// What stops replication reaches the stderr of a program that
		// configured nothing.
		log = slog.Default()
	}
	for _, w := range cfg.Warnings() {
		log.Warn(w)
	}
	regMu.Lock()
	defer regMu.Unlock()
	rt := &runtime{cfg: cfg, log: log}
	if cfg.ReplicationSpoolingDir != "" {
		sp, ok := spools[cfg.ReplicationSpoolingDir]
		if !ok {
			var err error
			sp, err = spool.Open(spool.Options{
				Dir:    cfg.ReplicationSpoolingDir,
				Perm:   cfg.Permissions(),
				Logger: log,
				Fault:  faultHook,
				// 0 is spool's default.
				CompactFloor: compactFloor,
				// 0 is spool's default.
				PersistGap: persistGap,
				// 0 is spool's default, the same as config's.
				CaptureMemory: int64(cfg.CaptureMemoryMiB) << 20,
				// The conformance build checks every staged snapshot.
				Validate: validator,
				Notify:   notify,
				OpenWAL:  walOpener,
			})
			if err != nil {
				return fmt.Errorf("vfs: %w", err)
			}
			spools[cfg.ReplicationSpoolingDir] = sp
		}
		rt.spool = sp
		setCopyLimit(sp.CaptureLimit())
	}
	targets, err := Targets(context.Background(), cfg)
	if err != nil {
		return err
	}
	if rt.reader, err = newReader(cfg, targets, log); err != nil {
		return err
	}
	if rt.spool != nil {
		up, err := newUploader(cfg, targets, log)
		if err != nil {
			return err
		}
		rt.up = up
	}
	if rc := registerC(cfg.MakeDefault); rc != 0 {
		closeUploader(rt.up)
		return fmt.Errorf("%w: %w", ErrRegister, sqliteError("register", rc))
	}
	if err := setTempdir(cfg.Tempdir); err != nil {
		closeUploader(rt.up)
		return err
	}
	old := current.Swap(rt)
	if rt.up != nil {
		for _, d := range rt.spool.DBs() {
			rt.up.Add(d.Dir())
		}
		rt.up.Start()
	}
	if old != nil {
		closeUploader(old.up)
	}
	return nil
}

// notify is the spool's hook after each published snapshot.
func notify(dir string) {
	if rt := current.Load(); rt != nil && rt.up != nil {
		rt.up.Notify(dir)
	}
}

func closeUploader(up *upload.Uploader) {
	if up != nil {
		_ = up.Close()
	}
}

// RegisterFromEnv registers the VFS with the configuration in the
// BOULE_CONFIG environment variable: the JSON itself, or "@/path/to.json".
// When BOULE_CONFIG is unset or empty, Verneuil's VERNEUIL_CONFIG is read
// instead (see config.FromEnv). When neither is set, boule is registered
// without replication.
func RegisterFromEnv() error {
	cfg, err := config.Load(config.FromEnv(os.LookupEnv, nil))
	if err != nil {
		return err
	}
	return Register(cfg)
}

// WarnUnconfigured logs, for the entry points that read their
// configuration from BOULE_CONFIG, that it was empty (src is its value):
// boule then replicates nothing, which a missing variable must not hide.
func WarnUnconfigured(log *slog.Logger, src string) {
	if strings.TrimSpace(src) != "" {
		return
	}
	if log == nil {
		log = slog.Default()
	}
	log.Warn("vfs: " + config.EnvVar + " is not set: the boule VFS is registered without replication, and nothing written through it is replicated " +
		"(its flush pragma returns no row); set " + config.EnvVar + " to the configuration, or to @/path/to/config.json, before loading")
}

// Spool returns the spool in use, or nil when replication is disabled.
func Spool() *spool.Spool {
	if rt := current.Load(); rt != nil {
		return rt.spool
	}
	return nil
}

func logger() *slog.Logger {
	if rt := current.Load(); rt != nil {
		return rt.log
	}
	return slog.Default()
}

// conn is one open, replicated main database file.
type conn struct {
	handle uint64
	db     *spool.DB
	rt     *runtime // the configuration it was opened with

	snapMu  sync.Mutex
	snapErr error // the result of its last snapshot, for Restage
}

func (c *conn) setSnapErr(err error) {
	c.snapMu.Lock()
	c.snapErr = err
	c.snapMu.Unlock()
}

func (c *conn) lastSnapErr() error {
	c.snapMu.Lock()
	defer c.snapMu.Unlock()
	return c.snapErr
}

var (
	connMu     sync.Mutex
	conns      = map[uint64]*conn{}
	nextHandle uint64
)

func openConn(path string) (*conn, error) {
	rt := current.Load()
	if rt == nil || rt.spool == nil {
		return nil, nil
	}
	db, err := rt.spool.DB(path)
	if err != nil {
		rt.log.Error("vfs: database is not replicated", logKeyDB, path, logKeyErr, err)
		return nil, err
	}
	connMu.Lock()
	defer connMu.Unlock()
	nextHandle++
	c := &conn{handle: nextHandle, db: db, rt: rt}
	conns[c.handle] = c
	if rt.up != nil {
		rt.up.Add(db.Dir())
	}
	return c, nil
}

func lookupConn(h uint64) *conn {
	connMu.Lock()
	defer connMu.Unlock()
	return conns[h]
}

// closeWait bounds how long the close of a database's last connection
// waits for the commits it captured to be staged.
const closeWait = 30 * time.Second

// closeConn forgets the connection h. When it was the database's last in
// this process, it first waits (at most closeWait) until the commits
// captured in memory are staged and the persister is done with the spool:
// a program that closes its databases and exits leaves them in the spool,
// for any process to upload, and one that removes the directory next
// finds nothing of boule's still writing there.
func closeConn(h uint64) {
	connMu.Lock()
	c := conns[h]
	delete(conns, h)
	last := c != nil
	for _, o := range conns {
		if c != nil && o.db == c.db {
			last = false
			break
		}
	}
	connMu.Unlock()
	if last {
		ctx, cancel := context.WithTimeout(context.Background(), closeWait)
		defer cancel()
		if err := c.db.WaitIdle(ctx); err != nil {
			c.rt.log.Error("vfs: commits captured by this process were not staged before its last connection closed; the next transaction rebuilds the snapshot",
				logKeyDB, c.db.Path(), logKeyErr, err)
		}
	}
}
