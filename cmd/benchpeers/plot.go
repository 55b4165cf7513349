package main

import (
	"fmt"
	"image/color"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// Colours by tool, the same in every chart.
var toolColor = map[string]color.Color{
	"boule":           color.RGBA{0x1f, 0x77, 0xb4, 0xff},
	"boule-wal":       color.RGBA{0x2c, 0xa0, 0x2c, 0xff},
	"litestream":      color.RGBA{0xff, 0x7f, 0x0e, 0xff},
	"sqlite-rollback": color.RGBA{0x99, 0x99, 0x99, 0xff},
	"sqlite-wal":      color.RGBA{0x55, 0x55, 0x55, 0xff},
}

var toolOrder = []string{"boule", "boule-wal", "litestream", "sqlite-rollback", "sqlite-wal"}

// series is one tool's bars, one per group.
type series struct {
	name string
	vals []float64
}

func barChart(file, title, ylabel string, groups []string, ss []series) error {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = ylabel
	p.Legend.Top = true
	w := vg.Points(14)
	for i, s := range ss {
		bars, err := plotter.NewBarChart(plotter.Values(s.vals), w)
		if err != nil {
			return err
		}
		bars.Color = toolColor[s.name]
		bars.LineStyle.Width = 0
		bars.Offset = w * vg.Length(2*i-len(ss)+1) / 2
		p.Add(bars)
		p.Legend.Add(s.name, bars)
	}
	p.NominalX(groups...)
	p.Y.Min = 0
	p.Y.Max *= 1.3 // room for the legend above the bars
	p.Add(plotter.NewGrid())
	return p.Save(vg.Length(80+len(groups)*len(ss)*18)*vg.Points(1)*1.2+200, 260, file)
}

// byKey indexes results by workload and tool.
func byKey(rs []result) map[[2]string]result {
	m := map[[2]string]result{}
	for _, r := range rs {
		m[[2]string{r.Workload, r.Tool}] = r
	}
	return m
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// drawPlots draws the charts doc/BENCHMARKS.md shows, from what was measured.
func drawPlots(dir string, rs []result) error {
	m := byKey(rs)
	var rateW []string
	for _, r := range rs {
		if strings.HasSuffix(r.Workload, "commits/s") && !slices.Contains(rateW, r.Workload) {
			rateW = append(rateW, r.Workload)
		}
	}
	tools := func(ws []string, replicated bool) []string {
		var out []string
		for _, t := range toolOrder {
			for _, w := range ws {
				if r, ok := m[[2]string{w, t}]; ok && (r.Replicated || !replicated) {
					out = append(out, t)
					break
				}
			}
		}
		return out
	}
	for _, q := range []string{"p50", "p99"} {
		if len(rateW) == 0 {
			break
		}
		var ss []series
		for _, t := range tools(rateW, false) {
			s := series{name: t}
			for _, w := range rateW {
				r := m[[2]string{w, t}]
				v := r.Commit.P50
				if q == "p99" {
					v = r.Commit.P99
				}
				s.vals = append(s.vals, ms(v))
			}
			ss = append(ss, s)
		}
		if err := barChart(filepath.Join(dir, "peers-commit-"+q+".png"), "Commit latency "+q+", small transactions", "ms", rateW, ss); err != nil {
			return err
		}
	}
	var lagW []string
	for _, r := range rs {
		if r.Lag.N > 0 && r.BulkBytes == 0 && !slices.Contains(lagW, r.Workload) { // bulk lags are seconds to minutes: in the table only
			lagW = append(lagW, r.Workload)
		}
	}
	if len(lagW) > 0 {
		var groups []string
		for _, w := range lagW {
			groups = append(groups, shortW(w)+" p50", shortW(w)+" p99")
		}
		var ss []series
		for _, t := range tools(lagW, true) {
			s := series{name: t}
			for _, w := range lagW {
				r := m[[2]string{w, t}]
				s.vals = append(s.vals, r.Lag.P50.Seconds(), r.Lag.P99.Seconds())
			}
			ss = append(ss, s)
		}
		if err := barChart(filepath.Join(dir, "peers-lag.png"), "Replication lag, small transactions: commit to visible in the store", "s", groups, ss); err != nil {
			return err
		}
	}
	if len(rateW) > 0 {
		var ss []series
		for _, t := range tools(rateW, true) {
			s := series{name: t}
			for _, w := range rateW {
				r := m[[2]string{w, t}]
				s.vals = append(s.vals, per1000(r, float64(r.Counts.Requests)))
			}
			ss = append(ss, s)
		}
		if err := barChart(filepath.Join(dir, "peers-requests.png"), "S3 requests per 1,000 commits", "requests", rateW, ss); err != nil {
			return err
		}
	}
	return nil
}

func shortW(w string) string {
	w = strings.Replace(w, " commits/s", "/s", 1)
	return strings.Replace(w, "bulk load ", "bulk ", 1)
}

func per1000(r result, v float64) float64 {
	if r.Commits == 0 {
		return 0
	}
	return v * 1000 / float64(r.Commits)
}

// tableHeader starts a Markdown table with the columns cols: a blank line
// after the table before it, if any, the header row and its rule.
func tableHeader(b *strings.Builder, cols ...string) {
	if b.Len() > 0 {
		fmt.Fprintln(b)
	}
	fmt.Fprintf(b, "| %s |\n", strings.Join(cols, " | "))
	fmt.Fprintf(b, "|%s\n", strings.Repeat(" --- |", len(cols)))
}

// table renders the results as the Markdown tables of doc/BENCHMARKS.md.
func table(rs []result) string {
	var b strings.Builder
	tableHeader(&b, "workload", "tool", "commits", "commit p50", "commit p99", "lag p50", "lag p99", "lag max", "requests / 1,000 commits", "KiB up / 1,000 commits", "disk beyond db, max", "WAL+shm, max")
	for _, r := range rs {
		if r.Commits == 0 || r.BulkBytes > 0 {
			continue
		}
		lag := [3]string{"—", "—", "—"}
		req, up := "—", "—"
		if r.Replicated {
			lag = [3]string{dur(r.Lag.P50), dur(r.Lag.P99), dur(r.Lag.Max)}
			if r.Missing > 0 {
				lag[2] += fmt.Sprintf(" (%d never seen)", r.Missing)
			}
			req = fmt.Sprintf("%.0f %s", per1000(r, float64(r.Counts.Requests)), methods(r.Counts, 1000/float64(r.Commits)))
			up = fmt.Sprintf("%.0f", per1000(r, float64(r.Counts.BytesUp))/1024)
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			r.Workload, r.Tool, r.Commits, dur(r.Commit.P50), dur(r.Commit.P99), lag[0], lag[1], lag[2],
			req, up, mib(r.DiskMax), mib(r.WALMax))
	}
	tableHeader(&b, "bulk load", "tool", "4 MiB commits", "load time", "commit p50", "commit p99", "all in the store after", "lag p50", "lag p99", "requests", "MiB up", "disk beyond db, max", "WAL+shm, max")
	for _, r := range rs {
		if r.BulkBytes == 0 {
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %s (%.0f MiB/s) | %s | %s | %s | %s | %s | %d %s | %.0f | %s | %s |\n",
			r.Workload, r.Tool, r.Commits, dur(r.Elapsed), float64(r.BulkBytes)/(1<<20)/r.Elapsed.Seconds(),
			dur(r.Commit.P50), dur(r.Commit.P99), dur(r.AllVisible), dur(r.Lag.P50), dur(r.Lag.P99),
			r.Counts.Requests, methods(r.Counts, 1), float64(r.Counts.BytesUp)/(1<<20), mib(r.DiskMax), mib(r.WALMax))
	}
	tableHeader(&b, "idle", "tool", "window", "requests / hour", "KiB up / hour", "KiB down / hour", "disk beyond db", "WAL+shm")
	for _, r := range rs {
		if r.Workload != "idle" {
			continue
		}
		h := float64(time.Hour) / float64(r.Window)
		fmt.Fprintf(&b, "| idle | %s | %v | %.0f %s | %.0f | %.0f | %s | %s |\n", r.Tool, r.Window,
			float64(r.Counts.Requests)*h, methods(r.Counts, h), float64(r.Counts.BytesUp)*h/1024, float64(r.Counts.BytesDown)*h/1024,
			mib(r.DiskEnd), mib(r.WALMax))
	}
	tableHeader(&b, "restore", "tool", "size", "restore", "first query (restore + open + query)", "requests", "MiB down", "first query through the tool's read-replica VFS, cold")
	for _, r := range rs {
		if r.Restore == 0 {
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %d %s | %.0f | %s |\n", r.Workload, r.Tool, mib(r.RestoredBytes),
			dur(r.Restore), dur(r.FirstQuery), r.Counts.Requests, methods(r.Counts, 1), float64(r.Counts.BytesDown)/(1<<20), r.ColdVFS)
	}
	return b.String()
}

// methods lists the requests by method, each multiplied by scale.
func methods(c counts, scale float64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(c.ByMethod)) {
		parts = append(parts, fmt.Sprintf("%s %.0f", k, float64(c.ByMethod[k])*scale))
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

func dur(d time.Duration) string {
	switch {
	case d == 0:
		return "—"
	case d < time.Millisecond:
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.2f ms", ms(d))
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func mib(n int64) string {
	if n == 0 {
		return "0"
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
