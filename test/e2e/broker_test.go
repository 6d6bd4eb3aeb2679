package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/pgtrail/pgtrail/test/natstest"
)

// startBrokerNATS runs a JetStream-enabled nats-server in this process, with the
// stream Debezium Server creates for the Bemi stack.
func startBrokerNATS(t *testing.T) (string, jetstream.JetStream) {
	t.Helper()
	url, js := natstest.Start(t)
	_, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "DebeziumStream",
		Subjects: []string{"bemi", "__debezium-heartbeat.*"}, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	return url, js
}

// startBrokerKafka runs kfake in this process with the topic and its dead-letter
// topic.
func startBrokerKafka(t *testing.T) (*kfake.Cluster, string) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "bemi", "bemi.dlq"), kfake.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, c.ListenAddrs()[0]
}

// ownsPartition returns a wait until the pgtrail just started owns partition
// 0 of group pgtrail: the group is stable in a later generation than at the
// last wait, its one member holding the partition.
//
// Killing pgtrail before then can leave kfake a ghost member that Kafka would
// expire: kfake arms a member's session only when its JoinGroup response is
// delivered ((*group).reply) and drops the SyncGroup deadline once the leader
// syncs (completeLeaderSync), so a member killed with its JoinGroup parked can
// stay for good, holding whatever the leader assigns it. Kafka arms every
// member's session at the end of the join and expires members that never
// sync (GroupMetadataManager.completeClassicGroupJoin, expirePendingSync).
func ownsPartition(t *testing.T, c *kfake.Cluster) func(p *proc) {
	var gen int32
	return func(p *proc) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		g, err := c.WaitGroupInfo(ctx, "pgtrail", func(g *kfake.GroupInfo) bool {
			select {
			case <-p.done:
				t.Fatalf("pgtrail exited: %v\n%s", p.err, tail(p.out.String(), 40))
			default:
			}
			return g != nil && g.State == "Stable" && g.Epoch > gen && len(g.Members) == 1 && g.NumAssigned() == 1
		})
		if err != nil {
			t.Fatalf("the restarted pgtrail does not own the partition: %v (group %+v)", err, g)
		}
		gen = g.Epoch
	}
}

// writeBrokerConfig writes a config reading source (YAML under source:) into
// the audit table of database url.
func writeBrokerConfig(t *testing.T, url, source, extra string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pgtrail.yaml")
	cfg := fmt.Sprintf("source:\n%s\nsinks:\n  - name: audit\n    plugin: postgres\n    config:\n      url: %q\npipeline:\n  batch_size: 50\nlog:\n  level: debug\n%s", source, url, extra)
	if !strings.Contains(extra, "http:") {
		cfg += "http:\n  listen: \"\"\n"
	}
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := pgtrail(t, path, "setup"); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	return path
}

// history is a known sequence of transactions and the Debezium events
// (bare payloads, routed into one subject as the Bemi stack does) that the
// connector writes for them, with the audit rows they must become.
type history struct {
	events [][]byte
	truth  []string // operation table[primary key] context, one per change
}

func dbzSource(table string, txid, lsn uint64) map[string]any {
	return map[string]any{"version": "2.5.0.Final", "connector": "postgresql", "name": "bemi", "db": "app",
		"ts_ms": 1709205300000 + txid, "ts_us": (1709205300000 + txid) * 1000, "snapshot": "false",
		"sequence": fmt.Sprintf(`["%d","%d"]`, 1000*txid, lsn), "schema": "public", "table": table, "txId": txid, "lsn": lsn}
}

func (h *history) add(v map[string]any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	h.events = append(h.events, b)
}

