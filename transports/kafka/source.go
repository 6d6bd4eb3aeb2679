// Package kafka reads Debezium change events from Kafka topics as a member of
// a consumer group (segmentio/kafka-go), and emits pipeline events.
//
// Each assigned partition is one ordered stream with its own decoder.
// Offsets are committed only for what every sink made durable, per partition,
// and only at transaction starts: a restart, or a rebalance that hands the
// partition to another member, reads each unfinished transaction again from
// its start, and the sinks drop what they already hold.
package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/metrics"
	"github.com/pgtrail/pgtrail/core/pipeline"
	"github.com/pgtrail/pgtrail/core/retry"
	"github.com/pgtrail/pgtrail/core/stitch"
	"github.com/pgtrail/pgtrail/transports/deadletter"
	"github.com/pgtrail/pgtrail/transports/debezium"
)

// Header names of a dead letter.
const (
	HeaderReason    = "pgtrail-dead-letter-reason"
	HeaderError     = "pgtrail-dead-letter-error"
	HeaderTopic     = "pgtrail-original-topic"
	HeaderPartition = "pgtrail-original-partition"
	HeaderOffset    = "pgtrail-original-offset"
)

// idle is how long a partition waits for its next message before a held
// delete is taken as a plain delete.
const idle = 200 * time.Millisecond

type topicPartition struct {
	topic     string
	partition int
}

// Source reads the topics of one consumer group.
type Source struct {
	cfg     config.Kafka
	dcfg    debezium.Config
	log     *slog.Logger
	metrics *metrics.Metrics
	clients clients
	group   *kafkago.ConsumerGroup
	dlq     *kafkago.Writer
	admin   *kafkago.Client
	split   map[string]bool // topics with more than one partition
	// newReader makes a partition's reader (kafkago.NewReader; a test makes
	// one that fails).
	newReader func(kafkago.ReaderConfig) *kafkago.Reader
	topics    map[string]kafkago.TopicConfig // the dead-letter topic to make for each topic

	emitMu sync.Mutex // one partition emits at a time
	last   *stream    // the stream whose context the pipeline's stitcher holds

	mu        sync.Mutex
	next      uint64  // positions handed out
	entries   []entry // positions not yet confirmed
	confirmed map[topicPartition]int64
	committed map[topicPartition]int64
	gen       *kafkago.Generation
	assigned  map[topicPartition]bool
}

// entry is what confirming position n allows: committing offset for tp.
type entry struct {
	n      uint64
	tp     topicPartition
	offset int64
}

