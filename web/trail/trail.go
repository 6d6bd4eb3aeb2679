// Package trail reads the audit table that the PostgreSQL sink writes: the
// changes by filter, newest first with keyset pagination, a record's history,
// a transaction, a record as it was at a moment. Every query runs in a
// read-only transaction with a statement timeout, so the read side can run
// anywhere, several times, with credentials that cannot write.
package trail

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Options locate the audit table.
type Options struct {
	URL              string
	Schema, Table    string
	StatementTimeout time.Duration
	MaxConns         int32 // 0: pgxpool's default
}

// Store reads one audit table.
type Store struct {
	pool   *pgxpool.Pool
	target string // quoted schema.table
	name   string // schema.table, for messages
	opts   Options
}

// ErrTimeout is returned when a query ran past the statement timeout.
var ErrTimeout = errors.New("the query ran past the statement timeout")

// Open connects and checks that the audit table is there.
func Open(ctx context.Context, opts Options) (*Store, error) {
	pc, err := pgxpool.ParseConfig(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("audit table database url: %w", err)
	}
	if opts.MaxConns > 0 {
		pc.MaxConns = opts.MaxConns
	}
	// Set on the connection, so every transaction is read-only and bounded
	// without a round trip of its own.
	params := pc.ConnConfig.RuntimeParams
	params["application_name"] = "pgtrail-ui"
	params["default_transaction_read_only"] = "on"
	params["statement_timeout"] = strconv.FormatInt(opts.StatementTimeout.Milliseconds(), 10)
	params["TimeZone"] = "UTC"
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("connect to the audit table's database: %w", err)
	}
	s := &Store{pool: pool, opts: opts, name: opts.Schema + "." + opts.Table,
		target: pgx.Identifier{opts.Schema, opts.Table}.Sanitize()}
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", s.target).Scan(&exists); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to the audit table's database: %w", err)
	}
	if !exists {
		pool.Close()
		return nil, fmt.Errorf("audit table %s does not exist: run `pgtrail setup`, or point ui.schema and ui.table at it", s.name)
	}
	return s, nil
}

// Close releases the connections.
func (s *Store) Close() { s.pool.Close() }

// Ping checks the connection, for health checks.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

// wrap names the operation and turns a statement timeout into ErrTimeout.
func (s *Store) wrap(op string, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "57014" {
		return fmt.Errorf("%s: %w (%s): narrow the filters (a table, a time range)", op, ErrTimeout, s.opts.StatementTimeout)
	}
	return fmt.Errorf("%s in %s: %w", op, s.name, err)
}
