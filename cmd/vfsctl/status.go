package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/boule-vfs/boule/upload"
)

// statusJSON is one line of vfsctl status --json.
type statusJSON struct {
	Source       string  `json:"source"`
	SpoolDir     string  `json:"spool_dir"`
	LagSeconds   float64 `json:"lag_seconds"`
	PendingBytes int64   `json:"pending_bytes"`
	Uploads      int64   `json:"uploads"`
	Chunks       int64   `json:"chunks"`
	Calls        int64   `json:"calls"`
	Failures     int64   `json:"failures"`
	LastUpload   string  `json:"last_upload,omitempty"`
	LastError    string  `json:"last_error,omitempty"`
	Blocked      bool    `json:"blocked"`
	// NotReplicated: the database's commits cannot reach the store (its
	// snapshots fail, or an earlier boule left it in WAL mode); Problem says why.
	NotReplicated bool   `json:"not_replicated"`
	Problem       string `json:"problem,omitempty"`
	// UploaderAlive: an uploader serving the database wrote its heartbeat
	// lately; UploaderSeen is when one last did (absent if none did in
	// this boot).
	UploaderAlive bool   `json:"uploader_alive"`
	UploaderSeen  string `json:"uploader_seen,omitempty"`

	seen time.Time // UploaderSeen, for the table
}

// state is the STATE column of vfsctl status.
func (s statusJSON) state() string {
	switch {
	case s.NotReplicated:
		return "NOT REPLICATED"
	case s.Blocked:
		return "BLOCKED"
	case s.LagSeconds > 0 && !s.UploaderAlive:
		// Nothing is uploading what waits: its writer exited (or
		// crashed) first, maybe while the store failed. vfsctl flush
		// uploads it.
		return "stopped"
	case s.LastError != "":
		return "failing"
	case s.LagSeconds > 0:
		return "pending"
	}
	return "ok"
}

func (s statusJSON) lag() time.Duration {
	return time.Duration(s.LagSeconds * float64(time.Second))
}

// Refresh period of status --watch.
const watchPeriod = 2 * time.Second

// lastErrorWidth is the most characters of an error the status table
// shows; --json has it all.
const lastErrorWidth = 60

func cmdStatus(ctx context.Context, g *globals, args []string) error {
	var asJSON, watch bool
	var maxLag time.Duration
	dir, err := oneArgCommand(g, "status", "[--json] [--max-lag DURATION] [--watch]", "SPOOL_DIR",
		"Shows, for each database spooled under SPOOL_DIR in this boot, its state, its\n"+
			"replication lag (the age of the oldest commit not yet in the store, counting\n"+
			"commits whose snapshots failed), the bytes waiting, whether an uploader is\n"+
			"serving it (alive, or when one was last seen: a writer that exited before its\n"+
			"uploads were done shows state \"stopped\" and no live uploader, a store outage\n"+
			"a live uploader and errors), and the uploader's calls, failures and last\n"+
			"error (cut to 60 characters, its middle elided; in full with --json).\n\n"+
			"Exits 1 if any database is not replicated (its snapshots fail, or a boule older\n"+
			"than WAL replication left it in WAL mode), blocked (a permanent store error),\n"+
			"or lags more than --max-lag, or if\n"+
			"SPOOL_DIR does not look like a spool: fit for cron, systemd and probes.\n\n"+
			"--watch redraws the table every 2s until interrupted, then exits as the last\n"+
			"refresh would have; it needs a terminal on standard output (to log status\n"+
			"repeatedly, run vfsctl status in a loop instead).", args,
		func(fs *flag.FlagSet) {
			fs.BoolVar(&asJSON, "json", false, "print JSON instead of a table")
			fs.DurationVar(&maxLag, "max-lag", 0, "exit 1 if a database lags more than this (e.g. 5m); 0: lag alone never fails")
			fs.BoolVar(&watch, "watch", false, "redraw the table every 2s on a terminal")
		})
	if err != nil {
		return err
	}
	if maxLag < 0 {
		return flagErrorf("--max-lag %v: want a positive duration", maxLag)
	}
	if !watch {
		return statusOnce(g, g.stdout, dir, asJSON, maxLag, time.Now())
	}
	if asJSON {
		return usagef("give --watch or --json, not both")
	}
	if !isTerminal(g.stdout) {
		return usagef("--watch redraws a terminal, and standard output is not one; to log the status repeatedly, run vfsctl status in a loop")
	}
	t := time.NewTicker(watchPeriod)
	defer t.Stop()
	for {
		// A screen at a time: the table, the notes and the verdict.
		var screen bytes.Buffer
		h := *g
		h.stderr = &screen
		now := time.Now()
		fmt.Fprintf(&screen, "vfsctl status %s, every %v: %s\n\n", dir, watchPeriod, now.Format(time.TimeOnly))
		err := statusOnce(&h, &screen, dir, false, maxLag, now)
		if err != nil {
			fmt.Fprintf(&screen, "\n%v\n", err)
		}
		// Home, clear the screen, draw.
		fmt.Fprint(g.stdout, "\x1b[H\x1b[2J"+strings.ReplaceAll(screen.String(), "\n", "\r\n"))
		select {
		case <-ctx.Done():
			return err
		case <-t.C:
		}
	}
}

