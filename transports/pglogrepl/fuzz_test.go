package pglogrepl

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"runtime"
	"strings"
	"testing"
	"time"

	repl "github.com/jackc/pglogrepl"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/pipeline"
	"github.com/pgtrail/pgtrail/core/values"
)

// Relations of the fuzzed stream: one of a column of each built-in type
// capture maps (jsonb aside: jsonb_out's text is embedded unchecked, as only
// the server writes it), one with a composite key, one not stored.
const (
	fuzzTyped, fuzzComposite, fuzzSkipped = 16384, 16385, 16386
)

var fuzzOIDs = []uint32{23, 25, 1700, 16, 701, 114, 2950, 17, 1114, 1184, 1082, 1083, 1266, 790, 1007, 1009, 1231, 603, 1020, 1186, 20, 1043}

func fuzzDecoder() *decoder {
	rel := func(store bool, oids []uint32, key ...int) *relation {
		r := &relation{schema: "public", table: "t", store: store, oids: oids, key: key}
		for i := range oids {
			name := string(rune('a' + i))
			r.columns = append(r.columns, name)
			r.names = append(r.names, append(values.AppendString(nil, name), ':'))
		}
		return r
	}
	// No table matches the (empty) include patterns, so a relation message
	// is decoded without the look-ups that need a database.
	return &decoder{database: "app", types: NewTypes(nil), rels: map[uint32]*relation{
		fuzzTyped:     rel(true, fuzzOIDs, 0),
		fuzzComposite: rel(true, []uint32{23, 25, 1184}, 0, 1),
		fuzzSkipped:   rel(false, []uint32{23}),
	}}
}

// FuzzDecode decodes any pgoutput message inside a transaction, as capture
// does: no panic, every row image valid JSON, and records at most 16 bytes a
// byte of message (escaping a control character takes 6, a composite key
// repeats its values). A row message that parses must parse as pglogrepl's
// ParseV2 parses it.
func FuzzDecode(f *testing.F) {
	for _, m := range rowMessages {
		f.Add(m)
	}
	for _, m := range fuzzMessages() {
		f.Add(m)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		d := fuzzDecoder()
		size := 0
		emit := func(ev pipeline.Event) error {
			if c := ev.Change; c != nil && ev.Kind == pipeline.Row {
				for _, img := range [][]byte{c.Before, c.After} {
					if !json.Valid(img) || img[0] != '{' {
						t.Fatalf("image %q of message %q is no JSON object", img, msg)
					}
				}
				size += len(c.Before) + len(c.After) + len(c.PrimaryKey)
			}
			return nil
		}
		begin := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64([]byte{'B'}, 0x2000), 0)
		ctx := context.Background()
		if err := d.decode(ctx, repl.XLogData{WALData: binary.BigEndian.AppendUint32(begin, 7)}, emit); err != nil {
			t.Fatal(err)
		}
		err := d.decode(ctx, repl.XLogData{WALStart: 0x1000, WALData: bytes.Clone(msg)}, emit)
		if size > 16*len(msg)+64 {
			t.Fatalf("%d bytes of message decoded to %d bytes of records", len(msg), size)
		}
		if err == nil && len(msg) > 0 && isRowMessage(msg[0]) {
			sameAsParseV2(t, msg)
		}
	})
}

// sameAsParseV2 fails t unless rowMessage parses msg as pglogrepl does.
func sameAsParseV2(t *testing.T, msg []byte) {
	var m rowMessage
	got, err := m.parse(msg)
	if err != nil {
		t.Fatal(err)
	}
	want, err := parseV2(msg)
	if err != nil {
		return // rowMessage reads only what capture needs, and may read more leniently
	}
	var old, new *repl.TupleData
	var relid uint32
	switch w := want.(type) {
	case *repl.InsertMessageV2:
		relid, new = w.RelationID, w.Tuple
	case *repl.UpdateMessageV2:
		relid, old, new = w.RelationID, w.OldTuple, w.NewTuple
	case *repl.DeleteMessageV2:
		relid, old = w.RelationID, w.OldTuple
	}
	if got.relID != relid || !sameTuple(got.old, old) || !sameTuple(got.new, new) {
		t.Fatalf("message %q: relation %d %s %s, ParseV2 gives %d %s %s", msg, got.relID, show(got.old), show(got.new), relid, show(old), show(new))
	}
}

