package debezium

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/pgtrail/pgtrail/core/values"
)

// maxGrowth bounds what a message decodes to: at most this many bytes of
// records per byte of message (and maxGrowthSlack more). The largest growth
// PostgreSQL's own values allow is a VariableScaleDecimal of scale 16383 and
// no digits, 27 bytes that are 16385 digits (607 a byte), which a primary key
// taken from the row image repeats.
const (
	maxGrowth      = 2048
	maxGrowthSlack = 64 << 10
)

// FuzzDecode decodes any message, key and value, as Debezium events, with and
// without a catalog, and checks what a sink would store: no panic (the
// decoder recovers one as ReasonPanic, a bug all the same), images that are
// JSON objects jsonb takes, names and keys that PostgreSQL text takes,
// commit times in timestamptz's range, and records at most maxGrowth bytes a
// byte of message. Its seeds are the fixtures and the hostile messages that
// crashed, broke the JSON of or blew up the decoder.
func FuzzDecode(f *testing.F) {
	for _, v := range fixtureMessages(f) {
		f.Add(v[0], v[1])
	}
	for _, v := range hostileMessages() {
		f.Add([]byte(nil), v)
	}
	f.Add([]byte(`{"id\u0000":1}`), sourceEvent(baseSource(), nil))
	f.Fuzz(func(t *testing.T, key, value []byte) {
		for _, cfg := range []Config{
			{KeyColumns: []string{"id"}},
			{BinaryHandling: "hex", Placeholder: "__bemi_unavailable_value"},
			{Catalog: &fixedCatalog{tables: fuzzTables()}},
		} {
			d := NewDecoder(cfg)
			evs, err := d.Decode(key, value)
			var bad *Malformed
			if errors.As(err, &bad) && bad.Reason == ReasonPanic {
				t.Fatalf("%v\nkey %q\nvalue %q", err, key, value)
			}
			evs = append(evs, d.Flush()...)
			size := 0
			for _, ev := range evs {
				size += checkEvent(t, ev)
			}
			if limit := maxGrowth*(len(key)+len(value)) + maxGrowthSlack; size > limit {
				t.Fatalf("%d bytes of message decoded to %d bytes of records, more than %d", len(key)+len(value), size, limit)
			}
		}
	})
}

// checkEvent fails t unless a sink can store ev's change; it returns the
// change's size.
func checkEvent(t *testing.T, ev Event) int {
	t.Helper()
	if ev.Kind == Message {
		return len(ev.Prefix) + len(ev.Content)
	}
	c := ev.Change
	for name, img := range map[string][]byte{"before": c.Before, "after": c.After} {
		if len(img) == 0 || img[0] != '{' || !values.Embeddable(img) || !utf8.Valid(img) {
			t.Fatalf("%s is not a JSON object jsonb takes: %.300q", name, img)
		}
	}
	texts := append([]string{c.Database, c.Schema, c.Table, c.PrimaryKey}, c.UnchangedToast...)
	size := len(c.Before) + len(c.After)
	for _, s := range texts {
		if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
			t.Fatalf("text PostgreSQL refuses: %q", s)
		}
		size += len(s)
	}
	if !values.InTimestampRange(c.CommittedAt) {
		t.Fatalf("committed at %v, outside timestamptz", c.CommittedAt)
	}
	return size
}

// fuzzTables is a catalog of the typed tables of the fixtures and of the
// hostile messages.
func fuzzTables() map[string]*Table {
	tables := bedTables()
	tables["public.t"] = &Table{Columns: []Column{notNull(col("id", "int4")), col("v", "numeric"), mod(col("b", "bit"), 12),
		col("d", "date"), col("tm", "time"), col("ts", "timestamp"), col("tz", "timestamptz"), col("iv", "interval"),
		col("j", "json"), array(col("a", "numeric")), col("note", "text")},
		ReplicaIdentity: 'd', Identity: []string{"id"}, PrimaryKey: []string{"id"}}
	return tables
}

// fixtureMessages returns every recorded and written message of testdata,
// with its key.
func fixtureMessages(f *testing.F) [][2][]byte {
	var out [][2][]byte
	for _, dir := range []string{"testdata", filepath.Join("testdata", "recorded")} {
		names, _ := filepath.Glob(filepath.Join(dir, "*.jsonl"))
		for _, name := range names {
			if strings.HasSuffix(name, ".keys.jsonl") {
				continue
			}
			vals, keys := lines(f, name), lines(f, strings.TrimSuffix(name, ".jsonl")+".keys.jsonl")
			for i, v := range vals {
				var k []byte
				if i < len(keys) {
					k = keys[i]
				}
				out = append(out, [2][]byte{k, v})
			}
		}
	}
	if len(out) == 0 {
		f.Fatal("no fixtures")
	}
	return out
}

func lines(f *testing.F, path string) [][]byte {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		f.Fatal(err)
	}
	var out [][]byte
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		out = append(out, bytes.Clone(sc.Bytes()))
	}
	return out
}

