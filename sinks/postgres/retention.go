package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Policy says how long the audit table keeps changes.
type Policy struct {
	// Keep is how long the changes of schema.table are kept at least; 0
	// keeps them for good.
	Keep func(schema, table string) time.Duration
	// Periods returns every period Keep may give a table of this name,
	// whatever its schema.
	Periods func(table string) []time.Duration
	// Default is the period of tables no other rule names: an empty
	// partition is dropped once past it. 0 keeps them.
	Default time.Duration
}

// Report says what a retention pass removed, or with dry, would remove.
type Report struct {
	Partitions []DroppedPartition
	// Deleted counts the rows deleted from partitions that stay, by schema.table.
	Deleted map[string]int64
}

// DroppedPartition is a whole partition dropped, with its rows by schema.table.
type DroppedPartition struct {
	Name     string
	From, To time.Time
	Rows     map[string]int64
}

var (
	// deleteBatch rows are deleted per transaction, each with deleteLock
	// as its lock_timeout: no delete holds row locks or waits for long.
	deleteBatch = 5000
	deleteLock  = time.Second
	// detachLock bounds DETACH PARTITION CONCURRENTLY's wait for the
	// transactions that use the audit table (it blocks neither readers nor
	// writers meanwhile); a plain DETACH, which does, waits deleteLock.
	detachLock = time.Minute
)

// retiring marks a partition that retention is detaching, with its range,
// so that a pass interrupted between detach and drop is finished by the next.
const retiring = "pgtrail retention: detaching from "

