package postgres

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestSetupAddsTheReadIndexesToAnExistingTrailPartitionByPartition(t *testing.T) {
	s, url := openSink(t, map[string]any{"schema": "audit", "table": "trail"})
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	exec := func(q string) {
		t.Helper()
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// A trail made before the read indexes: two months of changes, and one
	// partition whose earlier concurrent build failed half-way.
	exec(`DROP INDEX audit.trail_history_idx; DROP INDEX audit.trail_transaction_idx;
		CREATE TABLE audit.trail_p200001 PARTITION OF audit.trail FOR VALUES FROM ('2000-01-01') TO ('2000-02-01');
		INSERT INTO audit.trail (id, database, schema, "table", operation, committed_at, queued_at, transaction_id, position, seq, primary_key)
		SELECT gen_random_uuid(), 'db', 'public', 't', 'CREATE', t, t, i, i, 0, i::text
		FROM generate_series(1, 500) i, LATERAL (SELECT CASE WHEN i % 2 = 0 THEN now() ELSE '2000-01-15'::timestamptz END t) x;
		CREATE INDEX trail_p200001_history_idx ON audit.trail_p200001 ("table", primary_key, committed_at);
		UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'audit.trail_p200001_history_idx'::regclass`)

	if err := s.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	for _, parent := range []string{"audit.trail_history_idx", "audit.trail_transaction_idx"} {
		var valid bool
		var parts, indexed int
		err := conn.QueryRow(ctx, `SELECT i.indisvalid,
			(SELECT count(*) FROM pg_inherits WHERE inhparent = 'audit.trail'::regclass),
			(SELECT count(*) FROM pg_inherits h JOIN pg_index p ON p.indexrelid = h.inhrelid
			 WHERE h.inhparent = i.indexrelid AND p.indisvalid)
			FROM pg_index i WHERE i.indexrelid = $1::regclass`, parent).Scan(&valid, &parts, &indexed)
		if err != nil {
			t.Fatal(err)
		}
		if !valid || parts != 3 || indexed != parts {
			t.Errorf("%s: valid %v, %d of %d partitions indexed; want valid, all", parent, valid, indexed, parts)
		}
	}
	if err := s.Setup(ctx); err != nil { // idempotent
		t.Fatal(err)
	}
}
