// Package publish publishes natively captured changes to a broker as the
// Debezium PostgreSQL connector's JSON events (`pgtrail capture`): NATS
// JetStream, with message ids that let the server drop re-publications, or
// Kafka, keyed as Debezium keys. A batch counts as durable only once the
// broker has acknowledged every event of it (JetStream PubAck, Kafka
// acks=all), so the replication slot is confirmed only past what the broker
// holds.
package publish

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/config"
)

// broker sends events and returns once all are acknowledged.
type broker interface {
	publish(ctx context.Context, events []Event) error
	close()
}

// Sink is a pipeline sink that publishes each batch and reports it durable
// once the broker acknowledged it.
type Sink struct {
	name string
	enc  *Encoder
	b    broker
	log  *slog.Logger
}

// Open connects to the broker of cfg; sourceURL is the captured database,
// whose catalog gives the column types that Debezium's encodings depend on.
func Open(ctx context.Context, cfg config.Publish, sourceURL string, log *slog.Logger) (*Sink, error) {
	opts := Options{
		TopicPrefix:   cfg.TopicPrefix,
		PerTable:      cfg.Route == "per_table",
		DecimalString: cfg.DecimalHandlingMode == "string",
		Tombstones:    cfg.Type == "kafka",
	}
	var b broker
	var err error
	switch cfg.Type {
	case "jetstream":
		subjects := []string{cfg.TopicPrefix}
		if opts.PerTable {
			subjects = []string{cfg.TopicPrefix + ".>"}
		}
		b, err = openJetStream(ctx, cfg.JetStream, subjects)
	case "kafka":
		b, err = openKafka(ctx, cfg.Kafka)
	default:
		err = fmt.Errorf("publish.type: %q is not one of jetstream, kafka", cfg.Type)
	}
	if err != nil {
		return nil, err
	}
	return &Sink{name: cfg.Type, enc: NewEncoder(opts, sourceURL), b: b, log: log}, nil
}

// Name names the sink in metrics and logs.
func (s *Sink) Name() string { return "publish-" + s.name }

// Write publishes the batch, in order, and returns once the broker holds all
// of it. A failed batch is retried whole by the pipeline: JetStream drops
// what it already has by message id; Kafka may then hold duplicates, with
// identical content.
func (s *Sink) Write(ctx context.Context, batch []*change.Change) (notDurable int, err error) {
	events := make([]Event, 0, len(batch)+8)
	for _, c := range batch {
		evs, err := s.enc.Encode(ctx, c)
		if err != nil {
			return 0, err
		}
		events = append(events, evs...)
	}
	return 0, s.b.publish(ctx, events)
}

// Flush has nothing to do: Write returns only once the batch is acknowledged.
func (s *Sink) Flush(context.Context) error { return nil }

// FlushInterval is unused (every write is durable when it returns).
func (s *Sink) FlushInterval() time.Duration { return time.Second }

// Close disconnects.
func (s *Sink) Close(ctx context.Context) {
	s.b.close()
	s.enc.Close(ctx)
}
