package postgres

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgtrail/pgtrail/test/pgtest"
)

// bemiHistory fills a Bemi changes table in schema public with n row
// changes over the 14 months before now, and 10 MESSAGE rows.
func bemiHistory(t testing.TB, url string, n int) {
	t.Helper()
	ctx := context.Background()
	conn := connect(t, url)
	for _, q := range []string{pgtest.BemiChangesTable, `INSERT INTO changes (created_at, primary_key, before, after, context, database, schema, "table",
			operation, committed_at, queued_at, transaction_id, position)
		SELECT at + interval '2 seconds', CASE WHEN i % 97 = 0 THEN NULL ELSE i::text END,
			CASE WHEN i % 3 = 0 THEN '{}' ELSE jsonb_build_object('id', i, 'status', 'old', 'n', i * 1.5) END,
			CASE WHEN i % 3 = 2 THEN '{}' ELSE jsonb_build_object('id', i, 'status', 'new', 'tags', jsonb_build_array('a', i)) END,
			CASE WHEN i % 5 = 0 THEN '{}' ELSE jsonb_build_object('user', i % 40, 'endpoint', '/orders/' || i) END,
			'app', CASE WHEN i % 7 = 0 THEN 'billing' ELSE 'public' END, 'table_' || (i % 9),
			(ARRAY['CREATE', 'UPDATE', 'DELETE', 'TRUNCATE'])[1 + i % 4], at, at + interval '1 second', 1000 + i / 3, 5000000 + i
		FROM generate_series(1, $1) i, LATERAL (SELECT date_trunc('second', now() - interval '14 months' * i / $1) AS at) t`,
		`INSERT INTO changes (created_at, database, schema, "table", operation, committed_at, queued_at, transaction_id, position, context)
		SELECT now(), 'app', 'public', 'orders', 'MESSAGE', now() - interval '1 day' * i, now(), i, i, '{"user": 1}' FROM generate_series(1, 10) i`,
		`VACUUM ANALYZE changes`,
	} {
		if _, err := conn.Exec(ctx, q, []any{n}[:strings.Count(q, "$1")/max(1, strings.Count(q, "$1"))]...); err != nil {
			t.Fatal(err)
		}
	}
}

// differences counts the rows of public.changes that pgtrail.changes lacks
// or holds otherwise (every column compared), and its rows of no source row.
func differences(t testing.TB, url string) int {
	t.Helper()
	var n int
	err := connect(t, url).QueryRow(context.Background(), `SELECT count(*) FROM public.changes s FULL JOIN pgtrail.changes t ON t.id = s.id
		WHERE s.id IS NULL
		   OR s.operation = 'MESSAGE' AND t.id IS NOT NULL
		   OR s.operation <> 'MESSAGE' AND (t.id IS NULL OR
			(s.primary_key, s.before, s.after, s.context, s.database, s.schema, s."table", s.operation, s.committed_at,
			 s.queued_at, s.created_at, s.transaction_id, s.position) IS DISTINCT FROM
			(t.primary_key, t.before, t.after, t.context, t.database, t.schema, t."table", t.operation, t.committed_at,
			 t.queued_at, t.created_at, t.transaction_id, t.position))`).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// migrationRows is how many rows TestMigrationFromBemiKeepsEveryRowAndItsID
// moves: PGTRAIL_MIGRATE_ROWS=1000000 for the large run.
func migrationRows(t testing.TB) int {
	if s := os.Getenv("PGTRAIL_MIGRATE_ROWS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("PGTRAIL_MIGRATE_ROWS=%q: %v", s, err)
		}
		return n
	}
	return 50_000
}

