package debezium

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// catalogTable is a table's definition as a Decoder keeps it: the catalog's
// Table and the schemas Debezium gives its columns.
type catalogTable struct {
	t      *Table // nil: not in the catalog
	readAt time.Time
	cols   map[string]*Column
	rs     *rowSchemas // for events without the schema envelope
}

// stale reports whether the definition was read before commit, so that a
// change committed in between may have altered the table. Commit times may
// be milliseconds only (source.ts_ms): a millisecond of doubt counts as later.
func (ct *catalogTable) stale(commit time.Time) bool {
	return ct.readAt.Before(commit.Add(time.Millisecond))
}

// contradicted reports whether an event cannot have come from the table as
// defined: it names a column the definition lacks (ALTER TABLE ADD COLUMN),
// or its old image is not what the replica identity gives. pgoutput sends an
// update's old row always under FULL, and under DEFAULT or USING INDEX only
// when the identity's columns change, then with the other columns null
// (Debezium writes a NOT NULL column's default there, so only nullable
// columns tell).
func (ct *catalogTable) contradicted(op string, before, after []column) bool {
	t := ct.t
	if t == nil {
		return true // created since?
	}
	for _, cols := range [][]column{before, after} {
		for _, c := range cols {
			if ct.cols[c.name] == nil {
				return true
			}
		}
	}
	if t.ReplicaIdentity == 'f' {
		return op == "u" && before == nil
	}
	if before == nil {
		return false
	}
	if op == "u" && sameValues(before, after, t.Identity) {
		return true
	}
	for _, c := range before {
		if !isNull(c.raw) && !ct.cols[c.name].NotNull && !slices.Contains(t.Identity, c.name) {
			return true
		}
	}
	return false
}

func sameValues(a, b []column, names []string) bool {
	for _, n := range names {
		x, _ := find(a, n)
		y, _ := find(b, n)
		if string(x) != string(y) {
			return false
		}
	}
	return true
}

// table returns the catalog's definition of an event's table, read once and
// again when an event committed after the read contradicts it, or when force
// says a value did not convert by it. A table the catalog lacked is looked up
// again each time an event needs it typed: that event is retried until it
// can be, and the catalog may have been put right meanwhile. Without the
// schema envelope (typed false) every column of the event must be in it: a
// value whose type is unknown is not stored as if it were known, so that is
// an error, which stops the stream rather than skipping the change.
func (d *Decoder) table(src *source, commit time.Time, op string, before, after []column, typed, force bool) (*catalogTable, error) {
	id := [2]string{src.Schema, src.Table}
	ct, ok := d.tables[id]
	if !ok || ct.t == nil && !typed || ct.stale(commit) && (force || ct.contradicted(op, before, after)) {
		t, err := d.cfg.Catalog.Table(context.Background(), src.Schema, src.Table)
		if err != nil {
			return nil, err
		}
		ct = &catalogTable{t: t, readAt: time.Now()}
		if t != nil {
			if t.Database != "" && src.DB != "" && t.Database != src.DB {
				return nil, fmt.Errorf("source.debezium.catalog reads database %q, but the events come from database %q: point it at the source database", t.Database, src.DB)
			}
			ct.readAt, ct.rs, ct.cols = t.ReadAt, d.catalogSchemas(t), map[string]*Column{}
			for i := range t.Columns {
				ct.cols[t.Columns[i].Name] = &t.Columns[i]
			}
		}
		d.tables[id] = ct
	}
	if typed {
		return ct, nil
	}
	if ct.t == nil {
		return nil, fmt.Errorf("source.debezium.catalog has no table %s.%s (dropped since the event was written?), so the event's values cannot be typed: enable the connector's schemas, or remove the catalog to store them as Debezium wrote them", src.Schema, src.Table)
	}
	for _, cols := range [][]column{before, after} {
		for _, c := range cols {
			if ct.cols[c.name] == nil {
				return nil, fmt.Errorf("source.debezium.catalog has no column %q in %s.%s (dropped since the event was written?), so its value cannot be typed: enable the connector's schemas, or remove the catalog to store it as Debezium wrote it", c.name, src.Schema, src.Table)
			}
		}
	}
	return ct, nil
}

// keyColumns returns the key native capture stores, taken from a row image;
// none when the image lacks one of its columns.
func (ct *catalogTable) keyColumns(image []column) []column {
	var cols []column
	for _, name := range ct.t.key() {
		v, ok := find(image, name)
		if !ok {
			return nil
		}
		cols = append(cols, column{name, v})
	}
	return cols
}

// onlyColumns returns the columns of cols named in names, in cols' order.
func onlyColumns(cols []column, names []string) []column {
	named := func(name string) bool { return slices.Contains(names, name) }
	if len(names) > 16 { // a message's key may have many: keep it linear
		set := make(map[string]bool, len(names))
		for _, n := range names {
			set[n] = true
		}
		named = func(name string) bool { return set[name] }
	}
	out := []column{}
	for _, c := range cols {
		if named(c.name) {
			out = append(out, c)
		}
	}
	return out
}

