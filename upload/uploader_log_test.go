package upload

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store/storetest"
)

// TestUploaderFailureLogNamesTheDatabase: a connection registers its
// spool directory with the uploader when it opens, before its first
// transaction writes the directory's source file; the warning of a failed
// upload still names the database.
func TestUploaderFailureLogNamesTheDatabase(t *testing.T) {
	now := storetest.NewClock()
	fake := storetest.NewFake("s3")
	fake.FailOn(storetest.OpPutChunk, nil, errors.New("store is down"))
	var logs bytes.Buffer
	opts := uploadOpts(now, target(fake))
	opts.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	u := newTestUploader(t, opts)

	d := newTestSpool(t, t.TempDir(), "/data/opened-first.db")
	src := d.sp.SourceFile()
	if err := os.Remove(src); err != nil {
		t.Fatal(err)
	}
	u.Add(d.dir) // at open: no source file yet
	if err := os.WriteFile(src, []byte(d.path), 0o444); err != nil {
		t.Fatal(err)
	}
	d.stageNew(testData(3, 3*manifest.ChunkSize), now.Now())
	if err := u.Flush(context.Background(), d.dir); err == nil {
		t.Fatal("Flush()=nil, want the store's failure")
	}
	line := ""
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "upload failed") {
			line = l
		}
	}
	if want := "db=" + d.path; !strings.Contains(line, want) {
		t.Fatalf("upload failure logged %q, want %q in it; all logs:\n%s", line, want, logs.String())
	}
}