// Open checks that the brokers answer and the topics exist, and joins nothing
// yet: Run joins the group.
func Open(ctx context.Context, cfg config.Kafka, dcfg config.Debezium, log *slog.Logger, m *metrics.Metrics) (*Source, error) {
	if cfg.FetchMaxBytes <= 0 {
		cfg.FetchMaxBytes = config.DefaultFetchMaxBytes
	}
	s := &Source{cfg: cfg, dcfg: debezium.ConfigFrom(dcfg), log: log, metrics: m, split: map[string]bool{},
		confirmed: map[topicPartition]int64{}, committed: map[topicPartition]int64{}}
	var err error
	if s.clients, err = newClients(cfg); err != nil {
		return nil, err
	}
	conn, err := dial(ctx, s.clients.dialer, cfg.Brokers)
	if err != nil {
		return nil, err
	}
	parts, err := conn.ReadPartitions(cfg.Topics...)
	conn.Close()
	if err != nil {
		return nil, fmt.Errorf("read partitions of %v: %w (do the topics in source.kafka.topics exist?)", cfg.Topics, err)
	}
	count, replicas := map[string]int{}, map[string]int{}
	for _, p := range parts {
		count[p.Topic]++
		replicas[p.Topic] = max(replicas[p.Topic], len(p.Replicas))
	}
	for _, t := range cfg.Topics {
		switch n := count[t]; {
		case n == 0:
			return nil, fmt.Errorf("topic %q does not exist (source.kafka.topics)", t)
		case n > 1:
			s.split[t] = true
			log.Warn("topic has several partitions: context is stitched within a partition only, and changes that share a WAL position get partition-specific ids (route all events into one partition for ids equal to native capture's)",
				"topic", t, "partitions", n)
		}
	}
	s.admin = &kafkago.Client{Addr: kafkago.TCP(cfg.Brokers...), Transport: s.clients.transport, Timeout: 10 * time.Second}
	s.topics = map[string]kafkago.TopicConfig{}
	for _, t := range cfg.Topics {
		s.topics[t] = kafkago.TopicConfig{Topic: t + cfg.DLQSuffix, NumPartitions: count[t], ReplicationFactor: max(replicas[t], 1)}
	}
	for _, t := range cfg.Topics {
		if err := s.ensureDLQ(ctx, t); err != nil {
			return nil, err
		}
	}
	s.group, err = kafkago.NewConsumerGroup(kafkago.ConsumerGroupConfig{
		ID: cfg.Group, Brokers: cfg.Brokers, Topics: cfg.Topics, StartOffset: kafkago.FirstOffset,
		WatchPartitionChanges: true, Dialer: s.clients.dialer,
		// A member that died (kill -9) holds its partitions until its session
		// times out: keep that short, its successor is waiting.
		SessionTimeout: 10 * time.Second, RebalanceTimeout: 10 * time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("consumer group %q: %w", cfg.Group, err)
	}
	// One attempt per write: deadLetter retries, with backoff and health.
	s.dlq = &kafkago.Writer{Addr: kafkago.TCP(cfg.Brokers...), Transport: s.clients.transport, RequiredAcks: kafkago.RequireAll,
		BatchTimeout: 5 * time.Millisecond, MaxAttempts: 1}
	s.newReader = kafkago.NewReader
	return s, nil
}

// ensureDLQ makes sure topic's dead-letter topic exists: pgtrail creates it
// with the topic's partitions and replication factor, not counting on the
// brokers' auto-creation (often off, and with the brokers' defaults).
func (s *Source) ensureDLQ(ctx context.Context, topic string) error {
	want := s.topics[topic]
	md, err := s.admin.Metadata(ctx, &kafkago.MetadataRequest{Topics: []string{want.Topic}})
	if err != nil {
		return fmt.Errorf("look up dead-letter topic %q: %w", want.Topic, err)
	}
	for _, t := range md.Topics {
		if t.Name == want.Topic && t.Error == nil {
			return nil
		}
	}
	resp, err := s.admin.CreateTopics(ctx, &kafkago.CreateTopicsRequest{Topics: []kafkago.TopicConfig{want}})
	if err == nil {
		err = resp.Errors[want.Topic]
	}
	if errors.Is(err, kafkago.TopicAlreadyExists) {
		return nil // made meanwhile, by another member
	}
	if err != nil {
		return fmt.Errorf("create dead-letter topic %q for the malformed messages of %q (source.kafka.dlq_suffix): %w (create it, e.g. kafka-topics.sh --create --topic %s --partitions %d --replication-factor %d, or allow pgtrail to create topics)",
			want.Topic, topic, err, want.Topic, want.NumPartitions, want.ReplicationFactor)
	}
	s.log.Info("created dead-letter topic", "topic", want.Topic, "partitions", want.NumPartitions, "replication_factor", want.ReplicationFactor)
	return nil
}

func dial(ctx context.Context, d *kafkago.Dialer, brokers []string) (*kafkago.Conn, error) {
	var errs []error
	for _, b := range brokers {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		conn, err := d.DialContext(dctx, "tcp", b)
		cancel()
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
	}
	err := errors.Join(errs...)
	return nil, fmt.Errorf("connect to Kafka %v: %w (%s)", brokers, err, hint(err))
}

// Run takes part in the group until ctx ends, reading every partition it is
// assigned.
func (s *Source) Run(ctx context.Context, out chan<- []pipeline.Event) error {
	s.log.Info("capturing", "topics", s.cfg.Topics, "group", s.cfg.Group)
	for {
		gen, err := s.group.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !rejoinable(err) {
				return fmt.Errorf("join consumer group %q: %w", s.cfg.Group, err)
			}
			// The group keeps joining on its own, with its own backoff.
			s.log.Warn("joining the consumer group failed; joining again", "group", s.cfg.Group, "err", err)
			continue
		}
		assigned := map[topicPartition]bool{}
		s.mu.Lock()
		for topic, parts := range gen.Assignments {
			for _, p := range parts {
				tp := topicPartition{topic, p.ID}
				assigned[tp] = true
				// Another member may have moved the group's offset on since
				// this one last held the partition: never commit below it.
				s.committed[tp] = p.Offset
			}
		}
		s.gen, s.assigned = gen, assigned
		s.mu.Unlock()
		for topic, parts := range gen.Assignments {
			for _, p := range parts {
				gen.Start(func(gctx context.Context) { s.read(ctx, gctx, out, topic, p) })
			}
		}
		s.log.Info("partitions assigned", "group", s.cfg.Group, "generation", gen.ID, "partitions", len(assigned))
		gen.Start(func(gctx context.Context) {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-gctx.Done():
					return
				case <-t.C:
					s.commit(gen)
				}
			}
		})
	}
}

