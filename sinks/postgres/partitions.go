package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrail/pgtrail/plugins/sdk"
)

// Partitioning is the sink's `partitioning` block: the span of one partition
// of the audit table, and how many partitions are made ahead of the current one.
type Partitioning struct {
	Interval string `json:"interval"` // day | week | month
	Premake  int    `json:"premake"`
}

func defaultPartitioning() Partitioning { return Partitioning{Interval: "month", Premake: 3} }

// maxSuffix is the longest partition name suffix (a clipped partition's,
// see partitionName): PostgreSQL truncates names past 63 bytes, and two
// partitions would then share one.
const maxSuffix = len("_p20060102t150405")

func (p Partitioning) validate(table string) error {
	switch p.Interval {
	case "day", "week", "month":
	default:
		return fmt.Errorf("config.partitioning.interval: %q is not one of day, week, month (default month)", p.Interval)
	}
	if p.Premake < 0 || p.Premake > 366 {
		return fmt.Errorf("config.partitioning.premake: %d is out of range: give 0 to 366 partitions made ahead (default 3)", p.Premake)
	}
	if len(table)+maxSuffix > 63 {
		return fmt.Errorf("config.table: %q is too long: partitions are named <table>_p<start>, so give at most %d characters", table, 63-maxSuffix)
	}
	return nil
}

// floor is the start of the interval that holds t, in UTC: midnight, Monday
// midnight (as ISO weeks), or the first of the month.
func (p Partitioning) floor(t time.Time) time.Time {
	t = t.UTC()
	day := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	switch p.Interval {
	case "day":
		return day
	case "week":
		return day.AddDate(0, 0, -((int(day.Weekday()) + 6) % 7))
	}
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// next is the start of the interval after the one that starts at start.
func (p Partitioning) next(start time.Time) time.Time {
	switch p.Interval {
	case "day":
		return start.AddDate(0, 0, 1)
	case "week":
		return start.AddDate(0, 0, 7)
	}
	return start.AddDate(0, 1, 0)
}

// partitionName names a partition by its start: <table>_p202612 for a month
// (the name pgtrail always gave), _p2026w49 for an ISO week, _p20261207 for a
// day. A partition cut short by a neighbour (after the interval changed, or
// next to a migrated one) is named by its exact start.
func (p Partitioning) partitionName(table string, from, to time.Time) string {
	if from != p.floor(from) || to != p.next(from) {
		return table + "_p" + from.UTC().Format("20060102t150405")
	}
	switch p.Interval {
	case "day":
		return table + "_p" + from.Format("20060102")
	case "week":
		y, w := from.ISOWeek()
		return fmt.Sprintf("%s_p%04dw%02d", table, y, w)
	}
	return table + "_p" + from.Format("200601")
}

// span is the range [from, to) of one attached partition.
type span struct {
	name     string
	from, to time.Time
}

func (s span) holds(t time.Time) bool { return !t.Before(s.from) && t.Before(s.to) }

// partitionLockTimeout bounds every wait for a lock in partition upkeep:
// attaching needs SHARE UPDATE EXCLUSIVE on the audit table, which no reader
// or writer holds, but other DDL may; better to retry later than to queue.
const partitionLockTimeout = 5 * time.Second

// boundsQuery lists a partitioned table's partitions with their bounds, read
// back as timestamps in the session's own time zone (the one they are printed
// in). Partitions being detached and the default partition take no new rows
// and are left out; MINVALUE and MAXVALUE become the ends of time.
const boundsQuery = `SELECT c.relname::text,
		coalesce(nullif(b.m[1], 'MINVALUE'), '''0001-01-01 00:00:00+00''')::text,
		coalesce(nullif(b.m[2], 'MAXVALUE'), '''9999-12-31 00:00:00+00''')::text
	FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid,
		LATERAL (SELECT regexp_match(pg_get_expr(c.relpartbound, c.oid), '^FOR VALUES FROM \((.+)\) TO \((.+)\)$') AS m) b
	WHERE i.inhparent = $1::regclass AND NOT i.inhdetachpending AND b.m IS NOT NULL`

// partitionSpans reads the audit table's partitions from the catalog, sorted.
func partitionSpans(ctx context.Context, q Querier, target string) ([]span, error) {
	rows, err := q.Query(ctx, `SELECT name, trim(both '''' from f)::timestamptz, trim(both '''' from t)::timestamptz
		FROM (`+boundsQuery+`) AS p(name, f, t)`, target)
	if err != nil {
		return nil, fmt.Errorf("list partitions of %s: %w", target, err)
	}
	spans, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (span, error) {
		var s span
		err := r.Scan(&s.name, &s.from, &s.to)
		s.from, s.to = s.from.UTC(), s.to.UTC()
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("list partitions of %s: %w", target, err)
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].from.Before(spans[j].from) })
	return spans, nil
}

