package debezium

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fixedCatalog is a Catalog of fixed definitions that counts look-ups.
type fixedCatalog struct {
	tables  map[string]*Table
	lookups map[string]int
	err     error
}

func (c *fixedCatalog) Table(_ context.Context, schema, name string) (*Table, error) {
	if c.lookups == nil {
		c.lookups = map[string]int{}
	}
	c.lookups[schema+"."+name]++
	if c.err != nil {
		return nil, c.err
	}
	return c.tables[schema+"."+name], nil
}

// Column shorthands: name, type, typmod.
func col(name, typ string) Column { return Column{Name: name, Type: typ, Typmod: -1} }
func notNull(c Column) Column     { c.NotNull = true; return c }
func array(c Column) Column       { c.Array = true; return c }
func mod(c Column, typmod int32) Column {
	c.Typmod = typmod
	return c
}

// numericMod is numeric(p,s)'s typmod.
func numericMod(p, s int32) int32 { return p<<16 | s + 4 }

// bedTables are the interop bed's tables (testdata/recorded/schema.sql) as
// the catalog reads them after its workload; TestPostgresCatalog checks
// that the real catalog reads exactly these.
func bedTables() map[string]*Table {
	pk := func(cols ...string) []string { return cols }
	return map[string]*Table{
		"public.todos": {Columns: []Column{notNull(col("id", "int4")), col("task", "text"), notNull(col("done", "bool"))},
			ReplicaIdentity: 'd', Identity: pk("id"), PrimaryKey: pk("id")},
		"public.users": {Columns: []Column{notNull(col("id", "int4")), col("name", "text")},
			ReplicaIdentity: 'd', Identity: pk("id"), PrimaryKey: pk("id")},
		"public.comments": {Columns: []Column{notNull(col("id", "int4")), col("todo_id", "int4"), col("body", "text")},
			ReplicaIdentity: 'd', Identity: pk("id"), PrimaryKey: pk("id")},
		"public.docs": {Columns: []Column{notNull(col("id", "int4")), col("body", "text"), col("n", "int4")},
			ReplicaIdentity: 'f', PrimaryKey: pk("id")},
		"public.typed": {Columns: []Column{notNull(col("id", "int4")), mod(col("price", "numeric"), numericMod(10, 2)),
			col("amount", "numeric"), col("due", "timestamptz"), col("day", "date"), col("at", "timestamp"), col("tm", "time"),
			col("meta", "jsonb"), array(col("tags", "text")), col("blob", "bytea"), col("f8", "float8"), col("r4", "float4"),
			col("iv", "interval"), col("u", "uuid"), col("big", "int8"), col("m", "money"), col("tz", "timetz"),
			mod(col("ts3", "timestamp"), 3)},
			ReplicaIdentity: 'd', Identity: pk("id"), PrimaryKey: pk("id")},
		"public.composite": {Columns: []Column{notNull(col("a", "int4")), notNull(col("b", "text")), col("v", "int4")},
			ReplicaIdentity: 'd', Identity: pk("a", "b"), PrimaryKey: pk("a", "b")},
		"public.bulk_nokey": {Columns: []Column{col("v", "int4")}, ReplicaIdentity: 'd'},
		"public.ident": {Columns: []Column{notNull(col("id", "int4")), notNull(col("code", "text")), col("v", "int4")},
			ReplicaIdentity: 'i', Identity: pk("code"), PrimaryKey: pk("id")},
		"public.precise": {Columns: []Column{notNull(col("id", "int4")), col("born", "date"), mod(col("at0", "timestamp"), 0),
			mod(col("t0", "time"), 0), mod(col("tz2", "timestamptz"), 2), array(col("nums", "numeric")), array(col("days", "date"))},
			ReplicaIdentity: 'd', Identity: pk("id"), PrimaryKey: pk("id")},
	}
}