// rejoinable reports whether a failed join is one the group protocol expects
// while members come and go or the coordinator moves. A member that dies
// between JoinGroup and SyncGroup, for one, leaves the others' SyncGroup
// failing with RebalanceInProgress once its session expires.
func rejoinable(err error) bool {
	if errors.Is(err, kafkago.ErrGroupClosed) {
		return false
	}
	var kerr kafkago.Error
	if !errors.As(err, &kerr) {
		return true // the connection to the coordinator failed
	}
	switch kerr {
	case kafkago.RebalanceInProgress, kafkago.IllegalGeneration, kafkago.UnknownMemberId:
		return true
	}
	return kerr.Temporary()
}

// stream is one partition as read in one generation.
type stream struct {
	tp   topicPartition
	dec  *debezium.Decoder
	safe int64 // offset to commit: every message before it is complete
	open bool
	xid  uint64
	// The context the stitcher holds for the open transaction, to give it
	// back after another partition's events came in between.
	sticky, pending *pipeline.Event
}

func (s *Source) read(ctx, gctx context.Context, out chan<- []pipeline.Event, topic string, p kafkago.PartitionAssignment) {
	rctx, cancel := context.WithCancel(gctx)
	defer cancel()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	h := &stall{s: s, topic: topic, partition: p.ID}
	defer h.clear() // another member may read it now
	b := retry.Default()
	r, err := s.partitionReader(topic, p)
	for err != nil {
		// Not reading it would leave the partition unread until the next
		// rebalance, which may be never.
		h.failed("start reading the partition", err)
		if b.Wait(rctx) != nil {
			return
		}
		r, err = s.partitionReader(topic, p)
	}
	defer r.Close()
	h.clear()
	dcfg := s.dcfg
	if s.split[topic] {
		dcfg.OccurrenceBase = uint32(p.ID) << 20
	}
	st := &stream{tp: topicPartition{topic, p.ID}, dec: debezium.NewDecoder(dcfg), safe: -1}
	b.Reset()
	for rctx.Err() == nil {
		fctx, fcancel := context.WithTimeout(rctx, idle)
		m, err := r.FetchMessage(fctx)
		fcancel()
		if err != nil {
			if rctx.Err() != nil {
				return
			}
			if errors.Is(err, context.DeadlineExceeded) {
				if s.emit(rctx, out, st, st.dec.Flush(), -1) != nil {
					return
				}
				continue
			}
			h.failed("fetch from the partition", err)
			if b.Wait(rctx) != nil {
				return
			}
			continue
		}
		if st.safe < 0 {
			st.safe = m.Offset
		}
		evs, err := st.dec.Decode(m.Key, m.Value)
		var bad *debezium.Malformed
		for err != nil && !errors.As(err, &bad) {
			// Not the message's fault (the type catalog is unreachable):
			// the partition waits for it rather than skip the message.
			h.failed("decode", err, "offset", m.Offset)
			if b.Wait(rctx) != nil {
				return
			}
			evs, err = st.dec.Decode(m.Key, m.Value)
		}
		h.clear()
		b.Reset()
		if bad != nil {
			if s.deadLetter(rctx, m, bad) != nil {
				return
			}
		}
		if s.emit(rctx, out, st, evs, m.Offset) != nil {
			return
		}
	}
}

