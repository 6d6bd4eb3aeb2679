package jetstream

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/metrics"
	"github.com/pgtrail/pgtrail/test/faultproxy"
	"github.com/pgtrail/pgtrail/test/natstest"
	"github.com/pgtrail/pgtrail/test/sourcetest"
	"github.com/pgtrail/pgtrail/test/testbed"
)

// bed is a nats-server with JetStream, in this process, and a client of it.
type bed struct {
	t   *testing.T
	url string
	js  jetstream.JetStream
}

func startBed(t *testing.T) *bed {
	t.Helper()
	url, js := natstest.Start(t)
	b := &bed{t: t, url: url, js: js}
	b.stream(jetstream.StreamConfig{Name: "DebeziumStream", Subjects: []string{"bemi"}, Storage: jetstream.FileStorage})
	return b
}

func (b *bed) stream(cfg jetstream.StreamConfig) {
	b.t.Helper()
	if _, err := b.js.CreateOrUpdateStream(context.Background(), cfg); err != nil {
		b.t.Fatal(err)
	}
}

func (b *bed) publish(data string) {
	b.t.Helper()
	if _, err := b.js.Publish(context.Background(), "bemi", []byte(data)); err != nil {
		b.t.Fatal(err)
	}
}

// consumer returns the server's view of the durable consumer pgtrail.
func (b *bed) consumer() *jetstream.ConsumerInfo {
	b.t.Helper()
	c, err := b.js.Consumer(context.Background(), "DebeziumStream", "pgtrail")
	if err != nil {
		b.t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		b.t.Fatal(err)
	}
	return info
}

func sourceConfig(url string) config.JetStream {
	return config.JetStream{URL: url, Stream: "DebeziumStream", Subject: "bemi", Durable: "pgtrail",
		DLQSubject: "bemi.dlq", AckWait: config.Duration(30 * time.Minute), FetchMaxBytes: 8 << 20}
}

// event is a Debezium insert into accounts of row id, in transaction txid,
// padded to at least size bytes.
func event(id, txid int, size int) string {
	ev := fmt.Sprintf(`{"op": "c", "ts_ms": 1, "before": null, "after": {"id": %d, "pad": "%%s"},
		"source": {"connector": "postgresql", "db": "app", "schema": "public", "table": "accounts", "txId": %d, "lsn": %d, "ts_ms": 1}}`,
		id, txid, 1000*id)
	return fmt.Sprintf(ev, strings.Repeat("x", max(0, size-len(ev))))
}

// run opens a Source and runs it into a channel of buffer chunks.
func run(t *testing.T, cfg config.JetStream, log *slog.Logger, m *metrics.Metrics, buffer int) *sourcetest.Running {
	t.Helper()
	s, err := Open(context.Background(), cfg, config.Debezium{KeyColumns: []string{"id"}}, log, m)
	if err != nil {
		t.Fatal(err)
	}
	return sourcetest.Run(t, s, buffer)
}

// One pull holds at most fetch_max_bytes: with 100 messages of 1 KiB
// waiting and a pipeline that takes nothing, the server has delivered a
// few, not a batch of 512.
func TestAFetchHoldsAtMostFetchMaxBytes(t *testing.T) {
	b := startBed(t)
	for i := 1; i <= 100; i++ {
		b.publish(event(i, 100+i, 1024))
	}
	cfg := sourceConfig(b.url)
	cfg.FetchMaxBytes = 4 << 10
	r := run(t, cfg, slog.New(slog.DiscardHandler), metrics.New(), 0)
	time.Sleep(500 * time.Millisecond) // the reader is blocked on its first message
	if d := b.consumer().Delivered.Stream; d == 0 || d > 4 {
		t.Fatalf("%d messages delivered to a reader holding at most 4 KiB, want 1 to 4", d)
	}
	if ids := strings.Split(r.Rows(t, 100), ","); ids[0] != "1" || ids[99] != "100" {
		t.Fatalf("rows %v", ids)
	}
}

// A message larger than fetch_max_bytes is pulled on its own rather than
// stall the consumer (the server answers a pull it cannot fill with
// nothing at all), and the messages around it come in order.
func TestAMessageLargerThanFetchMaxBytesIsPulledAlone(t *testing.T) {
	b := startBed(t)
	b.publish(event(1, 101, 100))
	b.publish(event(2, 102, 64<<10))
	b.publish(event(3, 103, 100))
	cfg := sourceConfig(b.url)
	cfg.FetchMaxBytes = 4 << 10
	r := run(t, cfg, slog.New(slog.DiscardHandler), metrics.New(), 16)
	if ids := r.Rows(t, 3); ids != "1,2,3" {
		t.Fatalf("rows %s, want 1,2,3", ids)
	}
}

