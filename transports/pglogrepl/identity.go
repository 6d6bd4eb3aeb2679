package pglogrepl

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/core/config"
)

// Without REPLICA IDENTITY FULL, PostgreSQL logs only the key of the old row
// of an update or delete: the trail then has no "from what" (before: {} on
// updates) and a revert cannot undo them. With it, every update and delete
// logs the whole old row: more WAL (see the README's figures).

// wantsFull reports whether the config asks pgtrail to set REPLICA IDENTITY FULL.
func wantsFull(cfg config.Postgres) bool { return cfg.ReplicaIdentity == "full" }

// identityLockTimeout bounds the wait of ALTER TABLE ... REPLICA IDENTITY
// FULL for its brief exclusive lock, so a busy table delays nothing long.
const identityLockTimeout = "2s"

// replicaIdentity reports the captured tables without REPLICA IDENTITY
// FULL, with the statement to run, or sets it on them when the config asks.
func replicaIdentity(ctx context.Context, conn *pgx.Conn, cfg config.Postgres, log *slog.Logger) error {
	rows, err := conn.Query(ctx, `SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind = 'r' AND c.relreplident <> 'f'
		  AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1) AND n.nspname NOT LIKE 'pg_%'
		ORDER BY 1, 2`, OwnSchema)
	if err != nil {
		return fmt.Errorf("list tables without REPLICA IDENTITY FULL: %w", err)
	}
	type qualified struct{ Schema, Table string }
	tables, err := pgx.CollectRows(rows, pgx.RowToStructByPos[qualified])
	if err != nil {
		return fmt.Errorf("list tables without REPLICA IDENTITY FULL: %w", err)
	}
	for _, t := range tables {
		if !cfg.Match(t.Schema, t.Table) {
			continue
		}
		name := pgx.Identifier{t.Schema, t.Table}.Sanitize()
		if !wantsFull(cfg) {
			log.Warn("captured table without REPLICA IDENTITY FULL: its updates and deletes are stored without the old row "+
				"(no before image, no revert); run the statement, or set source.postgres.replica_identity: full",
				"table", t.Schema+"."+t.Table, "statement", "ALTER TABLE "+name+" REPLICA IDENTITY FULL;")
			continue
		}
		if err := setFull(ctx, conn, name); err != nil {
			return err
		}
		log.Info("replica identity set to FULL", "table", t.Schema+"."+t.Table)
	}
	return nil
}

// setFull sets REPLICA IDENTITY FULL on a table, waiting identityLockTimeout
// at most for its lock.
func setFull(ctx context.Context, conn *pgx.Conn, name string) error {
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '"+identityLockTimeout+"'"); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "ALTER TABLE "+name+" REPLICA IDENTITY FULL"); err != nil {
			return fmt.Errorf("set REPLICA IDENTITY FULL on %s (source.postgres.replica_identity: full): %w", name, err)
		}
		return nil
	})
}

// fullOnFirstSight sets REPLICA IDENTITY FULL on a captured table that run
// meets without it (created after setup). Its changes so far lack old rows;
// those after the ALTER have them. A failure (a lock not had in time) is
// logged, not fatal: capture goes on, and the next start tries again.
func (d *decoder) fullOnFirstSight(ctx context.Context, relid uint32, r *relation) {
	var current string
	if err := d.side.QueryRow(ctx, "SELECT relreplident::text FROM pg_class WHERE oid = $1", relid).Scan(&current); err != nil || current == "f" {
		return // gone, or set since the WAL being read was written
	}
	name := pgx.Identifier{r.schema, r.table}.Sanitize()
	if err := setFull(ctx, d.side, name); err != nil {
		d.log.Warn("could not set REPLICA IDENTITY FULL on a new captured table; `pgtrail setup` sets it", "table", r.schema+"."+r.table, "err", err)
		return
	}
	d.log.Info("replica identity set to FULL on a new captured table", "table", r.schema+"."+r.table)
}
