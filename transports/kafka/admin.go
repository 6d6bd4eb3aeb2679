package kafka

import (
	"context"
	"fmt"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/pgtrail/pgtrail/core/config"
)

// Partition is where the group stands on one partition.
type Partition struct {
	Topic     string
	Partition int
	Committed int64 // -1 when nothing is committed
	End       int64
	Lag       int64
}

// Status reports the group's committed offsets and lag on every partition of
// the topics.
func Status(ctx context.Context, cfg config.Kafka) ([]Partition, error) {
	c, err := newClients(cfg)
	if err != nil {
		return nil, err
	}
	conn, err := dial(ctx, c.dialer, cfg.Brokers)
	if err != nil {
		return nil, err
	}
	parts, err := conn.ReadPartitions(cfg.Topics...)
	conn.Close()
	if err != nil {
		return nil, fmt.Errorf("read partitions of %v: %w", cfg.Topics, err)
	}
	client := &kafkago.Client{Addr: kafkago.TCP(cfg.Brokers...), Transport: c.transport}
	ids := map[string][]int{}
	ends := map[string][]kafkago.OffsetRequest{}
	for _, p := range parts {
		ids[p.Topic] = append(ids[p.Topic], p.ID)
		ends[p.Topic] = append(ends[p.Topic], kafkago.LastOffsetOf(p.ID))
	}
	committed, err := client.OffsetFetch(ctx, &kafkago.OffsetFetchRequest{GroupID: cfg.Group, Topics: ids})
	if err != nil {
		return nil, fmt.Errorf("fetch offsets of group %q: %w", cfg.Group, err)
	}
	last, err := client.ListOffsets(ctx, &kafkago.ListOffsetsRequest{Topics: ends})
	if err != nil {
		return nil, fmt.Errorf("list offsets of %v: %w", cfg.Topics, err)
	}
	var out []Partition
	for _, t := range cfg.Topics {
		for _, c := range committed.Topics[t] {
			p := Partition{Topic: t, Partition: c.Partition, Committed: c.CommittedOffset}
			for _, l := range last.Topics[t] {
				if l.Partition == c.Partition {
					p.End = l.LastOffset
				}
			}
			p.Lag = p.End - max(p.Committed, 0)
			out = append(out, p)
		}
	}
	return out, nil
}