// With no stream capturing the dead-letter subject, pgtrail makes one with
// the source stream's settings; a malformed message goes there and the valid
// ones around it are read. If a dead letter cannot be stored (here: the
// stream is full and refuses new messages), the consumer waits and /healthz
// says why; once the stream takes it, health is back and reading goes on.
func TestDeadLettersGetAStreamAndAFailingOneIsUnhealthyUntilItIsStored(t *testing.T) {
	b := startBed(t)
	m := metrics.New()
	b.publish(event(1, 101, 0))
	b.publish("not json at all")
	b.publish(event(2, 102, 0))
	var logs testbed.Output
	r := run(t, sourceConfig(b.url), slog.New(slog.NewTextHandler(&logs, nil)), m, 16)
	if ids := r.Rows(t, 2); ids != "1,2" {
		t.Fatalf("rows %s, want 1,2", ids)
	}
	dlq, err := b.js.Stream(context.Background(), "DebeziumStream_dlq")
	if err != nil {
		t.Fatalf("dead-letter stream: %v", err)
	}
	if got := dlq.CachedInfo().Config.Subjects; len(got) != 1 || got[0] != "bemi.dlq" {
		t.Fatalf("dead-letter stream captures %v", got)
	}
	dl, err := dlq.GetMsg(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if string(dl.Data) != "not json at all" || dl.Header.Get(HeaderReason) != "not_json" || dl.Header.Get(HeaderSeq) != "2" {
		t.Fatalf("dead letter %q, headers %v", dl.Data, dl.Header)
	}
	if err := m.Health(); err != nil {
		t.Fatalf("unhealthy after a stored dead letter: %v", err)
	}

	// A full dead-letter stream that refuses new messages.
	b.stream(jetstream.StreamConfig{Name: "DebeziumStream_dlq", Subjects: []string{"bemi.dlq"}, Storage: jetstream.FileStorage,
		MaxMsgs: 1, Discard: jetstream.DiscardNew})
	b.publish("{also not json")
	b.publish(event(3, 103, 0))
	deadline := time.Now().Add(20 * time.Second)
	for m.Health() == nil {
		if time.Now().After(deadline) {
			t.Fatal("healthy while the dead letter cannot be stored")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := m.Health(); err.Error() != "dead letters: failing, error (see the log)" {
		t.Fatalf("health: %v", err)
	}
	if l := logs.String(); !strings.Contains(l, `msg="storing a dead letter failed; its source waits for it; retrying" dead_letter="the dead letter of stream sequence 4 on \"bemi.dlq\"" attempt=1`) ||
		!strings.Contains(l, "maximum messages exceeded") {
		t.Fatalf("the failure is not logged with its dead letter and error:\n%s", l)
	}
	r.NoRows(t, 300*time.Millisecond) // nothing past a dead letter that is not stored
	b.stream(jetstream.StreamConfig{Name: "DebeziumStream_dlq", Subjects: []string{"bemi.dlq"}, Storage: jetstream.FileStorage,
		MaxMsgs: -1, Discard: jetstream.DiscardNew})
	if ids := r.Rows(t, 1); ids != "3" {
		t.Fatalf("rows %s, want 3", ids)
	}
	if err := m.Health(); err != nil {
		t.Fatalf("unhealthy once the dead letter is stored: %v", err)
	}
	if dl, err := dlq.GetMsg(context.Background(), 2); err != nil || string(dl.Data) != "{also not json" {
		t.Fatalf("second dead letter %v: %v", dl, err)
	}
}

// A stream named as pgtrail's dead-letter stream would be, but capturing
// other subjects, is a start-up error that says what to do.
func TestATakenDeadLetterStreamNameFailsAtStart(t *testing.T) {
	b := startBed(t)
	b.stream(jetstream.StreamConfig{Name: "DebeziumStream_dlq", Subjects: []string{"other"}})
	_, err := Open(context.Background(), sourceConfig(b.url), config.Debezium{}, slog.New(slog.DiscardHandler), metrics.New())
	want := `no stream captures dead-letter subject "bemi.dlq" (source.jetstream.dlq_subject), and stream "DebeziumStream_dlq", which pgtrail would create for it, exists with other subjects: add the subject to a stream, or set source.jetstream.dlq_subject to a subject one captures`
	if err == nil || err.Error() != want {
		t.Fatalf("Open: %v\nwant: %s", err, want)
	}
}

// Messages the server delivered into a connection that then broke never
// reach pgtrail, but the server counts them delivered (and redelivers them
// only after ack_wait). The next messages must not be acknowledged past
// them: the session ends, and the next one reads them from the ack floor.
func TestDeliveriesLostWithABrokenConnectionAreReadAgain(t *testing.T) {
	b := startBed(t)
	proxy, err := faultproxy.Start(strings.TrimPrefix(b.url, "nats://"))
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	cfg := sourceConfig("nats://" + proxy.Addr())
	var logs testbed.Output
	r := run(t, cfg, slog.New(slog.NewTextHandler(&logs, nil)), metrics.New(), 16)
	b.publish(event(1, 101, 0))
	r.Rows(t, 1)

	// Partition while a pull waits at the server, so that what is published
	// now is delivered into the held connection.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatal("no pull request was ever waiting at the server when partitioned")
		}
		proxy.Partition()
		if b.consumer().NumWaiting > 0 {
			break
		}
		proxy.Heal()
		time.Sleep(20 * time.Millisecond)
	}
	for i := 2; i <= 4; i++ {
		b.publish(event(i, 100+i, 0))
	}
	sourcetest.WaitFor(t, "the server to deliver into the partition", func() bool { return b.consumer().Delivered.Stream == 4 })
	proxy.Cut() // a reset: what the proxy holds is lost
	proxy.Heal()
	b.publish(event(5, 105, 0))

	select {
	case <-r.Done:
		if err := r.Err; err == nil || !strings.Contains(err.Error(), "deliveries were lost in transit; reading again from the last acknowledged message") {
			t.Fatalf("Run ended with %v", err)
		}
	case evs := <-r.Out:
		t.Fatalf("events read past lost deliveries: %+v", evs)
	case <-time.After(30 * time.Second):
		t.Fatalf("Run goes on past lost deliveries: %+v\n%s", b.consumer(), logs.String())
	}
	// The pipeline closes the source and opens it again, from the ack floor
	// (nothing was confirmed here).
	r.Src.Close(context.Background())
	r2 := run(t, cfg, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})), metrics.New(), 16)
	defer func() {
		if t.Failed() {
			t.Logf("consumer %+v\n%s", b.consumer(), logs.String())
		}
	}()
	if ids := r2.Rows(t, 5); ids != "1,2,3,4,5" {
		t.Fatalf("rows %s, want 1,2,3,4,5", ids)
	}
}
