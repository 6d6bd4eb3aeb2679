package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/plugins/sdk"
)

const day = 24 * time.Hour

// rules is a test policy: periods by schema.table or schema.* (exact
// names first), else def; 0 keeps for good.
func rules(def time.Duration, tables map[string]time.Duration) Policy {
	keep := func(schema, table string) time.Duration {
		if d, ok := tables[schema+"."+table]; ok {
			return d
		}
		if d, ok := tables[schema+".*"]; ok {
			return d
		}
		return def
	}
	return Policy{
		Default: def,
		Keep:    keep,
		Periods: func(table string) []time.Duration {
			out := []time.Duration{def}
			for k, d := range tables {
				if strings.HasSuffix(k, "."+table) || strings.HasSuffix(k, ".*") {
					out = append(out, d)
				}
			}
			return out
		},
	}
}

var testLog = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// history writes changes of schema.table at each of the times, through the
// sink (which makes their partitions), and returns them.
func history(t testing.TB, s *Sink, schema, table string, times ...time.Time) []*sdk.Change {
	t.Helper()
	batch := changesAt(table, times...)
	for _, c := range batch {
		c.Schema = schema
	}
	if _, err := s.Write(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	return batch
}

// storedIDs returns the ids in the audit table.
func storedIDs(t testing.TB, conn *pgx.Conn, target string) []uuid.UUID {
	t.Helper()
	rows, err := conn.Query(context.Background(), "SELECT id FROM "+target+" ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func sortedIDs(changes []*sdk.Change) []uuid.UUID {
	var ids []uuid.UUID
	for _, c := range changes {
		ids = append(ids, c.ID)
	}
	slices.SortFunc(ids, func(a, b uuid.UUID) int { return strings.Compare(a.String(), b.String()) })
	return ids
}

// showReport prints a report in a stable form.
func showReport(r Report) string {
	var b strings.Builder
	for _, p := range r.Partitions {
		fmt.Fprintf(&b, "drop %s [%s, %s)", p.Name, p.From.Format(time.DateOnly), p.To.Format(time.DateOnly))
		for _, k := range slices.Sorted(maps.Keys(p.Rows)) {
			fmt.Fprintf(&b, " %s=%d", k, p.Rows[k])
		}
		b.WriteString("\n")
	}
	for _, k := range slices.Sorted(maps.Keys(r.Deleted)) {
		fmt.Fprintf(&b, "delete %s=%d\n", k, r.Deleted[k])
	}
	return b.String()
}

// TestRetentionOverMonthsKeepsExactlyWhatTheRulesKeep: eight months of
// history under default 90d, public.sessions 7d and audit.* forever:
// partitions of expired rows only are dropped whole, the others lose exactly
// their expired rows (in batches), the rest stays; a dry run reports the
// same, removing nothing; a second pass finds nothing to do.
func TestRetentionOverMonthsKeepsExactlyWhatTheRulesKeep(t *testing.T) {
	ctx := context.Background()
	defer func(n int) { deleteBatch = n }(deleteBatch)
	deleteBatch = 7
	s, url := openSink(t, map[string]any{"partitioning": map[string]any{"interval": "month", "premake": 1}})
	conn := connect(t, url)
	now := time.Date(2026, 8, 20, 12, 0, 0, 0, time.UTC)
	pol := rules(90*day, map[string]time.Duration{"public.sessions": 7 * day, "audit.*": 0})
	keep := map[string]time.Duration{"public.orders": 90 * day, "public.sessions": 7 * day, "audit.events": 0}

	var all []*sdk.Change
	for m := 0; m < 8; m++ { // January to August 2026
		var times []time.Time
		for d := 1; d <= 28; d += 3 {
			if at := time.Date(2026, time.Month(1+m), d, 10, 0, 0, 0, time.UTC); at.Before(now) {
				times = append(times, at)
			}
		}
		all = append(all, history(t, s, "public", "orders", times...)...)
		all = append(all, history(t, s, "public", "sessions", times...)...)
	}
	// An audit event in March keeps March's partition; an empty old one goes.
	all = append(all, history(t, s, "audit", "events", time.Date(2026, 3, 5, 0, 0, 0, 0, time.UTC))...)
	if err := s.ensurePartitions(ctx, []time.Time{time.Date(2025, 10, 1, 0, 0, 0, 0, time.UTC)}); err != nil {
		t.Fatal(err)
	}
	var want []*sdk.Change
	for _, c := range all {
		if d := keep[c.Schema+"."+c.Table]; d == 0 || !c.CommittedAt.Before(now.Add(-d)) {
			want = append(want, c)
		}
	}
	if len(want) == len(all) || len(want) == 0 {
		t.Fatal("the rules keep all or nothing: the test proves nothing")
	}

	dry, err := s.Retain(ctx, now, pol, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if got := storedIDs(t, conn, "pgtrail.changes"); len(got) != len(all) {
		t.Fatalf("the dry run removed %d changes", len(all)-len(got))
	}
	rep, err := s.Retain(ctx, now, pol, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := storedIDs(t, conn, "pgtrail.changes"); !slices.Equal(got, sortedIDs(want)) {
		t.Fatalf("kept %d changes, want exactly the %d the rules keep", len(got), len(want))
	}
	// May 22, noon, is 90 days before now: January, February, April and
	// the empty October go whole; March keeps its audit event and loses its
	// other 20 rows; May's orders up to the 22nd go (8), sessions up to
	// August 13, noon (10 in May, June and July, 5 in August).
	wantReport := `drop "pgtrail"."changes_p202510" [2025-10-01, 2025-11-01)
drop "pgtrail"."changes_p202601" [2026-01-01, 2026-02-01) public.orders=10 public.sessions=10
drop "pgtrail"."changes_p202602" [2026-02-01, 2026-03-01) public.orders=10 public.sessions=10
drop "pgtrail"."changes_p202604" [2026-04-01, 2026-05-01) public.orders=10 public.sessions=10
delete public.orders=18
delete public.sessions=45
`
	if got := showReport(rep); got != wantReport {
		t.Fatalf("report:\n%s\nwant:\n%s", got, wantReport)
	}
	if got := showReport(dry); got != wantReport {
		t.Fatalf("dry run's report:\n%s\nwant:\n%s", got, wantReport)
	}
	if again, err := s.Retain(ctx, now, pol, nil, false); err != nil || showReport(again) != "" {
		t.Fatalf("a second pass: %s %v", showReport(again), err)
	}
	// March, which keeps its audit event for good, is marked checked: the
	// next passes need not look into it again.
	var mark string
	if err := conn.QueryRow(ctx, "SELECT obj_description('pgtrail.changes_p202603'::regclass, 'pg_class')").Scan(&mark); err != nil ||
		mark != checkedMark+now.Format(time.RFC3339) {
		t.Fatalf("March's comment: %q (%v)", mark, err)
	}
	// The running sink knew the dropped partitions: a late change of
	// January finds its partition made again.
	late := history(t, s, "public", "orders", time.Date(2026, 1, 9, 0, 0, 0, 0, time.UTC))
	if n := len(storedIDs(t, conn, "pgtrail.changes")); n != len(want)+len(late) {
		t.Fatalf("after a late change: %d stored", n)
	}
}

// TestRetentionFinishesWhatAnInterruptedPassLeft: a partition left being
// detached (DETACH CONCURRENTLY cut short) and one detached but not dropped
// are dropped by the next pass; one that holds changes to keep is attached
// again, whole.
func TestRetentionFinishesWhatAnInterruptedPassLeft(t *testing.T) {
	ctx := context.Background()
	s, url := openSink(t, map[string]any{"partitioning": map[string]any{"interval": "week", "premake": 0}})
	conn := connect(t, url)
	now := time.Date(2026, 8, 20, 12, 0, 0, 0, time.UTC)
	pol := rules(30*day, map[string]time.Duration{"audit.events": 0})
	weeks := []time.Time{time.Date(2026, 5, 6, 0, 0, 0, 0, time.UTC), time.Date(2026, 5, 13, 0, 0, 0, 0, time.UTC), time.Date(2026, 5, 20, 0, 0, 0, 0, time.UTC)}
	history(t, s, "public", "orders", weeks...)
	kept := history(t, s, "audit", "events", weeks[2])
	mark := func(name string, from time.Time) {
		t.Helper()
		q := fmt.Sprintf("COMMENT ON TABLE pgtrail.%s IS '%s\"pgtrail\".\"changes\", range %s %s'", name, retiring,
			from.Format(time.RFC3339), from.AddDate(0, 0, 7).Format(time.RFC3339))
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	// Week 19: detached, not dropped. Week 21 (with a change to keep):
	// detached meanwhile, by hand.
	for _, w := range []struct {
		name string
		from time.Time
	}{{"changes_p2026w19", time.Date(2026, 5, 4, 0, 0, 0, 0, time.UTC)}, {"changes_p2026w21", time.Date(2026, 5, 18, 0, 0, 0, 0, time.UTC)}} {
		mark(w.name, w.from)
		if _, err := conn.Exec(ctx, "ALTER TABLE pgtrail.changes DETACH PARTITION pgtrail."+w.name); err != nil {
			t.Fatal(err)
		}
	}
	// Week 20: DETACH CONCURRENTLY cut short while a reader holds the table.
	mark("changes_p2026w20", time.Date(2026, 5, 11, 0, 0, 0, 0, time.UTC))
	reader := connect(t, url)
	if _, err := reader.Exec(ctx, "BEGIN; SELECT count(*) FROM pgtrail.changes"); err != nil {
		t.Fatal(err)
	}
	other := connect(t, url)
	if _, err := other.Exec(ctx, "SET lock_timeout = 200"); err != nil {
		t.Fatal(err)
	}
	_, err := other.Exec(ctx, "ALTER TABLE pgtrail.changes DETACH PARTITION pgtrail.changes_p2026w20 CONCURRENTLY")
	if err == nil || !strings.Contains(err.Error(), "lock timeout") {
		t.Fatalf("DETACH CONCURRENTLY beside a reader: %v, want a lock timeout that leaves it pending", err)
	}
	if _, err := reader.Exec(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}

	rep, err := s.Retain(ctx, now, pol, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	want := `drop "pgtrail"."changes_p2026w19" [2026-05-04, 2026-05-11) public.orders=1
drop "pgtrail"."changes_p2026w20" [2026-05-11, 2026-05-18) public.orders=1
delete public.orders=1
`
	if got := showReport(rep); got != want {
		t.Fatalf("report:\n%s\nwant:\n%s", got, want)
	}
	if got := storedIDs(t, conn, "pgtrail.changes"); !slices.Equal(got, sortedIDs(kept)) {
		t.Fatalf("stored %v, want the audit event %v", got, kept[0].ID)
	}
	var tables int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_class WHERE relname IN ('changes_p2026w19', 'changes_p2026w20')`).Scan(&tables); err != nil || tables != 0 {
		t.Fatalf("%d of the detached partitions are left (%v)", tables, err)
	}
	var comment string
	if err := conn.QueryRow(ctx, `SELECT obj_description('pgtrail.changes_p2026w21'::regclass, 'pg_class')`).Scan(&comment); err != nil ||
		comment != checkedMark+now.Format(time.RFC3339) {
		t.Fatalf("the partition attached again has the comment %q (%v), want it checked", comment, err)
	}
}

// stalls writes small batches of changes committed now through s until
// stop is closed, and returns the longest a write took.
func stalls(t testing.TB, s *Sink, stop <-chan struct{}) <-chan time.Duration {
	out := make(chan time.Duration, 1)
	go func() {
		var longest time.Duration
		defer func() { out <- longest }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			began := time.Now()
			if _, err := s.Write(context.Background(), changesAt("orders", began, began, began)); err != nil {
				t.Error(err)
				return
			}
			longest = max(longest, time.Since(began))
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return out
}

// holdReader keeps a transaction that has read the audit table open for d,
// as a long report or an activity-log query does.
func holdReader(t testing.TB, url string, d time.Duration) {
	t.Helper()
	conn := connect(t, url)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SELECT count(*) FROM pgtrail.changes"); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(d, func() { _, _ = conn.Exec(ctx, "COMMIT") })
}

// TestRetentionNeverStallsWriters: while a reader holds the audit table
// for seconds, a retention pass that drops partitions and deletes rows
// delays no write by more than a fraction of a second, where dropping a
// partition as such (ACCESS EXCLUSIVE on the audit table, queued behind
// the reader) stops every write until the reader is done.
func TestRetentionNeverStallsWriters(t *testing.T) {
	ctx := context.Background()
	s, url := openSink(t, map[string]any{"partitioning": map[string]any{"interval": "month", "premake": 1}})
	now := time.Now()
	for m := 7; m <= 12; m++ {
		var times []time.Time
		for i := range 2000 {
			times = append(times, now.AddDate(0, -m, 0).Add(time.Duration(i)*time.Minute))
		}
		history(t, s, "public", "orders", times...)
	}
	var recent []time.Time
	for i := range 12_000 {
		recent = append(recent, now.Add(-8*day-time.Duration(i)*time.Minute))
	}
	history(t, s, "public", "sessions", recent...)
	const hold = 3 * time.Second

	// The hazard: a plain DROP of an old partition behind the reader.
	stop := make(chan struct{})
	longest := stalls(t, s, stop)
	time.Sleep(200 * time.Millisecond)
	holdReader(t, url, hold)
	monthly := Partitioning{Interval: "month"}
	from := monthly.floor(now.AddDate(0, -12, 0))
	old := "pgtrail." + monthly.partitionName("changes", from, monthly.next(from))
	if _, err := connect(t, url).Exec(ctx, "DROP TABLE "+old); err != nil {
		t.Fatal(err)
	}
	close(stop)
	plain := <-longest
	if plain < hold/2 {
		t.Fatalf("a plain DROP stalled writes for %s only: the test's reader holds nothing", plain)
	}

	// Retention, beside the same reader.
	stop = make(chan struct{})
	longest = stalls(t, s, stop)
	time.Sleep(200 * time.Millisecond)
	holdReader(t, url, hold)
	began := time.Now()
	rep, err := s.Retain(ctx, now, rules(90*day, map[string]time.Duration{"public.sessions": 7 * day}), nil, false)
	took := time.Since(began)
	close(stop)
	worst := <-longest
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Partitions) != 5 || rep.Deleted["public.sessions"] != 12_000 {
		t.Fatalf("retention removed:\n%s", showReport(rep))
	}
	t.Logf("longest write during a plain DROP: %s; during a retention pass of %s (5 partitions, 12,000 rows): %s", plain, took, worst)
	if worst > 500*time.Millisecond {
		t.Fatalf("a write waited %s during retention", worst)
	}
}
