// Package jetstream reads Debezium change events from a NATS JetStream stream
// through a durable pull consumer, as the Bemi stack's Debezium Server
// publishes them, and emits pipeline events.
//
// Delivery: the consumer acknowledges with AckAll, and only whole
// transactions: the position confirmed after a change is the last message
// before its transaction's first one. A restart therefore reads every
// unfinished transaction again from its start, so that context, the places of
// changes in their transaction and the occurrences of changes that share a
// WAL position come out as before; the sinks drop what they already hold.
package jetstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/metrics"
	"github.com/pgtrail/pgtrail/core/pipeline"
	"github.com/pgtrail/pgtrail/transports/deadletter"
	"github.com/pgtrail/pgtrail/transports/debezium"
	"github.com/pgtrail/pgtrail/transports/natsconn"
)

// Header names of a dead letter.
const (
	HeaderReason  = "Pgtrail-Dead-Letter-Reason"
	HeaderError   = "Pgtrail-Dead-Letter-Error"
	HeaderSubject = "Pgtrail-Original-Subject"
	HeaderSeq     = "Pgtrail-Original-Sequence"
)

// fetchBatch is how many messages one pull asks for, at most
// source.jetstream.fetch_max_bytes of them.
const fetchBatch = 512

// Source reads one durable consumer.
type Source struct {
	cfg     config.JetStream
	dcfg    debezium.Config
	log     *slog.Logger
	metrics *metrics.Metrics

	nc   *nats.Conn
	js   jetstream.JetStream
	cons jetstream.Consumer

	replicas  int    // the source stream's, for a dead-letter stream made here
	delivered uint64 // the consumer's delivery sequence when opened

	mu    sync.Mutex
	marks []mark // confirmable positions handed out, not yet acknowledged
	acked uint64
}

// mark is a message whose acknowledgement (AckAll) confirms every message up
// to it.
type mark struct {
	seq uint64
	msg jetstream.Msg
}

// Open connects, checks the stream, and readies the durable consumer to
// deliver from the first unacknowledged message.
func Open(ctx context.Context, cfg config.JetStream, dcfg config.Debezium, log *slog.Logger, m *metrics.Metrics) (*Source, error) {
	if cfg.FetchMaxBytes <= 0 {
		cfg.FetchMaxBytes = config.DefaultFetchMaxBytes
	}
	s := &Source{cfg: cfg, dcfg: debezium.ConfigFrom(dcfg), log: log, metrics: m}
	nc, err := natsconn.Connect("source.jetstream", cfg.URL, cfg.TLS, cfg.Auth, nats.Name("pgtrail"), nats.MaxReconnects(-1))
	if err != nil {
		return nil, err
	}
	s.nc = nc
	fail := func(err error) (*Source, error) {
		nc.Close()
		return nil, err
	}
	if s.js, err = jetstream.New(nc); err != nil {
		return fail(fmt.Errorf("jetstream: %w", err))
	}
	stream, err := s.js.Stream(ctx, cfg.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return fail(fmt.Errorf("stream %q does not exist (source.jetstream.stream): start Debezium Server with debezium.sink.nats-jetstream.create-stream=true, or create the stream", cfg.Stream))
	}
	if err != nil {
		return fail(fmt.Errorf("look up stream %q: %w (is JetStream enabled on the server?)", cfg.Stream, err))
	}
	s.replicas = stream.CachedInfo().Config.Replicas
	if err := s.ensureDLQ(ctx); err != nil {
		return fail(err)
	}
	if err := s.settle(ctx, stream); err != nil {
		return fail(err)
	}
	return s, nil
}

// ensureDLQ makes sure a stream keeps the dead letters. When none captures
// the dead-letter subject, pgtrail creates a stream of its own for it,
// "<stream>_dlq", with the source stream's replicas, rather than add the
// subject to the source stream: that one is Debezium's, with Debezium's
// limits, and dead letters must outlive them.
func (s *Source) ensureDLQ(ctx context.Context) error {
	_, err := s.js.StreamNameBySubject(ctx, s.cfg.DLQSubject)
	if err == nil {
		return nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("look up the stream of dead-letter subject %q: %w", s.cfg.DLQSubject, err)
	}
	name := s.cfg.Stream + "_dlq"
	_, err = s.js.CreateStream(ctx, jetstream.StreamConfig{
		Name: name, Subjects: []string{s.cfg.DLQSubject}, Storage: jetstream.FileStorage, Replicas: s.replicas,
		Description: "pgtrail: malformed messages of stream " + s.cfg.Stream,
	})
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return fmt.Errorf("no stream captures dead-letter subject %q (source.jetstream.dlq_subject), and stream %q, which pgtrail would create for it, exists with other subjects: add the subject to a stream, or set source.jetstream.dlq_subject to a subject one captures", s.cfg.DLQSubject, name)
	}
	if err != nil {
		return fmt.Errorf("create stream %q for dead-letter subject %q (source.jetstream.dlq_subject): %w (create a stream that captures the subject, or let pgtrail's NATS user create streams)", name, s.cfg.DLQSubject, err)
	}
	s.log.Info("created stream for dead letters", "stream", name, "subject", s.cfg.DLQSubject, "replicas", s.replicas)
	return nil
}

