package upload

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boule-vfs/boule/internal/testlog"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/storetest"
)

// writeMarker writes the txn marker of d as the spool and the VFS do:
// state, then since (if not zero) as 20 digits, then for "F" the error.
func (d *testSpool) writeMarker(state byte, since time.Time, errText string) {
	d.t.Helper()
	states := map[byte]spool.MarkerState{'0': spool.MarkerClean, '1': spool.MarkerSet, 'F': spool.MarkerFailed, 'W': spool.MarkerWAL}
	if err := d.sp.WriteMarker(spool.Marker{State: states[state], Since: since, Err: errText}); err != nil {
		d.t.Fatal(err)
	}
}

// markerCases are the states of the txn marker, with what a flush without
// Restage (TestUploaderFlushMarker) and the status (TestStatusFromMarker)
// make of each.
var markerCases = []struct {
	name    string
	state   byte
	errText string
	// A flush fails with want, saying says (nil: it uploads).
	want error
	says string
	// The status says notReplicated, and problem.
	notReplicated bool
	problem       string
}{
	{"clean", '0', "", nil, "", false, ""},
	{"set", '1', "", ErrNotStaged, "never finished", false, "writer died"},
	{"failed", 'F', "spool: write x: no space left on device", ErrSnapshotFailed, "no space left on device", true, "no space left on device"},
	{"wal", 'W', "", spool.ErrWAL, "WAL mode", true, "WAL mode"},
}

// TestUploaderFlushMarker: without Restage, a flush does what the txn
// marker allows: it uploads when the marker is clean, and otherwise fails,
// without a store call, naming the database and saying why.
func TestUploaderFlushMarker(t *testing.T) {
	for _, tc := range markerCases {
		t.Run(tc.name, func(t *testing.T) {
			now, fake, u, d := oneTarget(t, "/data/marker.db", nil)
			s := d.stageNew(testData(90, 3*manifest.ChunkSize), now.Now())
			d.writeMarker(tc.state, now.Now().Add(-time.Minute), tc.errText)
			err := u.Flush(context.Background(), d.dir)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Flush()=%v, want nil", err)
				}
				checkStored(t, fake, d, s)
				return
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), d.path) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("Flush()=%v, want %v naming %s and saying %q", err, tc.want, d.path, tc.says)
			}
			if n := fake.NumCalls(); n != 0 {
				t.Fatalf("%d store calls, want none", n)
			}
			if err := u.FlushAll(context.Background()); !errors.Is(err, tc.want) {
				t.Fatalf("FlushAll()=%v, want %v", err, tc.want)
			}
		})
	}
}

