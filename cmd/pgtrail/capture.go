package main

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtrail/pgtrail/core/lease"
	"github.com/pgtrail/pgtrail/core/metrics"
	"github.com/pgtrail/pgtrail/core/pipeline"
	"github.com/pgtrail/pgtrail/transports/pglogrepl"
	"github.com/pgtrail/pgtrail/transports/publish"
)

func (a *app) captureCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "capture",
		Short: "Publish captured changes to NATS JetStream or Kafka as Debezium events, until SIGINT or SIGTERM",
		Long: `capture reads the replication slot as run does and publishes every change, and
every logical decoding message, as the Debezium PostgreSQL connector's JSON
events to the broker of the publish: block. The slot is confirmed only past
what the broker acknowledged.`,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.capture(cmd.Context()) },
	}
}

func (a *app) capture(ctx context.Context) error {
	if err := a.requirePostgresSource(); err != nil {
		return err
	}
	if err := pglogrepl.Prepare(ctx, a.cfg.Source.Postgres, a.log); err != nil {
		return err
	}
	if err := pglogrepl.PrepareLeases(ctx, a.cfg.Source.Postgres); err != nil {
		return err
	}
	l := pglogrepl.NewLease(a.cfg.Source.Postgres, a.log)
	defer l.Close(ctx)
	return a.supervise(ctx, "capture", a.leased(l, false, a.captureOnce))
}

// captureOnce publishes from the last confirmed position until it fails or
// ctx ends.
func (a *app) captureOnce(ctx context.Context, m *metrics.Metrics, started *bool) error {
	pub, err := publish.Open(ctx, a.cfg.Publish, a.cfg.Source.Postgres.URL, a.log)
	if err != nil {
		return err
	}
	defer pub.Close(context.WithoutCancel(ctx))
	audit, err := a.auditTables()
	if err != nil {
		return err
	}
	rules, err := a.rules(ctx)
	if err != nil {
		return err
	}
	native, err := pglogrepl.Open(ctx, a.cfg.Source.Postgres, audit, a.log, m)
	if err != nil {
		return err
	}
	native.LimitValues(a.cfg.Pipeline.MaxValue())
	var src pipeline.Source = native
	var sink pipeline.Sink = pub
	if a.held != nil {
		src, sink = lease.Source(src, a.held), lease.Sink(pub, a.held)
	}
	*started = true
	m.SetHealth("pipeline", nil)
	a.log.Info("publishing", "type", a.cfg.Publish.Type, "topic_prefix", a.cfg.Publish.TopicPrefix, "route", a.cfg.Publish.Route)
	p := a.cfg.Pipeline
	return pipeline.New(src, []pipeline.Sink{sink}, pipeline.Options{
		BatchSize:     p.BatchSize,
		FlushInterval: time.Duration(p.FlushInterval),
		MaxInFlight:   p.MaxInFlight,
		PassMessages:  true,
		Verbatim:      true,
		Rules:         rules, // redacted values never reach the broker
	}, a.log, m).Run(ctx)
}