// covering returns the span among sorted spans that holds t.
func covering(spans []span, t time.Time) (span, bool) {
	i := sort.Search(len(spans), func(i int) bool { return spans[i].to.After(t) })
	if i < len(spans) && spans[i].holds(t) {
		return spans[i], true
	}
	return span{}, false
}

// Querier is what pgx's connections, pools and transactions share.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// covered reports whether the partitions known to this sink hold t.
func (s *Sink) covered(t time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := covering(s.spans, t)
	return ok
}

// ensurePartitions makes sure that a partition holds each of the times,
// creating the missing ones.
func (s *Sink) ensurePartitions(ctx context.Context, times []time.Time) error {
	var missing []time.Time
	for _, t := range times {
		if !s.covered(t) {
			missing = append(missing, t)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	// One creator at a time in this process; other processes are found in
	// the catalog, read again before each creation.
	s.upkeep.Lock()
	defer s.upkeep.Unlock()
	spans, err := partitionSpans(ctx, s.pool, s.target)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.spans = spans
	s.mu.Unlock()
	for _, t := range missing {
		if s.covered(t) {
			continue
		}
		s.mu.Lock()
		spans := slices.Clone(s.spans)
		s.mu.Unlock()
		if err := s.createPartition(ctx, t, spans); err != nil {
			return err
		}
	}
	return nil
}

// createPartition makes and attaches the partition for t, cut short where a
// neighbour already holds part of its interval. It is made as a table of its
// own and then attached: CREATE TABLE ... PARTITION OF would take an ACCESS
// EXCLUSIVE lock on the audit table and queue every writer behind any
// reader, while ATTACH PARTITION takes SHARE UPDATE EXCLUSIVE, which neither
// readers nor writers hold.
func (s *Sink) createPartition(ctx context.Context, t time.Time, spans []span) error {
	p := s.cfg.Partitioning
	from := p.floor(t)
	to := p.next(from)
	for _, sp := range spans {
		if !sp.to.After(t) && sp.to.After(from) {
			from = sp.to
		}
		if sp.from.After(t) && sp.from.Before(to) {
			to = sp.from
		}
	}
	name := p.partitionName(s.cfg.Table, from, to)
	part := pgx.Identifier{s.cfg.Schema, name}.Sanitize()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		stmts := []string{
			fmt.Sprintf("SET LOCAL lock_timeout = %d", partitionLockTimeout.Milliseconds()),
			fmt.Sprintf("CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)", part, s.target),
			fmt.Sprintf("ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM ('%s') TO ('%s')",
				s.target, part, from.Format(time.RFC3339), to.Format(time.RFC3339)),
		}
		for _, q := range stmts {
			if _, err := tx.Exec(ctx, q); err != nil {
				return err
			}
		}
		// An event trigger (the Bemi packages') may have put its row
		// trigger on the new table, or on the audit table again.
		return s.dropBemiTriggers(ctx, tx)
	})
	if err != nil {
		// Another pgtrail may have made it meanwhile.
		if spans, lerr := partitionSpans(ctx, s.pool, s.target); lerr == nil {
			if _, ok := covering(spans, t); ok {
				s.mu.Lock()
				s.spans = spans
				s.mu.Unlock()
				return nil
			}
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P07" {
			return fmt.Errorf("create partition %s of %s: %w (a table of that name exists and is no partition: "+
				"one that `pgtrail retention` detached and has yet to drop, or a table of yours; run pgtrail retention, or rename it)", part, s.target, err)
		}
		return fmt.Errorf("create partition %s of %s for %s to %s: %w", part, s.target, from.Format(time.RFC3339), to.Format(time.RFC3339), err)
	}
	s.log.Info("partition created", "partition", part, "from", from, "to", to)
	s.mu.Lock()
	s.spans = append(s.spans, span{name, from, to})
	slices.SortFunc(s.spans, func(a, b span) int { return a.from.Compare(b.from) })
	s.mu.Unlock()
	return nil
}

