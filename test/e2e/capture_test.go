package e2e

import (
	"github.com/pgtrail/pgtrail/test/pgtest"

	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/test/natstest"
)

// startNATS runs a nats-server with JetStream in this process, on a free
// loopback port, storing in a temp dir.
func startNATS(t *testing.T) string {
	t.Helper()
	url, _ := natstest.Start(t)
	return url
}

// startKafka runs kfake, an in-process Kafka, with the topic bemi.
func startKafka(t *testing.T) string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "bemi"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()[0]
}

// startCapture launches `pgtrail capture` and waits until it streams.
func startCapture(t *testing.T, config string) *proc {
	t.Helper()
	return launch(t, exec.Command(binary, "capture", "--config", config))
}

// published is one broker message.
type published struct {
	key, value []byte
	msgID      string // Nats-Msg-Id
}

func readJetStream(t *testing.T, url string, want int) []published {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stream jetstream.Stream
	waitFor(t, 60*time.Second, fmt.Sprintf("%d messages in the stream", want), func() bool {
		if stream, err = js.Stream(ctx, "DebeziumStream"); err != nil {
			return false
		}
		info, err := stream.Info(ctx)
		return err == nil && info.State.Msgs >= uint64(want)
	})
	// A moment more: anything beyond want would be a duplicate.
	time.Sleep(500 * time.Millisecond)
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []published
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("get message %d: %v", seq, err)
		}
		if m.Subject != "bemi" {
			t.Fatalf("message %d on subject %q, want bemi", seq, m.Subject)
		}
		out = append(out, published{value: m.Data, msgID: m.Header.Get(jetstream.MsgIDHeader)})
	}
	return out
}

func readKafka(t *testing.T, broker string, want int) []published {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker), kgo.ConsumeTopics("bemi"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []published
	deadline := time.Now().Add(60 * time.Second)
	// Read until want records are in, and then until the topic is quiet:
	// duplicates come on top.
	for quiet := false; (len(out) < want || !quiet) && time.Now().Before(deadline); {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		n := len(out)
		fs.EachRecord(func(r *kgo.Record) { out = append(out, published{key: r.Key, value: r.Value}) })
		quiet = len(out) == n
	}
	if len(out) < want {
		t.Fatalf("%d records in topic bemi after 60s, want at least %d", len(out), want)
	}
	return out
}

// Fields that depend on where and when the workload ran; normalize replaces
// them so that events compare exactly.
var (
	tsField  = regexp.MustCompile(`"ts_(ms|us|ns)":\d+`)
	lsnField = regexp.MustCompile(`"lsn":\d+`)
	seqField = regexp.MustCompile(`"sequence":"\[null,\\"\d+\\"\]"`)
	dbField  = regexp.MustCompile(`"db":"pgtest_\d+"`)
	txField  = regexp.MustCompile(`"txId":\d+`)
)

func normalize(v []byte) string {
	s := tsField.ReplaceAllString(string(v), `"ts_$1":T`)
	s = lsnField.ReplaceAllString(s, `"lsn":L`)
	s = seqField.ReplaceAllString(s, `"sequence":"[null,\"L\"]"`)
	s = dbField.ReplaceAllString(s, `"db":"DB"`)
	return txField.ReplaceAllString(s, `"txId":X`)
}

// eventSource is what the checks read of an event beyond its shape.
type eventSource struct {
	Op     string `json:"op"`
	TsMs   int64  `json:"ts_ms"`
	Source struct {
		DB       string `json:"db"`
		Schema   string `json:"schema"`
		Table    string `json:"table"`
		TxID     uint64 `json:"txId"`
		LSN      uint64 `json:"lsn"`
		Sequence string `json:"sequence"`
		TsMs     int64  `json:"ts_ms"`
		TsUs     int64  `json:"ts_us"`
	} `json:"source"`
	After struct {
		ID int `json:"id"`
	} `json:"after"`
}

func parseEvent(t *testing.T, v []byte) eventSource {
	t.Helper()
	var e eventSource
	if err := json.Unmarshal(v, &e); err != nil {
		t.Fatalf("event is not JSON: %v\n%s", err, v)
	}
	return e
}

