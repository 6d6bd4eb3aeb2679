package postgres

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	neturl "net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/plugins/sdk"
	"github.com/pgtrail/pgtrail/plugins/sdk/sdktest"
	"github.com/pgtrail/pgtrail/test/pgtest"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Options{}, func(c *pgtest.Cluster) { cluster = c })
}

// openSink configures a sink with config and the URL of a new database, sets
// it up and opens it, as the host does; it is closed when the test ends.
func openSink(t *testing.T, config map[string]any) (*Sink, string) {
	t.Helper()
	url := cluster.NewDatabase(t)
	config["url"] = url
	cfg, _ := json.Marshal(config)
	s, ctx := New(), context.Background()
	s.SetLogger(testLog)
	if err := s.Configure(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := s.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(ctx) })
	if err := s.Open(ctx); err != nil {
		t.Fatal(err)
	}
	return s, url
}

func TestSinkPassesTheSDKTestKit(t *testing.T) {
	url := cluster.NewDatabase(t)
	cfg, _ := json.Marshal(map[string]string{"url": url, "schema": "audit", "table": "trail"})
	sdktest.Run(t, sdktest.Harness{
		New:    func() sdk.Sink { return New() },
		Config: cfg,
		Stored: func(t testing.TB) []uuid.UUID {
			conn, err := pgx.Connect(context.Background(), url)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			rows, err := conn.Query(context.Background(), "SELECT id FROM audit.trail")
			if err != nil {
				t.Fatal(err)
			}
			ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
			if err != nil {
				t.Fatal(err)
			}
			return ids
		},
	})
}