// Retain runs one retention pass over the audit table as of now: it drops
// the partitions whose every row is past its rule, then deletes the rows
// past their rule from the partitions that stay, in batches. With arch,
// rows are archived, and found there, before they go. With dry it only
// reports what it would remove.
func (s *Sink) Retain(ctx context.Context, now time.Time, pol Policy, arch Archive, dry bool) (Report, error) {
	rep := Report{Deleted: map[string]int64{}}
	if err := s.connect(ctx); err != nil {
		return rep, err
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return rep, fmt.Errorf("connect to audit database: %w", err)
	}
	defer conn.Release()
	p := &pass{s: s, conn: conn, pol: pol, arch: arch, dry: dry, now: now, log: s.log, rep: &rep}
	if err := p.leftovers(ctx); err != nil {
		return rep, err
	}
	spans, err := partitionSpans(ctx, conn, s.target)
	if err != nil {
		return rep, err
	}
	for _, sp := range spans {
		if err := p.partition(ctx, sp); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// pass is one run of Retain.
type pass struct {
	s    *Sink
	conn *pgxpool.Conn
	pol  Policy
	arch Archive
	dry  bool
	now  time.Time
	log  *slog.Logger
	rep  *Report
}

func (p *pass) rel(name string) string { return pgx.Identifier{p.s.cfg.Schema, name}.Sanitize() }

// tables lists the table names that have rows in rel, one index probe per
// name (a loose scan of the index on "table", primary_key), so a pass costs
// little whatever the partition's size.
func (p *pass) tables(ctx context.Context, rel string) ([]string, error) {
	rows, err := p.conn.Query(ctx, `WITH RECURSIVE t(name) AS (
			(SELECT "table" FROM `+rel+` ORDER BY "table" LIMIT 1)
			UNION ALL
			SELECT (SELECT "table" FROM `+rel+` WHERE "table" > t.name ORDER BY "table" LIMIT 1) FROM t WHERE t.name IS NOT NULL)
		SELECT name::text FROM t WHERE name IS NOT NULL`)
	if err != nil {
		return nil, fmt.Errorf("list the tables with changes in %s: %w", rel, err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list the tables with changes in %s: %w", rel, err)
	}
	return tables, nil
}

// rowFilter selects the rows of table name t (of one schema, or all with
// "") committed in [from, before): $1 to $4.
const rowFilter = `"table" = $1 AND ($2 = '' OR schema = $2) AND committed_at >= $3 AND committed_at < $4`

// deleteRows deletes the rows of table name t (in schema, or all with "")
// committed in [from, before) from the partition rel, in batches of
// deleteBatch rows, each in a transaction of its own. With an archive, a
// day's rows are archived first, and a batch that would delete a row the
// archive does not hold is rolled back.
func (p *pass) deleteRows(ctx context.Context, rel, t, schema string, from, before time.Time) error {
	if p.dry {
		return p.count(ctx, rel, t, schema, from, before)
	}
	if p.arch == nil {
		return p.deleteBatches(ctx, rel, t, schema, from, before, nil)
	}
	rows, err := p.conn.Query(ctx, `SELECT DISTINCT schema::text, date_trunc('day', committed_at, 'UTC') FROM `+rel+` WHERE `+rowFilter, t, schema, from, before)
	if err != nil {
		return fmt.Errorf("list the days of %s to archive from %s: %w", t, rel, err)
	}
	type group struct {
		Schema string
		Day    time.Time
	}
	groups, err := pgx.CollectRows(rows, pgx.RowToStructByPos[group])
	if err != nil {
		return fmt.Errorf("list the days of %s to archive from %s: %w", t, rel, err)
	}
	for _, g := range groups {
		day := g.Day.UTC()
		held, err := p.archive(ctx, rel, g.Schema, t, day, before)
		if err != nil {
			return err
		}
		if err := p.deleteBatches(ctx, rel, t, g.Schema, maxTime(from, day), minTime(before, day.AddDate(0, 0, 1)), held); err != nil {
			return err
		}
	}
	return nil
}

func (p *pass) count(ctx context.Context, rel, t, schema string, from, before time.Time) error {
	rows, err := p.conn.Query(ctx, `SELECT schema::text, count(*) FROM `+rel+` WHERE `+rowFilter+` GROUP BY 1`, t, schema, from, before)
	if err != nil {
		return fmt.Errorf("count the rows of %s to delete from %s: %w", t, rel, err)
	}
	var s string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&s, &n}, func() error {
		p.rep.Deleted[s+"."+t] += n
		return nil
	})
	if err != nil {
		return fmt.Errorf("count the rows of %s to delete from %s: %w", t, rel, err)
	}
	return nil
}

func (p *pass) deleteBatches(ctx context.Context, rel, t, schema string, from, before time.Time, held map[[16]byte]bool) error {
	for tries := 0; ; {
		var n int
		deleted := map[string]int64{}
		err := pgx.BeginFunc(ctx, p.conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", deleteLock.Milliseconds())); err != nil {
				return err
			}
			rows, err := tx.Query(ctx, `DELETE FROM `+rel+` WHERE ctid = ANY(ARRAY(SELECT ctid FROM `+rel+` WHERE `+rowFilter+` LIMIT $5))
				RETURNING id, schema::text`, t, schema, from, before, deleteBatch)
			if err != nil {
				return err
			}
			var id [16]byte
			var s string
			_, err = pgx.ForEachRow(rows, []any{&id, &s}, func() error {
				if held != nil && !held[id] {
					return fmt.Errorf("change %x of %s.%s is not in the archive: nothing deleted; the next pass archives it first", id, s, t)
				}
				deleted[s+"."+t]++
				n++
				return nil
			})
			return err
		})
		if isLockTimeout(err) && tries < 3 {
			// Another transaction holds a lock the delete needs: let it go first.
			tries++
			time.Sleep(time.Duration(tries) * 100 * time.Millisecond)
			continue
		}
		if err != nil {
			return fmt.Errorf("delete changes of %s before %s from %s: %w", t, before.Format(time.RFC3339), rel, err)
		}
		tries = 0
		for k, v := range deleted {
			p.rep.Deleted[k] += v
		}
		if n > 0 {
			p.log.Info("retention: rows deleted", "partition", rel, "table", t, "before", before, "rows", n)
		}
		if n < deleteBatch {
			return nil
		}
	}
}