// captureWorkload runs a Bemi-style workload and returns the transaction ids
// of its three transactions.
func captureWorkload(t *testing.T, conn *pgx.Conn) []uint64 {
	t.Helper()
	var xids []uint64
	for _, q := range []string{
		`INSERT INTO todos VALUES (1, 'buy milk', false, 12.30, 1.5, '2024-01-02 03:04:05.5+00', '2024-01-02', '{"tags":["a"]}', '\x0102') /*Bemi {"userId":1,"endpoint":"/todos"} Bemi*/`,
		`UPDATE todos SET done = true WHERE id = 1 /*Bemi {"userId":2} Bemi*/`,
		`DELETE FROM todos WHERE id = 1`,
	} {
		var xid uint64
		err := pgx.BeginFunc(context.Background(), conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(context.Background(), q); err != nil {
				return err
			}
			return tx.QueryRow(context.Background(), "SELECT txid_current()").Scan(&xid)
		})
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		xids = append(xids, xid)
	}
	return xids
}

const captureSchema = `CREATE TABLE todos (id int PRIMARY KEY, task text, done boolean, price numeric(10,2),
	amount numeric, due timestamptz, day date, meta jsonb, blob bytea)`

// wantEvents are the values of captureWorkload's changes, as the Debezium
// PostgreSQL connector publishes them (the interop bed checks the encoder
// against it), normalized.
var wantEvents = []string{
	`{"op":"m","ts_ms":T,"source":{"version":"3.6.1.Final","connector":"postgresql","name":"bemi","ts_ms":T,"snapshot":"false","db":"DB","sequence":"[null,\"L\"]","ts_us":T,"ts_ns":T,"schema":"","table":"","txId":X,"lsn":L,"xmin":null,"origin":null,"origin_lsn":null},"transaction":null,"message":{"prefix":"_bemi","content":"eyJ1c2VySWQiOjEsImVuZHBvaW50IjoiL3RvZG9zIn0="}}`,
	`{"before":null,"after":{"id":1,"task":"buy milk","done":false,"price":"BM4=","amount":{"scale":1,"value":"Dw=="},"due":"2024-01-02T03:04:05.500000Z","day":19724,"meta":"{\"tags\": [\"a\"]}","blob":"AQI="},"source":{"version":"3.6.1.Final","connector":"postgresql","name":"bemi","ts_ms":T,"snapshot":"false","db":"DB","sequence":"[null,\"L\"]","ts_us":T,"ts_ns":T,"schema":"public","table":"todos","txId":X,"lsn":L,"xmin":null,"origin":null,"origin_lsn":null},"transaction":null,"op":"c","ts_ms":T,"ts_us":T,"ts_ns":T}`,
	`{"op":"m","ts_ms":T,"source":{"version":"3.6.1.Final","connector":"postgresql","name":"bemi","ts_ms":T,"snapshot":"false","db":"DB","sequence":"[null,\"L\"]","ts_us":T,"ts_ns":T,"schema":"","table":"","txId":X,"lsn":L,"xmin":null,"origin":null,"origin_lsn":null},"transaction":null,"message":{"prefix":"_bemi","content":"eyJ1c2VySWQiOjJ9"}}`,
	`{"before":null,"after":{"id":1,"task":"buy milk","done":true,"price":"BM4=","amount":{"scale":1,"value":"Dw=="},"due":"2024-01-02T03:04:05.500000Z","day":19724,"meta":"{\"tags\": [\"a\"]}","blob":"AQI="},"source":{"version":"3.6.1.Final","connector":"postgresql","name":"bemi","ts_ms":T,"snapshot":"false","db":"DB","sequence":"[null,\"L\"]","ts_us":T,"ts_ns":T,"schema":"public","table":"todos","txId":X,"lsn":L,"xmin":null,"origin":null,"origin_lsn":null},"transaction":null,"op":"u","ts_ms":T,"ts_us":T,"ts_ns":T}`,
	`{"before":{"id":1,"task":null,"done":null,"price":null,"amount":null,"due":null,"day":null,"meta":null,"blob":null},"after":null,"source":{"version":"3.6.1.Final","connector":"postgresql","name":"bemi","ts_ms":T,"snapshot":"false","db":"DB","sequence":"[null,\"L\"]","ts_us":T,"ts_ns":T,"schema":"public","table":"todos","txId":X,"lsn":L,"xmin":null,"origin":null,"origin_lsn":null},"transaction":null,"op":"d","ts_ms":T,"ts_us":T,"ts_ns":T}`,
}

