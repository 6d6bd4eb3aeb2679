package debezium

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/values"
)

// column is one column of a row image, in the image's order.
type column struct {
	name string
	raw  json.RawMessage
}

// columns splits a JSON object into its members, in order; nil for null.
func columns(raw json.RawMessage) ([]column, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	if raw[0] != '{' {
		return nil, errNotObject
	}
	// raw is part of a message envelope has checked already, so a
	// scan for where each value ends is enough: encoding/json's tokenizer,
	// which checks every value again, was the largest cost of the ingress.
	cols := []column{}
	i := skipSpace(raw, 1)
	for i < len(raw) && raw[i] != '}' {
		end := skipString(raw, i)
		name := raw[i+1 : end-1]
		var key string
		if bytes.IndexByte(name, '\\') >= 0 || !utf8.Valid(name) { // decoded as encoding/json does: U+FFFD for bytes that are not UTF-8
			if err := json.Unmarshal(raw[i:end], &key); err != nil {
				return nil, err
			}
		} else {
			key = string(name)
		}
		i = skipSpace(raw, end)
		if i >= len(raw) || raw[i] != ':' {
			return nil, errNotObject
		}
		i = skipSpace(raw, i+1)
		end = skipValue(raw, i)
		if end <= i {
			return nil, errNotObject
		}
		cols = append(cols, column{key, json.RawMessage(raw[i:end])})
		i = skipSpace(raw, end)
		if i < len(raw) && raw[i] == ',' {
			i = skipSpace(raw, i+1)
		}
	}
	return cols, nil
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the JSON string that starts at b[i].
func skipString(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(b)
}

// skipValue returns the index after the valid JSON value that starts at b[i].
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = skipString(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1
				}
			}
		}
		return len(b)
	}
	j := i // a number, true, false or null
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\n' && b[j] != '\r' {
		j++
	}
	return j
}

// envelope checks a message (a key or a value) and splits it: with the
// JsonConverter's schemas, into its schema and payload; otherwise the whole
// message is the body and sch is nil. It checks the JSON once and decodes
// nothing: the schema block is most of an event with schemas, and it is read
// only when new.
func envelope(msg []byte) (sch, body json.RawMessage, err error) {
	if !json.Valid(msg) {
		var v any
		return nil, nil, json.Unmarshal(msg, &v)
	}
	top, err := columns(msg)
	if err != nil {
		return nil, nil, err
	}
	if s, ok := find(top, "schema"); ok && len(top) == 2 {
		if p, ok := find(top, "payload"); ok {
			return s, p, nil
		}
	}
	return nil, msg, nil
}

func find(cols []column, name string) (json.RawMessage, bool) {
	for _, c := range cols {
		if c.name == name {
			return c.raw, true
		}
	}
	return nil, false
}

// checkNames refuses a column name no PostgreSQL column has: one holding
// NUL, which neither the audit table's text nor its jsonb can hold.
func checkNames(cols []column) error {
	for _, c := range cols {
		if strings.IndexByte(c.name, 0) >= 0 {
			return fmt.Errorf("column name %q holds a NUL character, which no PostgreSQL name can hold", c.name)
		}
	}
	return nil
}

// byName finds columns by name: find's scan for a few, a map for many, so
// that a message of many columns costs linear time, not quadratic.
type byName struct {
	cols []column
	at   map[string]int
}

// index is the place of the first column named name, -1 for none.
func (b *byName) index(name string) int {
	if len(b.cols) <= 16 {
		return slices.IndexFunc(b.cols, func(c column) bool { return c.name == name })
	}
	if b.at == nil {
		b.at = make(map[string]int, len(b.cols))
		for i := len(b.cols) - 1; i >= 0; i-- { // the first of a name wins, as with find
			b.at[b.cols[i].name] = i
		}
	}
	if i, ok := b.at[name]; ok {
		return i
	}
	return -1
}

