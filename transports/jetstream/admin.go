package jetstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/transports/natsconn"
)

// State is where the durable consumer stands.
type State struct {
	Stream, Durable string
	Exists          bool
	AckFloor        uint64 // last stream sequence confirmed
	Pending         uint64 // messages not yet delivered
	AckPending      int    // delivered, not yet confirmed
}

func connect(ctx context.Context, cfg config.JetStream) (*nats.Conn, jetstream.Stream, error) {
	nc, err := natsconn.Connect("source.jetstream", cfg.URL, cfg.TLS, cfg.Auth, nats.Name("pgtrail"))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	stream, err := js.Stream(ctx, cfg.Stream)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("look up stream %q (source.jetstream.stream): %w", cfg.Stream, err)
	}
	return nc, stream, nil
}

// Status reports the durable consumer's state.
func Status(ctx context.Context, cfg config.JetStream) (State, error) {
	st := State{Stream: cfg.Stream, Durable: cfg.Durable}
	nc, stream, err := connect(ctx, cfg)
	if err != nil {
		return st, err
	}
	defer nc.Close()
	c, err := stream.Consumer(ctx, cfg.Durable)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("look up consumer %q: %w", cfg.Durable, err)
	}
	info := c.CachedInfo()
	st.Exists, st.AckFloor, st.Pending, st.AckPending = true, info.AckFloor.Stream, info.NumPending, info.NumAckPending
	return st, nil
}

// Teardown deletes the durable consumer that `run` created; the stream and
// its messages belong to Debezium and stay.
func Teardown(ctx context.Context, cfg config.JetStream, log *slog.Logger) error {
	nc, stream, err := connect(ctx, cfg)
	if err != nil {
		return err
	}
	defer nc.Close()
	err = stream.DeleteConsumer(ctx, cfg.Durable)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		log.Info("consumer does not exist", "stream", cfg.Stream, "durable", cfg.Durable)
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete consumer %q: %w", cfg.Durable, err)
	}
	log.Info("consumer deleted", "stream", cfg.Stream, "durable", cfg.Durable)
	return nil
}
