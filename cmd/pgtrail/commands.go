package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/lease"
	"github.com/pgtrail/pgtrail/core/metrics"
	"github.com/pgtrail/pgtrail/core/pipeline"
	"github.com/pgtrail/pgtrail/core/redact"
	"github.com/pgtrail/pgtrail/core/retry"
	"github.com/pgtrail/pgtrail/transports/pglogrepl"
)

func (a *app) setupCmd() *cobra.Command {
	var from, sink string
	cmd := &cobra.Command{
		Use:   "setup",
		Short: "Create the publication, the replication slot and the sinks' tables (idempotent)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.setup(cmd.Context(), pglogrepl.Setup); err != nil || from == "" {
				return err
			}
			return a.migrate(cmd.Context(), cmd.OutOrStdout(), from, sink)
		},
	}
	cmd.Flags().StringVar(&from, "migrate-from", "", "then move the rows of this Bemi changes table (schema.table, in the audit database) into the audit table")
	cmd.Flags().StringVar(&sink, "sink", "", "the postgres sink to migrate into, when there are several")
	return cmd
}

// setup prepares the sinks, then the source with prepare: pglogrepl.Setup
// for `pgtrail setup`, pglogrepl.Prepare on every start of `pgtrail run`.
func (a *app) setup(ctx context.Context, prepare func(context.Context, config.Postgres, *slog.Logger) error) error {
	if a.cfg.Source.Type != "postgres" {
		return a.setupBroker(ctx)
	}
	if err := pglogrepl.Check(ctx, a.cfg.Source.Postgres); err != nil {
		return err
	}
	// Sinks first: the audit table must exist, marked as pgtrail's, before
	// the publication is drawn up.
	if err := a.setupSinks(ctx); err != nil {
		return err
	}
	if err := prepare(ctx, a.cfg.Source.Postgres, a.log); err != nil {
		return err
	}
	return a.dropSourceTriggers(ctx)
}

// setupSinks runs every sink's Setup.
func (a *app) setupSinks(ctx context.Context) error {
	sinks, err := a.loadSinks(ctx, nil)
	if err != nil {
		return err
	}
	defer closeSinks(ctx, sinks)
	for _, s := range sinks {
		if err := s.Setup(ctx); err != nil {
			return err
		}
	}
	return nil
}

// requirePostgresSource guards the commands that read a replication slot.
func (a *app) requirePostgresSource() error {
	if a.cfg.Source.Type != "postgres" {
		return fmt.Errorf("source.type is %q, but this command reads a PostgreSQL replication slot: set source.type: postgres", a.cfg.Source.Type)
	}
	return nil
}

func (a *app) runCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Capture changes into the sinks until SIGINT or SIGTERM, then drain and confirm",
		RunE:  func(cmd *cobra.Command, _ []string) error { return a.run(cmd.Context()) },
	}
	cmd.Flags().BoolVar(&a.pprof, "pprof", false, "also serve Go profiles (net/http/pprof) under /debug/pprof/ on http.listen")
	return cmd
}

func (a *app) run(ctx context.Context) error {
	if err := a.setup(ctx, pglogrepl.Prepare); err != nil {
		return err
	}
	if a.cfg.Source.Type != "postgres" {
		// Broker ingress has no lease (see README, High availability):
		// every instance is active.
		if a.cfg.Retention.Enabled() {
			go a.retainEvery(ctx, a.metrics())
		}
		return a.supervise(ctx, "pipeline", func(ctx context.Context, m *metrics.Metrics, started *bool) error {
			m.Active.Set(1)
			return a.runOnce(ctx, m, started)
		})
	}
	if err := pglogrepl.PrepareLeases(ctx, a.cfg.Source.Postgres); err != nil {
		return err
	}
	l := pglogrepl.NewLease(a.cfg.Source.Postgres, a.log)
	defer l.Close(ctx)
	return a.supervise(ctx, "pipeline", a.leased(l, true, a.runOnce))
}

// leased runs once only while this instance holds the slot's lease,
// standing by until it does, with the pipeline fenced by the lease (see
// core/lease and transports/pglogrepl/lease.go for why that loses and
// doubles nothing). Sinks are opened only once the lease is held, so
// partition upkeep, which the postgres sink does while open, runs on the
// active instance only, and so does retention (with retain: `run`).
func (a *app) leased(l *pglogrepl.Lease, retain bool, once func(context.Context, *metrics.Metrics, *bool) error) func(context.Context, *metrics.Metrics, *bool) error {
	return func(ctx context.Context, m *metrics.Metrics, started *bool) error {
		m.Active.Set(0)
		h, err := l.Hold(ctx, nil)
		if err != nil {
			return err
		}
		defer h.Release(ctx)
		m.Active.Set(1)
		// 0 the moment the lease is lost, not once the pipeline has stopped.
		defer context.AfterFunc(h.Context(), func() { m.Active.Set(0) })()
		defer m.Active.Set(0)
		if retain && a.cfg.Retention.Enabled() {
			done := make(chan struct{})
			go func() { defer close(done); a.retainEvery(h.Context(), m) }()
			defer func() { <-done }()
		}
		a.held = h
		defer func() { a.held = nil }()
		return once(ctx, m, started)
	}
}