// makeHistory builds n transactions: each inserts an account with Bemi
// context; every third also updates the previous account (REPLICA IDENTITY
// FULL); every fifth copies two rows into a table without key columns of its
// own, at one WAL position (as COPY does); every seventh holds a malformed
// message and a heartbeat.
func makeHistory(n int) *history {
	h := &history{}
	for i := 1; i <= n; i++ {
		txid, lsn := uint64(1000+i), uint64(i)*1000000
		ctx := fmt.Sprintf(`{"txn": %d}`, i)
		msg := func(l uint64) {
			src := dbzSource("", txid, l)
			src["schema"], src["table"] = "", ""
			h.add(map[string]any{"op": "m", "ts_ms": 1, "source": src,
				"message": map[string]any{"prefix": "_bemi", "content": base64.StdEncoding.EncodeToString([]byte(ctx))}})
		}
		msg(lsn + 10)
		h.add(map[string]any{"op": "c", "ts_ms": 1, "source": dbzSource("accounts", txid, lsn+20),
			"before": nil, "after": map[string]any{"id": i, "balance": 100}})
		h.truth = append(h.truth, fmt.Sprintf("CREATE accounts[%d] %s", i, ctx))
		if i%3 == 0 {
			msg(lsn + 30)
			h.add(map[string]any{"op": "u", "ts_ms": 1, "source": dbzSource("accounts", txid, lsn+40),
				"before": map[string]any{"id": i - 1, "balance": 100}, "after": map[string]any{"id": i - 1, "balance": 101}})
			h.truth = append(h.truth, fmt.Sprintf("UPDATE accounts[%d] %s", i-1, ctx))
		}
		if i%5 == 0 {
			for k := range 2 {
				h.add(map[string]any{"op": "c", "ts_ms": 1, "source": dbzSource("copied", txid, lsn+50),
					"before": nil, "after": map[string]any{"v": k}})
				h.truth = append(h.truth, "CREATE copied[] {}")
			}
		}
		if i%7 == 0 {
			h.events = append(h.events, []byte("not json at all"))
			h.add(map[string]any{"ts_ms": 1709205300000})
		}
	}
	return h
}

// checkAudit compares the audit table with the truth, row by row: nothing
// lost, nothing doubled, the right context on each.
func checkAudit(t *testing.T, conn *pgx.Conn, truth []string) {
	t.Helper()
	waitForChanges(t, conn, len(truth), 120*time.Second)
	rows, err := conn.Query(context.Background(), `SELECT operation || ' ' || "table" || '[' || coalesce(primary_key, '') || '] ' || context::text
		FROM pgtrail.changes`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(truth)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		var diff []string
		for _, w := range want {
			if i := slices.Index(got, w); i >= 0 {
				got = slices.Delete(got, i, i+1)
			} else {
				diff = append(diff, "missing: "+w)
			}
		}
		for _, g := range got {
			diff = append(diff, "extra: "+g)
		}
		t.Fatalf("audit table differs from the truth:\n%s", strings.Join(diff[:min(len(diff), 20)], "\n"))
	}
	if n := count(t, conn, `SELECT count(DISTINCT id) FROM pgtrail.changes`); n != len(truth) {
		t.Fatalf("%d distinct ids for %d changes", n, len(truth))
	}
}

// killDuring runs pgtrail four times: while each instance streams it
// publishes the next quarter of the history, at a steady pace, and it kills
// each of the first three with SIGKILL once the audit table grew by a random
// number of changes, restarting it. streaming waits until a started instance
// reads the stream.
func killDuring(t *testing.T, conn *pgx.Conn, cfg string, h *history, publish func(b []byte) error, streaming func(p *proc)) *proc {
	const instances = 4
	parts := make(chan [][]byte)
	published := make(chan struct{})
	var once sync.Once
	finish := func() { once.Do(func() { close(parts) }) }
	defer finish() // a failed wait leaves no publisher behind
	go func() {
		defer close(published)
		failed := false
		for part := range parts {
			for i, ev := range part {
				if failed {
					break
				}
				if err := publish(ev); err != nil {
					t.Errorf("publish: %v", err)
					failed = true
				}
				if i%20 == 0 {
					time.Sleep(10 * time.Millisecond)
				}
			}
		}
	}()
	stored := func() int { return count(t, conn, "SELECT count(*) FROM pgtrail.changes") }
	p := start(t, cfg)
	for i := range instances {
		streaming(p)
		want := min(stored()+1+rand.IntN(40), len(h.truth))
		parts <- h.events[i*len(h.events)/instances : (i+1)*len(h.events)/instances]
		if i == instances-1 {
			break
		}
		waitFor(t, 60*time.Second, fmt.Sprintf("%d changes stored before kill %d", want, i+1), func() bool { return stored() >= want })
		p.kill()
		t.Logf("kill %d once %d changes were stored", i+1, want)
		p = start(t, cfg)
	}
	finish()
	<-published
	return p
}