// fuzzMessages are messages of every kind capture reads, at and past
// PostgreSQL's limits, and broken ones: a tuple of 65535 columns, a length
// of 4 GB, values no type has.
func fuzzMessages() [][]byte {
	texts := []any{"2147483647", "héllo \x00 \xff\"\\", "1e1000000", "t", "NaN", `{"a":"\u0000","b":1e1000000}`,
		"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", `\x00ff`, "294276-12-31 23:59:59.999999", "4714-11-24 00:00:00+00 BC",
		"5874897-12-31", "24:00:00", "23:59:59.999999-15:59:59", "$-92,233,720,368,547,758.08", `{1,NULL,"3"}`,
		`{{"a\"b",NULL},{c,d}}`, `[0:1]={1.5,NaN}`, "(1,2),(0,0);(3,4),(1,1)", `{(1,2),(0,0);(3,4),(1,1)}`,
		"P1Y2M3DT4H5M6.78S", "-9223372036854775808", "x"}
	msgs := [][]byte{
		rowMsg('I', fuzzTyped, byte('N'), tupleData(texts...)),
		rowMsg('U', fuzzComposite, byte('O'), tupleData("1", "a", "2024-01-02 03:04:05+05:30"), byte('N'), tupleData("1", "a", byte('u'))),
		rowMsg('U', fuzzComposite, byte('O'), tupleData("1", "a", "x"), byte('N'), tupleData("1", byte('u'), "infinity")),
		rowMsg('D', fuzzComposite, byte('K'), tupleData("1", "a", nil)),
		rowMsg('I', fuzzSkipped, byte('N'), tupleData("1")),
		rowMsg('I', 99999, byte('N'), tupleData("1")),
		rowMsg('I', fuzzTyped, byte('N'), append(binary.BigEndian.AppendUint16(nil, 65535), 'n')),
		rowMsg('I', fuzzTyped, byte('N'), append(binary.BigEndian.AppendUint16(nil, 1), 't', 0xff, 0xff, 0xff, 0xff, 'x')),
		rowMsg('I', fuzzTyped, byte('N'), tupleData(strings.Repeat("\x01", 1000))),
		binary.BigEndian.AppendUint32([]byte{'T'}, 2), // cut short
		binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64([]byte{'C', 0}, 0x1000), 0x2000), uint64(time.Now().UnixMicro())),
		append(append(binary.BigEndian.AppendUint64([]byte{'M', 1}, 0x1000), "pgtrail\x00"...), 0xff, 0xff, 0xff, 0xff, '{', '}'),
		append(append(binary.BigEndian.AppendUint64([]byte{'M', 1}, 0x1000), "_bemi\x00"...), 0, 0, 0, 2, '{', '}'),
		append([]byte{'R'}, binary.BigEndian.AppendUint32(nil, fuzzTyped)...),
		{'Y'}, {'O'}, {}, {0},
	}
	// A truncate of two relations: 'T' count options relid...
	trunc := binary.BigEndian.AppendUint32([]byte{'T'}, 2)
	trunc = append(trunc, 0)
	trunc = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(trunc, fuzzTyped), fuzzSkipped)
	return append(msgs, trunc)
}

// TestMalformedMessagesAreErrorsNotPanics: pglogrepl's ParseV2 panicked on
// an empty message and on a logical message whose length runs past its end,
// and allocated 4 bytes per relation a truncate claims before reading them
// (the fuzzer's worker ran out of memory on 939524098 of them).
func TestMalformedMessagesAreErrorsNotPanics(t *testing.T) {
	for _, msg := range [][]byte{
		{},
		[]byte("T8\x00\x00\x02\x00\x00\x1e@\x00\x00\x00@\x02"),
		append(append(binary.BigEndian.AppendUint64([]byte{'M', 1}, 0x1000), "pgtrail\x00"...), 0xff, 0xff, 0xff, 0xff, '{', '}'),
	} {
		d := fuzzDecoder()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		err := d.decode(context.Background(), repl.XLogData{WALStart: 0x1000, WALData: msg}, func(pipeline.Event) error { return nil })
		runtime.ReadMemStats(&after)
		if err == nil || !strings.Contains(err.Error(), "parse pgoutput message at 0/1000: malformed message") {
			t.Errorf("%q: %v", msg, err)
		}
		if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
			t.Errorf("%q: %d bytes allocated", msg, n)
		}
	}
}

// TestFuzzSeedsDecode: the seed of every type decodes, so that fuzzing
// starts from values that convert.
func TestFuzzSeedsDecode(t *testing.T) {
	d := fuzzDecoder()
	var got *change.Change
	emit := func(ev pipeline.Event) error { got = ev.Change; return nil }
	if err := d.decode(context.Background(), repl.XLogData{WALStart: 0x1000, WALData: fuzzMessages()[0]}, emit); err != nil {
		t.Fatal(err)
	}
	var after map[string]json.RawMessage
	if err := json.Unmarshal(got.After, &after); err != nil || len(after) != len(fuzzOIDs) || string(after["o"]) != "[1,null,3]" {
		t.Fatalf("after %s: %v", got.After, err)
	}
}