// wantTxns says which workload transaction each of wantEvents belongs to.
var wantTxns = []int{0, 0, 1, 1, 2}

// checkEvents compares the events with wantEvents, and checks what
// normalize hides: transaction ids, positions, the database, commit times.
func checkEvents(t *testing.T, db string, xids []uint64, values [][]byte) {
	t.Helper()
	var got []string
	for _, v := range values {
		got = append(got, normalize(v))
	}
	if strings.Join(got, "\n") != strings.Join(wantEvents, "\n") {
		t.Fatalf("published:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantEvents, "\n"))
	}
	var last uint64
	for i, v := range values {
		e := parseEvent(t, v)
		s := e.Source
		if s.DB != db || s.TxID != xids[wantTxns[i]] {
			t.Errorf("event %d: db %q txId %d, want %q and %d", i, s.DB, s.TxID, db, xids[wantTxns[i]])
		}
		if s.LSN < last || s.Sequence != fmt.Sprintf(`[null,"%d"]`, s.LSN) {
			t.Errorf("event %d: lsn %d after %d, sequence %s", i, s.LSN, last, s.Sequence)
		}
		last = s.LSN
		if s.TsUs/1000 != s.TsMs || e.TsMs != s.TsMs || time.Since(time.UnixMilli(s.TsMs)) > time.Minute {
			t.Errorf("event %d: commit time ts_ms %d ts_us %d, envelope ts_ms %d", i, s.TsMs, s.TsUs, e.TsMs)
		}
	}
	// A Bemi message's position is the end of its WAL record: normally the
	// start of its row change's.
	for _, i := range []int{0, 2} {
		if m, r := parseEvent(t, values[i]).Source.LSN, parseEvent(t, values[i+1]).Source.LSN; m > r {
			t.Errorf("message %d at %d, after its row change at %d", i, m, r)
		}
	}
}

// idOf is the identity a consumer derives for an event (change.MakeID): it is
// the JetStream message id.
func idOf(t *testing.T, v []byte) string {
	t.Helper()
	e := parseEvent(t, v)
	return change.MakeID(e.Source.DB, e.Source.LSN, e.Source.Schema, e.Source.Table, 0).String()
}

func captureSetup(t *testing.T, publish string) (*pgx.Conn, string, string) {
	t.Helper()
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, captureSchema)
	exec1(t, conn, pgtest.BemiMigration)
	var db string
	if err := conn.QueryRow(context.Background(), "SELECT current_database()").Scan(&db); err != nil {
		t.Fatal(err)
	}
	return conn, writeConfig(t, url, publish, ""), db
}

func TestCapturePublishesDebeziumEventsToJetStreamWithMessageIDs(t *testing.T) {
	natsURL := startNATS(t)
	conn, cfg, db := captureSetup(t, fmt.Sprintf("publish:\n  type: jetstream\n  jetstream:\n    url: %q\n", natsURL))
	startCapture(t, cfg)
	xids := captureWorkload(t, conn)

	msgs := readJetStream(t, natsURL, len(wantEvents))
	var values [][]byte
	for _, m := range msgs {
		values = append(values, m.value)
	}
	checkEvents(t, db, xids, values)
	for i, m := range msgs {
		e := parseEvent(t, m.value)
		want := idOf(t, m.value)
		if e.Op == "m" {
			want = change.MakeID(db, e.Source.LSN, "", "", 0).String()
		}
		if m.msgID != want {
			t.Errorf("event %d: Nats-Msg-Id %q, want %q", i, m.msgID, want)
		}
	}
}

