package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3store "github.com/boule-vfs/boule/store/s3"
	"github.com/superfly/ltx"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/miniotest"
)

// lsSide is Litestream v0.5.18 with its defaults, run as its own process
// (`litestream replicate`) beside a writer in this process, in WAL mode
// as Litestream requires. Only the replica (bucket, path, endpoint,
// credentials) is configured.
type lsSide struct {
	b      *bench
	dir    string
	bucket string

	c      *counter
	path   string
	cfg    string
	db     *sql.DB
	cmd    *exec.Cmd
	exited chan struct{}
	s3     *s3.Client // minio itself, for polling: not counted

	mu   sync.Mutex
	seen map[string]bool
	best int64
}

const lsReplicaPath = "db"

func (s *lsSide) writeConfig(path, endpoint string) error {
	y := fmt.Sprintf(`dbs:
  - path: %s
    replica:
      type: s3
      bucket: %s
      path: %s
      endpoint: %s
      region: %s
      force-path-style: true
      access-key-id: %s
      secret-access-key: %s
`, s.path, s.bucket, lsReplicaPath, endpoint, miniotest.Region, s.b.minio.AccessKey, s.b.minio.SecretKey)
	return os.WriteFile(path, []byte(y), 0o600)
}

// lsEnv is this process's environment without AWS_CA_BUNDLE: with it set,
// Litestream 0.5.18 fails to start ("unable to add custom RootCAs
// HTTPClient"). Boule's S3 client accepts it.
func lsEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_CA_BUNDLE=") {
			env = append(env, kv)
		}
	}
	return env
}

func (s *lsSide) Open(ctx context.Context, preload int64) (*sql.DB, int64, error) {
	var err error
	if s.c, err = startCounter(s.b.minio.Endpoint); err != nil {
		return nil, 0, err
	}
	st, err := s3store.New(ctx, config.S3Target{
		Region: miniotest.Region, Endpoint: s.b.minio.Endpoint,
		ChunkBucket: s.bucket, ManifestBucket: s.bucket, CreateBucketsOnDemand: true,
	}, s3store.Options{})
	if err != nil {
		return nil, 0, err
	}
	if err := ensureBuckets(ctx, st); err != nil {
		return nil, 0, err
	}
	s.s3 = st.Client()
	s.seen = map[string]bool{}
	s.best = -1
	s.path = filepath.Join(s.dir, "bench.db")
	s.db, err = openDB("file:" + s.path + "?_journal_mode=WAL&_sync=NORMAL&_busy_timeout=10000")
	if err != nil {
		return nil, 0, err
	}
	var seq int64
	if err := fill(s.db, preload, &seq); err != nil {
		return nil, 0, err
	}
	s.cfg = filepath.Join(s.dir, "litestream.yml")
	if err := s.writeConfig(s.cfg, s.c.URL); err != nil {
		return nil, 0, err
	}
	logf, err := os.Create(filepath.Join(s.dir, "litestream.log"))
	if err != nil {
		return nil, 0, err
	}
	s.cmd = exec.Command(s.b.litestream, "replicate", "-config", s.cfg)
	s.cmd.Env = lsEnv()
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return nil, 0, err
	}
	s.exited = make(chan struct{})
	go func() { _ = s.cmd.Wait(); logf.Close(); close(s.exited) }()
	if err := waitVisible(ctx, s, seq); err != nil {
		return nil, 0, fmt.Errorf("%w; log:\n%s", err, s.logTail())
	}
	return s.db, seq, nil
}

func (s *lsSide) logTail() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "litestream.log"))
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// Visible lists the replica's LTX files at every level (one LIST of
// db/, which holds a directory per level: db/0000/, db/0001/, ...), and
// downloads and decodes each new one to find the newest marker among its
// pages. A commit is visible once an LTX file holding it is listed: that
// is when `litestream restore` (which plans from the same listing) could
// restore it. The time is taken when the listing returns, before the
// downloads.
func (s *lsSide) Visible(ctx context.Context) (int64, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var keys []string
	p := s3.NewListObjectsV2Paginator(s.s3, &s3.ListObjectsV2Input{
		Bucket: aws.String(s.bucket), Prefix: aws.String(lsReplicaPath + "/"),
	})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			return s.best, time.Now(), err
		}
		for _, o := range out.Contents {
			if k := aws.ToString(o.Key); !s.seen[k] && strings.HasSuffix(k, ".ltx") {
				keys = append(keys, k)
			}
		}
	}
	at := time.Now()
	for _, k := range keys {
		v, err := s.ltxMarker(ctx, k)
		if err != nil {
			return s.best, at, err // retried on the next poll
		}
		s.seen[k] = true
		s.best = max(s.best, v)
	}
	return s.best, at, nil
}

