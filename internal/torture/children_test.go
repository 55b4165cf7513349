//go:build linux

package torture

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/testchild"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/upload"
	"github.com/boule-vfs/boule/vfs"
)

// Environment variables the parent passes to its children. The
// configuration, spool and targets included, is in config.EnvVar.
const (
	envChild = "BOULE_TORTURE_CHILD" // which child to run
	envDB    = "BOULE_TORTURE_DB"    // the writer's database
	envSeed  = "BOULE_TORTURE_SEED"  // the writer's random seed
	envPad   = "BOULE_TORTURE_PAD"   // the largest blob a writer's row carries
	envChurn = "BOULE_TORTURE_CHURN" // the largest blob beyond 100 bytes a churn row gets; 0 means 3*pad
)

// TestMain lets the test binary double as the writer and uploader
// processes that the tests kill.
func TestMain(m *testing.M) {
	testchild.Run(envChild, children)
	os.Exit(m.Run())
}

var children = map[string]func() error{
	"writer":   childWriter,
	"uploader": childUploader,
}

// childLogger logs on stderr, which the parent keeps. Boule logs at Info
// only rare events, such as replication resuming.
func childLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// churnRows is the number of rows in the churn table, which every writer
// transaction updates at random to dirty chunks all over the file.
const churnRows = 200

// setupSQL creates the tables, in one transaction, before any child runs.
func setupSQL(churnBlob int) string {
	return fmt.Sprintf(`BEGIN;
CREATE TABLE log(seq INTEGER PRIMARY KEY, v TEXT NOT NULL, pad BLOB);
CREATE TABLE churn(k INTEGER PRIMARY KEY, v BLOB);
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM n WHERE i < %d)
INSERT INTO churn(k, v) SELECT i, randomblob(%d) FROM n;
COMMIT;`, churnRows-1, churnBlob)
}

// childWriter commits transactions through boule until it is killed. Each
// appends the next seq to log and updates a random churn row; the seq is
// printed on stdout once the commit has returned, so whatever the parent
// reads from the pipe, even after the kill, is committed. Now and then it
// runs VACUUM instead, which rewrites the whole file.
func childWriter() error {
	cfg, err := config.Load(os.Getenv(config.EnvVar))
	if err != nil {
		return err
	}
	cfg.Logger = childLogger()
	if err := vfs.Register(cfg); err != nil {
		return err
	}
	seed, _ := strconv.ParseUint(os.Getenv(envSeed), 10, 64)
	pad, _ := strconv.Atoi(os.Getenv(envPad))
	pad = max(pad, 1)
	churn, _ := strconv.Atoi(os.Getenv(envChurn))
	if churn <= 0 {
		churn = 3 * pad
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	// _sync=OFF: a killed process loses nothing the OS has, and only
	// processes die here.
	db, err := sql.Open("sqlite3", "file:"+os.Getenv(envDB)+"?vfs=boule&_busy_timeout=30000&_sync=OFF")
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	for {
		if rng.IntN(150) == 0 {
			if _, err := db.Exec("VACUUM"); err != nil {
				return fmt.Errorf("vacuum: %w", err)
			}
			continue
		}
		seq, err := appendRow(db, rng.IntN(pad), rng.IntN(churnRows), 100+rng.IntN(churn))
		if err != nil {
			return err
		}
		fmt.Println(seq) // os.Stdout is unbuffered: in the pipe before the next commit
	}
}

// appendRow commits one transaction and returns its seq.
func appendRow(db *sql.DB, padLen, churnKey, churnLen int) (int64, error) {
	tx, err := db.Begin()
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	var seq int64
	err = tx.QueryRow(`INSERT INTO log(seq, v, pad)
SELECT s, 'row-' || s, randomblob(?) FROM (SELECT coalesce(max(seq), 0) + 1 AS s FROM log)
RETURNING seq`, padLen).Scan(&seq)
	if err != nil {
		return 0, fmt.Errorf("insert: %w", err)
	}
	if _, err := tx.Exec("UPDATE churn SET v = randomblob(?) WHERE k = ?", churnLen, churnKey); err != nil {
		return 0, fmt.Errorf("update: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("commit %d: %w", seq, err)
	}
	return seq, nil
}

// childUploader only uploads, as a sidecar daemon or `vfsctl flush` in a
// loop would: a background uploader that scans the spool often, plus a
// synchronous flush of every database, one after another. It prints
// "uploads N" with the number of manifests it has put so far, every
// 100 ms, from a goroutine of its own, since a flush can take seconds.
func childUploader() error {
	cfg, err := config.Load(os.Getenv(config.EnvVar))
	if err != nil {
		return err
	}
	ctx := context.Background()
	targets, err := store.Open(ctx, cfg, store.OpenOptions{})
	if err != nil {
		return err
	}
	up, err := upload.New(upload.Options{
		Targets:    targets,
		Rate:       cfg.Rate(),
		ScanPeriod: 100 * time.Millisecond,
		Logger:     childLogger(),
	})
	if err != nil {
		return err
	}
	up.Start()
	defer up.Close()
	go func() {
		tick := time.NewTicker(100 * time.Millisecond) // reporting pace
		defer tick.Stop()
		for range tick.C {
			var n int64
			for _, st := range up.Status() {
				n += st.Uploads
			}
			fmt.Println("uploads", n)
		}
	}()
	known := map[string]bool{}
	tick := time.NewTicker(100 * time.Millisecond) // the daemon's pace, not synchronization
	defer tick.Stop()
	for {
		dbs, err := spool.List(cfg.ReplicationSpoolingDir)
		if err != nil {
			return err
		}
		for _, d := range dbs {
			if !known[d.Dir] {
				known[d.Dir] = true
				up.Add(d.Dir)
			}
			// Failures are retried on the next round; the parent checks
			// the store, not this.
			_ = up.Flush(ctx, d.Dir)
		}
		<-tick.C
	}
}