// partitionGone reports whether err says that no partition holds a row
// although this sink knew one that did: retention dropped it meanwhile.
// The sink then forgets what it knew, to read the catalog again.
func (s *Sink) partitionGone(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23514" || !strings.Contains(pgErr.Message, "no partition") {
		return false
	}
	s.mu.Lock()
	s.spans = nil
	s.mu.Unlock()
	return true
}

// premake makes the partitions for now and the configured number ahead, and
// takes the Bemi trigger off the audit table again: the Bemi packages' event
// trigger puts it back on every table whenever the application creates one.
func (s *Sink) premake(ctx context.Context, now time.Time) error {
	p := s.cfg.Partitioning
	times := []time.Time{now}
	for t := p.floor(now); len(times) <= p.Premake; {
		t = p.next(t)
		times = append(times, t)
	}
	if err := s.ensurePartitions(ctx, times); err != nil {
		return err
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", partitionLockTimeout.Milliseconds())); err != nil {
			return err
		}
		return s.dropBemiTriggers(ctx, tx)
	})
	if err != nil {
		return fmt.Errorf("remove Bemi triggers from %s: %w", s.target, err)
	}
	return nil
}

// upkeepEvery is how often a running sink makes partitions ahead.
var upkeepEvery = time.Hour

// startUpkeep makes partitions ahead now and every upkeepEvery until Close.
//
// It is idempotent and cheap. It runs on the active instance only: with
// several `pgtrail run`, a standby opens its sinks only once it holds the
// slot's lease (cmd/pgtrail leased).
func (s *Sink) startUpkeep() {
	ctx, stop := context.WithCancel(context.Background())
	s.stopUpkeep = stop
	s.upkeepDone.Add(1)
	go func() {
		defer s.upkeepDone.Done()
		t := time.NewTicker(upkeepEvery)
		defer t.Stop()
		for {
			if err := s.premake(ctx, time.Now()); err != nil && ctx.Err() == nil {
				// Writes make what they need on demand; the next round retries.
				s.log.Warn("partition upkeep failed; retrying in "+upkeepEvery.String(), "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// createStaging makes this connection's staging table (see merge) unless it
// has one. Creating a table fires the Bemi packages' event trigger, which puts
// their row trigger back on the audit table: it comes off again before the
// transaction ends.
func (s *Sink) createStaging(ctx context.Context, tx pgx.Tx) error {
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT to_regclass('pg_temp.pgtrail_stage') IS NOT NULL").Scan(&exists); err != nil {
		return fmt.Errorf("look up staging table: %w", err)
	}
	if exists {
		return nil
	}
	_, err := tx.Exec(ctx, `CREATE TEMP TABLE pgtrail_stage (LIKE `+s.target+` INCLUDING DEFAULTS) ON COMMIT DELETE ROWS`)
	if err != nil {
		return fmt.Errorf("create staging table: %w", err)
	}
	return s.dropBemiTriggers(ctx, tx)
}

// commitTimes lists the commit times of a batch, each run of equal ones once.
func commitTimes(batch []*sdk.Change) []time.Time {
	var times []time.Time
	for i, c := range batch {
		if i == 0 || !c.CommittedAt.Equal(batch[i-1].CommittedAt) {
			times = append(times, c.CommittedAt)
		}
	}
	return times
}

// checkPartitioned refuses an audit table that is not partitioned: most
// likely a Bemi changes table of the same name, which pgtrail would
// otherwise write into as it is.
func (s *Sink) checkPartitioned(ctx context.Context) error {
	var kind string
	if err := s.pool.QueryRow(ctx, "SELECT relkind::text FROM pg_class WHERE oid = $1::regclass", s.target).Scan(&kind); err != nil {
		return fmt.Errorf("look up audit table %s: %w", s.target, err)
	}
	if kind != "p" {
		return fmt.Errorf("audit table %s exists but is not partitioned (is it Bemi's changes table?): rename it, "+
			"e.g. ALTER TABLE %s RENAME TO %s, then run `pgtrail setup --migrate-from %s.%s`, which moves its rows into pgtrail's table",
			s.target, s.target, pgx.Identifier{s.cfg.Table + "_bemi"}.Sanitize(), s.cfg.Schema, s.cfg.Table+"_bemi")
	}
	return nil
}
