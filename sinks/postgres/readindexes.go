package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// readIndexes serve the activity log (web/trail) on a large trail: a
// record's history and its state at a moment by ("table", primary_key,
// committed_at), a transaction's changes by transaction_id. The feed, newest
// first, reads the primary key (committed_at, id) backwards.
var readIndexes = []struct{ suffix, columns string }{
	{"history_idx", `("table", primary_key, committed_at)`},
	{"transaction_idx", `(transaction_id)`},
}

// addReadIndexes creates the read indexes, on an audit table that holds a
// trail already without a long lock: the partitioned index is made on the
// parent only (ON ONLY: no partition is read), each partition's is built
// with CREATE INDEX CONCURRENTLY (writes go on) and attached; once every
// partition has its own, the parent's becomes valid. Partitions made later
// get them on creation. A build that failed half-way (an invalid index) is
// dropped and made again. Idempotent.
func (s *Sink) addReadIndexes(ctx context.Context) error {
	for _, ix := range readIndexes {
		parent := s.cfg.Table + "_" + ix.suffix
		qparent := pgx.Identifier{s.cfg.Schema, parent}.Sanitize()
		_, err := s.pool.Exec(ctx, "CREATE INDEX IF NOT EXISTS "+pgx.Identifier{parent}.Sanitize()+" ON ONLY "+s.target+" "+ix.columns)
		if err != nil {
			return fmt.Errorf("create index %s: %w", parent, err)
		}
		// The partitions that lack an index attached to this one.
		rows, err := s.pool.Query(ctx, `SELECT c.relname FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid
			WHERE h.inhparent = $1::regclass AND NOT EXISTS (
				SELECT 1 FROM pg_inherits ih JOIN pg_index i ON i.indexrelid = ih.inhrelid
				WHERE ih.inhparent = $2::regclass AND i.indrelid = c.oid)
			ORDER BY 1`, s.target, qparent)
		if err != nil {
			return fmt.Errorf("list partitions of %s without %s: %w", s.target, parent, err)
		}
		parts, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("list partitions of %s without %s: %w", s.target, parent, err)
		}
		for _, part := range parts {
			if err := s.indexPartition(ctx, part, part+"_"+ix.suffix, ix.columns, qparent); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *Sink) indexPartition(ctx context.Context, part, name, columns, parent string) error {
	qname := pgx.Identifier{s.cfg.Schema, name}.Sanitize()
	var valid *bool
	err := s.pool.QueryRow(ctx, `SELECT (SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1))`, qname).Scan(&valid)
	if err != nil {
		return fmt.Errorf("look up index %s: %w", name, err)
	}
	if valid != nil && !*valid {
		if _, err := s.pool.Exec(ctx, "DROP INDEX CONCURRENTLY IF EXISTS "+qname); err != nil {
			return fmt.Errorf("drop invalid index %s: %w", name, err)
		}
	}
	q := "CREATE INDEX CONCURRENTLY IF NOT EXISTS " + pgx.Identifier{name}.Sanitize() + " ON " +
		pgx.Identifier{s.cfg.Schema, part}.Sanitize() + " " + columns
	if _, err := s.pool.Exec(ctx, q); err != nil {
		return fmt.Errorf("create index %s on partition %s: %w", name, part, err)
	}
	if _, err := s.pool.Exec(ctx, "ALTER INDEX "+parent+" ATTACH PARTITION "+qname); err != nil {
		return fmt.Errorf("attach index %s to %s: %w", name, parent, err)
	}
	return nil
}