// TestMigrationFromBemiKeepsEveryRowAndItsID: months of Bemi history move
// into pgtrail's partitioned table, every row with its id and values; a
// migration interrupted half way is run again and copies only the rest.
func TestMigrationFromBemiKeepsEveryRowAndItsID(t *testing.T) {
	ctx := context.Background()
	rows := migrationRows(t)
	url := cluster.NewDatabase(t)
	bemiHistory(t, url, rows)
	s := configured(t, map[string]any{"url": url})
	if err := s.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	conn := connect(t, url)
	stored := func() (n int64) {
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM pgtrail.changes").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	s.SetLogger(slog.New(slog.NewTextHandler(os.Stderr, nil))) // progress

	// Interrupted once some rows are in.
	cut, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { _, err := s.Migrate(cut, "public.changes"); done <- err }()
	for stored() == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err == nil {
		t.Fatal("the interrupted migration ran to the end: the test interrupts nothing")
	}
	before := stored()
	t.Logf("interrupted after %d of %d rows", before, rows)

	rep, err := s.Migrate(ctx, "changes")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("migrated %d rows in %s (%.0f rows/s)", rep.Copied, rep.Elapsed.Round(time.Millisecond), float64(rep.Copied)/rep.Elapsed.Seconds())
	if rep.Source != `"public"."changes"` || rep.Rows != int64(rows) || rep.Copied != int64(rows)-before || rep.Skipped != 10 {
		t.Fatalf("report %+v, want %d rows, %d copied now, 10 MESSAGE rows skipped", rep, rows, int64(rows)-before)
	}
	if n := differences(t, url); n != 0 {
		t.Fatalf("%d rows differ between Bemi's table and pgtrail's", n)
	}
	var months, partitions int
	if err := conn.QueryRow(ctx, `SELECT count(DISTINCT date_trunc('month', committed_at, 'UTC')) FROM public.changes WHERE operation <> 'MESSAGE'`).Scan(&months); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_inherits WHERE inhparent = 'pgtrail.changes'::regclass
		AND inhrelid IN (SELECT DISTINCT tableoid FROM pgtrail.changes)`).Scan(&partitions); err != nil {
		t.Fatal(err)
	}
	if months < 14 || partitions != months {
		t.Fatalf("the rows are in %d partitions, want one per month: %d", partitions, months)
	}
	// Again: nothing to copy.
	if rep, err := s.Migrate(ctx, "public.changes"); err != nil || rep.Copied != 0 || rep.Rows != int64(rows) {
		t.Fatalf("a third run: %+v, %v", rep, err)
	}
}

func TestMigrationRefusesWhatIsNotABemiTable(t *testing.T) {
	ctx := context.Background()
	s, url := openSink(t, map[string]any{})
	conn := connect(t, url)
	if _, err := conn.Exec(ctx, `CREATE TABLE public.orders (id int PRIMARY KEY, committed_at timestamptz);
		CREATE TABLE public.changes_v1 (id bigint, primary_key text, before jsonb, after jsonb, context jsonb, database text,
			schema text, "table" text, operation text, committed_at timestamptz, queued_at timestamptz, created_at timestamptz,
			transaction_id bigint, position bigint)`); err != nil {
		t.Fatal(err)
	}
	for from, want := range map[string]string{
		"public.nothing":  `migrate from "public"."nothing": no such table in the audit database`,
		"orders":          `migrate from "public"."orders": it lacks the column(s) primary_key, before, after, context, database, schema, table, operation, queued_at, created_at, transaction_id, position`,
		"changes_v1":      `migrate from "public"."changes_v1": its id is not a uuid`,
		"pgtrail.changes": `that is pgtrail's audit table`,
		"pgtrail.changes_p" + time.Now().UTC().Format("200601"): `that is pgtrail's audit table (or a partition of one)`,
	} {
		if _, err := s.Migrate(ctx, from); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Migrate(%s) = %v, want an error containing %q", from, err, want)
		}
	}
}

// TestSetupRefusesBemisTableInItsPlace: an audit table configured where
// Bemi's unpartitioned changes table is (public.changes) is not written into
// as it is: setup says how to move it aside and migrate it.
func TestSetupRefusesBemisTableInItsPlace(t *testing.T) {
	url := cluster.NewDatabase(t)
	connect(t, url).Exec(context.Background(), pgtest.BemiChangesTable)
	s := configured(t, map[string]any{"url": url, "schema": "public"})
	err := s.Setup(context.Background())
	want := `audit table "public"."changes" exists but is not partitioned (is it Bemi's changes table?): rename it, e.g. ALTER TABLE "public"."changes" RENAME TO "changes_bemi", then run ` + "`pgtrail setup --migrate-from public.changes_bemi`"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Setup = %v, want %q", err, want)
	}
}
