package publish

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/pgtrail/pgtrail/core/config"
)

// kafka produces to Kafka with acks=all, keyed by Debezium's key, so records
// of one row land in one partition (murmur2, as Kafka's Java producer
// partitions) and stay in order.
type kafka struct {
	cl *kgo.Client
}

func openKafka(ctx context.Context, cfg config.PublishKafka) (*kafka, error) {
	security, err := kafkaSecurity(cfg)
	if err != nil {
		return nil, err
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.AllowAutoTopicCreation(),
		kgo.ProducerLinger(0),
		kgo.ClientID("pgtrail-capture"),
	}, security...)...)
	if err != nil {
		return nil, fmt.Errorf("publish.kafka.brokers: %w", err)
	}
	if err := cl.Ping(ctx); err != nil {
		cl.Close()
		return nil, fmt.Errorf("connect to Kafka at %v: %w (%s)", cfg.Brokers, err, kafkaHint(cfg, err))
	}
	return &kafka{cl: cl}, nil
}

func (k *kafka) publish(ctx context.Context, events []Event) error {
	recs := make([]*kgo.Record, len(events))
	for i, ev := range events {
		recs[i] = &kgo.Record{Topic: ev.Subject, Key: ev.Key, Value: ev.Value}
	}
	if err := k.cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return fmt.Errorf("produce to Kafka: %w", err)
	}
	return nil
}

func (k *kafka) close() { k.cl.Close() }