// TestUploaderFlushRestages: with Restage, a flush has the database
// snapshotted again when its marker is not clean or nothing is staged, and
// uploads that; a failed Restage fails the flush with its cause.
func TestUploaderFlushRestages(t *testing.T) {
	type call struct{ dir, source string }
	setup := func(t *testing.T, restage func(d *testSpool) error) (*testSpool, *storetest.Fake, *Uploader, *[]call) {
		_, fake, opts := fakeTarget(nil)
		var calls []call
		var d *testSpool
		opts.Restage = func(ctx context.Context, dir, source string) error {
			calls = append(calls, call{dir, source})
			return restage(d)
		}
		u := newTestUploader(t, opts)
		d = newTestSpool(t, t.TempDir(), "/data/restage.db")
		return d, fake, u, &calls
	}
	data := testData(91, 4*manifest.ChunkSize)

	t.Run("clean: not called", func(t *testing.T) {
		d, fake, u, calls := setup(t, func(*testSpool) error { return errors.New("called") })
		s := d.stageNew(data, time.Now())
		d.writeMarker('0', time.Time{}, "")
		mustFlush(t, u, d.dir)
		checkStored(t, fake, d, s)
		if len(*calls) != 0 {
			t.Fatalf("Restage calls %v, want none", *calls)
		}
	})

	for _, state := range []byte{'1', 'F'} {
		t.Run(fmt.Sprintf("marker %c: the new snapshot is uploaded", state), func(t *testing.T) {
			var fresh *snap
			d, fake, u, calls := setup(t, func(d *testSpool) error {
				fresh = d.stageNew(withChunk(data, 2, 92), time.Now().Add(time.Second))
				return nil
			})
			d.stageNew(data, time.Now())
			d.writeMarker(state, time.Now(), "")
			mustFlush(t, u, d.dir)
			if len(*calls) != 1 || (*calls)[0] != (call{d.dir, d.path}) {
				t.Fatalf("Restage calls %v, want one for %s", *calls, d.path)
			}
			checkStored(t, fake, d, fresh)
		})
	}

	t.Run("nothing staged", func(t *testing.T) {
		var fresh *snap
		d, fake, u, calls := setup(t, func(d *testSpool) error {
			fresh = d.stageNew(data, time.Now())
			return nil
		})
		if err := u.Flush(context.Background(), d.dir); err != nil || len(*calls) != 1 {
			t.Fatalf("Flush()=%v with Restage calls %v, want nil and one call", err, *calls)
		}
		checkStored(t, fake, d, fresh)
	})

	t.Run("fails", func(t *testing.T) {
		cause := fmt.Errorf("spool: write x: %w", syscall.ENOSPC)
		d, fake, u, _ := setup(t, func(*testSpool) error { return cause })
		d.stageNew(data, time.Now())
		d.writeMarker('F', time.Now(), "spool: write y: no space left on device")
		err := u.Flush(context.Background(), d.dir)
		if !errors.Is(err, ErrSnapshotFailed) || !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), d.path) {
			t.Fatalf("Flush()=%v, want ErrSnapshotFailed wrapping ENOSPC and naming %s", err, d.path)
		}
		if n := fake.NumCalls(); n != 0 {
			t.Fatalf("%d store calls, want none", n)
		}
		// Not an upload failure: nothing in the uploader's own record.
		if st := u.Status(); len(st) != 1 || st[0].Failures != 0 || !st[0].NotReplicated {
			t.Fatalf("Status()=%+v, want no upload failure, not replicated", st)
		}
	})

	t.Run("WAL", func(t *testing.T) {
		d, _, u, _ := setup(t, func(*testSpool) error { return fmt.Errorf("vfs: x: %w", spool.ErrWAL) })
		d.writeMarker('W', time.Now(), "")
		if err := u.Flush(context.Background(), d.dir); !errors.Is(err, spool.ErrWAL) || !strings.Contains(err.Error(), d.path) {
			t.Fatalf("Flush()=%v, want ErrWAL naming %s", err, d.path)
		}
	})

	t.Run("database gone", func(t *testing.T) {
		d, _, u, _ := setup(t, func(*testSpool) error { return fmt.Errorf("%w: /data/restage.db", ErrSourceGone) })
		d.writeMarker('1', time.Now(), "")
		if err := u.Flush(context.Background(), d.dir); !errors.Is(err, ErrNotStaged) || !errors.Is(err, ErrSourceGone) {
			t.Fatalf("Flush()=%v, want ErrNotStaged and ErrSourceGone", err)
		}
		if err := u.FlushAll(context.Background()); err != nil {
			t.Fatalf("FlushAll()=%v, want nil: the database is gone", err)
		}
	})

	// The upload finds the targets changed and invalidates the spool:
	// the flush has everything staged again, and uploads it.
	t.Run("invalidated during the flush", func(t *testing.T) {
		now := storetest.NewClock()
		old, fake := storetest.NewFake("old"), storetest.NewFake("new")
		d := newTestSpool(t, t.TempDir(), "/data/moved.db")
		d.stageNew(data, now.Now())
		mustFlush(t, newTestUploader(t, uploadOpts(now, target(old))), d.dir)
		opts := uploadOpts(now, target(fake))
		var s2 *snap
		opts.Restage = func(context.Context, string, string) error {
			s2 = d.stageNew(data, now.Now().Add(time.Second))
			return nil
		}
		mustFlush(t, newTestUploader(t, opts), d.dir)
		if s2 == nil {
			t.Fatal("Flush() succeeded without staging the snapshot again")
		}
		checkStored(t, fake, d, s2)
		fake.CheckIntegrity(t)
	})
}

