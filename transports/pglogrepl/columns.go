package pglogrepl

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/core/config"
)

// CapturedColumns lists schema, table and column of every column of the
// tables cfg captures, so that rules can be checked against them at start.
func CapturedColumns(ctx context.Context, cfg config.Postgres) ([][3]string, error) {
	conn, err := connect(ctx, cfg.URL)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT table_schema::text, table_name::text, column_name::text FROM information_schema.columns
		WHERE table_schema NOT IN ('pg_catalog', 'information_schema', $1)`, OwnSchema)
	if err != nil {
		return nil, fmt.Errorf("list captured columns: %w", err)
	}
	all, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([3]string, error) {
		var c [3]string
		err := r.Scan(&c[0], &c[1], &c[2])
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("list captured columns: %w", err)
	}
	out := all[:0]
	for _, c := range all {
		if cfg.Match(c[0], c[1]) {
			out = append(out, c)
		}
	}
	return out, nil
}
