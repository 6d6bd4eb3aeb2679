package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pgtrail/pgtrail/core/change"
	pb "github.com/pgtrail/pgtrail/plugins/proto"
)

// ProtocolVersion is the sink protocol this SDK speaks. Host and plugin
// agree on it in the handshake; a plugin built for another version is
// refused with a message that names it.
//
// 2: batches stream on Deliver, acknowledged as taken and as durable (1 had
// one unary Write per batch).
const ProtocolVersion = 2

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

	mu      sync.Mutex // one Deliver stream at a time
	durable uint64     // every batch up to here is durable
	last    uint64     // the last batch handed to impl
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

// Deliver takes batches from the host in order. A reader receives and
// decodes the next batch while the sink writes the current one. Batches up to
// s.last were taken on an earlier stream and are skipped: after a broken
// stream the host sends again everything it has no ack for.
func (s *server) Deliver(st pb.Sink_DeliverServer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ctx := st.Context()
	type item struct {
		req   *pb.DeliverRequest
		batch []*Change
	}
	next := make(chan item, 1)
	recvErr := make(chan error, 1)
	go func() {
		defer close(next)
		for {
			r, err := st.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			it := item{req: r}
			if !r.Flush {
				it.batch = fromProtoBatch(r.Changes)
			}
			select {
			case next <- it:
			case <-ctx.Done():
				return
			}
		}
	}()
	for it := range next {
		r := it.req
		switch {
		case r.Flush:
			if err := s.impl.Flush(ctx); err != nil {
				return err
			}
			s.durable = s.last
		case r.Seq > s.last:
			durable, err := s.impl.Write(ctx, it.batch)
			if err != nil {
				return refusal(err, r.Seq)
			}
			s.last = r.Seq
			if durable {
				s.durable = r.Seq
			}
		}
		if err := st.Send(&pb.Ack{DurableSeq: s.durable, TakenSeq: s.last}); err != nil {
			return err
		}
	}
	if err := <-recvErr; err != io.EOF {
		return err
	}
	return nil
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

// Deliver opens a stream of batches to the plugin; see Stream.
func (c *Client) Deliver(ctx context.Context) (*Stream, error) {
	ctx, cancel := context.WithCancel(ctx)
	st, err := c.rpc.Deliver(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	s := &Stream{st: st, cancel: cancel, changed: make(chan struct{})}
	go s.receive()
	return s, nil
}

// Stream carries batches to a plugin, several in flight, and its
// acknowledgements back. Send is called from one goroutine at a time.
type Stream struct {
	st     pb.Sink_DeliverClient
	cancel context.CancelFunc

	mu      sync.Mutex
	taken   uint64        // every batch up to here reached the sink
	durable uint64        // every batch up to here is durable
	err     error         // why the stream ended
	changed chan struct{} // closed, and replaced, at each ack and at the end
}

func (s *Stream) receive() {
	for {
		ack, err := s.st.Recv()
		s.mu.Lock()
		if err != nil {
			if err == io.EOF {
				err = errors.New("the plugin closed the batch stream")
			}
			s.err = refused(err)
		} else {
			s.taken, s.durable = ack.TakenSeq, ack.DurableSeq
		}
		close(s.changed)
		s.changed = make(chan struct{})
		s.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// Send hands over batch seq; it returns once the batch is on its way.
func (s *Stream) Send(seq uint64, batch []*Change) error {
	req := &pb.DeliverRequest{Seq: seq, Changes: make([]*pb.Change, len(batch))}
	for i, ch := range batch {
		req.Changes[i] = toProto(ch)
	}
	return s.send(req)
}

// Flush asks the plugin to make every batch up to seq durable.
func (s *Stream) Flush(seq uint64) error { return s.send(&pb.DeliverRequest{Seq: seq, Flush: true}) }

func (s *Stream) send(req *pb.DeliverRequest) error {
	if err := s.st.Send(req); err != nil {
		if err == io.EOF {
			// The stream ended; its reason comes from the receiving side.
			_, err = s.Wait(context.Background(), math.MaxUint64, 0)
		}
		return err
	}
	return nil
}

// Wait blocks until the sink took every batch up to taken and made every
// batch up to durable durable, or the stream or ctx ended. It returns the seq
// up to which batches are durable.
func (s *Stream) Wait(ctx context.Context, taken, durable uint64) (uint64, error) {
	for {
		s.mu.Lock()
		t, d, err, changed := s.taken, s.durable, s.err, s.changed
		s.mu.Unlock()
		if (t >= taken && d >= durable) || err != nil {
			return d, err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return d, ctx.Err()
		}
	}
}

// Close ends the stream.
func (s *Stream) Close() {
	_ = s.st.CloseSend()
	s.cancel()
}

// UnstorableBatch is how a batch stream ends when its sink refused batch
// Seq for the data of a change (Err is a change.UnstorableError).
type UnstorableBatch struct {
	Seq uint64
	Err error
}

func (e *UnstorableBatch) Error() string { return e.Err.Error() }
func (e *UnstorableBatch) Unwrap() error { return e.Err }

// A refusal crosses the process boundary as InvalidArgument with this
// reason, and the batch's seq, in an ErrorInfo.
const (
	errorDomain      = "pgtrail.dev/sink"
	reasonUnstorable = "UNSTORABLE"
	metadataBatchSeq = "seq"
)

// refusal is the status that carries a sink's change.UnstorableError for
// batch seq to the host; any other error goes as it is.
func refusal(err error, seq uint64) error {
	var u *change.UnstorableError
	if !errors.As(err, &u) {
		return err
	}
	st, derr := status.New(codes.InvalidArgument, u.Err.Error()).WithDetails(&errdetails.ErrorInfo{
		Reason: reasonUnstorable, Domain: errorDomain, Metadata: map[string]string{metadataBatchSeq: strconv.FormatUint(seq, 10)}})
	if derr != nil {
		return err
	}
	return st.Err()
}

// refused turns the status of refusal back into an UnstorableBatch.
func refused(err error) error {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.InvalidArgument {
		return err
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.Domain == errorDomain && info.Reason == reasonUnstorable {
			seq, perr := strconv.ParseUint(info.Metadata[metadataBatchSeq], 10, 64)
			if perr != nil {
				return err
			}
			return &UnstorableBatch{Seq: seq, Err: change.Unstorable(errors.New(st.Message()))}
		}
	}
	return err
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

func fromProtoBatch(p []*pb.Change) []*Change {
	batch := make([]*Change, len(p))
	for i, c := range p {
		batch[i] = fromProto(c)
	}
	return batch
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
