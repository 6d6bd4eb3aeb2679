package debezium

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgtrail/pgtrail/core/change"
)

// typedEvent builds an insert, with the schema envelope, of one column "v"
// typed by sch (a Connect schema without its "field") and valued value.
func typedEvent(sch, value string) []byte {
	return []byte(`{"schema":{"type":"struct","fields":[{"type":"struct","field":"after","fields":[` +
		strings.TrimSuffix(sch, "}") + `,"field":"v"}]}]},"payload":{"op":"c","after":{"v":` + value + `},` +
		`"source":{"db":"app","schema":"public","table":"t","txId":7,"lsn":100,"ts_us":1709205255500123}}}`)
}

const (
	decimalJSON  = `{"type":"bytes","name":"org.apache.kafka.connect.data.Decimal","parameters":{"scale":"%s"}}`
	varScaleJSON = `{"type":"struct","name":"io.debezium.data.VariableScaleDecimal"}`
	bitsJSON     = `{"type":"bytes","name":"io.debezium.data.Bits","parameters":{"length":"%s"}}`
)

func schemaOf(name, typ string) string { return `{"type":"` + typ + `","name":"` + name + `"}` }

func param(format, v string) string { return strings.Replace(format, "%s", v, 1) }

// TestOutOfRangeSizesAndTimesAreMalformed: a scale, length or time that no
// PostgreSQL value has is the message's error, naming the column and what is
// wrong; before, these panicked (a scale of -2^63: makeslice, so the message
// was never acknowledged and pgtrail crash-looped), wrote invalid JSON (a
// MicroTime of -140 or 440 hours: `""0:00:00"`, which failed every write of
// its batch) or turned a few hundred bytes into 50 MB.
func TestOutOfRangeSizesAndTimesAreMalformed(t *testing.T) {
	one := base64.StdEncoding.EncodeToString([]byte{1})
	for _, c := range []struct{ name, sch, value, want string }{
		{"decimal scale -2^63", param(decimalJSON, "-9223372036854775808"), `"` + one + `"`, "scale -9223372036854775808 is outside PostgreSQL's numeric range (-1000 to 16383)"},
		{"decimal scale 5e7", param(decimalJSON, "50000000"), `"` + one + `"`, "scale 50000000 is outside"},
		{"variable scale -2^63", varScaleJSON, `{"scale":-9223372036854775808,"value":"` + one + `"}`, "scale -9223372036854775808 is outside"},
		{"variable scale 5e7", varScaleJSON, `{"scale":50000000,"value":"` + one + `"}`, "scale 50000000 is outside"},
		{"decimal too many digits", param(decimalJSON, "0"), `"` + base64.StdEncoding.EncodeToString(append([]byte{1}, make([]byte, 61300)...)) + `"`, "more than the 131072 digits"},
		{"MicroTime -140 h", schemaOf(microTime, "int64"), "-504000000000", "time of day -504000000000 µs is outside PostgreSQL's range (00:00:00 to 24:00:00)"},
		{"MicroTime 440 h", schemaOf(microTime, "int64"), "1584000000000", "time of day 1584000000000 µs is outside"},
		{"MicroTime past 24:00", schemaOf(microTime, "int64"), "86400000001", "time of day 86400000001 µs is outside"},
		{"Time ms overflowing µs", schemaOf(milliTime, "int32"), "9223372036854775807", "time of day 9223372036854775807 ms is outside"},
		{"NanoTime below midnight", schemaOf(nanoTime, "int64"), "-1", "time of day -1 ns is outside"},
		{"Bits length 5e7", param(bitsJSON, "50000000"), `"` + one + `"`, "bit string length 50000000 needs 6250000 bytes, the value has 1"},
		{"Bits length past bit's limit", param(bitsJSON, "83886081"), `"` + one + `"`, "bit string length 83886081 is outside PostgreSQL's range (1 to 83886080)"},
		{"Bits set past the length", param(bitsJSON, "3"), `"/w=="`, "bit 3 is set, past the bit string length 3"},
		{"Date days overflowing seconds", schemaOf(debeziumDate, "int32"), "106751991167", "date 106751991167 days from 1970-01-01 is outside PostgreSQL's range (4714-11-24 BC to 5874897-12-31)"},
		{"Date before 4714 BC", schemaOf(debeziumDate, "int32"), "-2440589", "date -2440589 days"},
		{"Date after 5874897", schemaOf(debeziumDate, "int32"), "2145042906", "date 2145042906 days"},
		{"MicroTimestamp before 4714 BC", schemaOf(microTimestamp, "int64"), "-210866803200000001", "timestamp -210866803200000001 µs from 1970-01-01 is outside PostgreSQL's range (4714-11-24 00:00:00 BC to 294276-12-31 23:59:59.999999)"},
		{"Timestamp ms after 294276", schemaOf(milliTimestamp, "int64"), "9224318016000000", "timestamp 9224318016000000 ms"},
		{"Connect Timestamp ms -2^63", schemaOf(connectTimestamp, "int64"), "-9223372036854775807", "timestamp -9223372036854775807 ms"},
		{"ZonedTimestamp after 294276", schemaOf(zonedTimestamp, "string"), `"+294277-01-01T00:00:00Z"`, `timestamp "+294277-01-01T00:00:00Z" is outside PostgreSQL's range`},
		{"ZonedTimestamp before 4714 BC", schemaOf(zonedTimestamp, "string"), `"-4713-11-24T00:59:59+01:00"`, `timestamp "-4713-11-24T00:59:59+01:00" is outside`},
		{"ZonedTimestamp February 29 of 10001", schemaOf(zonedTimestamp, "string"), `"+10001-02-29T00:00:00Z"`, "10001 has no February 29"},
		{"Interval months past int32", schemaOf(isoInterval, "string"), `"P178956971Y"`, `interval "P178956971Y" is outside PostgreSQL's range`},
		{"Interval days past int32", schemaOf(isoInterval, "string"), `"P2147483648D"`, `interval "P2147483648D" is outside`},
		{"Interval time past int64 µs", schemaOf(isoInterval, "string"), `"PT2562047789H"`, `interval "PT2562047789H" is outside`},
		{"Interval seconds -2^63", schemaOf(isoInterval, "string"), `"PT-9223372036854775808S"`, `interval "PT-9223372036854775808S" is outside`},
	} {
		t.Run(c.name, func(t *testing.T) {
			evs, err := NewDecoder(Config{}).Decode(nil, typedEvent(c.sch, c.value))
			var bad *Malformed
			if !errors.As(err, &bad) || bad.Reason != ReasonBadValue {
				t.Fatalf("got %v (events %v), want a malformed %s error", err, evs, ReasonBadValue)
			}
			if msg := err.Error(); !strings.Contains(msg, `column "v": `) || !strings.Contains(msg, c.want) {
				t.Fatalf("error %q, want it to name column \"v\" and say %q", msg, c.want)
			}
		})
	}
}