// catalogSchemas gives each column the schema the connector gives it, so
// that a value without the envelope converts as one with it.
func (d *Decoder) catalogSchemas(t *Table) *rowSchemas {
	rs := &rowSchemas{cols: map[string]*schema{}}
	for i := range t.Columns {
		col := &t.Columns[i]
		s := d.typeSchema(col.Type, col.Typmod)
		if col.Array {
			s = &schema{Type: "array", Items: s}
		}
		if s != nil {
			rs.cols[col.Name] = s
		}
	}
	return rs
}

// typeSchema maps a PostgreSQL type to the Kafka Connect schema Debezium's
// PostgresValueConverter gives it with decimal.handling.mode=precise and
// time.precision.mode=adaptive (the defaults, and Bemi's): nil where the
// JSON needs no conversion (integers, booleans, text, uuid, enums, ...).
// Intervals and numerics are shaped: the JSON says the connector's mode
// (see byShape).
func (d *Decoder) typeSchema(typ string, typmod int32) *schema {
	switch typ {
	case "float4":
		return &schema{Type: "float"}
	case "float8":
		return &schema{Type: "double"}
	case "numeric":
		if typmod < 4 { // no declared scale
			return &schema{Type: "struct", Name: varScaleDecimal, shaped: true}
		}
		return decimalSchema(int((typmod-4)&0xffff), true)
	case "money":
		return decimalSchema(2, true) // money.fraction.digits
	case "date":
		return &schema{Type: "int32", Name: debeziumDate}
	case "time":
		switch p := precision(typmod); {
		case p <= 3:
			return &schema{Type: "int32", Name: milliTime}
		case p <= 6:
			return &schema{Type: "int64", Name: microTime}
		}
		return &schema{Type: "int64", Name: nanoTime}
	case "timestamp":
		switch p := precision(typmod); {
		case p <= 3:
			return &schema{Type: "int64", Name: milliTimestamp}
		case p <= 6:
			return &schema{Type: "int64", Name: microTimestamp}
		}
		return &schema{Type: "int64", Name: nanoTimestamp}
	case "timestamptz":
		return &schema{Type: "string", Name: zonedTimestamp}
	case "timetz":
		return &schema{Type: "string", Name: zonedTime}
	case "interval":
		return &schema{Type: "int64", Name: microDuration, shaped: true}
	case "json", "jsonb":
		return &schema{Type: "string", Name: debeziumJSON}
	case "bytea":
		if d.cfg.BinaryHandling == "bytes" {
			return &schema{Type: "bytes"}
		}
		return &schema{Type: "string", Parameters: map[string]string{sourceType: "BYTEA"}}
	case "bit", "varbit":
		// bit(1) and varbit(1) are booleans; a varbit's bits have no fixed
		// length to pad to.
		switch {
		case typmod == 1 || typmod < 0 && typ == "bit":
			return &schema{Type: "boolean", Parameters: map[string]string{sourceType: "BIT"}}
		case typ == "bit":
			return &schema{Type: "bytes", Name: debeziumBits, Parameters: map[string]string{"length": strconv.Itoa(int(typmod))}}
		}
		return &schema{Type: "bytes", Name: debeziumBits}
	}
	return nil
}

// precision is a time type's fractional digits: PostgreSQL's 6 when none is
// declared.
func precision(typmod int32) int32 {
	if typmod < 0 {
		return 6
	}
	return typmod
}

func decimalSchema(scale int, shaped bool) *schema {
	return &schema{Type: "bytes", Name: connectDecimal, Parameters: map[string]string{"scale": strconv.Itoa(scale)}, shaped: shaped}
}

var (
	varScaleSchema    = &schema{Type: "struct", Name: varScaleDecimal}
	numberSchema      = &schema{Type: "bytes", Name: connectDecimal} // a JSON number: decimal.handling.mode=double
	numericTextSchema = &schema{Type: "string", Parameters: map[string]string{sourceType: "NUMERIC"}}
	isoIntervalSchema = &schema{Type: "string", Name: isoInterval}
)

// byShape resolves a shaped schema by the value's JSON: an interval is a
// number (MicroDuration) or, with interval.handling.mode=string, an ISO 8601
// string; a numeric is a VariableScaleDecimal object or base64 (precise), a
// number (double) or the digits (string; taken for base64 when the column
// declares a scale, precise being the default).
func byShape(s *schema, raw []byte) *schema {
	switch s.Name {
	case microDuration:
		if raw[0] == '"' {
			return isoIntervalSchema
		}
	case varScaleDecimal, connectDecimal:
		switch {
		case raw[0] == '{':
			return varScaleSchema
		case raw[0] != '"':
			return numberSchema
		case s.Name == varScaleDecimal:
			return numericTextSchema
		}
	}
	return s
}
