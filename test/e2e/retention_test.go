package e2e

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/test/pgtest"
	"github.com/pgtrail/pgtrail/test/s3test"
)

// oldChange inserts a change of schema.table committed at `at` straight
// into the audit table, making its month's partition if need be, and
// returns its id.
func oldChange(t testing.TB, conn *pgx.Conn, schema, table string, at time.Time) uuid.UUID {
	t.Helper()
	month := time.Date(at.Year(), at.Month(), 1, 0, 0, 0, 0, time.UTC)
	exec1(t, conn, fmt.Sprintf(`CREATE TABLE IF NOT EXISTS pgtrail.changes_p%s PARTITION OF pgtrail.changes FOR VALUES FROM ('%s') TO ('%s')`,
		month.Format("200601"), month.Format(time.RFC3339), month.AddDate(0, 1, 0).Format(time.RFC3339)))
	id := uuid.New()
	exec1(t, conn, `INSERT INTO pgtrail.changes (id, primary_key, database, schema, "table", operation, committed_at, queued_at,
		transaction_id, position, seq) VALUES ($1, '1', 'app', $2, $3, 'UPDATE', $4, $4, 7, 100, 0)`, id, schema, table, at)
	return id
}

func sortIDs(ids []uuid.UUID) []uuid.UUID {
	slices.SortFunc(ids, func(a, b uuid.UUID) int { return strings.Compare(a.String(), b.String()) })
	return ids
}

// TestRetentionCommandArchivesThenRemovesWhatTheRulesLetGo: `pgtrail
// retention --dry-run` lists what would go and removes nothing; `pgtrail
// retention` archives it to the named S3 sink (through its plugin process),
// drops the old partitions, deletes the rows of the shorter rule, and prints
// what it did; the next pass has nothing to do.
func TestRetentionCommandArchivesThenRemovesWhatTheRulesLetGo(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, "CREATE TABLE public.orders (id int PRIMARY KEY)")
	s3srv, err := s3test.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s3srv.Stop)
	bucket := s3srv.NewBucket(t)
	cfg := writeConfig(t, url, fmt.Sprintf(`sinks:
  - name: audit
    plugin: postgres
    config: {url: %q}
  - name: archive
    plugin: s3
    config: {bucket: %q, prefix: audit/app, endpoint: %q, region: %q, path_style: true, access_key_id: %q, secret_access_key: %q}
retention:
  default: 30d
  tables: {"public.sessions": 7d, "audit.*": forever}
  archive: archive
`, url, bucket, s3srv.URL(), s3test.Region, s3test.AccessKey, s3test.SecretKey), "")
	if out, err := pgtrail(t, cfg, "setup"); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	now := time.Now().UTC()
	old := []uuid.UUID{
		oldChange(t, conn, "public", "orders", now.AddDate(0, -4, 0)),
		oldChange(t, conn, "public", "orders", now.AddDate(0, -3, 0)),
		oldChange(t, conn, "public", "sessions", now.AddDate(0, 0, -9)),
	}
	kept := []uuid.UUID{
		oldChange(t, conn, "public", "orders", now.AddDate(0, 0, -9)),
		oldChange(t, conn, "public", "sessions", now.AddDate(0, 0, -2)),
		oldChange(t, conn, "audit", "events", now.AddDate(0, -6, 0)),
	}
	partition := func(at time.Time) string { return `"pgtrail"."changes_p` + at.Format("200601") + `"` }

	out, err := pgtrail(t, cfg, "retention", "--dry-run")
	if err != nil {
		t.Fatalf("retention --dry-run: %v\n%s", err, out)
	}
	for _, want := range []string{
		`sink audit: would drop partition ` + partition(now.AddDate(0, -4, 0)) + ` (`,
		`sink audit: would drop partition ` + partition(now.AddDate(0, -3, 0)) + ` (`,
		"): 1 rows (public.orders 1)",
		"sink audit: would delete 1 rows of public.sessions",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run output lacks %q:\n%s", want, out)
		}
	}
	if n := count(t, conn, "SELECT count(*) FROM pgtrail.changes"); n != 6 {
		t.Fatalf("the dry run left %d changes of 6", n)
	}

	out, err = pgtrail(t, cfg, "retention")
	if err != nil {
		t.Fatalf("retention: %v\n%s", err, out)
	}
	if len(regexp.MustCompile(`sink audit: dropped partition "pgtrail"."changes_p\d{6}" \(\S+ to \S+\): 1 rows \(public.orders 1\)`).FindAllString(out, -1)) != 2 ||
		!strings.Contains(out, "sink audit: deleted 1 rows of public.sessions") {
		t.Fatalf("retention output:\n%s", out)
	}
	if got := sortIDs(auditIDs(t, conn)); !slices.Equal(got, sortIDs(kept)) {
		t.Fatalf("the audit table holds %v, want %v", got, sortIDs(kept))
	}
	if got := sortIDs(s3IDs(t, s3srv, bucket)); !slices.Equal(got, sortIDs(old)) {
		t.Fatalf("the archive holds %v, want %v", got, sortIDs(old))
	}
	if out, err := pgtrail(t, cfg, "retention"); err != nil || !strings.Contains(out, "sink audit: nothing to remove") {
		t.Fatalf("a second pass: %v\n%s", err, out)
	}
}

