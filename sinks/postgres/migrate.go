package postgres

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// MigrateReport says what Migrate moved.
type MigrateReport struct {
	Source string
	// Rows are the source's rows that pgtrail stores, all of which the audit
	// table holds when Migrate returns without error; Copied of them were
	// copied by this run (the others by an earlier, interrupted one).
	Rows, Copied int64
	// Skipped are rows of other operations (Bemi's MESSAGE rows, which are
	// context, not row changes): left in the source table.
	Skipped int64
	Elapsed time.Duration
}

// migrateColumns are the columns a Bemi-style changes table must have.
var migrateColumns = []string{"id", "primary_key", "before", "after", "context", "database", "schema", "table",
	"operation", "committed_at", "queued_at", "created_at", "transaction_id", "position"}

// migrateRows is about how many rows one batch copies (in one transaction).
const migrateRows = 5000

// storable are the operations the audit table holds.
const storable = "('CREATE', 'UPDATE', 'DELETE', 'TRUNCATE')"

// Migrate copies every row of an unpartitioned Bemi-style changes table
// (from, as schema.table) into the audit table, ids and all, in batches of a
// few thousand rows, each in a transaction of its own. It reads the source in
// physical order, a range of pages at a time, and takes no lock beyond a
// reader's: both tables stay readable, and rows written to the source
// meanwhile are copied too. A row already in the audit table (same id and
// committed_at) is left as it is, so an interrupted migration is simply run
// again. It ends by checking that the audit table holds every row.
func (s *Sink) Migrate(ctx context.Context, from string) (MigrateReport, error) {
	began := time.Now()
	rep := MigrateReport{Source: from}
	if err := s.connect(ctx); err != nil {
		return rep, err
	}
	src, err := s.migrationSource(ctx, from)
	if err != nil {
		return rep, err
	}
	rep.Source = src
	insert := migrateInsert(src, s.target)
	timesSQL := `SELECT DISTINCT committed_at FROM ` + src + ` WHERE ctid >= $1::tid AND ctid < $2::tid AND operation::text IN ` + storable

	var perPage float64
	if err := s.pool.QueryRow(ctx, `SELECT CASE WHEN relpages > 0 AND reltuples > 0 THEN reltuples / relpages ELSE 50 END
		FROM pg_class WHERE oid = $1::regclass`, src).Scan(&perPage); err != nil {
		return rep, fmt.Errorf("look up the size of %s: %w", src, err)
	}
	step := max(1, int64(migrateRows/perPage))
	lastLog := time.Now()
	for page := int64(0); ; page += step {
		pages, err := s.pages(ctx, src)
		if err != nil {
			return rep, err
		}
		if page >= pages {
			break
		}
		lo, hi := fmt.Sprintf("(%d,0)", page), fmt.Sprintf("(%d,0)", page+step)
		rows, err := s.pool.Query(ctx, timesSQL, lo, hi)
		if err != nil {
			return rep, fmt.Errorf("read commit times of %s: %w", src, err)
		}
		times, err := pgx.CollectRows(rows, pgx.RowTo[time.Time])
		if err != nil {
			return rep, fmt.Errorf("read commit times of %s: %w", src, err)
		}
		if err := s.ensurePartitions(ctx, times); err != nil {
			return rep, err
		}
		var copied int64
		if err := s.pool.QueryRow(ctx, insert, lo, hi).Scan(&copied); err != nil {
			return rep, fmt.Errorf("copy rows of %s (pages %d to %d) into %s: %w", src, page, page+step, s.target, err)
		}
		rep.Copied += copied
		if time.Since(lastLog) > 10*time.Second {
			s.log.Info("migrating", "from", src, "to", s.target, "page", page, "of", pages, "copied", rep.Copied)
			lastLog = time.Now()
		}
	}
	var missing int64
	err = s.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE operation::text IN `+storable+`),
			count(*) FILTER (WHERE operation::text NOT IN `+storable+`),
			count(*) FILTER (WHERE operation::text IN `+storable+` AND NOT EXISTS
				(SELECT 1 FROM `+s.target+` t WHERE t.committed_at = s.committed_at AND t.id = s.id))
		FROM `+src+` s`).Scan(&rep.Rows, &rep.Skipped, &missing)
	if err != nil {
		return rep, fmt.Errorf("compare %s with %s: %w", src, s.target, err)
	}
	rep.Elapsed = time.Since(began)
	if missing > 0 {
		// Rows moved (updated) in the source while it was read: run again.
		return rep, fmt.Errorf("after copying, %d of the %d rows of %s are not in %s: rows of the source were updated meanwhile; run the migration again", missing, rep.Rows, src, s.target)
	}
	return rep, nil
}

// migrateInsert copies the rows of a range of the source's pages and
// returns how many it inserted.
func migrateInsert(src, target string) string {
	return `WITH b AS (SELECT * FROM ` + src + ` WHERE ctid >= $1::tid AND ctid < $2::tid),
		ins AS (INSERT INTO ` + target + ` (id, primary_key, before, after, context, database, schema, "table", operation,
				committed_at, queued_at, created_at, transaction_id, position, seq)
			SELECT id, left(primary_key::text, 255), coalesce(before::jsonb, '{}'), coalesce(after::jsonb, '{}'),
				coalesce(context::jsonb, '{}'), database, schema, "table", operation::text,
				committed_at, coalesce(queued_at, committed_at), coalesce(created_at, now()), transaction_id, position,
				0 -- the place in its transaction, which Bemi did not keep
			FROM b WHERE operation::text IN ` + storable + `
			ON CONFLICT DO NOTHING RETURNING 1)
		SELECT count(*) FROM ins`
}

// pages is the number of pages of a table now: rows written meanwhile land
// at the end.
func (s *Sink) pages(ctx context.Context, table string) (int64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, "SELECT pg_relation_size($1::regclass) / current_setting('block_size')::int", table).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("look up the size of %s: %w", table, err)
	}
	return n, nil
}

// migrationSource checks that from names an unpartitioned table, other than
// the audit table, with the columns of Bemi's changes table and a uuid id,
// and returns its quoted name.
func (s *Sink) migrationSource(ctx context.Context, from string) (string, error) {
	schema, table, ok := strings.Cut(from, ".")
	if !ok {
		schema, table = "public", from
	}
	src := pgx.Identifier{schema, table}.Sanitize()
	var kind string
	var partition bool
	err := s.pool.QueryRow(ctx, `SELECT c.relkind::text, c.relispartition FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, schema, table).Scan(&kind, &partition)
	switch {
	case err == pgx.ErrNoRows:
		return "", fmt.Errorf("migrate from %s: no such table in the audit database (give it as schema.table)", src)
	case err != nil:
		return "", fmt.Errorf("look up %s: %w", src, err)
	case src == s.target || partition:
		return "", fmt.Errorf("migrate from %s: that is pgtrail's audit table (or a partition of one): give the Bemi table to copy from", src)
	case kind != "r":
		return "", fmt.Errorf("migrate from %s: not a plain table (relkind %s): give Bemi's changes table", src, kind)
	}
	rows, err := s.pool.Query(ctx, `SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
		WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped`, src)
	if err != nil {
		return "", fmt.Errorf("read the columns of %s: %w", src, err)
	}
	type column struct{ Name, Type string }
	cols, err := pgx.CollectRows(rows, pgx.RowToStructByPos[column])
	if err != nil {
		return "", fmt.Errorf("read the columns of %s: %w", src, err)
	}
	var missing []string
	for _, want := range migrateColumns {
		if !slices.ContainsFunc(cols, func(c column) bool { return c.Name == want }) {
			missing = append(missing, want)
		}
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("migrate from %s: it lacks the column(s) %s of Bemi's changes table", src, strings.Join(missing, ", "))
	}
	if !slices.Contains(cols, column{"id", "uuid"}) {
		return "", fmt.Errorf("migrate from %s: its id is not a uuid, as Bemi's and pgtrail's are", src)
	}
	return src, nil
}