// recordedScenarios are the interop bed's scenarios, recorded from the real
// connector with and without schemas (testdata/recorded).
var recordedScenarios = []string{"bemi_context", "types", "catalog", "toast", "keys_and_truncate"}

func bedConfig() Config { return Config{Catalog: &fixedCatalog{tables: bedTables()}} }

// rows renders the row changes of a decoded stream, one a line.
func rows(evs []Event) string {
	var lines []string
	for _, ev := range evs {
		if ev.Kind == Row {
			lines = append(lines, render(ev))
		}
	}
	return strings.Join(lines, "\n")
}

// Events without the schema envelope, typed by the catalog, decode exactly as
// the same events with it: identity, key, images, times, all but when pgtrail
// read them. (The interop bed proves the latter equal to native capture's
// audit rows; the tests below state what native capture stores.)
func TestRecordedEventsWithoutSchemasDecodeAsWithThem(t *testing.T) {
	for _, name := range recordedScenarios {
		bare := decodeAll(t, bedConfig(), "recorded/"+name)
		typed := decodeAll(t, bedConfig(), "recorded/typed_"+name)
		if len(bare) != len(typed) {
			t.Fatalf("%s: %d events without schemas, %d with", name, len(bare), len(typed))
		}
		for i := range bare {
			b, ty := bare[i], typed[i]
			if b.Change != nil && ty.Change != nil {
				bc, tc := *b.Change, *ty.Change
				bc.QueuedAt, tc.QueuedAt = time.Time{}, time.Time{}
				b.Change, ty.Change = &bc, &tc
			}
			if !reflect.DeepEqual(b, ty) {
				t.Errorf("%s event %d:\nwithout schemas %s\nwith schemas    %s", name, i, render(b), render(ty))
			}
		}
	}
}

