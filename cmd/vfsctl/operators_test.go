//go:build cgo

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/internal/faultproxy"
	"github.com/boule-vfs/boule/internal/miniotest"
	"github.com/boule-vfs/boule/internal/testfs"
	"github.com/boule-vfs/boule/internal/testlog"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/s3"
	"github.com/boule-vfs/boule/upload"
	"github.com/boule-vfs/boule/vfs"
)

// waitFor waits until cond holds, failing t after a while.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pty opens a pseudo-terminal: the terminal end for a command, and what
// was written to it, read from the other end until the terminal end is
// closed (done is closed then).
func pty(t *testing.T) (term *os.File, out *testlog.Buffer, done <-chan struct{}) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	term, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pty: %v", err)
	}
	t.Cleanup(func() { term.Close() })
	out = &testlog.Buffer{}
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		_, _ = io.Copy(out, master) // ends with EIO once term is closed
	}()
	return term, out, ch
}

// statusRows runs status --json and returns its rows.
func statusRows(t *testing.T, dir string) []statusJSON {
	t.Helper()
	_, out, errs := vfsctl(t, "status", "--json", dir)
	var rows []statusJSON
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("status --json=%q %q: %v", out, errs, err)
	}
	return rows
}

// TestStatusMaxLag: status exits 1 when a database lags more than
// --max-lag, naming it and saying that no uploader is alive, and 0 when
// none does; the flag may follow SPOOL_DIR.
func TestStatusMaxLag(t *testing.T) {
	f := newFixture(t) // spooled, never uploaded: it lags
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string // in stdout+stderr
	}{
		{"no max lag", []string{"status", f.spool}, exitOK, "stopped"},
		{"lag within", []string{"status", "--max-lag", "1h", f.spool}, exitOK, f.db},
		{"lag beyond", []string{"status", "--max-lag", "1ns", f.spool}, exitFail, "lagging more than 1ns: " + f.db + " (lag"},
		{"no live uploader", []string{"status", "--max-lag", "1ns", f.spool}, exitFail, "no live uploader: vfsctl flush uploads what waits"},
		{"flag after the argument", []string{"status", f.spool, "--max-lag=1ns"}, exitFail, "lagging more than 1ns"},
		{"json too", []string{"status", "--json", "--max-lag", "1ns", f.spool}, exitFail, `"lag_seconds"`},
		{"negative", []string{"status", "--max-lag", "-1s", f.spool}, exitUsage, "want a positive duration"},
		{"not a duration", []string{"status", "--max-lag", "soon", f.spool}, exitUsage, `--max-lag "soon": want a duration`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := vfsctl(t, tc.args...)
			if code != tc.code || !strings.Contains(out+errs, tc.want) {
				t.Fatalf("vfsctl %q=%d %q %q; want %d and %q", tc.args, code, out, errs, tc.code, tc.want)
			}
		})
	}
	if code, _, errs := vfsctl(t, "--config", f.config(), "flush", f.spool); code != exitOK {
		t.Fatalf("flush=%d %q", code, errs)
	}
	if code, out, errs := vfsctl(t, "status", "--max-lag", "1ns", f.spool); code != exitOK {
		t.Fatalf("status --max-lag 1ns after a flush=%d %q %q; want 0: nothing lags", code, out, errs)
	}
}

