package postgres

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// verdict is what a partition's range means for the rows of one table name.
type verdict int

const (
	kept    verdict = iota // every rule keeps them
	expired                // every rule removes them
	mixed                  // it depends on the schema or the commit time
)

// judge tells from the partition's range alone, when it can, what becomes
// of the rows of table name t.
func (p *pass) judge(t string, sp span) verdict {
	allExpired, allKept := true, true
	for _, d := range p.pol.Periods(t) {
		if d == 0 || sp.to.After(p.now.Add(-d)) {
			allExpired = false
		}
		if d != 0 && sp.from.Before(p.now.Add(-d)) {
			allKept = false
		}
	}
	switch {
	case allExpired:
		return expired
	case allKept:
		return kept
	}
	return mixed
}

// settled reports whether nothing of table name t in the partition can
// have expired since it was checked: every rule of finite period that may
// apply had let go of the whole range by then. Rules of forever keep the
// rest. A check counts for a week, for rows written late.
func (p *pass) settled(t string, sp span, checked time.Time) bool {
	if checked.IsZero() || checked.Before(p.now.Add(-settledFor)) {
		return false
	}
	for _, d := range p.pol.Periods(t) {
		if d != 0 && sp.to.After(checked.Add(-d)) {
			return false
		}
	}
	return true
}

// settledFor is how long a partition's check mark spares it from a scan.
const settledFor = 7 * 24 * time.Hour

// removal is the rows of table name t (in schema, or every schema with "")
// committed before before, from one partition.
type removal struct {
	table, schema string
	before        time.Time
}

// plan is what becomes of one partition: dropped whole, or these rows deleted.
type plan struct {
	drop     bool
	removals []removal
	keeps    string // a table with rows to keep, when not drop
}

// plan works out what to remove from a partition: by table name from the
// range (a loose index scan finds the names), and where the rules depend on
// the schema, by the schemas found. checked is when the partition was last
// planned (zero: never).
func (p *pass) plan(ctx context.Context, rel string, sp span, checked time.Time) (plan, error) {
	tables, err := p.tables(ctx, rel)
	if err != nil {
		return plan{}, err
	}
	if len(tables) == 0 {
		// Nothing to lose: an empty partition goes once past the default rule.
		return plan{drop: p.pol.Default > 0 && !sp.to.After(p.now.Add(-p.pol.Default)), keeps: "(none)"}, nil
	}
	pl := plan{drop: true}
	keep := func(t string) {
		if pl.drop {
			pl.drop, pl.keeps = false, t
		}
	}
	for _, t := range tables {
		switch p.judge(t, sp) {
		case expired:
			pl.removals = append(pl.removals, removal{t, "", sp.to})
		case kept:
			keep(t)
		case mixed:
			if p.settled(t, sp, checked) {
				keep(t)
				continue
			}
			rs, err := p.bySchema(ctx, rel, t, sp)
			if err != nil {
				return plan{}, err
			}
			for _, r := range rs {
				if r.before.Before(sp.to) {
					keep(r.schema + "." + t)
				}
				if r.before.After(sp.from) {
					pl.removals = append(pl.removals, r)
				}
			}
		}
	}
	return pl, nil
}

// bySchema says how much of table name t to remove from a partition: from
// its one rule when every schema has the same, else schema by schema, as
// found in the partition (a scan of t's rows there).
func (p *pass) bySchema(ctx context.Context, rel, t string, sp span) ([]removal, error) {
	cut := func(d time.Duration) time.Time {
		if d == 0 {
			return sp.from // kept for good
		}
		return maxTime(sp.from, minTime(p.now.Add(-d), sp.to))
	}
	periods := slices.Compact(slices.Sorted(slices.Values(p.pol.Periods(t))))
	if len(periods) == 1 {
		return []removal{{t, "", cut(periods[0])}}, nil
	}
	rows, err := p.conn.Query(ctx, `SELECT DISTINCT schema::text FROM `+rel+` WHERE "table" = $1`, t)
	if err != nil {
		return nil, fmt.Errorf("list the schemas of table %s in %s: %w", t, rel, err)
	}
	schemas, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list the schemas of table %s in %s: %w", t, rel, err)
	}
	var out []removal
	for _, schema := range schemas {
		out = append(out, removal{t, schema, cut(p.pol.Keep(schema, t))})
	}
	return out, nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// partition drops one partition whose rows are all past their rules, or
// deletes from it those that are, and marks it checked.
func (p *pass) partition(ctx context.Context, sp span) error {
	rel := p.rel(sp.name)
	var mark string
	if err := p.conn.QueryRow(ctx, `SELECT coalesce(obj_description($1::regclass, 'pg_class'), '')`, rel).Scan(&mark); err != nil {
		return fmt.Errorf("read the comment of %s: %w", rel, err)
	}
	checked, _ := time.Parse(time.RFC3339, strings.TrimPrefix(mark, checkedMark))
	pl, err := p.plan(ctx, rel, sp, checked)
	if err != nil {
		return err
	}
	if pl.drop {
		return p.drop(ctx, sp)
	}
	for _, r := range pl.removals {
		if err := p.deleteRows(ctx, rel, r.table, r.schema, sp.from, r.before); err != nil {
			return err
		}
	}
	if p.dry {
		return nil
	}
	// Best effort: without the mark the next pass looks again.
	if err := p.exec(ctx, deleteLock, "COMMENT ON TABLE "+rel+" IS "+quote(checkedMark+p.now.UTC().Format(time.RFC3339))); err != nil {
		p.log.Debug("retention: could not mark partition checked", "partition", rel, "err", err)
	}
	return nil
}

// checkedMark, and the time, is the comment of a partition retention planned.
const checkedMark = "pgtrail retention: checked "