func TestJetStreamKill9MidStreamStoresEachChangeOnce(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	natsURL, js := startBrokerNATS(t)
	cfg := writeBrokerConfig(t, url, fmt.Sprintf("  type: jetstream\n  jetstream:\n    url: %q\n  debezium:\n    key_columns: [id]", natsURL), "")
	h := makeHistory(400)
	p := killDuring(t, conn, cfg, h, func(b []byte) error {
		_, err := js.Publish(context.Background(), "bemi", b)
		return err
	}, func(*proc) {})
	checkAudit(t, conn, h.truth)
	if err := p.stop(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	// Everything is acknowledged but the last transaction, which stays
	// unacknowledged until another one shows it is complete.
	cons, err := js.Consumer(context.Background(), "DebeziumStream", "pgtrail")
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if pending := info.Delivered.Stream - info.AckFloor.Stream; info.NumPending != 0 || pending > 8 {
		t.Fatalf("after the drain: %d messages not delivered, %d not acknowledged", info.NumPending, pending)
	}
}

func TestJetStreamContextStitchesAcrossFetchesAndMalformedGoToTheDeadLetterSubject(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	natsURL, js := startBrokerNATS(t)
	port := freePort(t)
	cfg := writeBrokerConfig(t, url, fmt.Sprintf("  type: jetstream\n  jetstream:\n    url: %q", natsURL),
		fmt.Sprintf("http:\n  listen: \"127.0.0.1:%d\"\n", port))
	start(t, cfg)
	h := makeHistory(7) // the seventh transaction carries a malformed message
	publish := func(b []byte) {
		if _, err := js.Publish(context.Background(), "bemi", b); err != nil {
			t.Fatal(err)
		}
	}
	// A context message alone, then its row change after the fetch that
	// delivered the message has returned.
	for _, ev := range h.events[:len(h.events)-4] {
		publish(ev)
	}
	last := h.events[len(h.events)-4:] // message, row, malformed, heartbeat of transaction 7
	publish(last[0])
	time.Sleep(1500 * time.Millisecond)
	for _, ev := range last[1:] {
		publish(ev)
	}
	checkAudit(t, conn, h.truth)

	dlq, err := js.Stream(context.Background(), "DebeziumStream_dlq")
	if err != nil {
		t.Fatalf("dead-letter stream: %v", err)
	}
	m, err := dlq.GetMsg(context.Background(), 1)
	if err != nil {
		t.Fatalf("dead letter: %v", err)
	}
	if string(m.Data) != "not json at all" || m.Header.Get("Pgtrail-Dead-Letter-Reason") != "not_json" || m.Subject != "bemi.dlq" {
		t.Fatalf("dead letter %q on %s, reason %q", m.Data, m.Subject, m.Header.Get("Pgtrail-Dead-Letter-Reason"))
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `pgtrail_dead_letters_total{reason="not_json"} 1`) {
		t.Fatalf("metrics lack the dead letter:\n%s", body)
	}
}

func TestKafkaKill9MidStreamStoresEachChangeOnce(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	c, broker := startBrokerKafka(t)
	cfg := writeBrokerConfig(t, url, fmt.Sprintf("  type: kafka\n  kafka:\n    brokers: [%q]\n    topics: [bemi]\n  debezium:\n    key_columns: [id]", broker), "")
	w := &kafkago.Writer{Addr: kafkago.TCP(broker), Topic: "bemi", RequiredAcks: kafkago.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	h := makeHistory(300)
	p := killDuring(t, conn, cfg, h, func(b []byte) error {
		return w.WriteMessages(context.Background(), kafkago.Message{Value: b})
	}, ownsPartition(t, c))
	checkAudit(t, conn, h.truth)
	if err := p.stop(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	// The malformed messages reached the dead-letter topic, with the reason.
	r := kafkago.NewReader(kafkago.ReaderConfig{Brokers: []string{broker}, Topic: "bemi.dlq", Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := r.ReadMessage(ctx)
	if err != nil {
		t.Fatalf("read dead-letter topic: %v", err)
	}
	var reason string
	for _, hd := range m.Headers {
		if hd.Key == "pgtrail-dead-letter-reason" {
			reason = string(hd.Value)
		}
	}
	if string(m.Value) != "not json at all" || reason != "not_json" {
		t.Fatalf("dead letter %q, reason %q", m.Value, reason)
	}
}