func (b *byName) find(name string) (json.RawMessage, bool) {
	if i := b.index(name); i >= 0 {
		return b.cols[i].raw, true
	}
	return nil, false
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

// physicalTable is the key field Debezium's ByLogicalTableRouter adds when it
// routes several tables into one topic (the Bemi stack does): not a column.
const physicalTable = "__dbz__physicalTableIdentifier"

var operations = map[string]change.Operation{
	"c": change.Create, "r": change.Create, "u": change.Update, "d": change.Delete, "t": change.Truncate,
}

func (d *Decoder) row(op string, p *payload, rs *rowSchemas, key []byte) (decoded, error) {
	src := p.Source
	var xid uint64
	if src.TxID != nil {
		xid = *src.TxID
	}
	committed, err := commitTime(src)
	if err != nil {
		return decoded{}, err
	}
	c := &change.Change{
		Database: src.DB, Schema: src.Schema, Table: src.Table, Operation: operations[op],
		Before: change.Empty, After: change.Empty,
		TransactionID: xid, CommittedAt: committed, QueuedAt: time.Now(),
	}
	r := decoded{c: c, xid: xid, lsn: *src.LSN, seqHint: lastCommit(src)}
	if op == "t" {
		return r, nil
	}
	before, err := columns(p.Before)
	if err == nil {
		err = checkNames(before)
	}
	if err != nil {
		return r, malformed(ReasonBadValue, "before: %v", err)
	}
	after, err := columns(p.After)
	if err == nil {
		err = checkNames(after)
	}
	if err != nil {
		return r, malformed(ReasonBadValue, "after: %v", err)
	}
	var ct *catalogTable
	if d.cfg.Catalog != nil {
		if ct, err = d.table(src, c.CommittedAt, op, before, after, rs != nil, false); err != nil {
			return r, err
		}
	}
	err = d.images(c, before, after, rs, key, ct)
	var bad *Malformed
	if ct != nil && rs == nil && errors.As(err, &bad) && ct.stale(c.CommittedAt) {
		// A value the catalog's type does not convert: the column's type may
		// have changed since the catalog was read.
		if ct, err = d.table(src, c.CommittedAt, op, before, after, false, true); err != nil {
			return r, err
		}
		err = d.images(c, before, after, rs, key, ct)
	}
	return r, err
}

// images fills a change's before, after and primary key from the event's row
// images, typed by rs (the envelope's schemas) or the catalog's table.
func (d *Decoder) images(c *change.Change, before, after []column, rs *rowSchemas, key []byte, ct *catalogTable) error {
	image := after
	if image == nil {
		image = before
	}
	var keyCols []column
	if ct != nil && ct.t != nil {
		// The catalog says what native capture stores: its key, and of an
		// old image under REPLICA IDENTITY DEFAULT, USING INDEX or NOTHING
		// only the identity's columns, which Debezium pads with the others.
		keyCols = ct.keyColumns(image)
		if rs == nil {
			rs = ct.rs
		}
		if before != nil && ct.t.ReplicaIdentity != 'f' {
			before = onlyColumns(before, ct.t.Identity)
		}
	} else {
		var keySchemas *rowSchemas
		var err error
		if keyCols, keySchemas, err = d.keyColumns(key, image); err != nil {
			return err
		}
		if rs == nil && keySchemas != nil {
			rs = keySchemas
		}
		if before != nil && keyOnly(before, keyCols) {
			before = onlyColumns(before, names(keyCols))
		}
	}
	var err error
	if before != nil {
		if c.Before, _, err = d.image(before, nil, rs); err != nil {
			return err
		}
	}
	if after != nil {
		if c.After, c.UnchangedToast, err = d.image(after, before, rs); err != nil {
			return err
		}
	}
	c.PrimaryKey, err = d.keyText(keyCols, rs)
	return err
}

func names(cols []column) []string {
	out := make([]string, len(cols))
	for i, c := range cols {
		out[i] = c.name
	}
	return out
}

// keyOnly reports whether a before image holds only the key: with REPLICA
// IDENTITY DEFAULT PostgreSQL sends the key columns alone, which Debezium
// pads with nulls; native capture stores the key columns only.
func keyOnly(before, key []column) bool {
	if len(key) == 0 {
		return false
	}
	padded := false
	keys := byName{cols: key}
	for _, col := range before {
		if _, ok := keys.find(col.name); ok {
			continue
		}
		if !isNull(col.raw) {
			return false
		}
		padded = true
	}
	return padded
}

// image renders a row image as canonical JSON. A placeholder value is taken
// from old (the before image, with REPLICA IDENTITY FULL) when it has the
// real value; otherwise the column is left out and named in toast.
func (d *Decoder) image(cols, old []column, rs *rowSchemas) (json.RawMessage, []string, error) {
	buf := make([]byte, 0, 256)
	buf = append(buf, '{')
	var toast []string
	olds := byName{cols: old}
	var taken map[string]bool // the old values taken, each once
	first := true
	for _, col := range cols {
		raw := col.raw
		if d.isPlaceholder(raw) {
			if v, ok := olds.find(col.name); ok && !d.isPlaceholder(v) {
				// A column named twice would copy one old value twice:
				// a message could then grow without bound.
				if taken[col.name] {
					return nil, nil, malformed(ReasonBadValue, "column %q appears twice", col.name)
				}
				if taken == nil {
					taken = map[string]bool{}
				}
				taken[col.name] = true
				raw = v
			} else {
				toast = append(toast, col.name)
				continue
			}
		}
		if !first {
			buf = append(buf, ',')
		}
		first = false
		buf = values.AppendString(buf, col.name)
		buf = append(buf, ':')
		var err error
		if buf, err = d.appendValue(buf, rs.column(col.name), raw); err != nil {
			return nil, nil, malformed(ReasonBadValue, "column %q: %v", col.name, err)
		}
	}
	return append(buf, '}'), toast, nil
}

// keyColumns returns the key's columns and values, in the order of the row
// image's columns as native capture renders them, and the key's own schemas
// when it came with them. Without a key, the configured KeyColumns are taken
// from the row image when it has them all.
func (d *Decoder) keyColumns(key []byte, image []column) ([]column, *rowSchemas, error) {
	key = bytes.TrimSpace(key)
	var cols []column
	var rs *rowSchemas
	if len(key) > 0 && string(key) != "null" {
		sch, body, err := envelope(key)
		if err != nil {
			return nil, nil, malformed(ReasonNotJSON, "key is not a JSON object")
		}
		if sch != nil {
			rs = keySchemas(sch)
		}
		all, err := columns(body)
		if err == nil {
			err = checkNames(all)
		}
		if err != nil {
			return nil, nil, malformed(ReasonBadValue, "key: %v", err)
		}
		for _, c := range all {
			if c.name != physicalTable {
				cols = append(cols, c)
			}
		}
	} else {
		for _, name := range d.cfg.KeyColumns {
			v, ok := find(image, name)
			if !ok {
				return nil, nil, nil
			}
			cols = append(cols, column{name, v})
		}
	}
	if len(cols) > 1 {
		images := byName{cols: image}
		place := func(name string) int {
			if i := images.index(name); i >= 0 {
				return i
			}
			return len(image)
		}
		slices.SortStableFunc(cols, func(a, b column) int { return place(a.name) - place(b.name) })
	}
	return cols, rs, nil
}

// keyText renders the primary key as native capture does: the value's text
// for a one-column key, a JSON array of the values for a composite key.
func (d *Decoder) keyText(cols []column, rs *rowSchemas) (string, error) {
	switch len(cols) {
	case 0:
		return "", nil
	case 1:
		if isNull(cols[0].raw) {
			return "", nil
		}
		s := rs.column(cols[0].name)
		v, err := d.appendValue(nil, s, cols[0].raw)
		if err != nil {
			return "", malformed(ReasonBadValue, "key %q: %v", cols[0].name, err)
		}
		return textOf(v, s), nil
	}
	buf := []byte{'['}
	for i, c := range cols {
		if i > 0 {
			buf = append(buf, ',')
		}
		var err error
		if buf, err = d.appendValue(buf, rs.column(c.name), c.raw); err != nil {
			return "", malformed(ReasonBadValue, "key %q: %v", c.name, err)
		}
	}
	return string(append(buf, ']')), nil
}

// rowSchemas maps column names to their Kafka Connect schemas.
type rowSchemas struct {
	cols map[string]*schema
}

func (rs *rowSchemas) column(name string) *schema {
	if rs == nil {
		return nil
	}
	return rs.cols[name]
}

// schema is a Kafka Connect schema as JsonConverter writes it.
type schema struct {
	Type       string            `json:"type"`
	Name       string            `json:"name"`
	Optional   bool              `json:"optional"`
	Parameters map[string]string `json:"parameters"`
	Fields     []*schema         `json:"fields"`
	Items      *schema           `json:"items"`
	Field      string            `json:"field"`
	// shaped marks a schema taken from the catalog whose encoding depends on
	// the connector's mode, which the value's JSON shows (byShape).
	shaped bool
}

// maxSchemaBytes bounds the schemas a Decoder keeps, which messages of any
// size can fill.
const maxSchemaBytes = 32 << 20

// rowSchemas returns the column schemas of an envelope's schema, cached:
// every message of a table carries the same one.
func (d *Decoder) rowSchemas(raw json.RawMessage) (*rowSchemas, error) {
	if rs, ok := d.schemas[string(raw)]; ok {
		return rs, nil
	}
	var env schema
	if err := json.Unmarshal(raw, &env); err != nil {
		return nil, err
	}
	rs := &rowSchemas{cols: map[string]*schema{}}
	for _, f := range env.Fields {
		if f.Field == "after" || f.Field == "before" {
			for _, c := range f.Fields {
				rs.cols[c.Field] = c
			}
		}
	}
	if len(d.schemas) >= 512 || d.schemaBytes+len(raw) > maxSchemaBytes {
		clear(d.schemas)
		d.schemaBytes = 0
	}
	d.schemas[string(raw)] = rs
	d.schemaBytes += len(raw)
	return rs, nil
}

func keySchemas(raw json.RawMessage) *rowSchemas {
	var s schema
	if json.Unmarshal(raw, &s) != nil {
		return nil
	}
	rs := &rowSchemas{cols: map[string]*schema{}}
	for _, c := range s.Fields {
		rs.cols[c.Field] = c
	}
	return rs
}

func (s *schema) String() string {
	if s == nil {
		return "no schema"
	}
	return fmt.Sprintf("%s %s", s.Type, s.Name)
}
