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
