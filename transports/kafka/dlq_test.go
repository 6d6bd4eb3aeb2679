package kafka

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/metrics"
	"github.com/pgtrail/pgtrail/test/sourcetest"
	"github.com/pgtrail/pgtrail/test/testbed"
)

// noAutoCreate starts kfake with topic bemi of three partitions, no
// dead-letter topic, and topic auto-creation off (kfake's default).
func noAutoCreate(t *testing.T) (*kfake.Cluster, string) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "bemi"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, c.ListenAddrs()[0]
}

// produce writes values into partition 0 of bemi, in order.
func produce(t *testing.T, addr string, values ...string) {
	t.Helper()
	w := &kafkago.Writer{Addr: kafkago.TCP(addr), Topic: "bemi", RequiredAcks: kafkago.RequireAll,
		Balancer: kafkago.BalancerFunc(func(kafkago.Message, ...int) int { return 0 })}
	defer w.Close()
	for _, v := range values {
		if err := w.WriteMessages(context.Background(), kafkago.Message{Value: []byte(v)}); err != nil {
			t.Fatal(err)
		}
	}
}

func insert(id int) string {
	return fmt.Sprintf(`{"op": "c", "ts_ms": 1, "before": null, "after": {"id": %d},
		"source": {"connector": "postgresql", "db": "app", "schema": "public", "table": "accounts", "txId": %d, "lsn": %d, "ts_ms": 1}}`,
		id, 100+id, 1000*id)
}

func kafkaConfig(addr string) config.Kafka {
	return config.Kafka{Brokers: []string{addr}, Topics: []string{"bemi"}, Group: "pgtrail", DLQSuffix: ".dlq", FetchMaxBytes: 8 << 20}
}

