package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// typedDebezium is an insert into public.accounts with the schema envelope,
// of one column "v" of Connect schema sch valued value.
func typedDebezium(sch, value string, txid, lsn uint64) []byte {
	src, _ := json.Marshal(dbzSource("accounts", txid, lsn))
	return []byte(`{"schema":{"type":"struct","fields":[{"type":"struct","field":"after","fields":[` +
		strings.TrimSuffix(sch, "}") + `,"field":"v"}]}]},"payload":{"op":"c","before":null,"after":{"v":` + value + `},"source":` + string(src) + `}}`)
}

// TestHostileBrokerMessagesAreDeadLetteredAndTheStreamGoesOn: one message
// with a Decimal scale of -2^63 panicked the decoder, so pgtrail died and,
// the message never acknowledged, died again on every start; a MicroTime of
// 440 hours wrote invalid JSON, which failed every write; a Bits length of
// 5e7 made 50 MB of one value; an event without a commit time was stored
// with the time it was read, so a replay stored it again. Each goes to the
// dead-letter subject with its reason, and the changes after it are stored.
func TestHostileBrokerMessagesAreDeadLetteredAndTheStreamGoesOn(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	natsURL, js := startBrokerNATS(t)
	cfg := writeBrokerConfig(t, url, fmt.Sprintf("  type: jetstream\n  jetstream:\n    url: %q", natsURL), "")
	start(t, cfg)
	row := func(id int, txid, lsn uint64) []byte {
		b, _ := json.Marshal(map[string]any{"op": "c", "source": dbzSource("accounts", txid, lsn), "before": nil, "after": map[string]any{"id": id}})
		return b
	}
	noTime := dbzSource("accounts", 2003, 3000)
	delete(noTime, "ts_ms")
	delete(noTime, "ts_us")
	untimed, _ := json.Marshal(map[string]any{"op": "c", "ts_ms": 1709205300000, "source": noTime, "before": nil, "after": map[string]any{"id": 9}})
	hostile := []struct {
		msg    []byte
		reason string
	}{
		{typedDebezium(`{"type":"bytes","name":"org.apache.kafka.connect.data.Decimal","parameters":{"scale":"-9223372036854775808"}}`, `"AQ=="`, 2002, 2000), "bad_value"},
		{typedDebezium(`{"type":"int64","name":"io.debezium.time.MicroTime"}`, "1584000000000", 2002, 2010), "bad_value"},
		{typedDebezium(`{"type":"bytes","name":"io.debezium.data.Bits","parameters":{"length":"50000000"}}`, `"AQ=="`, 2002, 2020), "bad_value"},
		{untimed, "no_source"},
	}
	msgs := [][]byte{row(1, 2001, 1000)}
	for _, h := range hostile {
		msgs = append(msgs, h.msg)
	}
	msgs = append(msgs, row(2, 2004, 4000), row(3, 2005, 5000))
	for _, m := range msgs {
		if _, err := js.Publish(context.Background(), "bemi", m); err != nil {
			t.Fatal(err)
		}
	}
	checkAudit(t, conn, []string{"CREATE accounts[1] {}", "CREATE accounts[2] {}", "CREATE accounts[3] {}"})

	dlq, err := js.Stream(context.Background(), "DebeziumStream_dlq")
	if err != nil {
		t.Fatalf("dead-letter stream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i, h := range hostile {
		m, err := dlq.GetMsg(ctx, uint64(i+1))
		if err != nil {
			t.Fatalf("dead letter %d: %v", i+1, err)
		}
		if string(m.Data) != string(h.msg) || m.Header.Get("Pgtrail-Dead-Letter-Reason") != h.reason {
			t.Fatalf("dead letter %d: %.80s, reason %q; want %.80s, reason %q", i+1, m.Data, m.Header.Get("Pgtrail-Dead-Letter-Reason"), h.msg, h.reason)
		}
	}
}
