package publish

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/transports/natsconn"
)

// jetStream publishes to a NATS JetStream stream. Every message carries its
// event's ID as Nats-Msg-Id: the server drops a message whose id it has
// seen within the stream's duplicate window, so a batch published again after
// a crash or a retry is stored once.
type jetStream struct {
	nc *nats.Conn
	js jetstream.JetStream
}

// maxPending bounds the publications awaiting their acknowledgement.
const maxPending = 1024

func openJetStream(ctx context.Context, cfg config.PublishJetStream, subjects []string) (*jetStream, error) {
	nc, err := natsconn.Connect("publish.jetstream", cfg.URL, cfg.TLS, cfg.Auth, nats.Name("pgtrail capture"), nats.MaxReconnects(-1))
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(maxPending))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	_, err = js.Stream(ctx, cfg.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = js.CreateStream(ctx, jetstream.StreamConfig{
			Name: cfg.Stream, Subjects: subjects, Storage: jetstream.FileStorage,
			Duplicates: time.Duration(cfg.DuplicateWindow),
		})
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream stream %q (publish.jetstream.stream): %w", cfg.Stream, err)
	}
	return &jetStream{nc: nc, js: js}, nil
}

func (j *jetStream) publish(ctx context.Context, events []Event) error {
	pending := make([]jetstream.PubAckFuture, 0, min(len(events), maxPending))
	wait := func() error {
		for _, f := range pending {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				return fmt.Errorf("publish to %s: %w", f.Msg().Subject, err)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		pending = pending[:0]
		return nil
	}
	for _, ev := range events {
		if ev.Value == nil {
			continue // tombstones are for Kafka's compaction
		}
		if len(pending) == maxPending {
			if err := wait(); err != nil {
				return err
			}
		}
		msg := &nats.Msg{Subject: ev.Subject, Data: ev.Value}
		f, err := j.js.PublishMsgAsync(msg, jetstream.WithMsgID(ev.ID))
		if err != nil {
			return fmt.Errorf("publish to %s: %w", ev.Subject, err)
		}
		pending = append(pending, f)
	}
	return wait()
}

func (j *jetStream) close() { j.nc.Close() }