func TestCapturePublishesDebeziumEventsToKafkaKeyedByPrimaryKey(t *testing.T) {
	broker := startKafka(t)
	conn, cfg, db := captureSetup(t, fmt.Sprintf("publish:\n  type: kafka\n  kafka:\n    brokers: [%q]\n", broker))
	startCapture(t, cfg)
	xids := captureWorkload(t, conn)

	recs := readKafka(t, broker, len(wantEvents)+1)
	if len(recs) != len(wantEvents)+1 {
		t.Fatalf("%d records, want %d", len(recs), len(wantEvents)+1)
	}
	// The delete is followed by a tombstone: its key, no value.
	tomb := recs[len(recs)-1]
	recs = recs[:len(recs)-1]
	var values [][]byte
	var keys []string
	for _, r := range recs {
		values = append(values, r.value)
		keys = append(keys, string(r.key))
	}
	checkEvents(t, db, xids, values)
	rowKey := `{"id":1,"__dbz__physicalTableIdentifier":"bemi.public.todos"}`
	msgKey := `{"prefix":"_bemi","__dbz__physicalTableIdentifier":"bemi.message"}`
	wantKeys := []string{msgKey, rowKey, msgKey, rowKey, rowKey}
	if strings.Join(keys, "\n") != strings.Join(wantKeys, "\n") {
		t.Errorf("keys:\n%s\nwant:\n%s", strings.Join(keys, "\n"), strings.Join(wantKeys, "\n"))
	}
	if string(tomb.key) != rowKey || tomb.value != nil {
		t.Errorf("after the delete: key %s value %q, want a tombstone of %s", tomb.key, tomb.value, rowKey)
	}
}

// killWorkload inserts rows, each with its Bemi context, from two writers
// while capture is killed with SIGKILL and restarted three times. It returns
// the ids inserted.
func killWorkload(t *testing.T, url, cfg string, p *proc) (map[int]bool, *proc) {
	t.Helper()
	var mu sync.Mutex
	ids := map[int]bool{}
	var n atomic.Int64
	stop := writeLoad(t, url, 2, func(conn *pgx.Conn, w, i int) error {
		id := w*1_000_000 + i
		q := fmt.Sprintf(`INSERT INTO todos (id, task) VALUES (%d, 'w%d') /*Bemi {"writer":%d,"i":%d} Bemi*/`, id, w, w, i)
		if _, err := conn.Exec(context.Background(), q); err != nil {
			return err
		}
		mu.Lock()
		ids[id] = true
		mu.Unlock()
		n.Add(1)
		return nil
	})
	for range 3 {
		time.Sleep(time.Duration(300+rand.IntN(700)) * time.Millisecond)
		p.kill()
		time.Sleep(time.Duration(rand.IntN(200)) * time.Millisecond)
		p = startCapture(t, cfg)
	}
	time.Sleep(300 * time.Millisecond)
	stop()
	t.Logf("%d inserts under 3 kills", n.Load())
	return ids, p
}

// captureUnderKills runs killWorkload against `pgtrail capture` publishing
// as the config block publish says, in small batches.
func captureUnderKills(t *testing.T, publish string) (*pgx.Conn, map[int]bool, *proc) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, captureSchema)
	exec1(t, conn, pgtest.BemiMigration)
	cfg := writeConfig(t, url, publish+"pipeline:\n  batch_size: 50\n", "")
	ids, p := killWorkload(t, url, cfg, startCapture(t, cfg))
	return conn, ids, p
}