// s3Config returns a configuration that replicates the fixture's spool
// to minio through the proxy at endpoint, with its buckets made.
func s3Config(t *testing.T, srv *miniotest.Server, f *fixture, endpoint string, versioning bool) string {
	t.Helper()
	srv.SetEnv(t)
	tg := config.S3Target{Region: miniotest.Region, Endpoint: srv.Endpoint, ChunkBucket: "chunks", ManifestBucket: "manifests", CreateBucketsOnDemand: true}
	s, err := s3.New(context.Background(), tg, s3.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.EnsureBuckets(context.Background()); err != nil {
		t.Fatal(err)
	}
	if versioning {
		if err := s.EnableVersioning(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	return fmt.Sprintf(`{"replication_spooling_dir": %q, "replication_targets": [{"s3": {"region": %q, "endpoint": %q,
		"chunk_bucket": "chunks", "manifest_bucket": "manifests", "domain_addressing": false}}]}`, f.spool, miniotest.Region, endpoint)
}

// TestStatusMaxLagOutage: a writer whose store fails (minio behind a
// proxy answering 503) lags; status --max-lag exits 1 during the outage,
// showing its uploader alive and failing, not stopped; once the store is
// back and the writer flushed, it exits 0.
func TestStatusMaxLagOutage(t *testing.T) {
	srv := miniotest.Start(t)
	p := faultproxy.Start(t, srv.Endpoint)
	f := newFixture(t)
	cfg, err := config.Load(s3Config(t, srv, f, p.URL, false))
	if err != nil {
		t.Fatal(err)
	}
	if err := vfs.Register(cfg); err != nil { // a writer: its uploader runs
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = vfs.Register(vfs.Config{ReplicationSpoolingDir: f.spool}) })
	ctx := context.Background()
	if err := vfs.Flush(ctx, f.db); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the uploader's heartbeat", func() bool {
		rows := statusRows(t, f.spool)
		return len(rows) == 1 && rows[0].UploaderAlive
	})
	if code, out, errs := vfsctl(t, "status", "--max-lag", "1m", f.spool); code != exitOK || !strings.Contains(out, "alive") {
		t.Fatalf("status with the store up=%d %q %q; want 0, uploader alive", code, out, errs)
	}

	p.Set(faultproxy.Fault{Kind: faultproxy.Status, Status: 503})
	f.write(t, "INSERT INTO t(v) VALUES (randomblob(5000))")
	waitFor(t, "a lag of 100ms", func() bool {
		rows := statusRows(t, f.spool)
		return len(rows) == 1 && rows[0].LagSeconds > 0.1
	})
	code, out, errs := vfsctl(t, "status", "--max-lag", "100ms", f.spool)
	if code != exitFail || !strings.Contains(errs, "lagging more than 100ms: "+f.db) || strings.Contains(errs, "no live uploader") || !strings.Contains(out, "alive") {
		t.Fatalf("status --max-lag during an outage=%d %q %q; want 1, lagging, the uploader alive", code, out, errs)
	}
	if code, out, errs := vfsctl(t, "status", "--max-lag", "1h", f.spool); code != exitOK {
		t.Fatalf("status --max-lag 1h during an outage=%d %q %q; want 0: the lag is short", code, out, errs)
	}

	p.Pass()
	if err := vfs.Flush(ctx, f.db); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := vfsctl(t, "status", "--max-lag", "100ms", f.spool); code != exitOK {
		t.Fatalf("status --max-lag after the outage=%d %q %q; want 0", code, out, errs)
	}
}

// TestStatusUploader: the UPLOADER column and uploader_alive/_seen say
// "none" when no uploader ever served the database, "seen ... ago" when
// its heartbeat is old (state "stopped": a writer exited with commits
// waiting), and "alive" while a writer's uploader runs.
func TestStatusUploader(t *testing.T) {
	f := newFixture(t) // registered without targets: no uploader
	code, out, _ := vfsctl(t, "status", f.spool)
	if code != exitOK || !strings.Contains(out, "UPLOADER") || !strings.Contains(out, " stopped ") || !strings.Contains(out, " none ") {
		t.Fatalf("status with no uploader=%d %q; want stopped, none", code, out)
	}
	dirs, err := spool.List(f.spool)
	if err != nil || len(dirs) != 1 {
		t.Fatalf("spool.List()=%v, %v", dirs, err)
	}
	seen := time.Now().Add(-time.Hour).Truncate(time.Second)
	if err := spool.OpenDir(dirs[0].Dir).WriteBeat(spool.Beat{At: seen, Every: 5 * time.Second, PID: 1}); err != nil {
		t.Fatal(err)
	}
	if _, out, _ := vfsctl(t, "status", f.spool); !strings.Contains(out, "seen 1h0m") || !strings.Contains(out, " stopped ") {
		t.Fatalf("status after an uploader left=%q; want seen 1h0m... ago, stopped", out)
	}
	rows := statusRows(t, f.spool)
	if len(rows) != 1 || rows[0].UploaderAlive || rows[0].UploaderSeen != seen.UTC().Format(time.RFC3339) {
		t.Fatalf("status --json after an uploader left=%+v; want uploader_alive false, uploader_seen %v", rows, seen)
	}

	cfg, err := config.Load(f.config())
	if err != nil {
		t.Fatal(err)
	}
	if err := vfs.Register(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = vfs.Register(vfs.Config{ReplicationSpoolingDir: f.spool}) })
	waitFor(t, "the uploader's heartbeat", func() bool {
		rows := statusRows(t, f.spool)
		return len(rows) == 1 && rows[0].UploaderAlive
	})
	if _, out, _ := vfsctl(t, "status", f.spool); !strings.Contains(out, " alive ") {
		t.Fatalf("status with a writer's uploader=%q; want alive", out)
	}
}

