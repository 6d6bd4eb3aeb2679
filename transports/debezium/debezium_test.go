package debezium

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtrail/pgtrail/core/change"
)

// messages reads a fixture: testdata/NAME.jsonl holds raw message values, one
// a line, as the broker holds them; NAME.keys.jsonl, when present, the keys.
func messages(t *testing.T, name string) (keys, vals [][]byte) {
	t.Helper()
	lines := func(path string) [][]byte {
		f, err := os.Open(path)
		if err != nil {
			return nil
		}
		defer f.Close()
		var out [][]byte
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			out = append(out, []byte(sc.Text()))
		}
		return out
	}
	vals = lines(filepath.Join("testdata", name+".jsonl"))
	if len(vals) == 0 {
		t.Fatalf("fixture %s is empty", name)
	}
	keys = lines(filepath.Join("testdata", name+".keys.jsonl"))
	for len(keys) < len(vals) {
		keys = append(keys, nil)
	}
	return keys, vals
}

// decodeAll decodes a fixture as one stream and flushes it at the end.
func decodeAll(t *testing.T, cfg Config, name string) []Event {
	t.Helper()
	d := NewDecoder(cfg)
	keys, vals := messages(t, name)
	var out []Event
	for i := range vals {
		evs, err := d.Decode(keys[i], vals[i])
		if err != nil {
			t.Fatalf("%s line %d: %v", name, i+1, err)
		}
		out = append(out, evs...)
	}
	return append(out, d.Flush()...)
}

func render(ev Event) string {
	if ev.Kind == Message {
		return fmt.Sprintf("message %d %s %s", ev.XID, ev.Prefix, ev.Content)
	}
	c := ev.Change
	s := fmt.Sprintf("%s %s.%s[%s] before=%s after=%s", c.Operation, c.Schema, c.Table, c.PrimaryKey, c.Before, c.After)
	if len(c.UnchangedToast) > 0 {
		s += " toast=" + strings.Join(c.UnchangedToast, ",")
	}
	return s
}

func renderAll(evs []Event) string {
	var lines []string
	for _, ev := range evs {
		lines = append(lines, render(ev))
	}
	return strings.Join(lines, "\n")
}

// The JSON native capture stores for each column of the types fixture
// (test/e2e/values_test.go holds the same values end to end).
var typedWant = map[string]string{
	"id": "1", "c_int8": "9223372036854775807", "c_real": "1.5", "c_double": "3.141592653589793",
	"c_big_double": "1e+15", "c_num": "1.50", "c_num_neg": "-1.5",
	"c_num_big": `"12345678901234567890.123456789"`, "c_money": "1234.56", "c_bool": "true",
	"c_text": `"héllo \"q\" \\ \n\t"`, "c_uuid": `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`, "c_enum": `"happy"`,
	"c_interval": `"P1DT2H"`, "c_interval_str": `"P1M2DT26H0.5S"`, "c_json": `{"b": 1, "a": [1, 2]}`,
	"c_ts": `"2024-02-29T13:14:15.123456"`, "c_ts_ms": `"2024-02-29T13:14:15.123"`,
	"c_ts_ns": `"2024-02-29T13:14:15.123456"`, "c_ts_inf": `"infinity"`, "c_tstz": `"2024-02-29T11:14:15.5Z"`,
	"c_date": `"2024-02-29"`, "c_time": `"13:14:15.000001"`, "c_time_ms": `"13:14:15.123"`,
	"c_timetz": `"11:14:15.5Z"`, "c_bytea": `"AP8Q"`, "c_bits": `"00101"`, "c_int_arr": "[1,null,3]",
	"c_text_arr": `["a,b","c\"d",null]`, "c_num_arr": "[1.5,-1.5]", "c_null": "null",
}

func TestSchemaEnvelopeValuesMatchNativeJSON(t *testing.T) {
	evs := decodeAll(t, Config{}, "types_schema")
	if len(evs) != 1 || evs[0].Kind != Row {
		t.Fatalf("got %d events, want one row", len(evs))
	}
	c := evs[0].Change
	var after map[string]json.RawMessage
	if err := json.Unmarshal(c.After, &after); err != nil {
		t.Fatalf("after is not JSON: %v\n%s", err, c.After)
	}
	for col, want := range typedWant {
		if got := string(after[col]); got != want {
			t.Errorf("%s: got %s, want %s", col, got, want)
		}
	}
	if len(after) != len(typedWant) {
		t.Errorf("after has %d columns, want %d", len(after), len(typedWant))
	}
	want := change.Change{
		ID: change.MakeID("app", 24024112, "public", "typed", 0), Database: "app", Schema: "public", Table: "typed",
		Operation: change.Create, PrimaryKey: "1", TransactionID: 751, LSN: 24024112, CommitLSN: 24023928, Seq: 0,
		CommittedAt: time.UnixMicro(1709205255500123).UTC(),
	}
	got := *c
	got.Before, got.After, got.QueuedAt = nil, nil, time.Time{}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("change\n got %+v\nwant %+v", got, want)
	}
	if string(c.Before) != "{}" {
		t.Fatalf("before of an insert: %s, want {}", c.Before)
	}
}