// TestSetupMakesTheAuditTableWithItsKeyAndIndexes checks the layout the
// common questions rely on: who changed a row (table, primary_key), what
// happened when (the key, time first) and who did what (GIN on the JSON).
func TestSetupMakesTheAuditTableWithItsKeyAndIndexes(t *testing.T) {
	s, url := openSink(t, map[string]any{"schema": "audit", "table": "trail"})
	ctx := context.Background()
	if err := s.Setup(ctx); err != nil { // again: idempotent
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT regexp_replace(pg_get_indexdef(indexrelid), '^.* USING ', '')
		FROM pg_index WHERE indrelid = 'audit.trail'::regclass ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"btree (\"table\", primary_key, committed_at)",
		"btree (committed_at, id)",
		"btree (transaction_id)",
		"gin (after jsonb_path_ops)",
		"gin (before jsonb_path_ops)",
		"gin (context jsonb_path_ops)",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("indexes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var pk string
	if err := conn.QueryRow(ctx, `SELECT pg_get_constraintdef(oid) FROM pg_constraint
		WHERE conrelid = 'audit.trail'::regclass AND contype = 'p'`).Scan(&pk); err != nil {
		t.Fatal(err)
	}
	if pk != "PRIMARY KEY (committed_at, id)" {
		t.Fatalf("primary key: %s", pk)
	}
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	for raw, want := range map[string]string{
		`{}`:                                 "config.url: required",
		`{"url":"postgres://x/y","tabel":1}`: `unknown field "tabel"`,
		`{"url":"postgres://x/y","schema":"Bad"}`: "config.schema",
		`{"url":"postgres://x/y","writers":0}`:    "config.writers: 0 is out of range",
	} {
		err := New().Configure(context.Background(), json.RawMessage(raw))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Configure(%s) = %v, want an error containing %q", raw, err, want)
		}
	}
}

// TestSinkMergesTheGINPendingListsBesideItsWrites: at moderate rates the
// sink merges the GIN indexes' pending lists itself, so that no insert finds
// one full and stalls while PostgreSQL merges it.
func TestSinkMergesTheGINPendingListsBesideItsWrites(t *testing.T) {
	s, url := openSink(t, map[string]any{"schema": "audit", "table": "trail"})
	ctx := context.Background()
	batch := func(from int) []*sdk.Change {
		var b []*sdk.Change
		for i := from; i < from+1200; i++ {
			b = append(b, &sdk.Change{ID: uuid.New(), Database: "app", Schema: "public", Table: "orders", Operation: "CREATE",
				PrimaryKey: fmt.Sprint(i), Before: json.RawMessage(`{}`), Context: json.RawMessage(fmt.Sprintf(`{"user":%d}`, i%50)),
				After:       json.RawMessage(fmt.Sprintf(`{"id":%d,"status":"new","note":"order %d","amount":%d.5}`, i, i, i)),
				CommittedAt: time.Now(), QueuedAt: time.Now(), LSN: uint64(i)})
		}
		return b
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// pending merges the pending list of the partitions' GIN index on col
	// and returns how many pages it held.
	pending := func(col string) int64 {
		var pages int64
		err := conn.QueryRow(ctx, `SELECT coalesce(sum(gin_clean_pending_list(i.indexrelid::regclass)), 0)
			FROM pg_inherits h JOIN pg_index i ON i.indrelid = h.inhrelid
			WHERE h.inhparent = 'audit.trail'::regclass AND pg_get_indexdef(i.indexrelid) LIKE '%gin (' || $1 || ' %'`, col).Scan(&pages)
		if err != nil {
			t.Fatal(err)
		}
		return pages
	}

	// Autovacuum also merges pending lists (an insert-only partition past
	// 1,000 rows is vacuumed): keep it out, or it may do the sink's job.
	if _, err := conn.Exec(ctx, `DO $$ DECLARE p regclass; BEGIN
		FOR p IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'audit.trail'::regclass LOOP
			EXECUTE format('ALTER TABLE %s SET (autovacuum_enabled = off)', p);
		END LOOP; END $$`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(ctx, batch(0)); err != nil { // the first write starts a merge
		t.Fatal(err)
	}
	s.gin.wait()
	if p := pending("after"); p != 0 {
		t.Fatalf("%d pages still pending after the sink's merge", p)
	}
	// The next write comes too soon for another merge however slow this
	// machine was meanwhile (cleanAtMost since the last merge began).
	s.gin.mu.Lock()
	s.gin.last = time.Now()
	s.gin.mu.Unlock()
	if _, err := s.Write(ctx, batch(1200)); err != nil { // too soon for another merge
		t.Fatal(err)
	}
	s.gin.wait()
	if p := pending("after"); p == 0 {
		t.Fatal("nothing pending without the sink's merge: the test proves nothing")
	}
}

func TestGINMergesAreDueAtModerateRatesOnly(t *testing.T) {
	var c cleaner
	t0 := time.Now()
	steps := []struct {
		rows  int
		after time.Duration // since t0
		want  bool
	}{
		{1000, 0, true},                        // the first 1,000 changes
		{999, time.Second, false},              // not enough changes
		{1, 1100 * time.Millisecond, true},     // 1,000 in 1.1 s
		{1000, 1300 * time.Millisecond, false}, // too soon after the last
		{4000, 2100 * time.Millisecond, false}, // 5,000 in 1 s: too fast, left to PostgreSQL
		{1500, 2700 * time.Millisecond, true},  // 1,500 in 0.6 s
		{1000, 10 * time.Second, true},         // slow again
	}
	for i, s := range steps {
		if got := c.due(s.rows, t0.Add(s.after)); got != s.want {
			t.Fatalf("step %d (%d changes at %s): due = %v, want %v", i, s.rows, s.after, got, s.want)
		}
	}
}

// TestLargeBatchesAreCopiedSideBySideAndReplaysMergeWhatIsStored: a batch
// of at least two writers' share goes in as one COPY per writer (one
// transaction each), and when some of it is stored already (a replay after a
// crash between the parts' commits) the sink stores the rest, nothing twice.
func TestLargeBatchesAreCopiedSideBySideAndReplaysMergeWhatIsStored(t *testing.T) {
	ctx := context.Background()
	at := time.Now() // a replay carries the same commit time
	changes := func(from, n int) []*sdk.Change {
		var b []*sdk.Change
		for i := from; i < from+n; i++ {
			b = append(b, &sdk.Change{ID: uuid.NewSHA1(uuid.Nil, fmt.Append(nil, i)), Database: "app", Schema: "public",
				Table: "orders", Operation: "CREATE", PrimaryKey: fmt.Sprint(i), Context: json.RawMessage(`{}`),
				After: json.RawMessage(fmt.Sprintf(`{"id":%d}`, i)), CommittedAt: at, QueuedAt: at, LSN: uint64(i)})
		}
		return b
	}
	for _, writers := range []int{1, 2, 3} {
		t.Run(fmt.Sprint(writers, " writers"), func(t *testing.T) {
			s, url := openSink(t, map[string]any{"writers": writers})
			conn, err := pgx.Connect(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			// stored counts the stored changes, their distinct IDs and the
			// transactions that wrote them.
			stored := func() (rows, ids, txns int) {
				t.Helper()
				if err := conn.QueryRow(ctx, `SELECT count(*), count(DISTINCT id), count(DISTINCT xmin::text)
					FROM pgtrail.changes`).Scan(&rows, &ids, &txns); err != nil {
					t.Fatal(err)
				}
				return
			}
			write := func(b []*sdk.Change) {
				t.Helper()
				if durable, err := s.Write(ctx, b); err != nil || !durable {
					t.Fatalf("Write(%d changes) = %v, %v", len(b), durable, err)
				}
			}

			write(changes(0, 10)) // a fresh sink merges its first batch: it may be a replay
			write(changes(10, 500))
			_, _, before := stored()
			write(changes(510, 3*minPerWriter))
			rows, ids, txns := stored()
			if rows != 3510 || ids != 3510 {
				t.Fatalf("stored %d rows, %d distinct, want 3510", rows, ids)
			}
			if want := before + min(writers, 3); txns != want {
				t.Fatalf("%d transactions wrote the audit table, want %d: a batch of 3 writers' share in %d COPYs", txns, want, min(writers, 3))
			}
			// A replay: the last batch's second half and new changes after it.
			write(changes(510+3*minPerWriter/2, 3*minPerWriter))
			if rows, ids, _ := stored(); rows != 3510+3*minPerWriter/2 || ids != rows {
				t.Fatalf("after the replay: %d rows, %d distinct, want %d", rows, ids, 3510+3*minPerWriter/2)
			}
		})
	}
}

// An audit database that cannot hold every character is refused at setup and
// at open, with what to do, instead of stalling the trail at the first change
// whose JSON it cannot store.
func TestAnAuditDatabaseNotInUTF8IsRefused(t *testing.T) {
	cluster.Exec(t, "postgres", "CREATE DATABASE latin1_audit ENCODING 'LATIN1' TEMPLATE template0")
	t.Cleanup(func() { cluster.Exec(t, "postgres", "DROP DATABASE latin1_audit") })
	cfg, _ := json.Marshal(map[string]string{"url": cluster.URL("latin1_audit")})
	s, ctx := New(), context.Background()
	s.SetLogger(testLog)
	if err := s.Configure(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	for name, f := range map[string]func(context.Context) error{"setup": s.Setup, "open": s.Open} {
		err := f(ctx)
		if err == nil || !strings.Contains(err.Error(), "encoding is LATIN1") || !strings.Contains(err.Error(), "ENCODING 'UTF8'") {
			t.Errorf("%s: got %v, want the LATIN1 encoding refused with what to do", name, err)
		}
	}
}

// The test cluster runs with synchronous_commit=off; the sink's commits must
// be flushed before it reports them durable, and any other setting stays.
func TestCommitsAreFlushedBeforeTheyAreReportedDurable(t *testing.T) {
	for _, tc := range []struct{ database, want string }{{"", "on"}, {"remote_apply", "remote_apply"}} {
		t.Run("database default "+cmp.Or(tc.database, "off"), func(t *testing.T) {
			url := cluster.NewDatabase(t)
			if tc.database != "" {
				u, err := neturl.Parse(url)
				if err != nil {
					t.Fatal(err)
				}
				cluster.Exec(t, "postgres", fmt.Sprintf("ALTER DATABASE %s SET synchronous_commit = %s", strings.TrimPrefix(u.Path, "/"), tc.database))
			}
			cfg, _ := json.Marshal(map[string]string{"url": url})
			s, ctx := New(), context.Background()
			if err := s.Configure(ctx, cfg); err != nil {
				t.Fatal(err)
			}
			defer s.Close(ctx)
			if err := s.Setup(ctx); err != nil {
				t.Fatal(err)
			}
			var got string
			if err := s.pool.QueryRow(ctx, "SHOW synchronous_commit").Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("synchronous_commit %s, want %s", got, tc.want)
			}
		})
	}
}

// TestOnlyARefusedValueIsUnstorable: a batch PostgreSQL refuses for a value
// (jsonb cannot hold it) is reported as change.UnstorableError, on the fast
// path and through the staging table alike; a read-only audit database is
// the database's state, an ordinary error, and the same batch goes in once
// it is writable again.
func TestOnlyARefusedValueIsUnstorable(t *testing.T) {
	s, url := openSink(t, map[string]any{})
	ctx := context.Background()
	at := time.Now()
	for _, replaying := range []bool{true, false} {
		s.replaying = replaying
		for _, img := range []string{`{"a":1e1000000}`, `{"a":"\u0000"}`, `{"a":"\ud800"}`, "{\"a\":\"\xff\"}"} {
			c := sdktest.Changes(1, at)[0]
			c.After = json.RawMessage(img)
			_, err := s.Write(ctx, []*sdk.Change{c})
			var u *change.UnstorableError
			if !errors.As(err, &u) {
				t.Errorf("replaying=%v, after %q: %v, want an UnstorableError", replaying, img, err)
			}
		}
	}

	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	db := conn.Config().Database
	for _, q := range []string{
		fmt.Sprintf("ALTER DATABASE %q SET default_transaction_read_only = on", db),
		"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgtrail-sink'",
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	batch := sdktest.Changes(10, at.Add(time.Second))
	for range 3 { // the terminated connections first, then read-only ones
		_, err = s.Write(ctx, batch)
		var u *change.UnstorableError
		if err == nil || errors.As(err, &u) {
			t.Fatalf("write to a read-only audit database: %v, want an ordinary error", err)
		}
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" {
		t.Fatalf("write to a read-only audit database: %v, want SQLSTATE 25006", err)
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER DATABASE %q RESET default_transaction_read_only", db)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgtrail-sink'"); err != nil {
		t.Fatal(err)
	}
	var werr error
	for range 3 { // terminated connections fail once each
		if _, werr = s.Write(ctx, batch); werr == nil {
			break
		}
	}
	if werr != nil {
		t.Fatalf("write once writable again: %v", werr)
	}
}
