package sdk

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/pgtrail/pgtrail/core/change"
	pb "github.com/pgtrail/pgtrail/plugins/proto"
)

// ProtocolVersion is the sink protocol this SDK speaks. Host and plugin
// agree on it in the handshake; a plugin built for another version is
// refused with a message that names it.
const ProtocolVersion = 1

// Handshake is what host and plugin check before they talk. The cookie only
// keeps a plugin from being run by hand by mistake; it is not a secret.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   "PGTRAIL_SINK_PLUGIN",
	MagicCookieValue: "d7c5b0a2-pgtrail-sink",
}

// PluginName is the name the sink is served under in the go-plugin set.
const PluginName = "sink"

// MaxMessageBytes bounds one gRPC message: a batch. The pipeline cuts batches
// at a few MiB, but one row can be larger.
const MaxMessageBytes = 1 << 30

// Serve serves sink to the pgtrail host over gRPC until the host stops it.
// It is the one call a plugin's main function makes.
func Serve(sink Sink) {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: map[int]plugin.PluginSet{ProtocolVersion: {PluginName: &GRPCPlugin{Impl: sink}}},
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			return grpc.NewServer(append(opts, grpc.MaxRecvMsgSize(MaxMessageBytes), grpc.MaxSendMsgSize(MaxMessageBytes))...)
		},
		Logger: hclog.New(&hclog.LoggerOptions{Output: os.Stderr, JSONFormat: true, Level: hclog.Trace}),
	})
}

// Logger returns a logger for plugin code: its lines reach the host's log
// under the plugin's name, at their own level.
func Logger() *slog.Logger { return NewLogger(os.Stderr) }

// NewLogger writes records as the JSON lines that go-plugin's host parses
// (@level, @message, @timestamp).
func NewLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{
		Level: slog.LevelDebug,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) > 0 {
				return a
			}
			switch a.Key {
			case slog.LevelKey:
				return slog.String("@level", levelName(a.Value.Any().(slog.Level)))
			case slog.MessageKey:
				a.Key = "@message"
			case slog.TimeKey:
				a.Key = "@timestamp"
			}
			return a
		},
	}))
}

func levelName(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "error"
	case l >= slog.LevelWarn:
		return "warn"
	case l >= slog.LevelInfo:
		return "info"
	}
	return "debug"
}

// GRPCPlugin connects a Sink to go-plugin: the server side in the plugin
// process, the client side in the host.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Sink
}

// GRPCServer registers the sink's gRPC server.
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pb.RegisterSinkServer(s, &server{impl: p.Impl})
	return nil
}

// GRPCClient returns a Sink that calls the plugin.
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &Client{rpc: pb.NewSinkClient(c)}, nil
}

// server adapts a Sink to the gRPC service, tracking batch sequence numbers
// so that a buffering sink's acknowledgements are by position.
type server struct {
	pb.UnimplementedSinkServer
	impl Sink

	mu      sync.Mutex
	durable uint64 // every batch up to here is durable
	last    uint64 // the last batch handed over
}

var empty = &pb.Empty{}

func (s *server) Describe(context.Context, *pb.DescribeRequest) (*pb.DescribeResponse, error) {
	d := s.impl.Describe()
	return &pb.DescribeResponse{Name: d.Name, Version: d.Version, Summary: d.Summary, FlushIntervalMs: d.FlushInterval.Milliseconds()}, nil
}

func (s *server) Configure(ctx context.Context, r *pb.ConfigureRequest) (*pb.Empty, error) {
	return empty, s.impl.Configure(ctx, r.ConfigJson)
}

func (s *server) Setup(ctx context.Context, _ *pb.Empty) (*pb.Empty, error) {
	return empty, s.impl.Setup(ctx)
}

func (s *server) Teardown(ctx context.Context, _ *pb.Empty) (*pb.Empty, error) {
	return empty, s.impl.Teardown(ctx)
}

func (s *server) Open(ctx context.Context, _ *pb.Empty) (*pb.Empty, error) {
	return empty, s.impl.Open(ctx)
}

func (s *server) Check(ctx context.Context, _ *pb.Empty) (*pb.Empty, error) {
	return empty, s.impl.Check(ctx)
}

func (s *server) Close(ctx context.Context, _ *pb.Empty) (*pb.Empty, error) {
	return empty, s.impl.Close(ctx)
}