// rowsByTable counts the rows of rel by schema.table.
func (p *pass) rowsByTable(ctx context.Context, rel string) (map[string]int64, error) {
	rows, err := p.conn.Query(ctx, `SELECT schema || '.' || "table", count(*) FROM `+rel+` GROUP BY 1`)
	if err != nil {
		return nil, fmt.Errorf("count the rows of %s: %w", rel, err)
	}
	out := map[string]int64{}
	var k string
	var n int64
	if _, err := pgx.ForEachRow(rows, []any{&k, &n}, func() error { out[k] = n; return nil }); err != nil {
		return nil, fmt.Errorf("count the rows of %s: %w", rel, err)
	}
	return out, nil
}

// drop detaches a partition, concurrently where PostgreSQL allows it (not
// beside a default partition), then finishes it.
func (p *pass) drop(ctx context.Context, sp span) error {
	rel := p.rel(sp.name)
	if p.dry {
		rows, err := p.rowsByTable(ctx, rel)
		if err != nil {
			return err
		}
		p.rep.Partitions = append(p.rep.Partitions, DroppedPartition{Name: rel, From: sp.from, To: sp.to, Rows: rows})
		return nil
	}
	// Archived while readers still see it, and checked again once detached.
	if p.arch != nil {
		if err := p.archiveAll(ctx, rel); err != nil {
			return err
		}
	}
	mark := fmt.Sprintf("%s%s, range %s %s", retiring, p.s.target, sp.from.Format(time.RFC3339), sp.to.Format(time.RFC3339))
	if err := p.exec(ctx, deleteLock, "COMMENT ON TABLE "+rel+" IS "+quote(mark)); err != nil {
		return fmt.Errorf("mark partition %s for retention: %w", rel, err)
	}
	var hasDefault bool
	if err := p.conn.QueryRow(ctx, `SELECT partdefid <> 0 FROM pg_partitioned_table WHERE partrelid = $1::regclass`, p.s.target).Scan(&hasDefault); err != nil {
		return fmt.Errorf("look up %s: %w", p.s.target, err)
	}
	detach, wait := "ALTER TABLE "+p.s.target+" DETACH PARTITION "+rel+" CONCURRENTLY", detachLock
	if hasDefault {
		// It takes an ACCESS EXCLUSIVE lock: wait no longer than a delete.
		detach, wait = "ALTER TABLE "+p.s.target+" DETACH PARTITION "+rel, deleteLock
	}
	if err := p.exec(ctx, wait, detach); err != nil {
		return fmt.Errorf("detach partition %s from %s: %w (the next pass finishes it)", rel, p.s.target, err)
	}
	return p.finish(ctx, sp)
}

// exec runs one statement outside a transaction, with lock_timeout wait.
func (p *pass) exec(ctx context.Context, wait time.Duration, sql string) error {
	if _, err := p.conn.Exec(ctx, fmt.Sprintf("SET lock_timeout = %d", wait.Milliseconds())); err != nil {
		return err
	}
	_, err := p.conn.Exec(ctx, sql)
	if _, rerr := p.conn.Exec(context.WithoutCancel(ctx), "RESET lock_timeout"); err == nil {
		err = rerr
	}
	return err
}

// finish drops a detached partition once its rows are checked to be past
// their rules (rows may have come between the check and the detach) and,
// with an archive, found there. A partition that holds rows to keep is
// attached again.
func (p *pass) finish(ctx context.Context, sp span) error {
	rel := p.rel(sp.name)
	pl, err := p.plan(ctx, rel, sp, time.Time{})
	if err != nil {
		return err
	}
	if !pl.drop {
		if err := p.reattach(ctx, sp); err != nil {
			return fmt.Errorf("%w (it holds changes of %s that retention keeps)", err, pl.keeps)
		}
		p.log.Warn("retention: partition kept: it holds changes to keep, written after it was checked", "partition", rel, "table", pl.keeps)
		return nil
	}
	rows, err := p.rowsByTable(ctx, rel)
	if err != nil {
		return err
	}
	if p.arch != nil {
		if err := p.archiveAll(ctx, rel); err != nil {
			// Readers keep seeing what the archive lacks.
			return errors.Join(err, p.reattach(ctx, sp))
		}
	}
	if err := p.exec(ctx, deleteLock, "DROP TABLE "+rel); err != nil {
		return fmt.Errorf("drop detached partition %s: %w (the next pass drops it)", rel, err)
	}
	p.rep.Partitions = append(p.rep.Partitions, DroppedPartition{Name: rel, From: sp.from, To: sp.to, Rows: rows})
	p.log.Info("retention: partition dropped", "partition", rel, "from", sp.from, "to", sp.to, "rows", sum(rows))
	return nil
}