// TestValuesAtPostgresLimitsAreKept: the bounds are PostgreSQL's own, so
// the extreme values it can hold still decode; so do a timestamptz past 9999
// or BC, which Java writes with a signed year (time.Parse refused them: the
// message was dead-lettered) and Debezium's infinite dates (stored as the
// dates 5877611-06-21 and -5877611-06-22 before).
func TestValuesAtPostgresLimitsAreKept(t *testing.T) {
	one := base64.StdEncoding.EncodeToString([]byte{1})
	for _, c := range []struct{ name, sch, value, want string }{
		{"date 4714-11-24 BC", schemaOf(debeziumDate, "int32"), "-2440588", `"-4713-11-24"`},
		{"date 5874897-12-31", schemaOf(debeziumDate, "int32"), "2145042905", `"5874897-12-31"`},
		{"Debezium's date infinity", schemaOf(debeziumDate, "int32"), "2146033979", `"infinity"`},
		{"Debezium's date -infinity", schemaOf(debeziumDate, "int32"), "-2147472691", `"-infinity"`},
		{"time 24:00:00", schemaOf(microTime, "int64"), "86400000000", `"24:00:00"`},
		{"time ms 24:00:00", schemaOf(milliTime, "int32"), "86400000", `"24:00:00"`},
		{"time ns", schemaOf(nanoTime, "int64"), "86399999999999", `"23:59:59.999999"`},
		{"timestamp 4714-11-24 BC", schemaOf(microTimestamp, "int64"), "-210866803200000000", `"-4713-11-24T00:00:00"`},
		{"timestamp µs max", schemaOf(microTimestamp, "int64"), "9223372036854775807", `"294247-01-10T04:00:54.775807"`},
		{"timestamp ms 294276-12-31", schemaOf(milliTimestamp, "int64"), "9224318015999999", `"294276-12-31T23:59:59.999"`},
		{"timestamptz past 9999", schemaOf(zonedTimestamp, "string"), `"+10000-02-29T01:02:03.5Z"`, `"10000-02-29T01:02:03.5Z"`},
		{"timestamptz 44 BC", schemaOf(zonedTimestamp, "string"), `"-0043-03-15T12:00:00+01:00"`, `"-0043-03-15T11:00:00Z"`},
		{"timestamptz 4714-11-24 BC", schemaOf(zonedTimestamp, "string"), `"-4713-11-24T00:00:00Z"`, `"-4713-11-24T00:00:00Z"`},
		{"timestamptz 294276-12-31", schemaOf(zonedTimestamp, "string"), `"+294276-12-31T23:59:59.999999Z"`, `"294276-12-31T23:59:59.999999Z"`},
		{"decimal scale 16383", param(decimalJSON, "16383"), `"` + one + `"`, `"0.` + strings.Repeat("0", 16382) + `1"`},
		{"decimal scale -1000", param(decimalJSON, "-1000"), `"` + one + `"`, `"1` + strings.Repeat("0", 1000) + `"`},
		{"Bits padded", param(bitsJSON, "12"), `"BQA="`, `"000000000101"`},
		{"Bits of a number", param(bitsJSON, "40"), `"BQ=="`, `"` + strings.Repeat("0", 37) + `101"`},
		{"interval extremes", schemaOf(isoInterval, "string"), `"P178956970Y7M2147483647DT2562047788H0M0S"`, `"P178956970Y7M2147483647DT2562047788H"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			evs, err := NewDecoder(Config{}).Decode(nil, typedEvent(c.sch, c.value))
			if err != nil {
				t.Fatal(err)
			}
			if got, want := string(evs[0].Change.After), `{"v":`+c.want+`}`; got != want {
				t.Fatalf("got %.200s, want %.200s", got, want)
			}
		})
	}
}

// panickyCatalog stands for any bug that panics inside Decode.
type panickyCatalog struct{}

func (panickyCatalog) Table(context.Context, string, string) (*Table, error) {
	var m map[string]int
	m["boom"]++ // assignment to entry in nil map
	return nil, nil
}

// TestDecoderPanicIsAMalformedMessage: a panic inside Decode is recovered
// and reported as the message's error (reason decoder_panic, where it
// happened), so the broker sources dead-letter it and go on instead of
// crash-looping on it; the stream's state is as it was before the message.
func TestDecoderPanicIsAMalformedMessage(t *testing.T) {
	d := NewDecoder(Config{Catalog: panickyCatalog{}})
	msg := func(txid int, prefix string) []byte {
		b, _ := json.Marshal(map[string]any{"op": "m", "source": map[string]any{"db": "app", "txId": txid, "lsn": 90, "ts_us": 1},
			"message": map[string]any{"prefix": prefix, "content": base64.StdEncoding.EncodeToString([]byte(`{"u":1}`))}})
		return b
	}
	if _, err := d.Decode(nil, msg(7, "_bemi")); err != nil {
		t.Fatal(err)
	}
	before := d.txn
	_, err := d.Decode(nil, event("c", "null", `{"id":1}`, 5))
	var bad *Malformed
	if !errors.As(err, &bad) || bad.Reason != ReasonPanic {
		t.Fatalf("got %v, want a malformed %s error", err, ReasonPanic)
	}
	if msg := err.Error(); !strings.Contains(msg, "assignment to entry in nil map") || !strings.Contains(msg, "panickyCatalog.Table") {
		t.Fatalf("error %q, want the panic and where it happened", msg)
	}
	if d.txn != before {
		t.Fatalf("stream state changed by the failed message: %+v, was %+v", d.txn, before)
	}
	// The stream goes on.
	evs, err := d.Decode(nil, msg(8, "pgtrail"))
	if err != nil || len(evs) != 1 || evs[0].XID != 8 {
		t.Fatalf("next message: %v %v", evs, err)
	}
}

// sourceEvent builds an insert of table public.t whose source block is src.
func sourceEvent(src map[string]any, envelopeTsMs any) []byte {
	v := map[string]any{"op": "c", "before": nil, "after": map[string]any{"id": 1}, "source": src}
	if envelopeTsMs != nil {
		v["ts_ms"] = envelopeTsMs
	}
	b, _ := json.Marshal(v)
	return b
}

func baseSource() map[string]any {
	return map[string]any{"db": "app", "schema": "public", "table": "t", "txId": 7, "lsn": 100}
}

// TestCommitTimeIsTheSourcesAndTheSameOnEveryDelivery: committed_at is in
// the audit table's key, so it must come out the same each time an event is
// read: from source.ts_us, ts_ns or ts_ms, the commit's time in the WAL. The
// envelope's ts_ms is when the connector processed the event, which differs
// when the connector streams the same change again after a restart; an event
// without a source time was stored with the time it was read, which differs
// on every re-delivery: both stored a replayed change twice. Such an event is
// now malformed.
func TestCommitTimeIsTheSourcesAndTheSameOnEveryDelivery(t *testing.T) {
	decode := func(v []byte) (*change.Change, error) {
		evs, err := NewDecoder(Config{KeyColumns: []string{"id"}}).Decode(nil, v) // a fresh decoder: a restart
		if err != nil {
			return nil, err
		}
		return evs[0].Change, nil
	}
	withTs := func(k string, v int64) map[string]any { s := baseSource(); s[k] = v; return s }
	for _, c := range []struct {
		src  map[string]any
		want time.Time
	}{
		{withTs("ts_us", 1709205255500123), time.UnixMicro(1709205255500123)},
		{withTs("ts_ns", 1709205255500123456), time.UnixMicro(1709205255500123)},
		{withTs("ts_ms", 1709205255500), time.UnixMilli(1709205255500)},
	} {
		first, err := decode(sourceEvent(c.src, int64(1709205300000)))
		if err != nil {
			t.Fatal(err)
		}
		again, err := decode(sourceEvent(c.src, int64(1709205399999))) // re-emitted by the connector later
		if err != nil {
			t.Fatal(err)
		}
		if !first.CommittedAt.Equal(c.want) || !again.CommittedAt.Equal(c.want) || first.ID != again.ID {
			t.Fatalf("%v: committed at %v then %v (ids %s, %s), want %v both times", c.src, first.CommittedAt, again.CommittedAt, first.ID, again.ID, c.want)
		}
	}
	nullTs := baseSource()
	nullTs["ts_ms"] = nil
	for name, v := range map[string][]byte{
		"no time at all":            sourceEvent(baseSource(), nil),
		"only the envelope's":       sourceEvent(baseSource(), int64(1709205300000)),
		"source ts_ms null":         sourceEvent(nullTs, nil),
		"ts_ms past the timestamps": sourceEvent(withTs("ts_ms", 9223372036854775807), nil),
	} {
		c, err := decode(v)
		var bad *Malformed
		if !errors.As(err, &bad) || bad.Reason != ReasonNoSource || !strings.Contains(err.Error(), "commit time") {
			t.Errorf("%s: got %v (change %+v), want a malformed %s error about the commit time", name, err, c, ReasonNoSource)
		}
	}
}

// TestWideMessagesDecodeInLinearTime: ordering a key's columns by the row
// image looked each one up by a scan of the image (and so did trimming a
// key-only old image, and taking placeholders' values from the old image):
// a 0.5 MB message of 20000 key columns took 26 s, blocking its stream. Now
// it takes a fraction of a second.
func TestWideMessagesDecodeInLinearTime(t *testing.T) {
	const n = 20000
	var key, after, before, toasted strings.Builder
	for i := range n {
		sep := ","
		if i == 0 {
			sep = ""
		}
		fmt.Fprintf(&key, `%s"c%d":%d`, sep, n-i, n-i) // reversed: the key is sorted
		fmt.Fprintf(&after, `%s"c%d":%d`, sep, i, i)
		fmt.Fprintf(&toasted, `%s"c%d":"__debezium_unavailable_value"`, sep, i)
		if i == 0 {
			before.WriteString(`"c0":null`) // a key-only old image, padded
		} else {
			fmt.Fprintf(&before, `,"c%d":%d`, i, i)
		}
	}
	src := `"source":{"db":"app","schema":"public","table":"t","txId":7,"lsn":100,"ts_us":1}`
	for name, m := range map[string][2]string{
		"wide key":          {"{" + key.String() + "}", `{"op":"u","before":{` + before.String() + `},"after":{` + after.String() + `},` + src + `}`},
		"many placeholders": {"", `{"op":"u","before":{` + after.String() + `},"after":{` + toasted.String() + `},` + src + `}`},
	} {
		start := time.Now()
		evs, err := NewDecoder(Config{}).Decode([]byte(m[0]), []byte(m[1]))
		if took := time.Since(start); err != nil || len(evs) != 1 || took > 3*time.Second {
			t.Errorf("%s: %d events, %v, in %v; want one in well under 3 s", name, len(evs), err, took)
		}
		if c := evs[0].Change; !json.Valid(c.After) || len(c.After) < len(after.String()) {
			t.Errorf("%s: after of %d bytes, want every column", name, len(c.After))
		}
	}
}

// TestNamesAndImagesNoSinkCanStoreAreMalformed: a NUL in a database, table or
// column name went into the record (a name, or a key of the after image's
// JSON as \u0000), which PostgreSQL's text and jsonb refuse: every write of
// the batch failed. A column named twice whose old value is taken for a
// placeholder was copied each time: 1 kB of old value and a few hundred
// bytes of names made megabytes. Each is the message's error now. A name,
// or a string in an untyped object, that is not UTF-8 (which PostgreSQL's
// text refuses) is read as encoding/json reads strings, with U+FFFD.
func TestNamesAndImagesNoSinkCanStoreAreMalformed(t *testing.T) {
	src := `"source":{"db":"app","schema":"public","table":"t","txId":7,"lsn":100,"ts_us":1}`
	many := strings.Repeat(`,"v":"__debezium_unavailable_value"`, 1000)
	for _, c := range []struct{ key, value, reason, want string }{
		{"", `{"op":"c","after":{"id":1},"source":{"db":"a\u0000pp","schema":"public","table":"t","txId":7,"lsn":100,"ts_us":1}}`,
			ReasonNoSource, `source.db "a\x00pp" holds a NUL character`},
		{"", `{"op":"c","after":{"id":1,"n\u0000te":2},` + src + `}`, ReasonBadValue, `after: column name "n\x00te" holds a NUL character`},
		{`{"i\u0000d":1}`, `{"op":"c","after":{"id":1},` + src + `}`, ReasonBadValue, `key: column name "i\x00d" holds a NUL character`},
		{"", `{"op":"u","before":{"v":"` + strings.Repeat("x", 1000) + `"},"after":{"v":"__debezium_unavailable_value"` + many + `},` + src + `}`,
			ReasonBadValue, `column "v" appears twice`},
	} {
		evs, err := NewDecoder(Config{}).Decode([]byte(c.key), []byte(c.value))
		var bad *Malformed
		if !errors.As(err, &bad) || bad.Reason != c.reason || !strings.Contains(err.Error(), c.want) {
			size := 0
			for _, ev := range evs {
				size += len(ev.Change.After)
			}
			t.Errorf("%.80s: got %v (%d bytes of after), want a malformed %s error saying %q", c.value, err, size, c.reason, c.want)
		}
	}
	evs, err := NewDecoder(Config{}).Decode(nil, []byte("{\"op\":\"u\",\"before\":null,\"after\":{\"\xffv\":\"__debezium_unavailable_value\",\"w\":1},"+src+"}"))
	if err != nil || string(evs[0].Change.After) != `{"w":1}` || fmt.Sprint(evs[0].Change.UnchangedToast) != "[\ufffdv]" {
		t.Fatalf("a name that is not UTF-8: %v %v", evs, err)
	}
	evs, err = NewDecoder(Config{}).Decode(nil, []byte("{\"op\":\"c\",\"after\":{\"v\":{\"\xff\":[\"a\xe4\xb8\"]}},"+src+"}"))
	if err != nil || string(evs[0].Change.After) != "{\"v\":{\"\ufffd\":[\"a\ufffd\ufffd\"]}}" {
		t.Fatalf("an untyped object holding bytes that are not UTF-8: %q %v", evs[0].Change.After, err)
	}
}