// What native capture stores for the bed's types (test/e2e/values_test.go
// states the same rules end to end): numeric and money by the numeric rule,
// ISO 8601 times (timestamptz and timetz in UTC), json embedded, intervals in
// IntervalStyle iso_8601 with months, floats as PostgreSQL prints them.
func TestRecordedTypesWithoutSchemasAreNativeValues(t *testing.T) {
	want := strings.Join([]string{
		`CREATE public.typed[1] before={} after={"id":1,"price":12.30,"amount":1.5,"due":"2024-01-02T01:04:05.5Z","day":"2024-01-02",` +
			`"at":"2024-01-02T03:04:05.123","tm":"03:04:05.5","meta":{"s": "é", "x": [1, 2]},"tags":["a","b c",null],"blob":"AQL/",` +
			`"f8":1.5,"r4":1.1,"iv":"P1DT2H3M4.5S","u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","big":9007199254740993,"m":-1234.50,` +
			`"tz":"01:04:05.25Z","ts3":"2024-01-02T03:04:05.123"}`,
		`CREATE public.typed[2] before={} after={"id":2,"price":-0.05,"amount":"12345678901234567890.123","due":"1999-12-31T23:59:59Z",` +
			`"day":"1970-01-01","at":"2000-01-01T00:00:00","tm":"00:00:00","meta":null,"tags":[],"blob":"","f8":1e+20,"r4":-2.5,` +
			`"iv":"P-1M","u":null,"big":-1,"m":0.00,"tz":"00:59:59Z","ts3":"1970-01-01T00:00:00"}`,
		`UPDATE public.typed[1] before={} after={"id":1,"price":99999999.99,"amount":1.5,"due":"2024-01-02T01:04:05.5Z","day":"2024-01-02",` +
			`"at":"2024-01-02T03:04:05.123","tm":"03:04:05.5","meta":[1, "two"],"tags":["a","b c",null],"blob":"AQL/",` +
			`"f8":1.5,"r4":1.1,"iv":"P1Y2M3DT4H5M6.78S","u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","big":9007199254740993,"m":-1234.50,` +
			`"tz":"01:04:05.25Z","ts3":"2024-01-02T03:04:05.123"}`,
		// JSON string scalars stay JSON strings.
		`UPDATE public.typed[1] before={} after={"id":1,"price":99999999.99,"amount":1.5,"due":"2024-01-02T01:04:05.5Z","day":"2024-01-02",` +
			`"at":"2024-01-02T03:04:05.123","tm":"03:04:05.5","meta":"hello","tags":["a","b c",null],"blob":"AQL/",` +
			`"f8":1.5,"r4":1.1,"iv":"P1Y2M3DT4H5M6.78S","u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","big":9007199254740993,"m":-1234.50,` +
			`"tz":"01:04:05.25Z","ts3":"2024-01-02T03:04:05.123"}`,
		`UPDATE public.typed[1] before={} after={"id":1,"price":99999999.99,"amount":1.5,"due":"2024-01-02T01:04:05.5Z","day":"2024-01-02",` +
			`"at":"2024-01-02T03:04:05.123","tm":"03:04:05.5","meta":"42","tags":["a","b c",null],"blob":"AQL/",` +
			`"f8":1.5,"r4":1.1,"iv":"P1Y2M3DT4H5M6.78S","u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","big":9007199254740993,"m":-1234.50,` +
			`"tz":"01:04:05.25Z","ts3":"2024-01-02T03:04:05.123"}`,
		// REPLICA IDENTITY DEFAULT: the old image is the key; Debezium's
		// nulls for the other columns are not stored.
		`DELETE public.typed[2] before={"id":2} after={}`,
	}, "\n")
	if got := rows(decodeAll(t, bedConfig(), "recorded/types")); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestRecordedCatalogScenarioWithoutSchemasIsNative(t *testing.T) {
	want := strings.Join([]string{
		// REPLICA IDENTITY USING INDEX: the key native capture stores is the
		// index's (code), and so is an old image, where Debezium wrote a
		// primary key of 0 and split the change of code into a delete and a
		// create.
		`CREATE public.ident[a] before={} after={"id":1,"code":"a","v":1}`,
		`CREATE public.ident[b] before={} after={"id":2,"code":"b","v":2}`,
		`UPDATE public.ident[a] before={} after={"id":1,"code":"a","v":10}`,
		`UPDATE public.ident[c] before={"code":"b"} after={"id":2,"code":"c","v":2}`,
		`DELETE public.ident[a] before={"code":"a"} after={}`,
		// date, timestamp(0) and time(0) (milliseconds), timestamptz(2),
		// numeric[] (VariableScaleDecimal elements), date[].
		`CREATE public.precise[1] before={} after={"id":1,"born":"1990-05-06","at0":"2024-01-02T03:04:05","t0":"03:04:05",` +
			`"tz2":"2024-01-02T03:04:05.12Z","nums":[1.5,-2,null],"days":["2024-01-02",null]}`,
		`UPDATE public.precise[1] before={} after={"id":1,"born":null,"at0":"2024-01-02T03:04:05","t0":"03:04:05",` +
			`"tz2":"2024-01-02T03:04:05.12Z","nums":[],"days":["2024-01-02",null]}`,
		`DELETE public.precise[1] before={"id":1} after={}`,
	}, "\n")
	if got := rows(decodeAll(t, bedConfig(), "recorded/catalog")); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

// Debezium fills the unsent columns of a key-only old image with null, or a
// NOT NULL column's default (todos.done): the catalog's replica identity
// keeps the key only, as native capture does.
func TestRecordedKeyOnlyOldImagesKeepTheKeyOnly(t *testing.T) {
	got := rows(decodeAll(t, bedConfig(), "recorded/bemi_context"))
	for _, want := range []string{
		`DELETE public.todos[2] before={"id":2} after={}`,
		`DELETE public.comments[10] before={"id":10} after={}`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("no %s in\n%s", want, got)
		}
	}
	// Without a catalog the NOT NULL filler stays (the heuristic needs nulls).
	if got := rows(decodeAll(t, Config{}, "recorded/bemi_context")); !strings.Contains(got, `DELETE public.todos[2] before={"id":2,"task":null,"done":false}`) {
		t.Errorf("without a catalog:\n%s", got)
	}
}

// event builds a bare Debezium event of table public.t.
func event(op, before, after string, commitMicros int64) []byte {
	b, _ := json.Marshal(map[string]any{
		"op": op, "before": json.RawMessage(before), "after": json.RawMessage(after),
		"source": map[string]any{"db": "app", "schema": "public", "table": "t", "txId": 7, "lsn": 100 + commitMicros, "ts_us": commitMicros},
	})
	return b
}

func decodeOne(t *testing.T, d *Decoder, value []byte) string {
	t.Helper()
	evs, err := d.Decode(nil, value)
	if err != nil {
		t.Fatal(err)
	}
	evs = append(evs, d.Flush()...)
	if len(evs) != 1 {
		t.Fatalf("%d events, want 1", len(evs))
	}
	return render(evs[0])
}

func TestCatalogKeyWinsOverKeyColumnsAndTrimsOldImages(t *testing.T) {
	for _, c := range []struct {
		name  string
		table *Table
		op    string
		want  string
	}{
		{"replica identity nothing", &Table{Columns: []Column{col("id", "int4"), col("v", "int4")}, ReplicaIdentity: 'n', PrimaryKey: []string{"id"}},
			"c", `CREATE public.t[] before={} after={"id":1,"v":2}`},
		{"using index, no message key", &Table{Columns: []Column{col("id", "int4"), col("v", "int4")}, ReplicaIdentity: 'i',
			Identity: []string{"v"}, PrimaryKey: []string{"id"}},
			"d", `DELETE public.t[2] before={"v":2} after={}`},
		{"full, composite key in index order", &Table{Columns: []Column{col("id", "int4"), col("v", "int4")}, ReplicaIdentity: 'f',
			PrimaryKey: []string{"v", "id"}},
			"d", `DELETE public.t[[2,1]] before={"id":1,"v":2} after={}`},
	} {
		d := NewDecoder(Config{KeyColumns: []string{"id"}, Catalog: &fixedCatalog{tables: map[string]*Table{"public.t": c.table}}})
		before, after := `{"id":1,"v":2}`, "null"
		if c.op == "c" {
			before, after = "null", before
		}
		if got := decodeOne(t, d, event(c.op, before, after, 1)); got != c.want {
			t.Errorf("%s: got %s, want %s", c.name, got, c.want)
		}
	}
}

func TestCatalogIsReadOnceAndAgainForANewColumn(t *testing.T) {
	cat := &fixedCatalog{tables: map[string]*Table{"public.t": {Columns: []Column{col("id", "int4")}, ReplicaIdentity: 'd',
		Identity: []string{"id"}, PrimaryKey: []string{"id"}, ReadAt: time.UnixMicro(1000)}}}
	d := NewDecoder(Config{Catalog: cat})
	decodeOne(t, d, event("c", "null", `{"id":1}`, 2000))
	decodeOne(t, d, event("c", "null", `{"id":2}`, 3000))
	if n := cat.lookups["public.t"]; n != 1 {
		t.Fatalf("%d look-ups for two events, want 1", n)
	}
	// ALTER TABLE t ADD COLUMN at date, committed after the read.
	cat.tables["public.t"] = &Table{Columns: []Column{col("id", "int4"), col("at", "date")}, ReplicaIdentity: 'd',
		Identity: []string{"id"}, PrimaryKey: []string{"id"}, ReadAt: time.UnixMicro(50000)}
	if got := decodeOne(t, d, event("c", "null", `{"id":3,"at":19724}`, 4000)); got != `CREATE public.t[3] before={} after={"id":3,"at":"2024-01-02"}` {
		t.Fatalf("got %s", got)
	}
	if n := cat.lookups["public.t"]; n != 2 {
		t.Fatalf("%d look-ups, want 2", n)
	}
	// A column the catalog read after the event does not know was dropped
	// since: its type is unknown, and the stream stops rather than storing
	// the value untyped or skipping the change.
	_, err := d.Decode(nil, event("c", "null", `{"id":4,"gone":1}`, 4500))
	var bad *Malformed
	if err == nil || errors.As(err, &bad) || !strings.Contains(err.Error(), `source.debezium.catalog has no column "gone" in public.t`) {
		t.Fatalf("got %v, want an error that is not a malformed message", err)
	}
	if n := cat.lookups["public.t"]; n != 2 {
		t.Fatalf("%d look-ups, want 2: the definition is newer than the event", n)
	}
}

func TestCatalogIsReadAgainWhenTheReplicaIdentityChanged(t *testing.T) {
	def := &Table{Columns: []Column{notNull(col("id", "int4")), col("v", "text")}, ReplicaIdentity: 'd',
		Identity: []string{"id"}, PrimaryKey: []string{"id"}, ReadAt: time.UnixMicro(1000)}
	cat := &fixedCatalog{tables: map[string]*Table{"public.t": def}}
	d := NewDecoder(Config{Catalog: cat})
	decodeOne(t, d, event("c", "null", `{"id":1,"v":"a"}`, 2000))
	// ALTER TABLE t REPLICA IDENTITY FULL: an update now has an old image
	// with the key unchanged, which DEFAULT never sends.
	full := *def
	full.ReplicaIdentity, full.Identity, full.ReadAt = 'f', nil, time.UnixMicro(4000)
	cat.tables["public.t"] = &full
	if got := decodeOne(t, d, event("u", `{"id":1,"v":"a"}`, `{"id":1,"v":"b"}`, 3000)); got != `UPDATE public.t[1] before={"id":1,"v":"a"} after={"id":1,"v":"b"}` {
		t.Fatalf("got %s", got)
	}
	if n := cat.lookups["public.t"]; n != 2 {
		t.Fatalf("%d look-ups, want 2", n)
	}
}

func TestUnreachableCatalogStopsTheStreamAndLosesNothing(t *testing.T) {
	cat := &fixedCatalog{tables: bedTables(), err: errors.New("source.debezium.catalog: connect to the source database: connection refused")}
	d := NewDecoder(Config{Catalog: cat})
	keys, vals := messages(t, "recorded/types")
	if _, err := d.Decode(keys[0], vals[0]); err != nil {
		t.Fatalf("a context message needs no catalog: %v", err)
	}
	_, err := d.Decode(keys[1], vals[1])
	var bad *Malformed
	if err == nil || errors.As(err, &bad) || !strings.Contains(err.Error(), "source.debezium.catalog") {
		t.Fatalf("got %v, want an error naming source.debezium.catalog that is not a malformed message (which would be skipped)", err)
	}
	// Once the catalog answers, the same message decodes as if nothing failed.
	cat.err = nil
	evs, err := d.Decode(keys[1], vals[1])
	if err != nil {
		t.Fatal(err)
	}
	want := decodeAll(t, bedConfig(), "recorded/types")
	if evs[0].Change.ID != want[1].Change.ID || render(evs[0]) != render(want[1]) {
		t.Fatalf("after the failure: %s %s\nwant %s %s", evs[0].Change.ID, render(evs[0]), want[1].Change.ID, render(want[1]))
	}
}

// A table the catalog lacked when first asked (made later, or the catalog
// pointed elsewhere and was put right) is looked up again on the retry, even
// for an event older than the look-up: the miss is not remembered for good.
func TestCatalogMissIsLookedUpAgainOnRetry(t *testing.T) {
	cat := &fixedCatalog{tables: map[string]*Table{}}
	d := NewDecoder(Config{Catalog: cat})
	old := event("c", "null", `{"id":1}`, 1000)
	_, err := d.Decode(nil, old)
	var bad *Malformed
	if err == nil || errors.As(err, &bad) || !strings.Contains(err.Error(), "source.debezium.catalog has no table public.t") {
		t.Fatalf("got %v, want an error that is not a malformed message", err)
	}
	cat.tables["public.t"] = &Table{Columns: []Column{col("id", "int4")}, ReplicaIdentity: 'd',
		Identity: []string{"id"}, PrimaryKey: []string{"id"}, ReadAt: time.UnixMicro(50000)}
	if got := decodeOne(t, d, old); got != `CREATE public.t[1] before={} after={"id":1}` {
		t.Fatalf("got %s", got)
	}
	decodeOne(t, d, event("c", "null", `{"id":2}`, 60000))
	if n := cat.lookups["public.t"]; n != 2 {
		t.Fatalf("%d look-ups, want 2: the miss and the table, then none", n)
	}
}

func TestCatalogOfAnotherDatabaseIsAnError(t *testing.T) {
	cat := &fixedCatalog{tables: map[string]*Table{"public.t": {Columns: []Column{col("id", "int4")}, ReplicaIdentity: 'd', Database: "other"}}}
	_, err := NewDecoder(Config{Catalog: cat}).Decode(nil, event("c", "null", `{"id":1}`, 1))
	if err == nil || !strings.Contains(err.Error(), `source.debezium.catalog reads database "other", but the events come from database "app"`) {
		t.Fatalf("got %v", err)
	}
}

// The connector's modes show in a value's JSON, so one catalog type reads
// them all: numeric as VariableScaleDecimal, base64 with the declared scale
// (precise), a number (double) or digits (string); intervals as
// MicroDuration or ISO 8601 (interval.handling.mode=string).
func TestCatalogTypedValuesFollowTheConnectorsMode(t *testing.T) {
	tab := &Table{Columns: []Column{col("id", "int4"), col("n", "numeric"), mod(col("n2", "numeric"), numericMod(10, 2)),
		col("iv", "interval"), col("f", "float8"), mod(col("b3", "bit"), 3), col("b1", "bit"), col("j", "json")},
		ReplicaIdentity: 'd', Identity: []string{"id"}, PrimaryKey: []string{"id"}}
	for _, c := range []struct{ after, want string }{
		{`{"n":{"scale":2,"value":"AJY="},"n2":"AJY=","iv":93600000000}`, `{"n":1.50,"n2":1.50,"iv":"P1DT2H"}`},
		{`{"n":1.5,"n2":1.5,"iv":"P0Y1M2DT26H0M0.5S"}`, `{"n":1.5,"n2":1.5,"iv":"P1M2DT26H0.5S"}`},
		{`{"n":"12345678901234567890.5","iv":"P-1Y0M-3DT-4H-5M-6.78S"}`, `{"n":"12345678901234567890.5","iv":"P-1Y-3DT-4H-5M-6.78S"}`},
		{`{"iv":"P0Y0M0DT0H0M-0.5S","f":1.0E20}`, `{"iv":"PT-0.5S","f":1e+20}`},
		{`{"iv":"P0Y0M0DT0H0M0S","b3":"BQ==","b1":true,"j":"{\"a\": [1]}"}`, `{"iv":"PT0S","b3":"101","b1":"1","j":{"a": [1]}}`},
	} {
		d := NewDecoder(Config{Catalog: &fixedCatalog{tables: map[string]*Table{"public.t": tab}}})
		got := decodeOne(t, d, event("c", "null", `{"id":1,`+c.after[1:], 1))
		if want := `CREATE public.t[1] before={} after={"id":1,` + c.want[1:]; got != want {
			t.Errorf("%s:\n got %s\nwant %s", c.after, got, want)
		}
	}
}
