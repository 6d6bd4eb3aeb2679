package postgres

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// DropBemiTriggers removes the row trigger of the Bemi ORM packages
// (_bemi_row_trigger_func, triggers named _bemi_row_trigger_*) from each
// relation and all its partitions, and returns the triggers it dropped as
// "name on table". pgtrail's own tables get it from Bemi's migration, which
// puts it on every table and, by an event trigger, on every table created
// later: it would run plpgsql for every row pgtrail writes.
func DropBemiTriggers(ctx context.Context, q Querier, relations ...string) ([]string, error) {
	// A trigger on a partitioned table is cloned onto its partitions and
	// goes with it (tgparentid), so only the originals are dropped.
	rows, err := q.Query(ctx, `SELECT t.tgname::text, t.tgrelid::regclass::text
		FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
		WHERE t.tgrelid IN (SELECT r FROM unnest($1::regclass[]) r -- a plain table has no partition tree
			UNION SELECT relid FROM unnest($1::regclass[]) r, pg_partition_tree(r))
		  AND NOT t.tgisinternal AND t.tgparentid = 0
		  AND (p.proname = '_bemi_row_trigger_func' OR t.tgname LIKE '\_bemi\_row\_trigger\_%')
		ORDER BY 2, 1`, relations)
	if err != nil {
		return nil, fmt.Errorf("look up Bemi triggers on %s: %w", strings.Join(relations, ", "), err)
	}
	type trigger struct{ Name, Table string }
	found, err := pgx.CollectRows(rows, pgx.RowToStructByPos[trigger])
	if err != nil {
		return nil, fmt.Errorf("look up Bemi triggers on %s: %w", strings.Join(relations, ", "), err)
	}
	var dropped []string
	for _, t := range found {
		if _, err := q.Exec(ctx, "DROP TRIGGER IF EXISTS "+pgx.Identifier{t.Name}.Sanitize()+" ON "+t.Table); err != nil {
			return dropped, fmt.Errorf("drop trigger %s on %s: %w", t.Name, t.Table, err)
		}
		dropped = append(dropped, t.Name+" on "+t.Table)
	}
	return dropped, nil
}

// DropBemiTriggersInSchema does DropBemiTriggers for every table of schema
// (pgtrail's own: pgtrail.slots and the like) and the other relations.
func DropBemiTriggersInSchema(ctx context.Context, q Querier, schema string, relations ...string) ([]string, error) {
	rows, err := q.Query(ctx, `SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.oid <> ALL($2::regclass[])`, schema, relations)
	if err != nil {
		return nil, fmt.Errorf("list the tables of schema %s: %w", schema, err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list the tables of schema %s: %w", schema, err)
	}
	if tables = append(tables, relations...); len(tables) == 0 {
		return nil, nil
	}
	return DropBemiTriggers(ctx, q, tables...)
}

// ownSchema is pgtrail's own schema (transports/pglogrepl.OwnSchema): the
// audit table's, by default, and in the source database pgtrail.slots'.
const ownSchema = "pgtrail"

// dropBemiTriggers takes the Bemi trigger off the audit table and its
// partitions, and off the tables of pgtrail's own schema in the audit
// database: the Bemi event trigger puts it back on all of them whenever
// any table is created, pgtrail's partitions included.
func (s *Sink) dropBemiTriggers(ctx context.Context, q Querier) error {
	dropped, err := DropBemiTriggersInSchema(ctx, q, ownSchema, s.target)
	for _, d := range dropped {
		s.log.Info("removed the Bemi row trigger from pgtrail's own table: pgtrail's writes need no context, and the trigger ran for each of them", "trigger", d)
	}
	return err
}