// TestRunAppliesRetention: `pgtrail run` with retention rules removes an
// expired partition on its own, at start and then every retention.interval.
func TestRunAppliesRetention(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, "CREATE TABLE public.orders (id int PRIMARY KEY)")
	cfg := writeConfig(t, url, "retention: {default: 30d, interval: 1m}\n", "")
	if out, err := pgtrail(t, cfg, "setup"); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	oldChange(t, conn, "public", "orders", time.Now().AddDate(0, -3, 0))
	p := start(t, cfg)
	defer p.stop()
	waitFor(t, 30*time.Second, "retention to drop the old partition", func() bool {
		return count(t, conn, "SELECT count(*) FROM pgtrail.changes") == 0
	})
	if !strings.Contains(p.out.String(), "retention: partition dropped") {
		t.Fatalf("the log does not say what retention dropped:\n%s", p.out.String())
	}
}

// TestSetupMovesBemisTableAndKeepsBemisTriggerOffPgtrailsTables: with the
// Bemi packages' migration installed (widened to every schema), `pgtrail
// setup --migrate-from public.changes` moves Bemi's table into the audit
// table, and no table of pgtrail's, partitions and pgtrail.slots included,
// carries Bemi's trigger, while the application's tables keep it.
func TestSetupMovesBemisTableAndKeepsBemisTriggerOffPgtrailsTables(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, "CREATE TABLE public.orders (id int PRIMARY KEY)")
	exec1(t, conn, pgtest.BemiORMMigrationEverySchema)
	exec1(t, conn, pgtest.BemiChangesTable)
	exec1(t, conn, `INSERT INTO changes (created_at, primary_key, database, schema, "table", operation, committed_at, queued_at, transaction_id, position)
		SELECT now(), i::text, 'app', 'public', 'orders', 'CREATE', now() - interval '1 hour' * i, now(), i, i FROM generate_series(1, 2000) i`)
	cfg := writeConfig(t, url, "", "")
	out, err := pgtrail(t, cfg, "setup", "--migrate-from", "public.changes")
	if err != nil {
		t.Fatalf("setup --migrate-from: %v\n%s", err, out)
	}
	if !strings.Contains(out, `migrated "public"."changes" into sink audit: 2000 rows there, 2000 copied now`) {
		t.Fatalf("setup output:\n%s", out)
	}
	if n := count(t, conn, `SELECT count(*) FROM public.changes s JOIN pgtrail.changes p USING (id, committed_at)`); n != 2000 {
		t.Fatalf("%d of Bemi's 2000 rows are in pgtrail's table with their id", n)
	}
	rows, err := conn.Query(context.Background(), `SELECT t.tgname || ' on ' || t.tgrelid::regclass::text FROM pg_trigger t
		JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relnamespace = 'pgtrail'::regnamespace AND t.tgname LIKE '\_bemi%'`)
	if err != nil {
		t.Fatal(err)
	}
	left, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Fatalf("Bemi triggers on pgtrail's tables: %v", left)
	}
	if n := count(t, conn, `SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.orders'::regclass AND tgname = '_bemi_row_trigger_orders'`); n != 1 {
		t.Fatal("the application's table lost Bemi's trigger")
	}
	if n := count(t, conn, `SELECT count(*) FROM pg_class WHERE oid = 'pgtrail.slots'::regclass`); n != 1 {
		t.Fatal("setup made no pgtrail.slots: the test checks nothing there")
	}
}