func (s *server) Write(ctx context.Context, r *pb.WriteRequest) (*pb.WriteResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	batch := make([]*Change, len(r.Changes))
	for i, c := range r.Changes {
		batch[i] = fromProto(c)
	}
	durable, err := s.impl.Write(ctx, batch)
	if err != nil {
		return nil, err
	}
	s.last = r.Seq
	if durable {
		s.durable = r.Seq
	}
	return &pb.WriteResponse{DurableSeq: s.durable}, nil
}

func (s *server) Flush(ctx context.Context, _ *pb.Empty) (*pb.WriteResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.impl.Flush(ctx); err != nil {
		return nil, err
	}
	s.durable = s.last
	return &pb.WriteResponse{DurableSeq: s.durable}, nil
}

// Client is a Sink in a plugin process, seen from the host. Its Write and
// Flush report durability by batch sequence number.
type Client struct {
	rpc pb.SinkClient
}

// Describe asks the plugin for its description.
func (c *Client) Describe(ctx context.Context) (Description, error) {
	d, err := c.rpc.Describe(ctx, &pb.DescribeRequest{})
	if err != nil {
		return Description{}, err
	}
	return Description{Name: d.Name, Version: d.Version, Summary: d.Summary,
		FlushInterval: time.Duration(d.FlushIntervalMs) * time.Millisecond}, nil
}

// Configure sends the sink's config block.
func (c *Client) Configure(ctx context.Context, config json.RawMessage) error {
	_, err := c.rpc.Configure(ctx, &pb.ConfigureRequest{ConfigJson: config})
	return err
}

// Setup asks the plugin to create what it needs.
func (c *Client) Setup(ctx context.Context) error { _, err := c.rpc.Setup(ctx, empty); return err }

// Teardown asks the plugin to remove it.
func (c *Client) Teardown(ctx context.Context) error {
	_, err := c.rpc.Teardown(ctx, empty)
	return err
}

// Open asks the plugin to connect.
func (c *Client) Open(ctx context.Context) error { _, err := c.rpc.Open(ctx, empty); return err }

// Check asks the plugin whether it can write.
func (c *Client) Check(ctx context.Context) error { _, err := c.rpc.Check(ctx, empty); return err }

// Close asks the plugin to disconnect.
func (c *Client) Close(ctx context.Context) error { _, err := c.rpc.Close(ctx, empty); return err }

// Write hands over batch seq and returns the seq up to which batches are durable.
func (c *Client) Write(ctx context.Context, seq uint64, batch []*Change) (uint64, error) {
	req := &pb.WriteRequest{Seq: seq, Changes: make([]*pb.Change, len(batch))}
	for i, ch := range batch {
		req.Changes[i] = toProto(ch)
	}
	r, err := c.rpc.Write(ctx, req)
	if err != nil {
		return 0, err
	}
	return r.DurableSeq, nil
}

// Flush makes every batch handed over durable and returns the last seq.
func (c *Client) Flush(ctx context.Context) (uint64, error) {
	r, err := c.rpc.Flush(ctx, empty)
	if err != nil {
		return 0, err
	}
	return r.DurableSeq, nil
}

func toProto(c *Change) *pb.Change {
	return &pb.Change{
		Id: c.ID[:], Database: c.Database, Schema: c.Schema, Table: c.Table,
		Operation: string(c.Operation), PrimaryKey: c.PrimaryKey,
		Before: c.Before, After: c.After, Context: c.Context, UnchangedToast: c.UnchangedToast,
		TransactionId: c.TransactionID, CommittedAtUs: c.CommittedAt.UnixMicro(), QueuedAtUs: c.QueuedAt.UnixMicro(),
		Lsn: c.LSN, CommitLsn: c.CommitLSN, Seq: c.Seq,
	}
}

func fromProto(p *pb.Change) *Change {
	id, _ := uuid.FromBytes(p.Id)
	return &Change{
		ID: id, Database: p.Database, Schema: p.Schema, Table: p.Table,
		Operation: change.Operation(p.Operation), PrimaryKey: p.PrimaryKey,
		Before: orEmpty(p.Before), After: orEmpty(p.After), Context: orEmpty(p.Context), UnchangedToast: p.UnchangedToast,
		TransactionID: p.TransactionId, CommittedAt: time.UnixMicro(p.CommittedAtUs).UTC(), QueuedAt: time.UnixMicro(p.QueuedAtUs).UTC(),
		LSN: p.Lsn, CommitLSN: p.CommitLsn, Seq: p.Seq,
	}
}

func orEmpty(b []byte) json.RawMessage {
	if len(b) == 0 {
		return change.Empty
	}
	return b
}
