package publish

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
)

// column is what the encoder needs of a table column: Debezium encodes a
// value by its type (and the type's modifier: numeric scale, time precision).
type column struct {
	name   string
	oid    uint32 // base type (domains resolved)
	typmod int32
	elem   uint32 // element type of an array; 0 otherwise
	// fill is what Debezium writes for this column where an image lacks it
	// (a key-only before image): the default of a NOT NULL column, which its
	// Connect schema carries; null otherwise.
	fill json.RawMessage
}

// table is a captured table's shape, from the catalog.
type table struct {
	columns []column
	key     []int // primary key columns, in key order
}

// catalog looks tables up in the source database, once per table, and again
// when a change names a column the cached shape lacks (ALTER TABLE).
type catalog struct {
	url  string
	mu   sync.Mutex
	conn *pgx.Conn
	byID map[[2]string]*table
}

func newCatalog(url string) *catalog {
	return &catalog{url: url, byID: map[[2]string]*table{}}
}

func (c *catalog) close(ctx context.Context) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		_ = c.conn.Close(ctx)
		c.conn = nil
	}
}

// lookup returns schema.table's shape; fresh forces a new look.
func (c *catalog) lookup(ctx context.Context, schema, name string, fresh bool) (*table, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := [2]string{schema, name}
	if t, ok := c.byID[id]; ok && !fresh {
		return t, nil
	}
	if c.conn == nil || c.conn.IsClosed() {
		conn, err := pgx.Connect(ctx, c.url)
		if err != nil {
			return nil, fmt.Errorf("connect to source database for table shapes: %w", err)
		}
		c.conn = conn
	}
	rows, err := c.conn.Query(ctx, `
		SELECT a.attname,
		       (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END)::int8,
		       (CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END)::int4,
		       (CASE WHEN bt.typcategory = 'A' THEN bt.typelem ELSE 0 END)::int8,
		       coalesce((SELECT k.ord FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord) WHERE k.attnum = a.attnum), 0)::int4,
		       CASE WHEN a.attnotnull THEN pg_get_expr(d.adbin, d.adrelid) END
		FROM pg_attribute a
		LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
		JOIN pg_class c ON c.oid = a.attrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_type t ON t.oid = a.atttypid
		JOIN pg_type bt ON bt.oid = (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END)
		LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
		WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
		ORDER BY a.attnum`, schema, name)
	if err != nil {
		return nil, fmt.Errorf("look up columns of %s.%s: %w", schema, name, err)
	}
	t := &table{}
	var keyPos []int32
	for rows.Next() {
		var col column
		var oid, elem int64
		var kp int32
		var def *string
		if err := rows.Scan(&col.name, &oid, &col.typmod, &elem, &kp, &def); err != nil {
			rows.Close()
			return nil, fmt.Errorf("look up columns of %s.%s: %w", schema, name, err)
		}
		col.oid, col.elem = uint32(oid), uint32(elem)
		col.fill = defaultJSON(def)
		t.columns = append(t.columns, col)
		keyPos = append(keyPos, kp)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("look up columns of %s.%s: %w", schema, name, err)
	}
	// Key positions are 1-based; order the key by them.
	for pos := int32(1); ; pos++ {
		found := false
		for i, kp := range keyPos {
			if kp == pos {
				t.key = append(t.key, i)
				found = true
			}
		}
		if !found {
			break
		}
	}
	c.byID[id] = t
	return t, nil
}

// literal is a constant default as pg_get_expr prints it: 'text'::type,
// a number, true or false.
var literal = regexp.MustCompile(`^(?:'((?:[^']|'')*)'::[a-z ]+|(-?[0-9]+(?:\.[0-9]+)?)|(true|false))$`)

// defaultJSON is the canonical JSON of a constant column default; null for
// none or for an expression.
func defaultJSON(def *string) json.RawMessage {
	if def == nil {
		return json.RawMessage("null")
	}
	m := literal.FindStringSubmatch(*def)
	switch {
	case m == nil:
		return json.RawMessage("null")
	case m[2] != "" || m[3] != "":
		return json.RawMessage(m[2] + m[3])
	}
	return json.RawMessage(strconv.Quote(strings.ReplaceAll(m[1], "''", "'")))
}