// ltxMarker downloads one LTX file and returns the newest marker in its
// pages, or -1.
func (s *lsSide) ltxMarker(ctx context.Context, key string) (int64, error) {
	out, err := s.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)})
	if err != nil {
		var nf interface{ ErrorCode() string }
		if errors.As(err, &nf) && nf.ErrorCode() == "NoSuchKey" {
			return -1, nil // compacted away meanwhile: a newer file holds its pages
		}
		return -1, err
	}
	defer out.Body.Close()
	raw, err := io.ReadAll(out.Body)
	if err != nil {
		return -1, err
	}
	dec := ltx.NewDecoder(bytes.NewReader(raw))
	if err := dec.DecodeHeader(); err != nil {
		return -1, fmt.Errorf("%s: %w", key, err)
	}
	page := make([]byte, dec.Header().PageSize)
	best := int64(-1)
	for {
		var h ltx.PageHeader
		if err := dec.DecodePage(&h, page); errors.Is(err, io.EOF) {
			return best, nil
		} else if err != nil {
			return -1, fmt.Errorf("%s: %w", key, err)
		}
		best = max(best, findMarker(page))
	}
}

func (s *lsSide) Counts() counts {
	if s.c == nil {
		return counts{}
	}
	return s.c.Snapshot()
}

// Overhead is the meta directory (.bench.db-litestream: local LTX files)
// and, separately, the WAL, which WAL mode needs anyway but which
// Litestream keeps from being checkpointed until it has copied it.
func (s *lsSide) Overhead() (int64, int64) {
	return dirSize(filepath.Join(s.dir, ".bench.db-litestream")), fileSize(s.path+"-wal") + fileSize(s.path+"-shm")
}

// Restore runs `litestream restore` through the counting proxy.
func (s *lsSide) Restore(ctx context.Context, dst string) error {
	cfg := filepath.Join(s.dir, "restore.yml")
	if err := s.writeConfig(cfg, s.c.URL); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, s.b.litestream, "restore", "-config", cfg, "-o", dst, s.path)
	cmd.Env = lsEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("litestream restore: %w\n%s", err, out)
	}
	return nil
}

// coldVFS times a first query on a cold read replica through Litestream's
// own VFS: the sqlite3 shell loads the extension built from
// cmd/litestream-vfs of v0.5.18 (`make vfs` in Litestream's tree; see
// doc/BENCHMARKS.md), opens the replica through the counting proxy, and
// looks up row id. The time includes the shell's start and the
// extension's load.
func (s *lsSide) coldVFS(ctx context.Context, so string, id int64) (time.Duration, counts, error) {
	u := fmt.Sprintf("s3://%s/%s?endpoint=%s&region=%s&force-path-style=true", s.bucket, lsReplicaPath, s.c.URL, miniotest.Region)
	script := fmt.Sprintf(".bail on\n.load %s\n.open file:replica.db?vfs=litestream\nSELECT count(*) FROM t WHERE id = %d;\n", so, id)
	cmd := exec.CommandContext(ctx, "sqlite3")
	cmd.Dir = s.dir
	cmd.Env = append(lsEnv(), "LITESTREAM_REPLICA_URL="+u)
	cmd.Stdin = strings.NewReader(script)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	before := s.Counts()
	t0 := time.Now()
	out, err := cmd.Output()
	d := time.Since(t0)
	c := s.Counts().Sub(before)
	if err != nil || strings.TrimSpace(string(out)) != "1" {
		return d, c, fmt.Errorf("sqlite3 with the litestream VFS: %v: %q %q", err, out, stderr.Bytes())
	}
	return d, c, nil
}

// StopReplication closes the writer and stops `litestream replicate`
// (SIGTERM: it syncs what it has, then exits).
func (s *lsSide) StopReplication() error {
	var err error
	if s.db != nil {
		err = s.db.Close()
	}
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(30 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
	}
	return err
}

func (s *lsSide) Close() error {
	err := s.StopReplication()
	if s.c != nil {
		s.c.Close()
	}
	os.RemoveAll(s.dir)
	return err
}

// plainSide is SQLite through mattn/go-sqlite3 and the unix VFS, without
// replication: the baseline for each journal mode.
type plainSide struct {
	dir, params string
	path        string
	db          *sql.DB
}

func (s *plainSide) Open(ctx context.Context, preload int64) (*sql.DB, int64, error) {
	s.path = filepath.Join(s.dir, "bench.db")
	var err error
	if s.db, err = openDB("file:" + s.path + "?" + s.params + "&_busy_timeout=10000"); err != nil {
		return nil, 0, err
	}
	var seq int64
	return s.db, seq, fill(s.db, preload, &seq)
}

func (s *plainSide) Visible(context.Context) (int64, time.Time, error) {
	return -1, time.Time{}, errNoReplication
}
func (s *plainSide) Counts() counts { return counts{} }
func (s *plainSide) Overhead() (int64, int64) {
	return 0, fileSize(s.path+"-wal") + fileSize(s.path+"-shm")
}
func (s *plainSide) Restore(context.Context, string) error { return errNoReplication }
func (s *plainSide) Close() error {
	var err error
	if s.db != nil {
		err = s.db.Close()
	}
	os.RemoveAll(s.dir)
	return err
}
