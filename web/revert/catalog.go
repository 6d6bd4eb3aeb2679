package revert

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// kind is what a column's JSON value needs to become the column's input text.
type kind int

const (
	plain       kind = iota // the JSON scalar's text
	jsonKind                // json, jsonb: the JSON value itself
	byteaKind               // base64 in the trail, \x hex in SQL
	dateKind                // date, timestamp, timestamptz: ISO years, BC in SQL
	arrayKind               // a JSON array of the element's values
	unsupported             // nothing the trail can write back
)

// pgType is a column type as far as turning the trail's JSON back into it goes.
type pgType struct {
	kind kind
	elem *pgType // arrayKind's element
}

// column is one column of a source table.
type column struct {
	name      string
	typ       string // format_type: the cast that types a literal
	t         *pgType
	generated bool // GENERATED ALWAYS AS (...) STORED: never written
	always    bool // GENERATED ALWAYS AS IDENTITY: insertable with OVERRIDING SYSTEM VALUE
}

// table is a source table's shape, read from the source database's catalog.
type table struct {
	schema, name string
	quoted       string
	columns      map[string]*column
	key          []string // primary key columns, or the replica identity index's
}

// errNoTable is returned for a table the source database no longer has.
var errNoTable = errors.New("no such table in the source database")

// loadTable reads a table's columns, their types and its key.
func loadTable(ctx context.Context, q pgx.Tx, types map[uint32]*pgType, schema, name string) (*table, error) {
	t := &table{schema: schema, name: name, quoted: pgx.Identifier{schema, name}.Sanitize(), columns: map[string]*column{}}
	var relid uint32
	err := q.QueryRow(ctx, `SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')`, schema, name).Scan(&relid)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errNoTable
	}
	if err != nil {
		return nil, fmt.Errorf("look up table %s.%s: %w", schema, name, err)
	}
	rows, err := q.Query(ctx, `SELECT attname, format_type(atttypid, atttypmod), atttypid, attgenerated <> '', attidentity = 'a'
		FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, relid)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s.%s: %w", schema, name, err)
	}
	type attr struct {
		Name, Type        string
		OID               uint32
		Generated, Always bool
	}
	attrs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[attr])
	if err != nil {
		return nil, fmt.Errorf("read columns of %s.%s: %w", schema, name, err)
	}
	for _, a := range attrs {
		pt, err := resolveType(ctx, q, types, a.OID, 0)
		if err != nil {
			return nil, err
		}
		t.columns[a.Name] = &column{name: a.Name, typ: a.Type, t: pt, generated: a.Generated, always: a.Always}
	}
	// The key the trail's primary_key was made from: the primary key, or
	// else the replica identity index.
	rows, err = q.Query(ctx, `SELECT a.attname FROM pg_index i
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
		WHERE i.indrelid = $1 AND i.indexrelid = coalesce(
			(SELECT indexrelid FROM pg_index WHERE indrelid = $1 AND indisprimary),
			(SELECT indexrelid FROM pg_index WHERE indrelid = $1 AND indisreplident))
		ORDER BY array_position(i.indkey::int2[], a.attnum)`, relid)
	if err != nil {
		return nil, fmt.Errorf("read the key of %s.%s: %w", schema, name, err)
	}
	if t.key, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		return nil, fmt.Errorf("read the key of %s.%s: %w", schema, name, err)
	}
	return t, nil
}

// Built-in type OIDs whose JSON form is not their input text.
const (
	byteaOID       = 17
	jsonOID        = 114
	jsonbOID       = 3802
	dateOID        = 1082
	timestampOID   = 1114
	timestamptzOID = 1184
)

// resolveType follows domains to their base type and arrays to their element.
func resolveType(ctx context.Context, q pgx.Tx, types map[uint32]*pgType, oid uint32, depth int) (*pgType, error) {
	if t, ok := types[oid]; ok {
		return t, nil
	}
	if depth > 8 {
		return &pgType{kind: unsupported}, nil
	}
	var typtype, category string
	var base, elem uint32
	err := q.QueryRow(ctx, "SELECT typtype::text, typcategory::text, typbasetype, typelem FROM pg_type WHERE oid = $1", oid).
		Scan(&typtype, &category, &base, &elem)
	if err != nil {
		return nil, fmt.Errorf("look up type %d: %w", oid, err)
	}
	var t *pgType
	switch {
	case typtype == "d":
		if t, err = resolveType(ctx, q, types, base, depth+1); err != nil {
			return nil, err
		}
	case category == "A" && elem != 0:
		e, err := resolveType(ctx, q, types, elem, depth+1)
		if err != nil {
			return nil, err
		}
		t = &pgType{kind: arrayKind, elem: e}
	case oid == byteaOID:
		t = &pgType{kind: byteaKind}
	case oid == jsonOID || oid == jsonbOID:
		t = &pgType{kind: jsonKind}
	case oid == dateOID || oid == timestampOID || oid == timestamptzOID:
		t = &pgType{kind: dateKind}
	default:
		t = &pgType{kind: plain}
	}
	types[oid] = t
	return t, nil
}