func TestBarePayloadKeepsValuesAsDebeziumWroteThem(t *testing.T) {
	evs := decodeAll(t, Config{}, "types_bare")
	var after map[string]json.RawMessage
	if err := json.Unmarshal(evs[0].Change.After, &after); err != nil {
		t.Fatal(err)
	}
	// Without a schema the types are unknown: a Decimal stays base64, a
	// MicroTimestamp a number; untyped values are the same either way.
	for col, want := range map[string]string{
		"c_num": `"AJY="`, "c_ts": "1709212455123456", "c_json": `"{\"b\": 1, \"a\": [1, 2]}"`,
		"c_text": typedWant["c_text"], "c_bool": "true", "c_int_arr": "[1,null,3]", "c_tstz": `"2024-02-29T11:14:15.500000Z"`,
	} {
		if got := string(after[col]); got != want {
			t.Errorf("%s: got %s, want %s", col, got, want)
		}
	}
	if evs[0].Change.PrimaryKey != "1" {
		t.Errorf("primary key %q, want 1", evs[0].Change.PrimaryKey)
	}
}

func TestBemiStackContextToastAndReplicaIdentityFull(t *testing.T) {
	evs := decodeAll(t, Config{KeyColumns: []string{"id"}}, "bemi_stack")
	want := strings.Join([]string{
		`message 760 _bemi {"user_id":42,"endpoint":"PATCH /docs/1"}`,
		`UPDATE public.docs[1] before={"id":1,"body":"old body","n":0} after={"id":1,"body":"old body","n":1}`,
		`message 760 _bemi {"user_id":42}`,
		`DELETE public.docs[2] before={"id":2,"body":"gone","n":5} after={}`,
		`UPDATE public.docs[3] before={} after={"id":3,"n":1} toast=body,tags`,
	}, "\n")
	if got := renderAll(evs); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	for _, ev := range evs {
		if ev.Change != nil && ev.Change.CommitLSN != 24030000 {
			t.Errorf("commit position %d, want source.sequence's 24030000", ev.Change.CommitLSN)
		}
	}
}

