package trail

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrail/pgtrail/test/pgtest"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Options{}, func(c *pgtest.Cluster) { cluster = c })
}

func TestEveryQueryIsReadOnlyAndBoundedByTheStatementTimeout(t *testing.T) {
	url := cluster.NewDatabase(t)
	cluster.Exec(t, url, `CREATE SCHEMA audit; CREATE TABLE audit.trail (id uuid)`)
	ctx := context.Background()
	if _, err := Open(ctx, Options{URL: url, Schema: "audit", Table: "missing", StatementTimeout: time.Second}); err == nil {
		t.Error("Open of a missing audit table: no error")
	}
	s, err := Open(ctx, Options{URL: url, Schema: "audit", Table: "trail", StatementTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = s.pool.Exec(ctx, "INSERT INTO audit.trail VALUES (gen_random_uuid())")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" { // read_only_sql_transaction
		t.Errorf("a write through the store: %v, want read-only transaction error", err)
	}
	_, err = s.pool.Exec(ctx, "SELECT pg_sleep(2)")
	if err = s.wrap("sleep", err); !errors.Is(err, ErrTimeout) {
		t.Errorf("a query past the timeout: %v, want ErrTimeout", err)
	}
}

func TestCursorsRoundTripAndRejectAnythingElse(t *testing.T) {
	k := Key{CommittedAt: time.Date(2026, 11, 25, 10, 0, 0, 123456000, time.UTC), Position: 42, Seq: 3}
	k.ID[0] = 7
	got, err := ParseCursor(k.Cursor())
	if err != nil || got != k {
		t.Errorf("round trip: %+v %v, want %+v", got, err, k)
	}
	for _, bad := range []string{"", "abc", "WzFd", k.Cursor() + "x"} {
		if _, err := ParseCursor(bad); err == nil {
			t.Errorf("ParseCursor(%q): no error", bad)
		}
	}
}

// TestTextSearchExaminesAtMostSearchScanChangesAPage proves that q never
// scans the whole table unasked: a match older than SearchScan changes is
// not on the first page, which says it stopped (Bounded) and where the next
// goes on, and the next page finds it.
func TestTextSearchExaminesAtMostSearchScanChangesAPage(t *testing.T) {
	url := cluster.NewDatabase(t)
	cluster.Exec(t, url, `CREATE SCHEMA audit;
		CREATE TABLE audit.trail (id uuid NOT NULL, primary_key varchar(255), before jsonb NOT NULL DEFAULT '{}',
			after jsonb NOT NULL DEFAULT '{}', context jsonb NOT NULL DEFAULT '{}', database varchar(255) NOT NULL,
			schema varchar(255) NOT NULL, "table" varchar(255) NOT NULL, operation text NOT NULL,
			committed_at timestamptz NOT NULL, queued_at timestamptz NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
			transaction_id bigint NOT NULL, position bigint NOT NULL, seq integer NOT NULL, unchanged_toast text[]);
		-- the oldest change holds the needle; SearchScan + 10 newer ones do not
		INSERT INTO audit.trail (id, primary_key, after, database, schema, "table", operation, committed_at, queued_at, transaction_id, position, seq)
		SELECT gen_random_uuid(), i::text, jsonb_build_object('note', CASE WHEN i = 0 THEN 'the needle' ELSE 'hay' END),
			'app', 'public', 't', 'CREATE', '2026-01-01'::timestamptz + i * interval '1 ms', now(), i, i, 0
		FROM generate_series(0, 50009) i`)
	if SearchScan != 50_000 {
		t.Fatalf("SearchScan is %d: the trail above is made for 50,000", SearchScan)
	}
	ctx := context.Background()
	s, err := Open(ctx, Options{URL: url, Schema: "audit", Table: "trail", StatementTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	first, err := s.List(ctx, Filter{Q: "needle"}, NewestFirst, nil, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Changes) != 0 || !first.Bounded || first.Next == nil {
		t.Fatalf("first page: %d changes, bounded %v, next %v; want none, bounded, a next page", len(first.Changes), first.Bounded, first.Next)
	}
	second, err := s.List(ctx, Filter{Q: "needle"}, NewestFirst, first.Next, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(second.Changes) != 1 || second.Changes[0].PrimaryKey == nil || *second.Changes[0].PrimaryKey != "0" || second.Bounded {
		t.Fatalf("second page: %+v, want the needle (primary key 0) and the end", second)
	}
}