// TestStatusWatch: --watch redraws the table on a terminal until
// interrupted, then exits as the last refresh would; it is refused when
// standard output is not a terminal.
func TestStatusWatch(t *testing.T) {
	f := newFixture(t)
	// Bounded: a --watch that is not refused would run until cancelled.
	refuse, stop := context.WithTimeout(context.Background(), 5*time.Second)
	defer stop()
	var buf, ebuf bytes.Buffer
	code := run(refuse, []string{"status", "--watch", f.spool}, &buf, &ebuf)
	if errs := ebuf.String(); code != exitUsage || !strings.Contains(errs, "--watch redraws a terminal, and standard output is not one") {
		t.Fatalf("status --watch to a buffer=%d %q; want %d and a refusal", code, errs, exitUsage)
	}
	term, screen, closed := pty(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	exited := make(chan int, 1)
	go func() { exited <- run(ctx, []string{"status", "--watch", "--max-lag", "1ns", f.spool}, term, term) }()
	const clear = "\x1b[H\x1b[2J"
	waitFor(t, "two refreshes", func() bool { return strings.Count(screen.String(), clear) >= 2 })
	cancel()
	if code := <-exited; code != exitFail {
		t.Fatalf("status --watch --max-lag 1ns ended with %d, want %d", code, exitFail)
	}
	term.Close()
	<-closed
	last := screen.String()[strings.LastIndex(screen.String(), clear):]
	for _, want := range []string{"SOURCE", f.db, "lagging more than 1ns"} {
		if !strings.Contains(last, want) {
			t.Errorf("the last screen of status --watch lacks %q:\n%s", want, last)
		}
	}
}

// TestStatusLastErrorWidth: the table cuts a long last error to one line
// of lastErrorWidth characters, keeping its start and its end, where the
// cause is; --json keeps it whole.
func TestStatusLastErrorWidth(t *testing.T) {
	long := "upload chunk 0123: " + strings.Repeat("Service Unavailable, please reduce your request rate. ", 4) + "\nsecond line"
	flat := strings.Join(strings.Fields(long), " ")
	full := "snapshots fail: spool: write /tmp/fullspool/boule-v2.a5055528-d116-4a7d-891b-a5669324a4be/#tmp#x.db/tmp/1.2.3: no space left on device"
	for _, tc := range []struct {
		name, in, want string
	}{
		{"short", "boom", "boom"},
		{"newlines", "a\nb", "a b"},
		{"exact", strings.Repeat("x", lastErrorWidth), strings.Repeat("x", lastErrorWidth)},
		{"long", long, flat[:20] + "…" + flat[len(flat)-39:]},
		{"runes", strings.Repeat("é", lastErrorWidth+1), strings.Repeat("é", 20) + "…" + strings.Repeat("é", 39)},
		{"cause kept", full, "snapshots fail: spoo…x.db/tmp/1.2.3: no space left on device"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := clip(tc.in, lastErrorWidth); got != tc.want {
				t.Errorf("clip(%q)=%q, want %q", tc.in, got, tc.want)
			}
		})
	}
	var table bytes.Buffer
	if err := statusTable(&table, []statusJSON{{Source: "/a.db", LastError: long}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(table.String()), "\n")
	if len(lines) != 2 || !strings.HasSuffix(lines[1], clip(long, lastErrorWidth)) {
		t.Fatalf("statusTable()=%q; want a header and one row ending with the cut error", table.String())
	}
}

// parseMetrics parses the Prometheus text format.
func parseMetrics(t *testing.T, text string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("TextToMetricFamilies()=%v, want nil; text:\n%s", err, text)
	}
	return mfs
}

// wantFamilies returns the metric families package metrics exports for
// one database: their names and help texts.
func wantFamilies(t *testing.T) map[string]string {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(spoolCollector([]upload.Status{{Source: "/x.db"}}))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf.GetHelp()
	}
	return out
}