// TestStatusFromMarker: a failed snapshot or WAL mode makes the status say
// the database is not replicated, and the lag count from when its
// snapshots stopped; a clean or set marker does not.
func TestStatusFromMarker(t *testing.T) {
	for _, tc := range markerCases {
		t.Run(tc.name, func(t *testing.T) {
			now, _, u, d := oneTarget(t, "/data/status.db", nil)
			d.stageNew(testData(93, 2*manifest.ChunkSize), now.Now())
			mustFlush(t, u, d.dir)
			d.writeMarker(tc.state, now.Now().Add(-90*time.Second), tc.errText)
			got, err := ReadStatus(d.dir, now.Now())
			if err != nil {
				t.Fatalf("ReadStatus()=%v", err)
			}
			st := u.Status()
			if len(st) != 1 {
				t.Fatalf("Status()=%+v, want one database", st)
			}
			for name, s := range map[string]Status{"ReadStatus": got, "Status": st[0]} {
				wantLag := time.Duration(0)
				if tc.notReplicated || tc.state == '1' {
					wantLag = 90 * time.Second
				}
				if s.NotReplicated != tc.notReplicated || !strings.Contains(s.Problem, tc.problem) || s.Lag != wantLag {
					t.Errorf("%s()=%+v, want NotReplicated %v, problem %q, lag %v", name, s, tc.notReplicated, tc.problem, wantLag)
				}
			}
		})
	}
}

// TestUploaderFailureLogging: a store that fails is logged once at WARN;
// once it has failed for a minute, once at ERROR; a permanent error at
// ERROR at once; and the recovery once at WARN.
func TestUploaderFailureLogging(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		steps  []time.Duration // time between flushes, all failing
		errors int
	}{
		{"outage under a minute", storetest.RetryableErr(), []time.Duration{0, 20 * time.Second, 39 * time.Second}, 0},
		{"outage over a minute", storetest.RetryableErr(), []time.Duration{0, 30 * time.Second, 30 * time.Second, 30 * time.Second}, 1},
		{"permanent", storetest.PermanentErr(), []time.Duration{0, time.Hour}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := storetest.NewClock()
			fake := storetest.NewFake("s3")
			log := &testlog.Records{}
			opts := uploadOpts(now, target(fake))
			opts.Logger = slog.New(log)
			u := newTestUploader(t, opts)
			d := newTestSpool(t, t.TempDir(), "/data/log.db")
			d.stageNew(testData(94, 2*manifest.ChunkSize), now.Now())
			fake.FailOn(storetest.OpPutChunk, nil, tc.err)
			for _, step := range tc.steps {
				now.Advance(step)
				if err := u.Flush(context.Background(), d.dir); err == nil || !strings.Contains(err.Error(), d.path) {
					t.Fatalf("Flush()=%v with the store failing, want an error naming %s", err, d.path)
				}
			}
			warns := 1
			if errors.Is(tc.err, store.ErrPermanent) {
				warns = 0
			}
			if got := log.Count(slog.LevelWarn, "upload failed"); got != warns {
				t.Errorf("WARN lines about the failure=%d, want %d", got, warns)
			}
			if got := log.Count(slog.LevelError, "replication"); got != tc.errors {
				t.Errorf("ERROR lines=%d, want %d", got, tc.errors)
			}
			fake.ClearHooks()
			mustFlush(t, u, d.dir)
			mustFlush(t, u, d.dir)
			if got := log.Count(slog.LevelWarn, "replication resumed"); got != 1 {
				t.Errorf("recoveries logged=%d, want 1", got)
			}
		})
	}
}

// A flush of a database whose spool directory is not there, while the
// database is, says so: it used to say that the database no longer
// exists, when its writer could not create the spool (a file where the
// directory goes, permissions) and logged why.
func TestFlushSpoolDirMissing(t *testing.T) {
	db := filepath.Join(t.TempDir(), "here.db")
	if err := os.WriteFile(db, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, u, d := oneTarget(t, db, nil)
	if got := u.state(d.dir).source(); got != db {
		t.Fatalf("source()=%q, want %q", got, db)
	}
	if err := os.RemoveAll(d.dir); err != nil {
		t.Fatal(err)
	}
	err := u.Flush(context.Background(), d.dir)
	if !errors.Is(err, ErrNotStaged) || errors.Is(err, ErrSourceGone) || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("Flush()=%v, want ErrNotStaged saying the spool directory does not exist, not ErrSourceGone", err)
	}
}
