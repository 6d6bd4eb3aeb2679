package pglogrepl

import (
	"context"
	"encoding/binary"
	"fmt"
	"testing"

	repl "github.com/jackc/pglogrepl"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/pipeline"
	"github.com/pgtrail/pgtrail/core/values"
)

// pgoutput messages as the server sends them.
func tupleData(cols ...any) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(cols)))
	for _, c := range cols {
		switch c := c.(type) {
		case nil:
			b = append(b, 'n')
		case byte: // 'u': unchanged TOAST
			b = append(b, c)
		case string:
			b = append(b, 't')
			b = binary.BigEndian.AppendUint32(b, uint32(len(c)))
			b = append(b, c...)
		}
	}
	return b
}

func rowMsg(kind byte, relid uint32, parts ...any) []byte {
	b := binary.BigEndian.AppendUint32([]byte{kind}, relid)
	for _, p := range parts {
		switch p := p.(type) {
		case byte:
			b = append(b, p)
		case []byte:
			b = append(b, p...)
		}
	}
	return b
}

var rowMessages = map[string][]byte{
	"insert":             rowMsg('I', 16384, byte('N'), tupleData("1", "a \"quoted\" text", nil, "{\"k\": [1, 2]}", "")),
	"update":             rowMsg('U', 16384, byte('N'), tupleData("1", "b", byte('u'))),
	"update full":        rowMsg('U', 16385, byte('O'), tupleData("1", "a", "x"), byte('N'), tupleData("1", "b", byte('u'))),
	"update of the key":  rowMsg('U', 16385, byte('K'), tupleData("1", nil, nil), byte('N'), tupleData("2", "b", "y")),
	"delete by key":      rowMsg('D', 16384, byte('K'), tupleData("7", nil)),
	"delete, full image": rowMsg('D', 16384, byte('O'), tupleData("7", "z", nil)),
}

func TestRowMessagesParseAsPglogreplParsesThem(t *testing.T) {
	var m rowMessage
	for name, msg := range rowMessages {
		want, err := repl.ParseV2(msg, false)
		if err != nil {
			t.Fatalf("%s: ParseV2: %v", name, err)
		}
		got, err := m.parse(msg)
		if err != nil {
			t.Fatalf("%s: parse: %v", name, err)
		}
		var relid uint32
		var op change.Operation
		var old, new *repl.TupleData
		var keyOnly bool
		switch w := want.(type) {
		case *repl.InsertMessageV2:
			relid, op, new = w.RelationID, change.Create, w.Tuple
		case *repl.UpdateMessageV2:
			relid, op, old, new, keyOnly = w.RelationID, change.Update, w.OldTuple, w.NewTuple, w.OldTupleType == repl.UpdateMessageTupleTypeKey
		case *repl.DeleteMessageV2:
			relid, op, old, keyOnly = w.RelationID, change.Delete, w.OldTuple, w.OldTupleType == repl.DeleteMessageTupleTypeKey
		}
		if got.relID != relid || got.op != op || got.oldKeyOnly != keyOnly {
			t.Errorf("%s: relation %d %s key-only %v, want %d %s %v", name, got.relID, got.op, got.oldKeyOnly, relid, op, keyOnly)
		}
		for _, pair := range [][2]*repl.TupleData{{got.old, old}, {got.new, new}} {
			if !sameTuple(pair[0], pair[1]) {
				t.Errorf("%s: tuple %s, want %s", name, show(pair[0]), show(pair[1]))
			}
		}
	}
}

func sameTuple(a, b *repl.TupleData) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	if a.ColumnNum != b.ColumnNum || len(a.Columns) != len(b.Columns) {
		return false
	}
	for i := range a.Columns {
		x, y := a.Columns[i], b.Columns[i]
		if x.DataType != y.DataType || x.Length != y.Length || string(x.Data) != string(y.Data) {
			return false
		}
	}
	return true
}

func show(t *repl.TupleData) string {
	if t == nil {
		return "none"
	}
	var cols []string
	for _, c := range t.Columns {
		cols = append(cols, string(c.DataType)+":"+string(c.Data))
	}
	return fmt.Sprint(cols)
}

func TestTruncatedRowMessagesAreErrors(t *testing.T) {
	var m rowMessage
	for name, msg := range rowMessages {
		for n := 0; n < len(msg); n++ {
			if _, err := m.parse(msg[:n]); err == nil {
				t.Errorf("%s cut to %d of %d bytes: no error", name, n, len(msg))
			}
		}
	}
}

// BenchmarkParseRow compares parsing an update of a 13-column row with
// REPLICA IDENTITY FULL (old and new image) by repl.ParseV2 and by
// rowMessage: rowMessage allocates nothing.
func BenchmarkParseRow(b *testing.B) {
	cols := []any{"123456", "4711", "paid", "3", "19.99", "59.97", "EUR", "leave at the back door, ring twice; ref 0cc175b9c0f1b6a831c399e269772661",
		`{"items": [{"qty": 3, "sku": "SKU-456"}], "coupon": null, "source": "web"}`, "2026-11-25 21:56:13.123456+00", "2026-11-25 21:56:13.123456+00", nil, "2"}
	msg := rowMsg('U', 16384, byte('O'), tupleData(cols...), byte('N'), tupleData(cols...))
	b.Run("ParseV2", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := repl.ParseV2(msg, false); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("rowMessage", func(b *testing.B) {
		b.ReportAllocs()
		var m rowMessage
		for b.Loop() {
			if _, err := m.parse(msg); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkDecodeUpdate decodes an update of a 13-column row with REPLICA
// IDENTITY FULL into a change, as capture does for each row change.
func BenchmarkDecodeUpdate(b *testing.B) {
	names := []string{"id", "customer_id", "status", "quantity", "unit_price", "total", "currency", "note",
		"attributes", "created_at", "updated_at", "shipped_at", "version"}
	oids := []uint32{20, 23, 25, 21, 1700, 1700, 1042, 25, 3802, 1184, 1184, 1184, 23}
	r := &relation{schema: "public", table: "orders", store: true, columns: names, oids: oids, key: []int{0}}
	for _, n := range names {
		r.names = append(r.names, append(values.AppendString(nil, n), ':'))
	}
	d := &decoder{database: "app", rels: map[uint32]*relation{16384: r}, types: NewTypes(nil), inTxn: true, xid: 7}
	cols := []any{"123456", "4711", "paid", "3", "19.99", "59.97", "EUR", "leave at the back door, ring twice; ref 0cc175b9c0f1b6a831c399e269772661",
		`{"items": [{"qty": 3, "sku": "SKU-456"}], "coupon": null, "source": "web"}`, "2026-11-25 21:56:13.123456+00", "2026-11-25 21:56:13.123456+00", nil, "2"}
	xld := repl.XLogData{WALStart: 0x1000, WALData: rowMsg('U', 16384, byte('O'), tupleData(cols...), byte('N'), tupleData(cols...))}
	var got *change.Change
	emit := func(ev pipeline.Event) error { got = ev.Change; return nil }
	b.ReportAllocs()
	for b.Loop() {
		if err := d.decode(context.Background(), xld, emit); err != nil {
			b.Fatal(err)
		}
	}
	if got == nil || got.PrimaryKey != "123456" {
		b.Fatalf("decoded %+v", got)
	}
}