// checkMetrics checks that text, scraped from vfsctl metrics, holds every
// per-database series of package metrics for db, with its pending bytes.
func checkMetrics(t *testing.T, text, db string) {
	t.Helper()
	mfs := parseMetrics(t, text)
	want := wantFamilies(t)
	if len(want) < 10 || len(mfs) != len(want) {
		t.Errorf("vfsctl metrics has %d families, want the %d of package metrics", len(mfs), len(want))
	}
	for name, help := range want {
		mf, ok := mfs[name]
		if !ok {
			t.Errorf("vfsctl metrics lacks %s", name)
			continue
		}
		if mf.GetHelp() != help || len(mf.GetMetric()) != 1 || mf.GetMetric()[0].GetLabel()[0].GetValue() != db {
			t.Errorf("vfsctl metrics %s=%v, want help %q and one series for %s", name, mf, help, db)
		}
	}
	if g := mfs["boule_replication_pending_bytes"].GetMetric()[0].GetGauge().GetValue(); g <= 0 {
		t.Errorf("boule_replication_pending_bytes=%v, want the spooled bytes", g)
	}
	if g := mfs["boule_replication_uploader_alive"].GetMetric()[0].GetGauge().GetValue(); g != 0 {
		t.Errorf("boule_replication_uploader_alive=%v, want 0", g)
	}
}

// TestMetrics: vfsctl metrics prints, in the text format, the series of
// package metrics for each spooled database; with --listen it serves them
// on /metrics, fresh at each scrape, until interrupted, and a scrape that
// cannot read the spool fails.
func TestMetrics(t *testing.T) {
	f := newFixture(t)
	code, out, errs := vfsctl(t, "metrics", f.spool)
	if code != exitOK {
		t.Fatalf("metrics=%d %q %q", code, out, errs)
	}
	checkMetrics(t, out, f.db)
	if code, _, errs := vfsctl(t, "metrics", f.dir); code != exitFail || !strings.Contains(errs, "not a spool") {
		t.Fatalf("metrics on a directory that is not a spool=%d %q; want 1", code, errs)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout bytes.Buffer
	stderr := &testlog.Buffer{}
	exited := make(chan int, 1)
	go func() { exited <- run(ctx, []string{"metrics", f.spool, "--listen", "127.0.0.1:0"}, &stdout, stderr) }()
	var url string
	waitFor(t, "the address served", func() bool {
		_, rest, ok := strings.Cut(stderr.String(), "serving ")
		url, _, _ = strings.Cut(rest, "\n")
		return ok && strings.HasSuffix(url, "/metrics")
	})
	get := func() (int, string) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}
	status, body := get()
	if status != http.StatusOK {
		t.Fatalf("GET %s=%d %q", url, status, body)
	}
	checkMetrics(t, body, f.db)
	hidden := f.spool + ".moved"
	if err := os.Rename(f.spool, hidden); err != nil {
		t.Fatal(err)
	}
	status, body = get()
	if err := os.Rename(hidden, f.spool); err != nil {
		t.Fatal(err)
	}
	if status != http.StatusInternalServerError || !strings.Contains(body, f.spool) {
		t.Fatalf("GET %s without its spool=%d %q; want 500 naming it", url, status, body)
	}
	cancel()
	if code := <-exited; code != exitOK {
		t.Fatalf("metrics --listen ended with %d %q, want 0", code, stderr.String())
	}
}

