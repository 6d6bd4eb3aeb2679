// Package appcontext is for applications: it carries who is acting and why
// in a context.Context and writes it into the current transaction as a
// `pgtrail` logical decoding message, which pgtrail attaches to every row
// change that follows in that transaction.
//
//	ctx = appcontext.With(ctx, map[string]any{"user_id": 42, "endpoint": "PATCH /orders/7"})
//	err := appcontext.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
//		_, err := tx.Exec(ctx, "UPDATE orders SET status = 'paid' WHERE id = 7")
//		return err
//	})
//
// The message is transactional: it costs one small WAL record per
// transaction, adds no trigger, and disappears with a rolled-back transaction.
package appcontext

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"maps"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Prefix is the logical decoding message prefix pgtrail reads as context.
const Prefix = "pgtrail"

const emit = "SELECT pg_logical_emit_message(true, '" + Prefix + "', $1::text)"

type key struct{}

// With returns a copy of ctx whose audit context is the parent's with fields
// added (a field of the same name replaces the parent's).
func With(ctx context.Context, fields map[string]any) context.Context {
	merged := maps.Clone(From(ctx))
	if merged == nil {
		merged = make(map[string]any, len(fields))
	}
	maps.Copy(merged, fields)
	return context.WithValue(ctx, key{}, merged)
}

// From returns the audit context of ctx, or nil.
func From(ctx context.Context) map[string]any {
	m, _ := ctx.Value(key{}).(map[string]any)
	return m
}

// Execer is what Set needs of a pgx transaction (pgx.Tx, or a pgx.Conn or
// pool connection inside BEGIN).
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Set writes ctx's audit context into the transaction tx belongs to. Call it
// inside the transaction, before the changes; without a context it does
// nothing.
func Set(ctx context.Context, tx Execer) error {
	payload, err := encode(ctx)
	if payload == nil || err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, emit, payload); err != nil {
		return fmt.Errorf("set audit context: %w", err)
	}
	return nil
}

// SetSQL is Set for database/sql.
func SetSQL(ctx context.Context, tx *sql.Tx) error {
	payload, err := encode(ctx)
	if payload == nil || err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, emit, string(payload)); err != nil {
		return fmt.Errorf("set audit context: %w", err)
	}
	return nil
}

// Beginner is a pgx pool or connection.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// BeginFunc runs fn in a transaction that carries ctx's audit context, and
// commits it when fn returns nil.
func BeginFunc(ctx context.Context, db Beginner, fn func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if err := Set(ctx, tx); err != nil {
			return err
		}
		return fn(tx)
	})
}

func encode(ctx context.Context) ([]byte, error) {
	m := From(ctx)
	if len(m) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode audit context: %w", err)
	}
	return b, nil
}
