package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/plugins/sdk"
	"github.com/pgtrail/pgtrail/test/pgtest"
)

// connect opens a plain connection to url, closed when the test ends.
func connect(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// changesAt returns one change of table public.<table> for each commit time.
func changesAt(table string, times ...time.Time) []*sdk.Change {
	var b []*sdk.Change
	for i, at := range times {
		b = append(b, &sdk.Change{ID: uuid.New(), Database: "app", Schema: "public", Table: table, Operation: "CREATE",
			PrimaryKey: fmt.Sprint(i), Context: json.RawMessage(`{}`), After: json.RawMessage(fmt.Sprintf(`{"id":%d}`, i)),
			CommittedAt: at, QueuedAt: at, LSN: uint64(i + 1), CommitLSN: uint64(i + 1)})
	}
	return b
}

// partitionsOf lists the partitions of target as "name from to" (UTC, RFC 3339).
func partitionsOf(t testing.TB, conn *pgx.Conn, target string) []string {
	t.Helper()
	spans, err := partitionSpans(context.Background(), conn, target)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range spans {
		out = append(out, s.name+" "+s.from.Format(time.RFC3339)+" "+s.to.Format(time.RFC3339))
	}
	return out
}

func TestPartitionsAreNamedAndBoundedByTheirInterval(t *testing.T) {
	at := time.Date(2026, 12, 3, 15, 4, 5, 0, time.FixedZone("X", 3600))
	for _, c := range []struct {
		interval, name, from, to string
	}{
		{"month", "changes_p202612", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"},
		{"week", "changes_p2026w49", "2026-11-30T00:00:00Z", "2026-12-07T00:00:00Z"},
		{"day", "changes_p20261203", "2026-12-03T00:00:00Z", "2026-12-04T00:00:00Z"},
	} {
		p := Partitioning{Interval: c.interval}
		from := p.floor(at)
		to := p.next(from)
		if got := p.partitionName("changes", from, to) + " " + from.Format(time.RFC3339) + " " + to.Format(time.RFC3339); got != c.name+" "+c.from+" "+c.to {
			t.Errorf("%s: %s, want %s %s %s", c.interval, got, c.name, c.from, c.to)
		}
	}
	// The first days of January can belong to the last ISO week of the year before.
	p := Partitioning{Interval: "week"}
	if from := p.floor(time.Date(2027, 1, 2, 0, 0, 0, 0, time.UTC)); p.partitionName("c", from, p.next(from)) != "c_p2026w53" {
		t.Errorf("2027-01-02 is in %s", p.partitionName("c", from, p.next(from)))
	}
}

// TestSetupMakesPartitionsAheadAndWritesMakeOldOnesOnDemand: setup makes
// the current partition and `premake` more; a change of any commit time,
// however old, gets its partition when it is written.
func TestSetupMakesPartitionsAheadAndWritesMakeOldOnesOnDemand(t *testing.T) {
	ctx := context.Background()
	s, url := openSink(t, map[string]any{"partitioning": map[string]any{"interval": "week", "premake": 2}})
	conn := connect(t, url)
	p := Partitioning{Interval: "week"}
	now := p.floor(time.Now())
	var want []string
	for i := range 3 {
		from := now.AddDate(0, 0, 7*i)
		want = append(want, p.partitionName("changes", from, from.AddDate(0, 0, 7))+" "+from.Format(time.RFC3339)+" "+from.AddDate(0, 0, 7).Format(time.RFC3339))
	}
	if got := partitionsOf(t, conn, "pgtrail.changes"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("partitions after setup:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	old := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	if _, err := s.Write(ctx, changesAt("orders", old, old.AddDate(0, 0, 1), old.AddDate(0, 0, 10))); err != nil {
		t.Fatal(err)
	}
	got := partitionsOf(t, conn, "pgtrail.changes")
	if len(got) != 5 || got[0] != "changes_p2025w10 2025-03-03T00:00:00Z 2025-03-10T00:00:00Z" ||
		got[1] != "changes_p2025w11 2025-03-10T00:00:00Z 2025-03-17T00:00:00Z" {
		t.Fatalf("partitions after writing March 2025:\n%s", strings.Join(got, "\n"))
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pgtrail.changes_p2025w10").Scan(&n); err != nil || n != 2 {
		t.Fatalf("changes_p2025w10 holds %d rows (%v), want 2", n, err)
	}
}

// TestRunningSinkMakesPartitionsAheadOnItsOwn: the upkeep that Open starts
// makes the partitions ahead again, without setup.
func TestRunningSinkMakesPartitionsAheadOnItsOwn(t *testing.T) {
	ctx := context.Background()
	was := upkeepEvery
	t.Cleanup(func() { upkeepEvery = was }) // after the sink is closed
	upkeepEvery = 50 * time.Millisecond
	s, url := openSink(t, map[string]any{"partitioning": map[string]any{"interval": "day", "premake": 4}})
	conn := connect(t, url)
	// As if the partitions ahead had been dropped, or setup ran long ago.
	for _, name := range partitionsOf(t, conn, "pgtrail.changes") {
		if _, err := conn.Exec(ctx, "DROP TABLE pgtrail."+strings.Fields(name)[0]); err != nil {
			t.Fatal(err)
		}
	}
	s.mu.Lock()
	s.spans = nil
	s.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for len(partitionsOf(t, conn, "pgtrail.changes")) != 5 {
		if time.Now().After(deadline) {
			t.Fatalf("partitions after upkeep: %v, want today and 4 days ahead", partitionsOf(t, conn, "pgtrail.changes"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestChangedIntervalCutsNewPartitionsToFitTheOldOnes: after a switch from
// months to days, a day partition never overlaps a month made before.
func TestChangedIntervalCutsNewPartitionsToFitTheOldOnes(t *testing.T) {
	ctx := context.Background()
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	monthly := configured(t, map[string]any{"url": url, "partitioning": map[string]any{"interval": "month", "premake": 0}})
	if err := monthly.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := monthly.Write(ctx, changesAt("orders", time.Date(2025, 5, 20, 0, 0, 0, 0, time.UTC))); err != nil {
		t.Fatal(err)
	}
	daily := configured(t, map[string]any{"url": url, "partitioning": map[string]any{"interval": "week", "premake": 0}})
	// The week of 2025-05-26 starts in May's partition and ends in June.
	at := []time.Time{time.Date(2025, 5, 31, 12, 0, 0, 0, time.UTC), time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)}
	if _, err := daily.Write(ctx, changesAt("orders", at...)); err != nil {
		t.Fatal(err)
	}
	got := partitionsOf(t, conn, "pgtrail.changes")
	want := []string{
		"changes_p202505 2025-05-01T00:00:00Z 2025-06-01T00:00:00Z",
		"changes_p20250601t000000 2025-06-01T00:00:00Z 2025-06-02T00:00:00Z",
	}
	if len(got) < 2 || strings.Join(got[:2], "\n") != strings.Join(want, "\n") {
		t.Fatalf("partitions:\n%s\nwant first:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// configured returns a configured sink that is closed when the test ends.
func configured(t testing.TB, config map[string]any) *Sink {
	t.Helper()
	raw, _ := json.Marshal(config)
	s := New()
	s.SetLogger(testLog)
	if err := s.Configure(context.Background(), raw); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

// bemiTriggers lists the Bemi row triggers on relation and its partitions.
func bemiTriggers(t testing.TB, conn *pgx.Conn, relation string) []string {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT t.tgname || ' on ' || t.tgrelid::regclass::text
		FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
		WHERE p.proname = '_bemi_row_trigger_func' AND (t.tgrelid = $1::regclass OR t.tgrelid IN (SELECT relid FROM pg_partition_tree($1::regclass))) ORDER BY 1`, relation)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestBemiTriggersNeverStayOnTheAuditTable: with the Bemi packages'
// migration installed (row trigger on every table, event trigger for new
// ones), setup, partitions made on demand, the staging table of a replay and
// the upkeep after the application creates a table leave no Bemi trigger on
// the audit table or any of its partitions.
func TestBemiTriggersNeverStayOnTheAuditTable(t *testing.T) {
	for _, c := range []struct{ name, migration, schema string }{
		{"published migration, audit table in public", pgtest.BemiORMMigration, "public"},
		{"migration widened to every schema, audit table in pgtrail", pgtest.BemiORMMigrationEverySchema, "pgtrail"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			url := cluster.NewDatabase(t)
			conn := connect(t, url)
			for _, q := range []string{"CREATE TABLE public.orders (id int PRIMARY KEY)", "CREATE SCHEMA pgtrail", "CREATE TABLE pgtrail.slots (slot text PRIMARY KEY)", c.migration} {
				if _, err := conn.Exec(ctx, q); err != nil {
					t.Fatal(err)
				}
			}
			target := c.schema + ".changes"
			s := configured(t, map[string]any{"url": url, "schema": c.schema})
			if err := s.Setup(ctx); err != nil {
				t.Fatal(err)
			}
			if got := append(bemiTriggers(t, conn, target), bemiTriggers(t, conn, "pgtrail.slots")...); len(got) != 0 {
				t.Fatalf("after setup: %v", got)
			}
			if err := s.Open(ctx); err != nil {
				t.Fatal(err)
			}
			// The first batch of a fresh sink goes through the staging table.
			old := time.Date(2024, 1, 15, 0, 0, 0, 0, time.UTC)
			var batches [][]*sdk.Change
			for i := range 3 {
				batches = append(batches, changesAt("orders", old.AddDate(0, i, 0), old.AddDate(0, i, 1)))
				if _, err := s.Write(ctx, batches[i]); err != nil {
					t.Fatal(err)
				}
			}
			if got := bemiTriggers(t, conn, target); len(got) != 0 {
				t.Fatalf("after writes that made partitions: %v", got)
			}
			// A replay merges through the staging table again, on every connection.
			for range 4 {
				if _, err := s.Write(ctx, batches[1]); err != nil {
					t.Fatal(err)
				}
			}
			if got := bemiTriggers(t, conn, target); len(got) != 0 {
				t.Fatalf("after replays: %v", got)
			}
			// The application creates a table: the event trigger puts the
			// row trigger back on every table without one, pgtrail's too.
			if _, err := conn.Exec(ctx, "CREATE TABLE public.invoices (id int PRIMARY KEY)"); err != nil {
				t.Fatal(err)
			}
			if got := bemiTriggers(t, conn, target); len(got) == 0 {
				t.Fatal("the event trigger put no trigger back: the fixture is not the Bemi migration")
			}
			if got := bemiTriggers(t, conn, "public.invoices"); len(got) != 1 {
				t.Fatalf("the application's new table has %v", got)
			}
			if err := s.premake(ctx, time.Now()); err != nil {
				t.Fatal(err)
			}
			if got := append(bemiTriggers(t, conn, target), bemiTriggers(t, conn, "pgtrail.slots")...); len(got) != 0 {
				t.Fatalf("after upkeep: %v", got)
			}
			if got := bemiTriggers(t, conn, "public.orders"); len(got) != 1 {
				t.Fatalf("the application's own table lost its trigger: %v", got)
			}
		})
	}
}

func TestPartitioningErrorsNameTheKey(t *testing.T) {
	for raw, want := range map[string]string{
		`{"url":"postgres://x/y","partitioning":{"interval":"year"}}`:        `config.partitioning.interval: "year" is not one of day, week, month (default month)`,
		`{"url":"postgres://x/y","partitioning":{"premake":-1}}`:             "config.partitioning.premake: -1 is out of range: give 0 to 366",
		`{"url":"postgres://x/y","partitioning":{"every":1}}`:                `unknown field "every"`,
		`{"url":"postgres://x/y","table":"` + strings.Repeat("t", 47) + `"}`: "config.table: \"" + strings.Repeat("t", 47) + "\" is too long: partitions are named <table>_p<start>, so give at most 46 characters",
	} {
		err := New().Configure(context.Background(), json.RawMessage(raw))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Configure(%s) = %v, want an error containing %q", raw, err, want)
		}
	}
}