// settle readies the consumer with nothing delivered past its ack floor and
// takes its delivery sequence, which each message of the session must then
// follow. A pull still open from a session that just ended (its connection
// not yet gone at the server) can take messages right after a reset: then
// the consumer is reset again.
func (s *Source) settle(ctx context.Context, stream jetstream.Stream) error {
	for attempt := 1; ; attempt++ {
		c, err := s.consumer(ctx, stream)
		if err != nil {
			return err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return fmt.Errorf("look up consumer %q: %w", s.cfg.Durable, err)
		}
		if info.Delivered.Stream <= info.AckFloor.Stream {
			s.cons, s.delivered = c, info.Delivered.Consumer
			return nil
		}
		if attempt == 5 {
			return fmt.Errorf("consumer %q on stream %q keeps delivering to another reader (delivered up to %d, acknowledged %d): pgtrail must be its only reader; stop the other one, or set source.jetstream.durable to a consumer of pgtrail's own",
				s.cfg.Durable, s.cfg.Stream, info.Delivered.Stream, info.AckFloor.Stream)
		}
		s.log.Debug("consumer delivered past its ack floor while opening; resetting it again", "durable", s.cfg.Durable,
			"delivered", info.Delivered.Stream, "ack_floor", info.AckFloor.Stream)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
		}
	}
}

// consumer returns the durable consumer, positioned at its first
// unacknowledged message: a new pull would otherwise deliver what follows
// the messages handed to the last run, and those only after AckWait.
func (s *Source) consumer(ctx context.Context, stream jetstream.Stream) (jetstream.Consumer, error) {
	want := jetstream.ConsumerConfig{
		Durable: s.cfg.Durable, FilterSubject: s.cfg.Subject, Description: "pgtrail",
		AckPolicy: jetstream.AckAllPolicy, AckWait: time.Duration(s.cfg.AckWait),
		MaxAckPending: -1, MaxDeliver: -1, DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	c, err := stream.Consumer(ctx, s.cfg.Durable)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		if c, err = stream.CreateConsumer(ctx, want); err != nil {
			return nil, fmt.Errorf("create consumer %q on stream %q: %w", s.cfg.Durable, s.cfg.Stream, err)
		}
		s.log.Info("created durable consumer", "stream", s.cfg.Stream, "durable", s.cfg.Durable, "subject", s.cfg.Subject)
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up consumer %q on stream %q: %w", s.cfg.Durable, s.cfg.Stream, err)
	}
	info := c.CachedInfo()
	have := info.Config
	same := have.AckPolicy == want.AckPolicy && have.FilterSubject == want.FilterSubject &&
		have.MaxAckPending == want.MaxAckPending && have.AckWait == want.AckWait && len(have.FilterSubjects) == 0
	if same && info.Delivered.Stream <= info.AckFloor.Stream {
		return c, nil
	}
	if same {
		if _, err := stream.ResetConsumer(ctx, s.cfg.Durable); err == nil {
			s.log.Info("consumer reset to its first unacknowledged message", "durable", s.cfg.Durable, "ack_floor", info.AckFloor.Stream)
			return stream.Consumer(ctx, s.cfg.Durable)
		} else {
			s.log.Debug("consumer reset not available; recreating the consumer", "err", err)
		}
	}
	// Older servers cannot reset a consumer, and a consumer made by someone
	// else may ack differently: recreate it from the first unacked message.
	if have.AckPolicy != jetstream.AckAllPolicy && have.AckPolicy != jetstream.AckExplicitPolicy {
		return nil, fmt.Errorf("consumer %q on stream %q does not acknowledge messages (ack policy %s): use another source.jetstream.durable", s.cfg.Durable, s.cfg.Stream, have.AckPolicy)
	}
	want.DeliverPolicy, want.OptStartSeq = jetstream.DeliverByStartSequencePolicy, info.AckFloor.Stream+1
	if err := stream.DeleteConsumer(ctx, s.cfg.Durable); err != nil {
		return nil, fmt.Errorf("recreate consumer %q: %w", s.cfg.Durable, err)
	}
	if c, err = stream.CreateConsumer(ctx, want); err != nil {
		return nil, fmt.Errorf("recreate consumer %q from stream sequence %d: %w", s.cfg.Durable, want.OptStartSeq, err)
	}
	s.log.Info("consumer recreated at its first unacknowledged message", "durable", s.cfg.Durable, "from", want.OptStartSeq)
	return c, nil
}