// supervise serves /metrics and /healthz and runs once until ctx ends. A
// failure after a successful start is retried with backoff from the last
// confirmed position; a failure at start-up is for the user to fix.
func (a *app) supervise(ctx context.Context, what string, once func(context.Context, *metrics.Metrics, *bool) error) error {
	m := a.metrics()
	if err := a.mountWeb(ctx, m); err != nil {
		return err
	}
	if a.pprof {
		if a.cfg.HTTP.Listen == "" {
			return errors.New("--pprof serves on http.listen, which is off: set http.listen (e.g. 127.0.0.1:9187)")
		}
		m.ServeProfiles()
	}
	if a.cfg.HTTP.Listen != "" {
		if err := m.Start(ctx, a.cfg.HTTP.Listen, a.log); err != nil {
			return err
		}
	}
	b := retry.Default()
	for started := false; ; {
		began := time.Now()
		err := once(ctx, m, &started)
		b.Ran(time.Since(began))
		if ctx.Err() != nil {
			a.log.Info("stopped")
			return nil
		}
		if !started || errors.Is(err, pglogrepl.ErrSlotLost) { // a lost slot needs the user
			return err
		}
		m.SetHealth("pipeline", err)
		a.log.Error(what+" stopped; restarting from the last confirmed position", "err", err)
		if b.Wait(ctx) != nil {
			return nil
		}
	}
}

// runOnce runs the pipeline from the last confirmed position until it fails
// or ctx ends.
func (a *app) runOnce(ctx context.Context, m *metrics.Metrics, started *bool) error {
	sinks, err := a.loadSinks(ctx, m.SetHealth)
	if err != nil {
		return err
	}
	defer closeSinks(ctx, sinks)
	ps := make([]pipeline.Sink, len(sinks))
	for i, s := range sinks {
		if err := s.Open(ctx); err != nil {
			return err
		}
		ps[i] = s
		if a.held != nil {
			ps[i] = lease.Sink(s, a.held)
		}
	}
	rules, err := a.rules(ctx)
	if err != nil {
		return err
	}
	src, err := a.openSource(ctx, m)
	if err != nil {
		return err
	}
	if a.held != nil {
		src = lease.Source(src, a.held)
	}
	*started = true
	m.SetHealth("pipeline", nil)
	p := a.cfg.Pipeline
	return pipeline.New(src, ps, pipeline.Options{
		BatchSize:       p.BatchSize,
		FlushInterval:   time.Duration(p.FlushInterval),
		MaxInFlight:     p.MaxInFlight,
		MaxContextBytes: p.MaxContextBytes,
		MaxString:       p.MaxValue(),
		Rules:           rules,
		DDL:             a.cfg.Source.Postgres.Match,
	}, a.log, m).Run(ctx)
}

func (a *app) statusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Print where the source stands (slot position and lag, or consumer offsets) and the sinks' health",
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			status := a.slotStatus
			if a.cfg.Source.Type != "postgres" {
				status = a.brokerStatus
			}
			if err := status(ctx, w); err != nil {
				return err
			}
			sinks, err := a.loadSinks(ctx, nil)
			if err != nil {
				return err
			}
			defer closeSinks(ctx, sinks)
			for _, s := range sinks {
				health := "ok"
				if err := s.Check(ctx); err != nil {
					health = redact.Error(err)
				}
				fmt.Fprintf(w, "sink %s\t%s\n", s.Name(), health)
			}
			return w.Flush()
		},
	}
}

// slotStatus prints the replication slot's position and lag.
func (a *app) slotStatus(ctx context.Context, w io.Writer) error {
	st, err := pglogrepl.Status(ctx, a.cfg.Source.Postgres)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "slot\t%s\n", st.Slot)
	fmt.Fprintf(w, "active\t%v\n", st.Active)
	fmt.Fprintf(w, "confirmed position\t%s\n", st.ConfirmedLSN)
	fmt.Fprintf(w, "lag\t%d bytes\n", st.LagBytes)
	fmt.Fprintf(w, "wal status\t%s\n", st.WALStatus)
	fmt.Fprintf(w, "retained wal\t%d bytes\n", st.RetainedBytes)
	if st.SafeBytes != nil {
		fmt.Fprintf(w, "safe wal\t%d bytes\n", *st.SafeBytes)
	} else {
		fmt.Fprintf(w, "safe wal\tunlimited (max_slot_wal_keep_size is -1)\n")
	}
	for _, warning := range st.Warnings(a.cfg.Source.Postgres.MaxRetainedWAL) {
		fmt.Fprintf(w, "warning\t%s\n", warning)
	}
	ls, err := pglogrepl.Leases(ctx, a.cfg.Source.Postgres)
	if err != nil {
		return err
	}
	switch {
	case ls.Holder == "":
		fmt.Fprintf(w, "lease\tnever held (no `pgtrail run` has captured yet)\n")
	case ls.Expired:
		fmt.Fprintf(w, "lease\texpired (last held by %s): a standby takes over\n", ls.Holder)
	default:
		fmt.Fprintf(w, "lease\theld by %s since %s\n", ls.Holder, ls.Since.UTC().Format(time.RFC3339))
	}
	for _, i := range ls.Instances {
		role := "standby"
		if i == ls.Holder && !ls.Expired {
			role = "active"
		}
		fmt.Fprintf(w, "instance %s\t%s\n", i, role)
	}
	return st.Lost()
}

func (a *app) teardownCmd() *cobra.Command {
	var dropData bool
	cmd := &cobra.Command{
		Use:   "teardown",
		Short: "Drop the replication slot and publication (and with --drop-audit-data, the sinks' data)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var err error
			if a.cfg.Source.Type == "postgres" {
				err = pglogrepl.Teardown(ctx, a.cfg.Source.Postgres, a.log)
			} else {
				err = a.teardownBroker(ctx)
			}
			if err != nil || !dropData {
				return err
			}
			sinks, err := a.loadSinks(ctx, nil)
			if err != nil {
				return err
			}
			defer closeSinks(ctx, sinks)
			for _, s := range sinks {
				if err := s.Teardown(ctx); err != nil {
					return err
				}
				a.log.Info("sink data dropped", "sink", s.Name())
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&dropData, "drop-audit-data", false, "also drop what the sinks stored (the audit table): irreversible")
	return cmd
}
