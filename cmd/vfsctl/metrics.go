package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/boule-vfs/boule/metrics"
	"github.com/boule-vfs/boule/spool"
	"github.com/boule-vfs/boule/upload"
)

// spoolStatus reads the status of every database spooled under dir in
// this boot, as status does.
func spoolStatus(dir string, now time.Time) ([]upload.Status, error) {
	dbs, err := spool.List(dir)
	if errors.Is(err, spool.ErrNotSpool) {
		return nil, fmt.Errorf("%w; want a replication_spooling_dir", err)
	}
	if err != nil {
		return nil, err
	}
	out := make([]upload.Status, 0, len(dbs))
	for _, d := range dbs {
		s, err := upload.ReadStatus(d.Dir, now)
		if err != nil {
			return nil, err
		}
		if s.Source == "" {
			s.Source = d.Source
		}
		out = append(out, s)
	}
	return out, nil
}

// spoolCollector is package metrics' collector of the statuses sts.
func spoolCollector(sts []upload.Status) prometheus.Collector {
	return metrics.NewCollector(func() []upload.Status { return sts }, nil)
}

func cmdMetrics(ctx context.Context, g *globals, args []string) error {
	var listen string
	dir, err := oneArgCommand(g, "metrics", "[--listen ADDR]", "SPOOL_DIR",
		"Prints the replication metrics of the databases spooled under SPOOL_DIR in this\n"+
			"boot in Prometheus' text format: the per-database series of package metrics\n"+
			"(boule_replication_*: lag, pending bytes, blocked, not replicated, uploader\n"+
			"alive and last seen, and the counters the uploader saved in the spool). The\n"+
			"per-target boule_store_* series live in the writer's memory only: a Go program\n"+
			"exports them with package metrics. With --listen, serves the metrics on\n"+
			"http://ADDR/metrics, read afresh at each scrape, until interrupted; a scrape\n"+
			"that cannot read the spool fails with status 500.", args,
		func(fs *flag.FlagSet) {
			fs.StringVar(&listen, "listen", "", "serve on this address (host:port, :9464) instead of printing")
		})
	if err != nil {
		return err
	}
	if listen == "" {
		sts, err := spoolStatus(dir, time.Now())
		if err != nil {
			return err
		}
		return printMetrics(g, sts)
	}
	// The spool must be readable at the start: a typo fails at once.
	if _, err := spoolStatus(dir, time.Now()); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		sts, err := spoolStatus(dir, time.Now())
		if err != nil {
			g.logger.Warn("vfsctl metrics: cannot read the spool", "dir", dir, "err", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		metrics.Handler(spoolCollector(sts)).ServeHTTP(w, r)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(g.stderr, "vfsctl metrics: serving http://%s/metrics\n", ln.Addr())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	stop, cancel := context.WithTimeout(context.Background(), stopGrace/2)
	defer cancel()
	_ = srv.Shutdown(stop)
	return nil
}

// printMetrics prints sts as package metrics exports them, in the text
// format.
func printMetrics(g *globals, sts []upload.Status) error {
	reg := prometheus.NewRegistry()
	if err := reg.Register(spoolCollector(sts)); err != nil {
		return err
	}
	mfs, err := reg.Gather()
	if err != nil {
		return err
	}
	enc := expfmt.NewEncoder(g.stdout, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return err
		}
	}
	return nil
}