// hostileMessages are messages that crashed the decoder, broke its JSON or
// blew it up, and their neighbours: PostgreSQL's limits and one past them,
// NUL escapes, invalid UTF-8, deep nesting, numbers no float holds.
func hostileMessages() [][]byte {
	one := base64.StdEncoding.EncodeToString([]byte{1})
	deep := strings.Repeat("[", 20000) + strings.Repeat("]", 20000)
	out := [][]byte{
		typedEvent(param(decimalJSON, "-9223372036854775808"), `"`+one+`"`),
		typedEvent(param(decimalJSON, "50000000"), `"`+one+`"`),
		typedEvent(param(decimalJSON, "16383"), `"`+one+`"`),
		typedEvent(varScaleJSON, `{"scale":-9223372036854775808,"value":"`+one+`"}`),
		typedEvent(varScaleJSON, `{"scale":16383,"value":""}`),
		typedEvent(varScaleJSON, `{"scale":1e1000000,"value":"AQ=="}`),
		typedEvent(schemaOf(microTime, "int64"), "-504000000000"),
		typedEvent(schemaOf(microTime, "int64"), "1584000000000"),
		typedEvent(schemaOf(milliTime, "int32"), "9223372036854775807"),
		typedEvent(schemaOf(nanoTime, "int64"), "-1"),
		typedEvent(param(bitsJSON, "50000000"), `"`+one+`"`),
		typedEvent(param(bitsJSON, "64"), `""`),
		typedEvent(schemaOf(debeziumDate, "int32"), "106751991167"),
		typedEvent(schemaOf(debeziumDate, "int32"), "-2147472692"),
		typedEvent(schemaOf(microTimestamp, "int64"), "-9223372036854775808"),
		typedEvent(schemaOf(milliTimestamp, "int64"), "9223372036854775807"),
		typedEvent(schemaOf(zonedTimestamp, "string"), `"+294277-01-01T00:00:00Z"`),
		typedEvent(schemaOf(zonedTime, "string"), `"23:59:59.999999+99:59"`),
		typedEvent(schemaOf(isoInterval, "string"), `"P178956971Y0M2147483648DT2562047789H0M-9223372036854775808.999999999S"`),
		typedEvent(schemaOf(microDuration, "int64"), "-9223372036854775808"),
		typedEvent(schemaOf(debeziumJSON, "string"), `"{\"a\":1e1000000,\"b\":\"\\u0000\",\"c\":\"\\ud800\"}"`),
		typedEvent(schemaOf(debeziumJSON, "string"), `"`+strings.Repeat(`{\"a\":`, 5000)+`1`+strings.Repeat("}", 5000)+`"`),
		typedEvent(`{"type":"array","items":{"type":"array","items":{"type":"double"}}}`, `[[1e1000000],[NaN]]`),
		typedEvent(`{"type":"double"}`, `1e1000000`),
		typedEvent(`{"type":"string"}`, `"a\u0000b"`),
		typedEvent(`{"type":"string"}`, "\"\xff\xfe\xe4\xb8\""),
		typedEvent(`{"type":"bytes"}`, `"`+strings.Repeat("A", 4000)+`"`),
		[]byte(`{"op":"c","after":{"v":` + deep + `},"source":{"db":"app","schema":"public","table":"t","txId":7,"lsn":100,"ts_us":1}}`),
		[]byte(`{"op":"c","after":{"id":1,"v":1e1000000,"a\u0000":2,"` + "\xff" + `":3},"source":{"db":"app","schema":"public","table":"t","txId":7,"lsn":100,"ts_us":1}}`),
		[]byte(`{"op":"c","after":{"id":1,"v":{"` + "\xff" + `":["` + "a\xe4\xb8" + `"]}},"source":{"db":"app","schema":"public","table":"t","txId":7,"lsn":100,"ts_us":1}}`),
		[]byte(`{"op":"c","after":{"id":1},"source":{"db":"a\u0000pp","schema":"public","table":"t","txId":7,"lsn":100,"ts_us":1}}`),
		[]byte(`{"op":"u","before":{"v":"` + strings.Repeat("x", 1000) + `"},"after":{"v":"__debezium_unavailable_value","v":"__debezium_unavailable_value","v":"__debezium_unavailable_value"},"source":{"db":"app","schema":"public","table":"t","txId":7,"lsn":100,"ts_us":1}}`),
		[]byte(`{"op":"m","source":{"db":"app","txId":7,"lsn":100},"message":{"prefix":"_bemi","content":"eyJhIjoiXHUwMDAwIn0="}}`),
		[]byte(`{"op":"c","after":{"id":1},"source":{"db":"app","schema":"public","table":"t","txId":7,"lsn":100}}`),
		[]byte(`{"op":"c","after":{"id":1},"source":{"db":"app","schema":"public","table":"t","txId":7,"lsn":100,"ts_ms":-9223372036854775808}}`),
		[]byte(`{"op":"c","after":{"id":1},"source":{"db":"app","schema":"public","table":"t","txId":7,"lsn":100,"ts_ns":1e30}}`),
		[]byte(`{"schema":` + deep + `,"payload":null}`),
	}
	// Every column of the catalog's public.t at once, without the envelope.
	out = append(out, []byte(`{"op":"c","before":null,"after":{"id":1,"v":{"scale":16383,"value":""},"b":"/w8=","d":2146033979,"tm":86400000000,`+
		`"ts":-210866803200000000,"tz":"-4713-11-24T00:00:00Z","iv":"P1Y","j":"{\"a\":[1,2]}","a":[{"scale":2,"value":"AJY="}],"note":"x"},`+
		`"source":{"db":"app","schema":"public","table":"t","txId":7,"lsn":100,"ts_us":1}}`))
	return out
}