// TestCLI: global and per-command flags, help and errors.
func TestCLI(t *testing.T) {
	f := newFixture(t)
	checkUsage(t, []usageCase{
		{"help command", []string{"help", "status"}, exitOK, "usage: vfsctl status [--json] [--max-lag DURATION] [--watch] SPOOL_DIR"},
		{"help itself", []string{"help"}, exitOK, "Commands:"},
		{"help unknown", []string{"help", "frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{"log off", []string{"--log", "off", "status", f.spool}, exitOK, f.db},
		{"log short", []string{"-l", "debug", "status", f.spool}, exitOK, f.db},
		{"log bad", []string{"-l", "loud", "status", f.spool}, exitUsage, "want off, error, warn, info or debug"},
		{"config short", []string{"-c", `{"replication_targetz": []}`, "flush", f.spool}, exitUsage, `unknown key "replication_targetz"`},
		{"config path without at", []string{"-c", "/etc/boule.json", "flush", f.spool}, exitUsage, `"@" and its path: @/etc/boule.json`},
		{"verify flags after source", []string{"verify", f.db, "--json"}, exitUsage, "no replication target to read from"},
		{"status flags after dir", []string{"status", f.spool, "--json"}, exitOK, `"source": "` + f.db},
		{"arguments after --", []string{"status", "--", "--json"}, exitFail, "--json"},
		{"version", []string{"--version"}, exitOK, "vfsctl github.com/boule-vfs/boule"},
	})
	t.Run("wrong flag once, then usage", func(t *testing.T) {
		code, out, errs := vfsctl(t, "status", "--jsn", f.spool)
		const msg = "flag provided but not defined: -jsn"
		if code != exitUsage || out != "" || strings.Count(errs, msg) != 1 || !strings.HasPrefix(errs, "vfsctl status: "+msg+"\nusage: vfsctl status ") {
			t.Fatalf("status --jsn=%d %q %q; want %d, the error once, then the usage", code, out, errs, exitUsage)
		}
	})
	t.Run("sync --optimize", func(t *testing.T) {
		before := f.bytes(t)
		code, out, errs := vfsctl(t, "--config", f.config(), "sync", f.db, "--optimize")
		if key, _ := store.ManifestKey(hostname(t), f.db); code != exitOK || strings.TrimSpace(out) != key {
			t.Fatalf("sync --optimize=%d %q %q", code, out, errs)
		}
		if !bytes.Equal(f.bytes(t), before) {
			t.Fatal("sync --optimize changed the database")
		}
		f.checkStore(t, hostname(t))
	})
}

// TestFlagValues: a bad flag value, caught by the flag parser or by the
// command, is reported in one form: the flag and the value, what it
// wants, then the command's usage line, not its whole help.
func TestFlagValues(t *testing.T) {
	f := newFixture(t)
	statusUsage := "usage: vfsctl status [--json] [--max-lag DURATION] [--watch] SPOOL_DIR\nRun 'vfsctl help status' for its options.\n"
	restoreUsage := "usage: vfsctl restore [--hostname H] [--at TIME] [--out FILE [--force]] [--concurrency N] (SOURCE | --source-path PATH | --manifest URI|FILE)\nRun 'vfsctl help restore' for its options.\n"
	for _, tc := range []struct {
		name string
		args []string
		want string // all of stderr
	}{
		{"not a duration", []string{"status", "--max-lag", "abc", f.spool}, "vfsctl status: --max-lag \"abc\": want a duration, such as 90s, 5m or 1h30m\n" + statusUsage},
		{"not a duration, with =", []string{"status", f.spool, "--max-lag=abc"}, "vfsctl status: --max-lag \"abc\": want a duration, such as 90s, 5m or 1h30m\n" + statusUsage},
		{"not a boolean", []string{"status", "--json=maybe", f.spool}, "vfsctl status: --json \"maybe\": want true or false\n" + statusUsage},
		{"negative duration", []string{"status", "--max-lag", "-1s", f.spool}, "vfsctl status: --max-lag -1s: want a positive duration\n" + statusUsage},
		{"not a number", []string{"restore", "--concurrency", "x", "--hostname", "h", f.db}, "vfsctl restore: --concurrency \"x\": want a whole number\n" + restoreUsage},
		{"out of range", []string{"restore", "--concurrency", "0", f.db}, "vfsctl restore: --concurrency 0: want 1 to 256\n" + restoreUsage},
		{"not a time", []string{"--config", f.config(), "restore", "--at", "soon", f.db}, "vfsctl restore: --at \"soon\": want RFC 3339 (2026-11-23T17:00:00Z), Unix seconds, or a duration ago (-90m)\n" + restoreUsage},
		{"unknown flag", []string{"status", "--jsn", f.spool}, "vfsctl status: flag provided but not defined: -jsn\n" + statusUsage},
		{"unknown global flag", []string{"--jsn", "status", f.spool}, "vfsctl: flag provided but not defined: -jsn\n" + usageLines + "Run 'vfsctl --help' for the commands and options.\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := vfsctl(t, tc.args...)
			if code != exitUsage || out != "" || errs != tc.want {
				t.Fatalf("vfsctl %q=%d %q %q; want %d and %q", tc.args, code, out, errs, exitUsage, tc.want)
			}
		})
	}
}

// TestHelpFlags: help spells the flags with two dashes, as the usage
// lines do, with a short form beside its long one.
func TestHelpFlags(t *testing.T) {
	for _, tc := range []struct {
		name      string
		args      []string
		want, not []string // lines that start so
	}{
		{"global", []string{"--help"}, []string{"  -c, --config string", "  -l, --log string", "  --version"}, []string{"  -config", "  -c string", "  -log", "  -version"}},
		{"status", []string{"help", "status"}, []string{"  --json", "  --max-lag duration", "  --watch"}, []string{"  -json", "  -max-lag", "  -watch"}},
		{"restore", []string{"restore", "--help"}, []string{"  --out string", "  --concurrency int"}, []string{"  -out", "  -concurrency"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := vfsctl(t, tc.args...)
			if code != exitOK {
				t.Fatalf("vfsctl %q=%d %q", tc.args, code, errs)
			}
			lines := strings.Split(out+errs, "\n")
			has := func(prefix string) bool {
				return slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, prefix) })
			}
			for _, w := range tc.want {
				if !has(w) {
					t.Errorf("vfsctl %q: no line starts with %q:\n%s", tc.args, w, out+errs)
				}
			}
			for _, n := range tc.not {
				if has(n) {
					t.Errorf("vfsctl %q: a line starts with %q:\n%s", tc.args, n, out+errs)
				}
			}
		})
	}
}