// statusOnce prints the status of the spool dir at now on w, and returns
// what makes status exit 1.
func statusOnce(g *globals, w io.Writer, dir string, asJSON bool, maxLag time.Duration, now time.Time) error {
	dbs, err := listSpool(g, "status", dir)
	if err != nil {
		return err
	}
	out := make([]statusJSON, 0, len(dbs))
	for _, d := range dbs {
		s, err := upload.ReadStatus(d.Dir, now)
		if err != nil {
			return err
		}
		if s.Source == "" {
			s.Source = d.Source
		}
		out = append(out, describeStatus(s))
	}
	if asJSON {
		if err := writeJSON(w, out); err != nil {
			return err
		}
	} else if err := statusTable(w, out, now); err != nil {
		return err
	}
	return statusVerdict(out, maxLag)
}

// describeStatus is s as status prints it.
func describeStatus(s upload.Status) statusJSON {
	j := statusJSON{
		Source: s.Source, SpoolDir: s.Dir, LagSeconds: s.Lag.Seconds(), PendingBytes: s.PendingBytes,
		Uploads: s.Uploads, Chunks: s.Chunks, Calls: s.Calls, Failures: s.Failures,
		LastError: s.LastError, Blocked: s.Blocked,
		NotReplicated: s.NotReplicated, Problem: s.Problem,
		UploaderAlive: s.UploaderAlive, seen: s.UploaderSeen,
	}
	if !s.LastUpload.IsZero() {
		j.LastUpload = s.LastUpload.UTC().Format(time.RFC3339)
	}
	if !s.UploaderSeen.IsZero() {
		j.UploaderSeen = s.UploaderSeen.UTC().Format(time.RFC3339)
	}
	return j
}

// statusVerdict returns the error status exits 1 with, naming each
// database at fault and why, or nil when none is.
func statusVerdict(out []statusJSON, maxLag time.Duration) error {
	var bad []string
	for _, s := range out {
		switch {
		case s.NotReplicated:
			bad = append(bad, s.Source+" (not replicated)")
		case s.Blocked:
			bad = append(bad, s.Source+" (blocked)")
		case maxLag > 0 && s.lag() > maxLag:
			why := fmt.Sprintf("%s (lag %v > %v", s.Source, s.lag().Round(time.Second), maxLag)
			if !s.UploaderAlive {
				why += ", no live uploader: vfsctl flush uploads what waits"
			}
			bad = append(bad, why+")")
		}
	}
	if len(bad) == 0 {
		return nil
	}
	what := "not replicated or blocked"
	if maxLag > 0 {
		what = "not replicated, blocked or lagging more than " + maxLag.String()
	}
	return fmt.Errorf("%d of %d databases are %s: %s", len(bad), len(out), what, strings.Join(bad, ", "))
}

// clip cuts s to one line of at most n characters: its start and its
// end, the middle elided. An error's end is its cause ("no space left on
// device", "bucket does not exist"), its start what failed; the middle is
// paths and keys.
func clip(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	head := n / 3
	return string(r[:head]) + "…" + string(r[len(r)-(n-head-1):])
}

// ago says how long before now t was, to the second.
func ago(t, now time.Time) string {
	return now.Sub(t).Round(time.Second).String() + " ago"
}

func statusTable(w io.Writer, out []statusJSON, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tSTATE\tLAG\tPENDING\tUPLOADER\tUPLOADS\tCALLS\tFAILURES\tLAST UPLOAD\tLAST ERROR")
	for _, s := range out {
		last := s.LastUpload
		if last == "" {
			last = "never"
		}
		lag := "-"
		if s.LagSeconds > 0 {
			lag = s.lag().Round(time.Millisecond).String()
		}
		uploader := "none"
		switch {
		case s.UploaderAlive:
			uploader = "alive"
		case !s.seen.IsZero():
			uploader = "seen " + ago(s.seen, now)
		}
		errText := s.LastError
		if s.NotReplicated {
			errText = s.Problem
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%d\t%d\t%s\t%s\n", s.Source, s.state(), lag, s.PendingBytes, uploader, s.Uploads, s.Calls, s.Failures, last, clip(errText, lastErrorWidth))
	}
	return tw.Flush()
}
