package main

import (
	"context"
	"fmt"
	"io"

	"github.com/pgtrail/pgtrail/core/metrics"
	"github.com/pgtrail/pgtrail/core/pipeline"
	"github.com/pgtrail/pgtrail/transports/debezium"
	"github.com/pgtrail/pgtrail/transports/jetstream"
	"github.com/pgtrail/pgtrail/transports/kafka"
	"github.com/pgtrail/pgtrail/transports/pglogrepl"
)

// openSource opens the ingress that source.type names.
func (a *app) openSource(ctx context.Context, m *metrics.Metrics) (pipeline.Source, error) {
	src := a.cfg.Source
	if src.Type != "postgres" && src.Debezium.Catalog != "" {
		// The decoders read it on their own; fail at start, not at the first event.
		if err := debezium.CheckCatalog(ctx, src.Debezium.Catalog); err != nil {
			return nil, err
		}
	}
	switch src.Type {
	case "jetstream":
		return jetstream.Open(ctx, src.JetStream, src.Debezium, a.log, m)
	case "kafka":
		return kafka.Open(ctx, src.Kafka, src.Debezium, a.log, m)
	}
	audit, err := a.auditTables()
	if err != nil {
		return nil, err
	}
	s, err := pglogrepl.Open(ctx, src.Postgres, audit, a.log, m)
	if err != nil {
		return nil, err
	}
	s.LimitValues(a.cfg.Pipeline.MaxValue())
	return s, nil
}

// setupBroker sets up the sinks: a broker source has nothing to set up, since
// Debezium owns the publication and the slot, and `run` makes its consumer.
func (a *app) setupBroker(ctx context.Context) error {
	if err := a.setupSinks(ctx); err != nil {
		return err
	}
	a.log.Info("sinks set up; source "+a.cfg.Source.Type+" needs no setup: Debezium owns the publication and the slot, and `pgtrail run` makes the consumer",
		"source", a.cfg.Source.Type)
	return nil
}

// brokerStatus prints where the consumer stands.
func (a *app) brokerStatus(ctx context.Context, w io.Writer) error {
	switch a.cfg.Source.Type {
	case "jetstream":
		st, err := jetstream.Status(ctx, a.cfg.Source.JetStream)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "stream\t%s\n", st.Stream)
		fmt.Fprintf(w, "consumer\t%s\n", st.Durable)
		if !st.Exists {
			fmt.Fprintf(w, "state\tnot created yet (`pgtrail run` creates it)\n")
			break
		}
		fmt.Fprintf(w, "confirmed position\t%d (stream sequence)\n", st.AckFloor)
		fmt.Fprintf(w, "pending\t%d messages\n", st.Pending)
		fmt.Fprintf(w, "unacknowledged\t%d messages\n", st.AckPending)
	case "kafka":
		parts, err := kafka.Status(ctx, a.cfg.Source.Kafka)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "group\t%s\n", a.cfg.Source.Kafka.Group)
		for _, p := range parts {
			committed := "none"
			if p.Committed >= 0 {
				committed = fmt.Sprint(p.Committed)
			}
			fmt.Fprintf(w, "%s[%d]\tcommitted %s, end %d, lag %d messages\n", p.Topic, p.Partition, committed, p.End, p.Lag)
		}
	}
	return nil
}

// teardownBroker drops what `run` made at the broker: the JetStream durable
// consumer; a Kafka group's offsets expire on their own.
func (a *app) teardownBroker(ctx context.Context) error {
	switch a.cfg.Source.Type {
	case "jetstream":
		if err := jetstream.Teardown(ctx, a.cfg.Source.JetStream, a.log); err != nil {
			return err
		}
	case "kafka":
		a.log.Info("nothing to drop at the source: Kafka expires the group's committed offsets (or run kafka-consumer-groups --delete --group "+a.cfg.Source.Kafka.Group+")",
			"group", a.cfg.Source.Kafka.Group)
	}
	return nil
}