// TestSyncProgress: sync draws a progress bar on a terminal, ending at
// 100%, and prints the manifest name on standard output.
func TestSyncProgress(t *testing.T) {
	f := newFixture(t)
	term, screen, closed := pty(t)
	var out bytes.Buffer
	code := run(context.Background(), []string{"--config", f.config(), "sync", f.db}, &out, term)
	term.Close()
	<-closed
	if key, _ := store.ManifestKey(hostname(t), f.db); code != exitOK || strings.TrimSpace(out.String()) != key {
		t.Fatalf("sync=%d %q %q", code, out.String(), screen.String())
	}
	if s := screen.String(); !strings.Contains(s, "\rsync [") || !strings.Contains(s, "100.0%") {
		t.Fatalf("sync on a terminal drew %q; want a progress bar to 100%%", s)
	}
}

// TestVersion: versionLine names the module, its version, the commit and
// whether the tree was modified; the binary built from this checkout says
// its commit.
func TestVersion(t *testing.T) {
	bi := func(version string, settings ...string) *debug.BuildInfo {
		b := &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Path: "github.com/boule-vfs/boule", Version: version}}
		for i := 0; i+1 < len(settings); i += 2 {
			b.Settings = append(b.Settings, debug.BuildSetting{Key: settings[i], Value: settings[i+1]})
		}
		return b
	}
	for _, tc := range []struct {
		name string
		bi   *debug.BuildInfo
		ok   bool
		want string
	}{
		{"release", bi("v1.2.3"), true, "vfsctl github.com/boule-vfs/boule v1.2.3 (commit unknown, go1.26.0)"},
		{"checkout", bi("(devel)", "vcs.revision", "0ce4cbe", "vcs.time", "2026-12-01T10:00:00Z", "vcs.modified", "false"), true,
			"vfsctl github.com/boule-vfs/boule (devel) (commit 0ce4cbe of 2026-12-01T10:00:00Z, go1.26.0)"},
		{"modified", bi("", "vcs.revision", "0ce4cbe", "vcs.modified", "true"), true, "vfsctl github.com/boule-vfs/boule (devel) (commit 0ce4cbe, modified, go1.26.0)"},
		{"no build info", nil, false, "vfsctl: no build information"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := versionLine(tc.bi, tc.ok); !strings.HasPrefix(got, tc.want) {
				t.Errorf("versionLine()=%q, want %q", got, tc.want)
			}
		})
	}
	// The binary says the commit go build stamped in it, when it did
	// (not in a git worktree, nor outside a checkout).
	bin := filepath.Join(t.TempDir(), "vfsctl")
	if out, err := exec.Command("go", "build", "-buildvcs=auto", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v %s", err, out)
	}
	info, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	_, rev, stamped := strings.Cut(string(info), "vcs.revision=")
	rev, _, _ = strings.Cut(rev, "\n")
	code, out, errs := runBinary(t, bin, "--version")
	want := "commit unknown"
	if stamped {
		want = "commit " + strings.TrimSpace(rev)
	}
	if code != exitOK || !strings.HasPrefix(out, "vfsctl github.com/boule-vfs/boule ") || !strings.Contains(out, want) {
		t.Fatalf("vfsctl --version=%d %q %q; want %q", code, out, errs, want)
	}
}