// stall is a partition that cannot go on: logged at each attempt, and on
// /healthz (as "partition T[p]") until it goes on.
type stall struct {
	s         *Source
	topic     string
	partition int
	on        bool
}

func (h *stall) name() string { return fmt.Sprintf("partition %s[%d]", h.topic, h.partition) }

func (h *stall) failed(what string, err error, attrs ...any) {
	h.on = true
	h.s.metrics.SetHealth(h.name(), fmt.Errorf("%s: %w", what, err))
	h.s.log.Error(what+" failed; retrying", append([]any{"topic", h.topic, "partition", h.partition, "err", err}, attrs...)...)
}

func (h *stall) clear() {
	if h.on {
		h.s.metrics.SetHealth(h.name(), nil)
		h.on = false
	}
}

// partitionReader reads partition p of topic from the group's offset.
func (s *Source) partitionReader(topic string, p kafkago.PartitionAssignment) (*kafkago.Reader, error) {
	r := s.newReader(kafkago.ReaderConfig{Brokers: s.cfg.Brokers, Topic: topic, Partition: p.ID, Dialer: s.clients.dialer,
		MinBytes: 1, MaxBytes: s.cfg.FetchMaxBytes, MaxWait: 250 * time.Millisecond,
		// What kafka-go only logs, such as skipping past messages that
		// retention removed before they were read, pgtrail's log shows.
		ErrorLogger: kafkago.LoggerFunc(func(msg string, args ...any) {
			s.log.Warn("kafka reader: "+fmt.Sprintf(msg, args...), "topic", topic, "partition", p.ID)
		})})
	start := p.Offset
	if start < 0 {
		start = kafkago.FirstOffset
	}
	if err := r.SetOffset(start); err != nil {
		r.Close()
		return nil, fmt.Errorf("set offset %d: %w", start, err)
	}
	return r, nil
}