func TestCaptureKill9JetStreamPublishesEveryChangeOnce(t *testing.T) {
	natsURL := startNATS(t)
	_, ids, p := captureUnderKills(t, fmt.Sprintf("publish:\n  type: jetstream\n  jetstream:\n    url: %q\n", natsURL))
	if t.Failed() {
		return
	}
	// Every insert is a message and a row change, each stored once.
	msgs := readJetStream(t, natsURL, 2*len(ids))
	if len(msgs) != 2*len(ids) {
		t.Fatalf("%d messages in the stream, want %d: duplicates were stored", len(msgs), 2*len(ids))
	}
	seen := map[int]bool{}
	for i, m := range msgs {
		e := parseEvent(t, m.value)
		if e.Op == "m" {
			continue
		}
		if e.Op != "c" || !ids[e.After.ID] || seen[e.After.ID] {
			t.Fatalf("message %d: op %q id %d (inserted: %v, seen before: %v)", i, e.Op, e.After.ID, ids[e.After.ID], seen[e.After.ID])
		}
		seen[e.After.ID] = true
		// Its Bemi message comes right before it: same transaction, at most
		// its position (the end of the message's WAL record).
		if prev := parseEvent(t, msgs[i-1].value); prev.Op != "m" || prev.Source.TxID != e.Source.TxID || prev.Source.LSN > e.Source.LSN {
			t.Fatalf("row change %d (message %d) is not preceded by its Bemi message:\n%s\n%s", e.After.ID, i, msgs[i-1].value, m.value)
		}
	}
	if len(seen) != len(ids) {
		t.Fatalf("%d of %d inserts published", len(seen), len(ids))
	}
	if err := p.stop(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

func TestCaptureKill9KafkaPublishesEveryChangeAtLeastOnceWithIdenticalDuplicates(t *testing.T) {
	broker := startKafka(t)
	conn, ids, p := captureUnderKills(t, fmt.Sprintf("publish:\n  type: kafka\n  kafka:\n    brokers: [%q]\n", broker))
	if t.Failed() {
		return
	}
	// Wait until the capture caught up with the last insert.
	lsn := pastLastCommit(t, conn)
	waitFor(t, 60*time.Second, "the slot to confirm past the last insert", func() bool { return confirmedPast(t, conn, lsn) })
	recs := readKafka(t, broker, 2*len(ids))
	byID := map[string][]byte{}
	seen := map[int]bool{}
	dups := 0
	for _, r := range recs {
		id := idOf(t, r.value)
		if prev, ok := byID[id]; ok {
			dups++
			if string(prev) != string(r.value) {
				t.Fatalf("duplicate of %s differs:\n%s\n%s", id, prev, r.value)
			}
			continue
		}
		byID[id] = r.value
		if e := parseEvent(t, r.value); e.Op == "c" {
			if !ids[e.After.ID] {
				t.Fatalf("published an insert of %d that no writer made", e.After.ID)
			}
			seen[e.After.ID] = true
		}
	}
	if len(seen) != len(ids) {
		t.Fatalf("%d of %d inserts published", len(seen), len(ids))
	}
	if len(byID) != 2*len(ids) {
		t.Fatalf("%d distinct events, want %d", len(byID), 2*len(ids))
	}
	t.Logf("%d records, %d of them identical duplicates", len(recs), dups)
	if err := p.stop(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

// TestCaptureThenRunFromTheBrokerStoresTheNativeAuditTrail closes the loop:
// `pgtrail capture` publishes to the broker, `pgtrail run` with that broker
// as its source stores the events, and its audit table matches native
// capture's for the same changes.
func TestCaptureThenRunFromTheBrokerStoresTheNativeAuditTrail(t *testing.T) {
	for _, broker := range []string{"jetstream", "kafka"} {
		t.Run(broker, func(t *testing.T) {
			url := cluster.NewDatabase(t)
			conn := connect(t, url)
			exec1(t, conn, `CREATE TABLE todos (id int PRIMARY KEY, task text, done boolean NOT NULL DEFAULT false, meta json);
				ALTER TABLE todos REPLICA IDENTITY FULL;
				CREATE TABLE tags (todo_id int, tag text, PRIMARY KEY (todo_id, tag))`)
			exec1(t, conn, pgtest.BemiMigration)
			sink := func(schema string) string {
				return fmt.Sprintf("sinks:\n  - name: audit\n    plugin: postgres\n    config: {url: %q, schema: %s}\n", url, schema)
			}
			native := writeConfig(t, url, sink("native"), "    slot: native\n")
			if out, err := pgtrail(t, native, "setup"); err != nil {
				t.Fatalf("setup: %v\n%s", err, out)
			}
			start(t, native)
			var publish, source string
			switch broker {
			case "jetstream":
				addr := startNATS(t)
				publish = fmt.Sprintf("publish:\n  type: jetstream\n  jetstream: {url: %q}\n", addr)
				source = fmt.Sprintf("source:\n  type: jetstream\n  jetstream: {url: %q, stream: DebeziumStream, subject: bemi, durable: pgtrail}\n", addr)
			case "kafka":
				addr := startKafka(t)
				publish = fmt.Sprintf("publish:\n  type: kafka\n  kafka: {brokers: [%q]}\n", addr)
				source = fmt.Sprintf("source:\n  type: kafka\n  kafka: {brokers: [%q], topics: [bemi], group: pgtrail}\n", addr)
			}
			startCapture(t, writeConfig(t, url, publish, "    slot: capture\n"))

			for _, q := range []string{
				`INSERT INTO todos VALUES (1, 'a') /*Bemi {"endpoint":"/todos","userId":1} Bemi*/`,
				`INSERT INTO todos VALUES (2, 'b'), (3, 'c') /*Bemi {"endpoint":"/bulk"} Bemi*/`,
				`INSERT INTO tags VALUES (1, 'x'), (1, 'y')`,
				`UPDATE tags SET tag = 'z' WHERE todo_id = 1 AND tag = 'x' /*Bemi {"op":"rekey"} Bemi*/`,
				`BEGIN; UPDATE todos SET done = true WHERE id = 1; SELECT pgtrail.set_context('{"user":"ann"}'); DELETE FROM todos WHERE id = 2; COMMIT`,
				`UPDATE todos SET task = 'c2' WHERE id = 3 /*Bemi not json Bemi*/`,
				// JSON the json type takes and jsonb refuses, in a value and in
				// a context: stored (as a string; with the escape as text), not
				// a batch that fails for ever.
				`INSERT INTO todos VALUES (4, 'd', false, '{"x": "\u0000", "y": "\ud83d"}') /*Bemi {"endpoint": "\u0000"} Bemi*/`,
			} {
				exec1(t, conn, q)
			}
			waitFor(t, 30*time.Second, "native capture", func() bool {
				return count(t, conn, "SELECT count(*) FROM native.changes") == 10
			})
			var meta, ctx string
			if err := conn.QueryRow(context.Background(), `SELECT after->>'meta', context::text FROM native.changes WHERE primary_key = '4'`).Scan(&meta, &ctx); err != nil {
				t.Fatal(err)
			}
			if meta != `{"x": "\u0000", "y": "\ud83d"}` || ctx != `{"endpoint": "\\u0000"}` {
				t.Errorf("json value jsonb cannot hold stored as %s with context %s, want its text as a string and the escape as text", meta, ctx)
			}

			// The broker's events, through `pgtrail run`, into an audit table of their own.
			path := filepath.Join(t.TempDir(), "broker.yaml")
			if err := os.WriteFile(path, []byte(source+sink("viabroker")+"http: {listen: \"\"}\nlog: {level: debug}\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			start(t, path)
			waitFor(t, 30*time.Second, "the broker's changes in the audit table", func() bool {
				return count(t, conn, "SELECT count(*) FROM viabroker.changes") >= 10
			})
			time.Sleep(500 * time.Millisecond)
			cols := `id, primary_key, before, after, context, database, schema, "table", operation, committed_at, transaction_id, position, seq, unchanged_toast`
			if broker == "jetstream" {
				// JetStream carries values only, as Debezium Server's NATS sink
				// does: the reader knows a key by source.debezium.key_columns
				// (Bemi's rule: id). tags has none of them.
				if n := count(t, conn, `SELECT count(*) FROM viabroker.changes WHERE "table" = 'tags' AND primary_key IS NOT NULL`); n != 0 {
					t.Errorf("%d tags changes got a primary key from JetStream", n)
				}
				cols = strings.Replace(cols, "primary_key", `CASE WHEN "table" = 'tags' THEN NULL ELSE primary_key END`, 1)
			}
			var missing, extra int
			err := conn.QueryRow(context.Background(), `SELECT
				(SELECT count(*) FROM (SELECT `+cols+` FROM native.changes EXCEPT ALL SELECT `+cols+` FROM viabroker.changes) m),
				(SELECT count(*) FROM (SELECT `+cols+` FROM viabroker.changes EXCEPT ALL SELECT `+cols+` FROM native.changes) e)`).Scan(&missing, &extra)
			if err != nil {
				t.Fatal(err)
			}
			if missing != 0 || extra != 0 {
				rows, _ := conn.Query(context.Background(), `SELECT 'native', `+cols+` FROM (SELECT `+cols+` FROM native.changes EXCEPT ALL SELECT `+cols+` FROM viabroker.changes) m
					UNION ALL SELECT 'broker', `+cols+` FROM (SELECT `+cols+` FROM viabroker.changes EXCEPT ALL SELECT `+cols+` FROM native.changes) e`)
				var diff []string
				for rows.Next() {
					v, _ := rows.Values()
					diff = append(diff, fmt.Sprint(v))
				}
				rows.Close()
				t.Fatalf("audit through %s differs from native: %d native rows unmatched, %d extra:\n%s", broker, missing, extra, strings.Join(diff, "\n"))
			}
		})
	}
}