// TestVerifyTargets: verify counts its targets in words.
func TestVerifyTargets(t *testing.T) {
	for _, tc := range []struct {
		targets []string
		want    string
	}{
		{[]string{"s3:a"}, "1 chunk, 0 distinct stored, 1 target\n"},
		{[]string{"s3:a", "s3:b"}, "1 chunk, 0 distinct stored, 2 targets\n"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			res, _ := verifyReport("/a.db", verifyPlan{chunks: 1}, tc.targets, nil)
			var b bytes.Buffer
			printVerify(&b, res)
			if !strings.Contains(b.String(), tc.want) {
				t.Errorf("printVerify()=%q, want %q", b.String(), tc.want)
			}
		})
	}
}

// TestLsVersionsUnversioned: on a bucket without versioning, ls-versions
// says that versioning is off rather than listing a version "null".
func TestLsVersionsUnversioned(t *testing.T) {
	srv := miniotest.Start(t)
	f := newFixture(t)
	cfg := s3Config(t, srv, f, srv.Endpoint, false)
	if code, _, errs := vfsctl(t, "--config", cfg, "flush", f.spool); code != exitOK {
		t.Fatalf("flush=%d %q", code, errs)
	}
	code, out, errs := vfsctl(t, "--config", cfg, "ls-versions", f.db)
	if code != exitOK || !strings.Contains(errs, "versioning is off in ") || strings.Contains(out, "null") || !strings.Contains(out, "(versioning off)") {
		t.Fatalf("ls-versions without versioning=%d %q %q; want versioning off, no null", code, out, errs)
	}
}

// TestStatusState: the STATE column, in its order of precedence. A lag
// with no live uploader is "stopped" even when the last upload failed:
// nothing retries it (a writer that exited during a store outage).
func TestStatusState(t *testing.T) {
	for _, tc := range []struct {
		s    statusJSON
		want string
	}{
		{statusJSON{}, "ok"},
		{statusJSON{LagSeconds: 3, UploaderAlive: true}, "pending"},
		{statusJSON{LagSeconds: 3}, "stopped"},
		{statusJSON{LagSeconds: 3, LastError: "connection refused", UploaderAlive: true}, "failing"},
		{statusJSON{LagSeconds: 3, LastError: "connection refused"}, "stopped"},
		{statusJSON{LagSeconds: 3, LastError: "access denied", Blocked: true}, "BLOCKED"},
		{statusJSON{LagSeconds: 3, NotReplicated: true, Blocked: true}, "NOT REPLICATED"},
	} {
		if got := tc.s.state(); got != tc.want {
			t.Errorf("%+v.state()=%q, want %q", tc.s, got, tc.want)
		}
	}
}

// TestStatusReadOnlySpool: an empty spool on a read-only file system is
// not "normal after a reboot": no writer can spool there, and status
// fails saying so.
func TestStatusReadOnlySpool(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	testfs.MountTmpfs(t, dir, "1m")
	if out, err := exec.Command("mount", "-o", "remount,ro", dir).CombinedOutput(); err != nil {
		t.Fatalf("remount ro: %v: %s", err, out)
	}
	code, _, errs := vfsctl(t, "status", dir)
	if code == exitOK || !strings.Contains(errs, "read-only file system") {
		t.Fatalf("status of an empty read-only spool=%d %q, want a failure saying the file system is read-only", code, errs)
	}
}

// TestSyncReadOnlySpool: a sync whose spool cannot be created names the
// database, and says that its spool could not be made there, rather than
// that the database is gone: the database is there, the spool is not.
func TestSyncReadOnlySpool(t *testing.T) {
	f, _ := plainFixture(t, "ro.db", "CREATE TABLE t(x); INSERT INTO t VALUES (randomblob(100000));")
	testfs.MountTmpfs(t, f.spool, "1m")
	if out, err := exec.Command("mount", "-o", "remount,ro", f.spool).CombinedOutput(); err != nil {
		t.Fatalf("remount ro: %v: %s", err, out)
	}
	code, _, errs := vfsctl(t, "--config", f.config(), "sync", f.db)
	if code != exitFail || strings.Contains(errs, "no longer exists") || !strings.Contains(errs, f.db+": its spool directory") ||
		!strings.Contains(errs, "could not be created") {
		t.Fatalf("sync with a read-only spool=%d %q; want a failure naming %s and saying its spool could not be created", code, errs, f.db)
	}
}