// emit hands one message's events to the pipeline, then the position that
// makes its partition confirmable up to the start of the open transaction.
// offset is the message's, -1 for events flushed while idle.
func (s *Source) emit(ctx context.Context, out chan<- []pipeline.Event, st *stream, evs []debezium.Event, offset int64) error {
	s.emitMu.Lock()
	defer s.emitMu.Unlock()
	chunk := s.events(st, evs, offset)
	if len(chunk) == 0 {
		return nil
	}
	select {
	case out <- chunk:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// events turns one message's decoded events into the pipeline's, with the
// position that follows them.
func (s *Source) events(st *stream, evs []debezium.Event, offset int64) []pipeline.Event {
	var chunk []pipeline.Event
	send := func(ev pipeline.Event) { chunk = append(chunk, ev) }
	if s.last != st && st.open && len(evs) > 0 {
		// Another partition's events reset the stitcher: give this
		// transaction's context back before its next events.
		for _, ev := range []*pipeline.Event{{Kind: pipeline.Begin, XID: st.xid}, st.sticky, st.pending} {
			if ev != nil {
				send(*ev)
			}
		}
	}
	if len(evs) > 0 {
		s.last = st
	}
	for _, e := range evs {
		if !st.open || e.XID != st.xid {
			if offset >= 0 {
				st.safe = offset
			}
			st.open, st.xid, st.sticky, st.pending = true, e.XID, nil, nil
			send(pipeline.Event{Kind: pipeline.Begin, XID: e.XID})
		}
		ev := pipeline.Event{Kind: pipeline.Row, XID: e.XID, Change: e.Change}
		if e.Kind == debezium.Message {
			ev = pipeline.Event{Kind: pipeline.Message, XID: e.XID, Prefix: e.Prefix, Content: e.Content}
			switch e.Prefix {
			case stitch.PrefixBemi:
				st.pending = &ev
			case stitch.PrefixPgtrail:
				st.sticky = &ev
			}
		} else {
			st.pending = nil
		}
		send(ev)
	}
	if offset < 0 {
		return chunk
	}
	if !st.open {
		st.safe = offset + 1
	}
	s.mu.Lock()
	s.next++
	n := s.next
	s.entries = append(s.entries, entry{n, st.tp, st.safe})
	s.mu.Unlock()
	send(pipeline.Event{Kind: pipeline.Commit, XID: st.xid, Position: n})
	return chunk
}

// deadLetter writes a malformed message, with the reason in its headers, to
// the topic's dead-letter topic, and waits until the brokers have it. A
// dead-letter topic that went away is made again.
func (s *Source) deadLetter(ctx context.Context, m kafkago.Message, bad *debezium.Malformed) error {
	dlq := m.Topic + s.cfg.DLQSuffix
	s.metrics.DeadLetters.WithLabelValues(bad.Reason).Inc()
	s.log.Warn("malformed message sent to the dead-letter topic", "topic", m.Topic, "partition", m.Partition,
		"offset", m.Offset, "dlq", dlq, "reason", bad.Reason, "err", bad.Err)
	headers := append(append([]kafkago.Header(nil), m.Headers...),
		kafkago.Header{Key: HeaderReason, Value: []byte(bad.Reason)},
		kafkago.Header{Key: HeaderError, Value: []byte(deadletter.Detail(bad.Err))},
		kafkago.Header{Key: HeaderTopic, Value: []byte(m.Topic)},
		kafkago.Header{Key: HeaderPartition, Value: []byte(strconv.Itoa(m.Partition))},
		kafkago.Header{Key: HeaderOffset, Value: []byte(strconv.FormatInt(m.Offset, 10))})
	what := fmt.Sprintf("the dead letter of %s[%d] offset %d in %q", m.Topic, m.Partition, m.Offset, dlq)
	return deadletter.Store(ctx, s.metrics, s.log, what, func(ctx context.Context) error {
		err := s.dlq.WriteMessages(ctx, kafkago.Message{Topic: dlq, Key: m.Key, Value: m.Value, Headers: headers})
		if err != nil {
			if eerr := s.ensureDLQ(ctx, m.Topic); eerr != nil {
				err = fmt.Errorf("%w; %w", err, eerr)
			}
		}
		return err
	})
}

// Confirm records that everything up to position pos is durable in every
// sink; the offsets it allows are committed within a second, and at Close.
func (s *Source) Confirm(pos any) {
	n := pos.(uint64)
	s.mu.Lock()
	defer s.mu.Unlock()
	i := 0
	for ; i < len(s.entries) && s.entries[i].n <= n; i++ {
		e := s.entries[i]
		if e.offset > s.confirmed[e.tp] {
			s.confirmed[e.tp] = e.offset
		}
	}
	s.entries = s.entries[i:]
}

// commit commits the confirmed offsets of the partitions this member owns.
func (s *Source) commit(gen *kafkago.Generation) {
	s.mu.Lock()
	if gen != s.gen {
		s.mu.Unlock()
		return
	}
	offsets := map[string]map[int]int64{}
	for tp, off := range s.confirmed {
		if s.assigned[tp] && off > s.committed[tp] {
			if offsets[tp.topic] == nil {
				offsets[tp.topic] = map[int]int64{}
			}
			offsets[tp.topic][tp.partition] = off
		}
	}
	s.mu.Unlock()
	if len(offsets) == 0 {
		return
	}
	if err := gen.CommitOffsets(offsets); err != nil {
		s.log.Warn("commit offsets failed; they are committed later or read again", "group", s.cfg.Group, "err", err)
		return
	}
	s.mu.Lock()
	for t, parts := range offsets {
		for p, off := range parts {
			s.committed[topicPartition{t, p}] = off
		}
	}
	s.mu.Unlock()
	s.log.Debug("committed", "offsets", offsets)
}

// Close commits what was confirmed and leaves the group.
func (s *Source) Close(ctx context.Context) error {
	s.mu.Lock()
	gen := s.gen
	s.mu.Unlock()
	if gen != nil {
		s.commit(gen)
	}
	err := s.group.Close()
	if derr := s.dlq.Close(); err == nil {
		err = derr
	}
	return err
}
