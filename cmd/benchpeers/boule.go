package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/miniotest"
	"github.com/boule-vfs/boule/restore"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/s3"
	"github.com/boule-vfs/boule/vfs"
)

// bouleSide is Boule with its defaults: the boule VFS registered in this
// process, SQLite's default rollback journal (DELETE) or WAL mode
// (journal), the spool next to the database on the same file system, and
// the default limiter (30 calls/s, burst 100). Only the S3 endpoint (the
// counting proxy) and the bucket names are set.
type bouleSide struct {
	b       *bench
	dir     string
	bucket  string
	journal string // DELETE or WAL

	c      *counter
	path   string
	db     *sql.DB
	direct store.Store // minio itself, for polling: not counted
	viaCtr store.Store // through the proxy, for restores: counted
	key    string
	// hostname is the spool's, which names the replica: boule://HOST/path.
	hostname string
}

func (s *bouleSide) target(endpoint string) config.S3Target {
	return config.S3Target{
		Region: miniotest.Region, Endpoint: endpoint,
		ChunkBucket: s.bucket + "-chunks", ManifestBucket: s.bucket + "-manifests",
	}
}

func (s *bouleSide) Open(ctx context.Context, preload int64) (*sql.DB, int64, error) {
	var err error
	if s.c, err = startCounter(s.b.minio.Endpoint); err != nil {
		return nil, 0, err
	}
	mk := s.target(s.b.minio.Endpoint)
	mk.CreateBucketsOnDemand = true
	creator, err := s3.New(ctx, mk, s3.Options{})
	if err != nil {
		return nil, 0, err
	}
	if err := ensureBuckets(ctx, creator); err != nil {
		return nil, 0, err
	}
	s.direct = creator
	proxied := s.target(s.c.URL)
	if s.viaCtr, err = s3.New(ctx, proxied, s3.Options{}); err != nil {
		return nil, 0, err
	}
	err = vfs.Register(vfs.Config{
		ReplicationSpoolingDir: filepath.Join(s.dir, "spool"),
		ReplicationTargets:     []config.Target{{S3: &proxied}},
	})
	if err != nil {
		return nil, 0, err
	}
	s.path = filepath.Join(s.dir, "bench.db")
	s.db, err = openDB("file:" + s.path + "?vfs=boule&_journal_mode=" + s.journal + "&_sync=NORMAL&_busy_timeout=10000")
	if err != nil {
		return nil, 0, err
	}
	var seq int64
	if err := fill(s.db, preload, &seq); err != nil {
		return nil, 0, err
	}
	s.hostname = vfs.Spool().Hostname()
	if s.key, err = store.ManifestKey(s.hostname, s.path); err != nil {
		return nil, 0, err
	}
	return s.db, seq, waitVisible(ctx, s, seq)
}

// Flush uploads everything spooled, with the flush limiter. The
// benchmark uses it only to reach a known state before measuring.
func (s *bouleSide) Flush(ctx context.Context) error { return vfs.Flush(ctx, s.path) }

// Visible reads the newest manifest and finds the marker in chunk 0,
// which the manifest carries inline: one GET, like the lag benchmark in
// package vfs (which reads the change counter instead).
func (s *bouleSide) Visible(ctx context.Context) (int64, time.Time, error) {
	m, _, err := store.FetchManifest(ctx, []store.Store{s.direct}, s.key)
	at := time.Now()
	if err != nil {
		return -1, at, err
	}
	c0, err := store.FetchChunk(ctx, []store.Store{s.direct}, m, 0)
	if err != nil {
		return -1, at, err
	}
	return findMarker(c0), at, nil
}

func (s *bouleSide) Counts() counts {
	if s.c == nil {
		return counts{}
	}
	return s.c.Snapshot()
}

func (s *bouleSide) Overhead() (int64, int64) {
	return dirSize(filepath.Join(s.dir, "spool")) + fileSize(s.path+"-journal"), fileSize(s.path+"-wal") + fileSize(s.path+"-shm")
}

func (s *bouleSide) Restore(ctx context.Context, dst string) error {
	return restoreBoule(ctx, []store.Store{s.viaCtr}, s.key, dst)
}

// restoreBoule restores the newest manifest under key into dst with
// restore.File, the parallel restore behind `vfsctl restore`
// (default concurrency; written to a temp file, synced, renamed).
func restoreBoule(ctx context.Context, stores []store.Store, key, dst string) error {
	m, _, err := store.FetchManifest(ctx, stores, key)
	if err != nil {
		return err
	}
	return restore.File(ctx, stores, m, dst, restore.Options{})
}

// ensureBuckets creates st's buckets, retrying while a freshly started
// minio still answers 503.
func ensureBuckets(ctx context.Context, st *s3.Store) error {
	var err error
	for range 60 {
		if err = st.EnsureBuckets(ctx); err == nil || !store.IsRetryable(err) {
			return err
		}
		time.Sleep(500 * time.Millisecond) // waiting for minio to finish starting
	}
	return err
}

// coldQueryBouleSnapshot times a first query on a cold read replica
// through the boule_snapshot VFS: boule is registered with only the
// store (through the counting proxy) and a fresh temp directory, so the
// chunk cache starts empty; then it opens "boule://HOST/path" and looks
// up row id. The time includes the registration.
func (s *bouleSide) coldQueryBouleSnapshot(ctx context.Context, id int64) (time.Duration, counts, error) {
	tmp := filepath.Join(s.dir, "cold-tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return 0, counts{}, err
	}
	proxied := s.target(s.c.URL)
	before := s.Counts()
	t0 := time.Now()
	if err := vfs.Register(vfs.Config{Tempdir: tmp, ReplicationTargets: []config.Target{{S3: &proxied}}}); err != nil {
		return 0, counts{}, err
	}
	defer vfs.Register(vfs.Config{})
	db, err := sql.Open("sqlite3", "file:boule://"+s.hostname+s.path+"?vfs="+vfs.SnapshotName)
	if err != nil {
		return 0, counts{}, err
	}
	defer db.Close()
	var n int64
	err = db.QueryRowContext(ctx, "SELECT count(*) FROM t WHERE id = ?", id).Scan(&n)
	d := time.Since(t0)
	c := s.Counts().Sub(before)
	if err == nil && n != 1 {
		err = fmt.Errorf("row %d: %d rows", id, n)
	}
	return d, c, err
}

// Unthrottle raises the limiter to 1,000 calls/s, to upload the 1 GiB
// restore source in a minute or two instead of nine; a restore does not
// depend on how fast its source was uploaded.
func (s *bouleSide) Unthrottle() error {
	proxied := s.target(s.c.URL)
	return vfs.Register(vfs.Config{
		ReplicationSpoolingDir: filepath.Join(s.dir, "spool"),
		ReplicationTargets:     []config.Target{{S3: &proxied}},
		MaxRequestsPerSecond:   1000,
	})
}

// StopReplication closes the writer and stops the uploader.
func (s *bouleSide) StopReplication() error {
	err := s.db.Close()
	return errors.Join(err, vfs.Register(vfs.Config{}))
}

func (s *bouleSide) Close() error {
	var err error
	if s.db != nil {
		err = s.db.Close()
	}
	// Stops the uploader; the spool stays registered by directory, which
	// is never reused.
	err = errors.Join(err, vfs.Register(vfs.Config{}))
	if s.c != nil {
		s.c.Close()
	}
	os.RemoveAll(s.dir)
	return err
}
