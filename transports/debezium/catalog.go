package debezium

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Table is a table's definition as the source database's catalog holds it:
// what an event without the schema envelope does not say.
type Table struct {
	Columns []Column // in attnum order
	// ReplicaIdentity is pg_class.relreplident: 'd' default (the primary
	// key), 'i' an index, 'f' full, 'n' nothing.
	ReplicaIdentity byte
	// Identity is the replica identity's columns for 'd' and 'i', in attnum
	// order: pgoutput's old tuple holds only these, and they are the key
	// native capture stores.
	Identity []string
	// PrimaryKey is the primary key's columns in index order: the key native
	// capture stores under REPLICA IDENTITY FULL.
	PrimaryKey []string
	// Database is the database the definition was read from.
	Database string
	// ReadAt is when the catalog was read, by the database's clock (that of
	// the events' commit times): a definition read before an event's commit
	// may be older than the event.
	ReadAt time.Time
}

// Column is one column of a Table.
type Column struct {
	Name string
	// Type is the pg_catalog name of the column's type, domains resolved
	// to their base (e.g. "numeric", "timestamptz"); an array's element type
	// with Array set. Empty for types outside pg_catalog (enums, extensions).
	Type    string
	Array   bool
	Typmod  int32 // the declared modifier (numeric scale, time precision); -1 for none
	NotNull bool
}

// key is the key native capture stores: the replica identity's columns, or
// the primary key under REPLICA IDENTITY FULL.
func (t *Table) key() []string {
	if t.ReplicaIdentity == 'f' {
		return t.PrimaryKey
	}
	return t.Identity
}

// PostgresCatalog reads table definitions from the source database
// (source.debezium.catalog). It holds one connection, opened on first use and
// again after it broke, and is safe for concurrent use.
type PostgresCatalog struct {
	url  string
	mu   sync.Mutex
	conn *pgx.Conn
}

// NewPostgresCatalog returns a catalog that connects to url when first asked.
func NewPostgresCatalog(url string) *PostgresCatalog {
	return &PostgresCatalog{url: url}
}

// lookupTimeout bounds one look-up, connecting included: Decode has no
// context, and a stream must not hang on an unreachable database.
const lookupTimeout = 15 * time.Second

// Close closes the connection, if any.
func (c *PostgresCatalog) Close(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	err := c.conn.Close(ctx)
	c.conn = nil
	return err
}

// Table reads schema.name's definition; nil when there is no such table.
// A connection the server closed is opened again once.
func (c *PostgresCatalog) Table(ctx context.Context, schema, name string) (*Table, error) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	for attempt := 0; ; attempt++ {
		if c.conn == nil || c.conn.IsClosed() {
			conn, err := connectCatalog(ctx, c.url)
			if err != nil {
				return nil, err
			}
			c.conn = conn
		}
		t, err := readTable(ctx, c.conn, schema, name)
		if err == nil {
			return t, nil
		}
		if attempt > 0 || !c.conn.IsClosed() {
			return nil, fmt.Errorf("source.debezium.catalog: look up %s.%s: %w", schema, name, err)
		}
	}
}

// CheckCatalog connects to url and reads the catalog once, so that a wrong
// URL or an unreachable database stops start-up with a clear error rather
// than the first event.
func CheckCatalog(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	conn, err := connectCatalog(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := readTable(ctx, conn, "pg_catalog", "pg_class"); err != nil {
		return fmt.Errorf("source.debezium.catalog: read the catalog: %w", err)
	}
	return nil
}

func connectCatalog(ctx context.Context, url string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		// pgx's message may hold the URL; the password must not reach a log.
		return nil, errors.New("source.debezium.catalog: not a valid PostgreSQL URL (e.g. postgres://user:password@host:5432/database)")
	}
	cfg.RuntimeParams["application_name"] = "pgtrail-catalog"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("source.debezium.catalog: connect to the source database: %w (is it reachable, and are the URL and credentials right?)", err)
	}
	return conn, nil
}

// readTable reads one table's definition: two short queries on pg_class,
// pg_attribute, pg_type and pg_index.
func readTable(ctx context.Context, conn *pgx.Conn, schema, name string) (*Table, error) {
	t := &Table{}
	var oid uint32
	var ident string
	err := conn.QueryRow(ctx, `SELECT c.oid, c.relreplident::text, current_database(), statement_timestamp()
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, schema, name).Scan(&oid, &ident, &t.Database, &t.ReadAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	t.ReplicaIdentity = ident[0]
	// A domain is typed as its base type, with the domain's modifier; an
	// array by its element type, with the column's modifier (numeric(5,2)[]).
	rows, err := conn.Query(ctx, `SELECT a.attname, a.attnotnull,
		       CASE WHEN et.oid IS NOT NULL THEN CASE WHEN et.typnamespace = 'pg_catalog'::regnamespace THEN et.typname END
		            WHEN bt.typnamespace = 'pg_catalog'::regnamespace THEN bt.typname END,
		       et.oid IS NOT NULL,
		       CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END,
		       coalesce((SELECT k.n FROM unnest(pk.indkey) WITH ORDINALITY k(attnum, n) WHERE k.attnum = a.attnum), 0)::int,
		       coalesce(a.attnum = ANY (ri.indkey::int2[]), false)
		FROM pg_attribute a
		JOIN pg_type t ON t.oid = a.atttypid
		JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
		LEFT JOIN pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A'
		LEFT JOIN pg_index pk ON pk.indrelid = a.attrelid AND pk.indisprimary
		LEFT JOIN pg_index ri ON ri.indrelid = a.attrelid AND ri.indisreplident
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
		ORDER BY a.attnum`, oid)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var keyPos []int
	for rows.Next() {
		var col Column
		var typ *string
		var pos int
		var inReplIdent bool
		if err := rows.Scan(&col.Name, &col.NotNull, &typ, &col.Array, &col.Typmod, &pos, &inReplIdent); err != nil {
			return nil, err
		}
		if typ != nil {
			col.Type = *typ
		}
		t.Columns = append(t.Columns, col)
		keyPos = append(keyPos, pos)
		if (t.ReplicaIdentity == 'd' && pos > 0) || (t.ReplicaIdentity == 'i' && inReplIdent) {
			t.Identity = append(t.Identity, col.Name)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for p := 1; ; p++ {
		i := indexOf(keyPos, p)
		if i < 0 {
			break
		}
		t.PrimaryKey = append(t.PrimaryKey, t.Columns[i].Name)
	}
	return t, nil
}

func indexOf(s []int, v int) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}