// Run reads messages until ctx ends and emits their events in order, with a
// Commit after each message carrying the position it makes confirmable.
func (s *Source) Run(ctx context.Context, out chan<- []pipeline.Event) error {
	s.log.Info("capturing", "stream", s.cfg.Stream, "subject", s.cfg.Subject, "durable", s.cfg.Durable)
	r := reader{s: s, ctx: ctx, out: out, dec: debezium.NewDecoder(s.dcfg), dseq: s.delivered}
	for ctx.Err() == nil {
		if err := s.fetch(&r); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("fetch from consumer %q: %w", s.cfg.Durable, err)
		}
	}
	return ctx.Err()
}

// fetch pulls one batch, waiting at most a second for it. (A fetch context
// is not used: cancelling it could drop messages the server counts as
// delivered.)
func (s *Source) fetch(r *reader) error {
	n, err := s.pull(r, fetchBatch, jetstream.FetchMaxBytes(s.cfg.FetchMaxBytes), jetstream.FetchMaxWait(time.Second))
	if err != nil || n > 0 {
		return err
	}
	// Nothing came: the stream is idle, or its next message alone is larger
	// than fetch_max_bytes, which the server answers at once with no message.
	info, err := s.cons.Info(r.ctx)
	if err != nil {
		return fmt.Errorf("consumer info: %w", err)
	}
	if info.Delivered.Consumer != r.dseq {
		// No pull of this session is open now: what the server counts
		// delivered beyond what came was lost in transit.
		return r.lost(info.Delivered.Consumer)
	}
	if info.NumPending > 0 {
		_, err := s.pull(r, 1, jetstream.FetchMaxWait(time.Second))
		return err
	}
	// Idle: a held delete is not the first half of a key change.
	if err := r.emitAll(r.dec.Flush(), 0); err != nil {
		return err
	}
	return r.send()
}

// pull fetches up to batch messages and handles them; it returns how many came.
func (s *Source) pull(r *reader, batch int, opts ...jetstream.FetchOpt) (int, error) {
	b, err := s.cons.Fetch(batch, opts...)
	if err != nil {
		return 0, err
	}
	n := 0
	for msg := range b.Messages() {
		n++
		if err := r.handle(msg); err != nil {
			return n, err
		}
	}
	if err := b.Error(); err != nil && r.ctx.Err() == nil &&
		!errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
		return n, err
	}
	return n, nil
}

// reader is Run's state: the stream as read in this session.
type reader struct {
	s    *Source
	ctx  context.Context
	out  chan<- []pipeline.Event
	evs  []pipeline.Event // the current message's, sent together
	dec  *debezium.Decoder
	last uint64        // highest stream sequence handled
	dseq uint64        // delivery (consumer) sequence of the last message received
	prev jetstream.Msg // the message handled before the current one
	open bool          // a transaction has been seen; it ends when another starts
	xid  uint64
	safe uint64 // position to confirm: every message up to it is complete
}

func (r *reader) handle(msg jetstream.Msg) error {
	md, err := msg.Metadata()
	if err != nil {
		return fmt.Errorf("message metadata: %w", err)
	}
	seq := md.Sequence.Stream
	if md.Sequence.Consumer != r.dseq+1 {
		return r.lost(md.Sequence.Consumer)
	}
	r.dseq = md.Sequence.Consumer
	if seq <= r.last {
		return nil // redelivered while this session holds it
	}
	evs, err := r.dec.Decode(nil, msg.Data())
	var bad *debezium.Malformed
	switch {
	case errors.As(err, &bad):
		if err := r.s.deadLetter(r.ctx, msg, seq, bad); err != nil {
			return err
		}
	case err != nil:
		return err
	}
	if err := r.emitAll(evs, seq); err != nil {
		return err
	}
	if !r.open {
		r.mark(seq, msg) // no transaction yet: nothing to read again
	}
	r.last, r.prev = seq, msg
	if err := r.emit(pipeline.Event{Kind: pipeline.Commit, XID: r.xid, Position: r.safe}); err != nil {
		return err
	}
	return r.send()
}

// lost is the error of a delivery sequence that does not follow on from
// what this session received: the server counts deliveries that never
// arrived (lost with a broken connection, or a server restarted on older
// state), and an AckAll past them would confirm them unread.
func (r *reader) lost(dseq uint64) error {
	return fmt.Errorf("consumer %q is at delivery %d, this session received up to %d: deliveries were lost in transit; reading again from the last acknowledged message",
		r.s.cfg.Durable, dseq, r.dseq)
}