// deadLetters reads every record of bemi.dlq.
func deadLetters(t *testing.T, addr string, n int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.ConsumeTopics("bemi.dlq"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var recs []*kgo.Record
	for len(recs) < n {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("%d dead letters, want %d", len(recs), n)
		}
		recs = append(recs, fs.Records()...)
	}
	return recs
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// admin is a client of the brokers with its own transport: kafka-go's
// default one caches metadata from before the dead-letter topic was made.
func admin(addr string) *kafkago.Client {
	return &kafkago.Client{Addr: kafkago.TCP(addr), Transport: &kafkago.Transport{}}
}

func open(t *testing.T, cfg config.Kafka, log *slog.Logger, m *metrics.Metrics) *Source {
	t.Helper()
	s, err := Open(context.Background(), cfg, config.Debezium{KeyColumns: []string{"id"}}, log, m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// On brokers that do not create topics on their own, the dead-letter topic
// is created at start, with the topic's partitions: a malformed message goes
// there and the valid ones around it are read, rather than the partition
// retrying the dead letter for ever.
func TestAMissingDeadLetterTopicIsCreatedAtStart(t *testing.T) {
	_, addr := noAutoCreate(t)
	produce(t, addr, insert(1), "not json at all", insert(2))
	r := sourcetest.Run(t, open(t, kafkaConfig(addr), slog.New(slog.DiscardHandler), metrics.New()), 16)
	if ids := r.Rows(t, 2); ids != "1,2" {
		t.Fatalf("rows %s, want 1,2", ids)
	}
	md, err := admin(addr).Metadata(context.Background(), &kafkago.MetadataRequest{Topics: []string{"bemi.dlq"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(md.Topics) != 1 || md.Topics[0].Error != nil || len(md.Topics[0].Partitions) != 3 {
		t.Fatalf("dead-letter topic %+v, want 3 partitions", md.Topics)
	}
	dl := deadLetters(t, addr, 1)[0]
	if string(dl.Value) != "not json at all" || header(dl, HeaderReason) != "not_json" || header(dl, HeaderOffset) != "1" {
		t.Fatalf("dead letter %q, headers %v", dl.Value, dl.Headers)
	}
}

// refuse makes kfake answer requests of kind key for topic with code while
// *on holds.
func refuse(c *kfake.Cluster, key kmsg.Key, topic string, code int16, on *atomic.Bool) {
	c.ControlKey(int16(key), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if !on.Load() {
			return nil, nil, false
		}
		switch req := req.(type) {
		case *kmsg.CreateTopicsRequest:
			resp := req.ResponseKind().(*kmsg.CreateTopicsResponse)
			for _, rt := range req.Topics {
				if rt.Topic != topic {
					return nil, nil, false
				}
				st := kmsg.NewCreateTopicsResponseTopic()
				st.Topic, st.ErrorCode = rt.Topic, code
				resp.Topics = append(resp.Topics, st)
			}
			return resp, nil, true
		case *kmsg.ProduceRequest:
			resp := req.ResponseKind().(*kmsg.ProduceResponse)
			for _, rt := range req.Topics {
				if rt.Topic != topic {
					return nil, nil, false
				}
				st := kmsg.NewProduceResponseTopic()
				st.Topic = rt.Topic
				for _, rp := range rt.Partitions {
					sp := kmsg.NewProduceResponseTopicPartition()
					sp.Partition, sp.ErrorCode = rp.Partition, code
					st.Partitions = append(st.Partitions, sp)
				}
				resp.Topics = append(resp.Topics, st)
			}
			return resp, nil, true
		}
		return nil, nil, false
	})
}

// A dead-letter topic that pgtrail may not create is a start-up error that
// says what to do.
func TestADeadLetterTopicThatCannotBeCreatedFailsAtStart(t *testing.T) {
	c, addr := noAutoCreate(t)
	var on atomic.Bool
	on.Store(true)
	refuse(c, kmsg.CreateTopics, "bemi.dlq", kerr.TopicAuthorizationFailed.Code, &on)
	_, err := Open(context.Background(), kafkaConfig(addr), config.Debezium{}, slog.New(slog.DiscardHandler), metrics.New())
	if err == nil || !strings.HasPrefix(err.Error(), `create dead-letter topic "bemi.dlq" for the malformed messages of "bemi" (source.kafka.dlq_suffix): [29] Topic Authorization Failed`) ||
		!strings.HasSuffix(err.Error(), "(create it, e.g. kafka-topics.sh --create --topic bemi.dlq --partitions 3 --replication-factor 1, or allow pgtrail to create topics)") {
		t.Fatalf("Open: %v", err)
	}
}

// A dead letter the brokers keep refusing holds its partition back and shows
// on /healthz; once stored, health is back and the partition reads on. A
// dead-letter topic deleted meanwhile is made again.
func TestAFailingDeadLetterIsUnhealthyUntilStored(t *testing.T) {
	c, addr := noAutoCreate(t)
	m := metrics.New()
	var logs testbed.Output
	r := sourcetest.Run(t, open(t, kafkaConfig(addr), slog.New(slog.NewTextHandler(&logs, nil)), m), 16)
	var on atomic.Bool
	on.Store(true)
	refuse(c, kmsg.Produce, "bemi.dlq", kerr.NotEnoughReplicas.Code, &on)
	produce(t, addr, insert(1), "not json at all", insert(2))
	if ids := r.Rows(t, 1); ids != "1" {
		t.Fatalf("rows %s, want 1", ids)
	}
	sourcetest.WaitFor(t, "/healthz to show the failing dead letter", func() bool { return m.Health() != nil })
	if err := m.Health(); err.Error() != "dead letters: failing, error (see the log)" {
		t.Fatalf("health: %v", err)
	}
	if l := logs.String(); !strings.Contains(l, `msg="storing a dead letter failed; its source waits for it; retrying" dead_letter="the dead letter of bemi[0] offset 1 in \"bemi.dlq\"" attempt=1`) ||
		!strings.Contains(l, "Not Enough Replicas") {
		t.Fatalf("the failure is not logged with its dead letter and error:\n%s", l)
	}
	r.NoRows(t, 500*time.Millisecond) // nothing past a dead letter that is not stored
	on.Store(false)
	if ids := r.Rows(t, 1); ids != "2" {
		t.Fatalf("rows %s, want 2", ids)
	}
	if err := m.Health(); err != nil {
		t.Fatalf("unhealthy once the dead letter is stored: %v", err)
	}

	// The dead-letter topic goes away; the next dead letter makes it again.
	if _, err := admin(addr).DeleteTopics(context.Background(), &kafkago.DeleteTopicsRequest{Topics: []string{"bemi.dlq"}}); err != nil {
		t.Fatal(err)
	}
	produce(t, addr, "{still not json", insert(3))
	if ids := r.Rows(t, 1); ids != "3" {
		t.Fatalf("rows %s, want 3", ids)
	}
	if dl := deadLetters(t, addr, 1)[0]; string(dl.Value) != "{still not json" {
		t.Fatalf("dead letter %q in the topic made again", dl.Value)
	}
}

// A partition whose reader cannot be set to the group's offset is retried,
// and unhealthy meanwhile, rather than left unread until the next rebalance.
func TestAPartitionWhoseOffsetCannotBeSetIsRetried(t *testing.T) {
	_, addr := noAutoCreate(t)
	produce(t, addr, insert(1))
	m := metrics.New()
	var logs testbed.Output
	s := open(t, kafkaConfig(addr), slog.New(slog.NewTextHandler(&logs, nil)), m)
	var calls atomic.Int32
	checked := make(chan struct{})
	var once sync.Once
	check := func() { once.Do(func() { close(checked) }) }
	s.newReader = func(cfg kafkago.ReaderConfig) *kafkago.Reader {
		r := kafkago.NewReader(cfg)
		if cfg.Partition == 0 {
			switch calls.Add(1) {
			case 1:
				r.Close() // SetOffset fails on a closed reader
			case 2:
				<-checked
			}
		}
		return r
	}
	r := sourcetest.Run(t, s, 16)
	t.Cleanup(check) // runs before Run's: a failed wait must not leave the reader blocked
	sourcetest.WaitFor(t, "/healthz to show the partition", func() bool { return m.Health() != nil })
	if err := m.Health(); err.Error() != "partition bemi[0]: failing, error (see the log)" {
		t.Fatalf("health: %v", err)
	}
	check()
	if ids := r.Rows(t, 1); ids != "1" {
		t.Fatalf("rows %s, want 1", ids)
	}
	if err := m.Health(); err != nil {
		t.Fatalf("unhealthy once the partition is read: %v", err)
	}
	if !strings.Contains(logs.String(), `msg="start reading the partition failed; retrying" topic=bemi partition=0 err="set offset -2: io: read/write on closed pipe"`) {
		t.Fatalf("the failure is not logged:\n%s", logs.String())
	}
}

// A record larger than fetch_max_bytes still comes (the broker returns the
// first record batch whole), rather than stall its partition.
func TestARecordLargerThanFetchMaxBytesIsRead(t *testing.T) {
	_, addr := noAutoCreate(t)
	big := strings.Replace(insert(2), `"id": 2}`, `"id": 2, "pad": "`+strings.Repeat("x", 64<<10)+`"}`, 1)
	produce(t, addr, insert(1), big, insert(3))
	cfg := kafkaConfig(addr)
	cfg.FetchMaxBytes = 1024
	r := sourcetest.Run(t, open(t, cfg, slog.New(slog.DiscardHandler), metrics.New()), 16)
	if ids := r.Rows(t, 3); ids != "1,2,3" {
		t.Fatalf("rows %s, want 1,2,3", ids)
	}
}