func TestCustomPlaceholderNeverReachesAnImage(t *testing.T) {
	d := NewDecoder(Config{Placeholder: "__bemi_unavailable_value"})
	evs, err := d.Decode([]byte(`{"id":5}`), []byte(`{"before":null,"after":{"id":5,"doc":"__bemi_unavailable_value","blob":"X19iZW1pX3VuYXZhaWxhYmxlX3ZhbHVl","nums":[95,95,98,101,109,105,95,117,110,97,118,97,105,108,97,98,108,101,95,118,97,108,117,101]},"source":{"db":"app","schema":"public","table":"t","txId":1,"lsn":10,"ts_ms":1},"op":"u"}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := render(evs[0]); got != `UPDATE public.t[5] before={} after={"id":5} toast=doc,blob,nums` {
		t.Fatalf("got %s", got)
	}
}

func TestPrimaryKeyChangeIsOneUpdateAsNativeCaptureSeesIt(t *testing.T) {
	evs := decodeAll(t, Config{}, "pk_change")
	want := strings.Join([]string{
		`UPDATE public.items[2] before={"id":1,"v":"a"} after={"id":2,"v":"a"}`,
		`DELETE public.items[2] before={"id":2} after={}`,
	}, "\n")
	if got := renderAll(evs); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	if id := change.MakeID("app", 24040000, "public", "items", 0); evs[0].Change.ID != id || evs[0].Change.Seq != 0 || evs[1].Change.Seq != 1 {
		t.Fatalf("merged update: id %s seq %d, next seq %d; want id %s, seqs 0 and 1", evs[0].Change.ID, evs[0].Change.Seq, evs[1].Change.Seq, id)
	}
}

func TestChangesSharingAWALPositionGetDistinctNativeIDs(t *testing.T) {
	evs := decodeAll(t, Config{}, "shared_lsn")
	want := strings.Join([]string{
		`CREATE public.pairs[[0,"x"]] before={} after={"a":0,"b":"x","v":0}`,
		`CREATE public.pairs[[1,"x"]] before={} after={"a":1,"b":"x","v":10}`,
		`CREATE public.pairs[[2,"x"]] before={} after={"a":2,"b":"x","v":20}`,
		`TRUNCATE public.t1[] before={} after={}`,
		`TRUNCATE public.t2[] before={} after={}`,
	}, "\n")
	if got := renderAll(evs); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	wantIDs := []string{
		change.MakeID("app", 24050000, "public", "pairs", 0).String(),
		change.MakeID("app", 24050000, "public", "pairs", 1).String(),
		change.MakeID("app", 24050000, "public", "pairs", 2).String(),
		change.MakeID("app", 24050100, "public", "t1", 0).String(),
		change.MakeID("app", 24050100, "public", "t2", 0).String(),
	}
	for i, ev := range evs {
		if ev.Change.ID.String() != wantIDs[i] {
			t.Errorf("event %d: id %s, want %s", i, ev.Change.ID, wantIDs[i])
		}
	}
	if evs[3].Change.Seq != 0 || evs[2].Change.Seq != 2 {
		t.Errorf("seq restarts per transaction: got %d and %d, want 2 and 0", evs[2].Change.Seq, evs[3].Change.Seq)
	}
}

func TestSnapshotReadsAreCreatesAndNoiseIsSkipped(t *testing.T) {
	evs := decodeAll(t, Config{KeyColumns: []string{"id"}}, "snapshot_and_noise")
	want := "CREATE public.snap[7] before={} after={\"id\":7}\nCREATE public.snap[8] before={} after={\"id\":8}"
	if got := renderAll(evs); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestMalformedMessagesAreReportedWithTheirReason(t *testing.T) {
	d := NewDecoder(Config{})
	_, vals := messages(t, "malformed")
	// The last holds a NUL in a string: no PostgreSQL text can, and the
	// audit table's jsonb would refuse it.
	wantReasons := []string{ReasonNotJSON, ReasonUnknownOp, ReasonNoSource, ReasonBadValue, ReasonBadValue}
	if len(vals) != len(wantReasons) {
		t.Fatalf("%d messages, %d reasons", len(vals), len(wantReasons))
	}
	for i, v := range vals {
		_, err := d.Decode(nil, v)
		var bad *Malformed
		if !errors.As(err, &bad) || bad.Reason != wantReasons[i] {
			t.Errorf("line %d: got %v, want reason %s", i+1, err, wantReasons[i])
		}
	}
	// A tombstone is no error and no event.
	if evs, err := d.Decode([]byte(`{"id":1}`), nil); err != nil || len(evs) != 0 {
		t.Fatalf("tombstone: %v %v", evs, err)
	}
}

func TestKeyTextIsPostgresText(t *testing.T) {
	for _, c := range []struct {
		schema, value, want string
	}{
		{`{"type":"boolean"}`, `true`, "t"},
		{`{"type":"int64","name":"io.debezium.time.MicroTimestamp"}`, `1709212455123456`, "2024-02-29 13:14:15.123456"},
		{`{"type":"string","name":"io.debezium.time.ZonedTimestamp"}`, `"2024-02-29T11:14:15.5Z"`, "2024-02-29 11:14:15.5+00"},
		{`{"type":"bytes"}`, `"AP8Q"`, `\x00ff10`},
		{`{"type":"string"}`, `"a b"`, "a b"},
		{`{"type":"bytes","name":"org.apache.kafka.connect.data.Decimal","parameters":{"scale":"2"}}`, `"AJY="`, "1.50"},
	} {
		var s schema
		if err := json.Unmarshal([]byte(c.schema), &s); err != nil {
			t.Fatal(err)
		}
		d := NewDecoder(Config{})
		got, err := d.keyText([]column{{"k", json.RawMessage(c.value)}}, &rowSchemas{cols: map[string]*schema{"k": &s}})
		if err != nil || got != c.want {
			t.Errorf("%s %s: got %q (%v), want %q", c.schema, c.value, got, err, c.want)
		}
	}
}

// TestColumnsSplitsAnObjectAsEncodingJSONDoes: the scanner that replaced
// encoding/json's tokenizer finds the same names and raw values.
func TestColumnsSplitsAnObjectAsEncodingJSONDoes(t *testing.T) {
	for _, in := range []string{
		`{}`,
		` { } `,
		`{"a":1,"b":"x","c":null,"d":true,"e":false,"f":-1.5e3}`,
		"{ \"a\" :\t[1, {\"b\": [\"]}\"]}] ,\n" + `"c\"q": {"}": "{\\\"}"} , "\u00e9": "\"" }`,
		`{"nested":{"x":{"y":[[],{}]}},"s":"a,b}c]"}`,
	} {
		got, err := columns(json.RawMessage(in))
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		dec := json.NewDecoder(strings.NewReader(in))
		dec.Token()
		var want []column
		for dec.More() {
			k, _ := dec.Token()
			var v json.RawMessage
			if err := dec.Decode(&v); err != nil {
				t.Fatal(err)
			}
			want = append(want, column{k.(string), v})
		}
		if fmt.Sprint(got) != fmt.Sprint(want) && !(len(got) == 0 && len(want) == 0) {
			t.Errorf("%s:\n got %q\nwant %q", in, got, want)
		}
	}
	if _, err := columns(json.RawMessage(`[1]`)); err == nil {
		t.Error("an array is not a row")
	}
	if cols, err := columns(json.RawMessage(`null`)); err != nil || cols != nil {
		t.Errorf("null: %v %v", cols, err)
	}
	for raw, want := range map[string]string{`"plain"`: "plain", `"a\"b"`: `a"b`, "\"\xff\"": "\ufffd"} {
		if got, err := stringOf(json.RawMessage(raw)); err != nil || got != want {
			t.Errorf("stringOf(%s) = %q, %v; want %q", raw, got, err, want)
		}
	}
}