// emitAll emits decoded events; the first event of a new transaction makes
// everything before its message confirmable and opens it with Begin.
func (r *reader) emitAll(evs []debezium.Event, seq uint64) error {
	for _, e := range evs {
		if !r.open || e.XID != r.xid {
			if seq != 0 && r.prev != nil {
				r.mark(seq-1, r.prev)
			}
			r.open, r.xid = true, e.XID
			if err := r.emit(pipeline.Event{Kind: pipeline.Begin, XID: e.XID}); err != nil {
				return err
			}
		}
		ev := pipeline.Event{Kind: pipeline.Row, XID: e.XID, Change: e.Change}
		if e.Kind == debezium.Message {
			ev = pipeline.Event{Kind: pipeline.Message, XID: e.XID, Prefix: e.Prefix, Content: e.Content}
		}
		if err := r.emit(ev); err != nil {
			return err
		}
	}
	return nil
}

// mark records msg as the position to confirm next; seq stands for it (with
// AckAll, acknowledging the last message before seq+1 acknowledges seq).
func (r *reader) mark(seq uint64, msg jetstream.Msg) {
	if md, err := msg.Metadata(); err == nil {
		seq = md.Sequence.Stream
	}
	if seq <= r.safe {
		return
	}
	r.safe = seq
	r.s.mu.Lock()
	r.s.marks = append(r.s.marks, mark{seq, msg})
	r.s.mu.Unlock()
}

func (r *reader) emit(ev pipeline.Event) error {
	r.evs = append(r.evs, ev)
	return nil
}

// send hands the events emitted since the last send to the pipeline.
func (r *reader) send() error {
	if len(r.evs) == 0 {
		return nil
	}
	select {
	case r.out <- r.evs:
		r.evs = nil
		return nil
	case <-r.ctx.Done():
		return r.ctx.Err()
	}
}

// deadLetter publishes a malformed message, with the reason, to the
// dead-letter subject, and waits until the server stored it: only then may
// the message be acknowledged. A dead-letter stream that went away is made
// again.
func (s *Source) deadLetter(ctx context.Context, msg jetstream.Msg, seq uint64, bad *debezium.Malformed) error {
	s.metrics.DeadLetters.WithLabelValues(bad.Reason).Inc()
	s.log.Warn("malformed message sent to the dead-letter subject", "subject", msg.Subject(), "seq", seq,
		"dlq", s.cfg.DLQSubject, "reason", bad.Reason, "err", bad.Err)
	dl := nats.NewMsg(s.cfg.DLQSubject)
	dl.Data = msg.Data()
	for k, v := range msg.Headers() {
		dl.Header[k] = v
	}
	dl.Header.Set(HeaderReason, bad.Reason)
	dl.Header.Set(HeaderError, deadletter.Detail(bad.Err))
	dl.Header.Set(HeaderSubject, msg.Subject())
	dl.Header.Set(HeaderSeq, fmt.Sprint(seq))
	what := fmt.Sprintf("the dead letter of stream sequence %d on %q", seq, s.cfg.DLQSubject)
	return deadletter.Store(ctx, s.metrics, s.log, what, func(ctx context.Context) error {
		_, err := s.js.PublishMsg(ctx, dl, jetstream.WithMsgID(fmt.Sprintf("pgtrail-dlq-%s-%d", s.cfg.Stream, seq)))
		if errors.Is(err, jetstream.ErrNoStreamResponse) {
			if eerr := s.ensureDLQ(ctx); eerr != nil {
				err = fmt.Errorf("%w; %w", err, eerr)
			}
		}
		return err
	})
}

// Confirm acknowledges every message up to pos: all sinks made their changes
// durable.
func (s *Source) Confirm(pos any) {
	seq := pos.(uint64)
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq <= s.acked {
		return
	}
	var last *mark
	for len(s.marks) > 0 && s.marks[0].seq <= seq {
		last = &s.marks[0]
		s.marks = s.marks[1:]
	}
	if last == nil {
		return
	}
	if err := last.msg.Ack(); err != nil {
		s.log.Warn("acknowledge failed; the messages will be read again", "seq", last.seq, "err", err)
		return
	}
	s.acked = last.seq
	s.metrics.ConfirmedLSN.Set(float64(last.seq))
}

// Close sends the acknowledgements still buffered and disconnects.
func (s *Source) Close(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err := s.nc.FlushWithContext(ctx)
	s.nc.Close()
	if err != nil {
		return fmt.Errorf("flush acknowledgements to NATS: %w", err)
	}
	return nil
}