// reattach attaches a detached partition again and removes its mark.
func (p *pass) reattach(ctx context.Context, sp span) error {
	rel := p.rel(sp.name)
	attach := fmt.Sprintf("ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM ('%s') TO ('%s')",
		p.s.target, rel, sp.from.Format(time.RFC3339), sp.to.Format(time.RFC3339))
	if err := p.exec(ctx, detachLock, attach); err != nil {
		return fmt.Errorf("attach partition %s to %s again: %w", rel, p.s.target, err)
	}
	return p.exec(ctx, deleteLock, "COMMENT ON TABLE "+rel+" IS NULL")
}

func sum(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// leftovers finishes what an interrupted pass left: partitions still being
// detached, and detached ones not yet dropped, known by their mark.
func (p *pass) leftovers(ctx context.Context) error {
	rows, err := p.conn.Query(ctx, `SELECT c.relname::text, coalesce(obj_description(c.oid, 'pg_class'), ''), i.inhrelid IS NOT NULL
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND i.inhparent = $3::regclass AND i.inhdetachpending
		WHERE n.nspname = $1 AND c.relkind = 'r'
		  AND (i.inhrelid IS NOT NULL OR NOT c.relispartition AND obj_description(c.oid, 'pg_class') LIKE $2)
		ORDER BY 1`,
		p.s.cfg.Schema, retiring+p.s.target+", range %", p.s.target)
	if err != nil {
		return fmt.Errorf("look up partitions left by an earlier retention pass: %w", err)
	}
	type leftover struct {
		Name, Mark string
		Pending    bool
	}
	found, err := pgx.CollectRows(rows, pgx.RowToStructByPos[leftover])
	if err != nil {
		return fmt.Errorf("look up partitions left by an earlier retention pass: %w", err)
	}
	for _, l := range found {
		rel := p.rel(l.Name)
		var from, to time.Time
		f := strings.Fields(l.Mark)
		if len(f) < 2 || !strings.HasPrefix(l.Mark, retiring) {
			p.log.Warn("retention: a partition of the audit table is being detached, not by retention: left alone", "partition", rel)
			continue
		}
		from, err1 := time.Parse(time.RFC3339, f[len(f)-2])
		to, err2 := time.Parse(time.RFC3339, f[len(f)-1])
		if err := errors.Join(err1, err2); err != nil {
			return fmt.Errorf("read the range of %s from its comment %q: %w", rel, l.Mark, err)
		}
		if p.dry {
			rows, err := p.rowsByTable(ctx, rel)
			if err != nil {
				return err
			}
			p.rep.Partitions = append(p.rep.Partitions, DroppedPartition{Name: rel, From: from, To: to, Rows: rows})
			continue
		}
		if l.Pending {
			if err := p.exec(ctx, detachLock, "ALTER TABLE "+p.s.target+" DETACH PARTITION "+rel+" FINALIZE"); err != nil {
				return fmt.Errorf("finish detaching partition %s: %w", rel, err)
			}
		}
		if err := p.finish(ctx, span{l.Name, from.UTC(), to.UTC()}); err != nil {
			return err
		}
	}
	return nil
}

// isLockTimeout reports whether err is PostgreSQL's lock_timeout.
func isLockTimeout(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "55P03"
}
