// Package revert undoes changes of the trail in the source database: SQL
// that applies their inverses in reverse WAL order, keyed by primary key,
// with every value cast to its column's type as the source catalog has it;
// a conflict for every row that changed since; and, when asked, the
// application of that SQL in one transaction that carries pgtrail context
// naming what it reverts, so the revert is itself in the trail. What the
// trail cannot undo (a TRUNCATE, a before image without REPLICA IDENTITY
// FULL) is reported, never guessed.
package revert

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Source is the source database that reverts are read against and applied to.
type Source struct {
	pool     *pgxpool.Pool
	database string // current_database(): the trail's database column
	timeout  time.Duration
}

// Open connects to the source database.
func Open(ctx context.Context, url string, statementTimeout time.Duration) (*Source, error) {
	pc, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("revert database url: %w", err)
	}
	pc.MaxConns = 4
	pc.ConnConfig.RuntimeParams["application_name"] = "pgtrail-revert"
	pc.ConnConfig.RuntimeParams["statement_timeout"] = strconv.FormatInt(statementTimeout.Milliseconds(), 10)
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("connect to the revert database: %w", err)
	}
	s := &Source{pool: pool, timeout: statementTimeout}
	var conforming string
	err = pool.QueryRow(ctx, "SELECT current_database(), current_setting('standard_conforming_strings')").Scan(&s.database, &conforming)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to the revert database: %w", err)
	}
	if conforming != "on" {
		pool.Close()
		return nil, errors.New("the revert database has standard_conforming_strings off: revert SQL is written for it on (the default since PostgreSQL 9.1)")
	}
	return s, nil
}

// Close releases the connections.
func (s *Source) Close() { s.pool.Close() }

// Database is the source database's name.
func (s *Source) Database() string { return s.database }

// readOnly runs fn in a read-only transaction.
func (s *Source) readOnly(ctx context.Context, fn func(pgx.Tx) error) error {
	return pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{AccessMode: pgx.ReadOnly}, fn)
}
