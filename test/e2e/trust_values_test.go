package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	dto "github.com/prometheus/client_model/go"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/metrics"
	"github.com/pgtrail/pgtrail/core/pipeline"
	"github.com/pgtrail/pgtrail/plugins/host"
	"github.com/pgtrail/pgtrail/plugins/sdk"
	"github.com/pgtrail/pgtrail/sinks/postgres"
	"github.com/pgtrail/pgtrail/transports/pglogrepl"
)

// TestValuesJSONBCannotHoldAreStoredInTheirSafeForm writes what the json
// type takes and jsonb refuses, in a json column and in pgtrail context
// messages (which any role can send), and a context over
// pipeline.max_context_bytes. Each used to fail every write of its batch,
// for ever, with the slot held and WAL piling up on the source. Now each
// is stored in its safe form, counted and logged, and the trail goes on.
func TestValuesJSONBCannotHoldAreStoredInTheirSafeForm(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE docs (id int PRIMARY KEY, doc json)`)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	_, _, p := setupAndStart(t, url, fmt.Sprintf("http:\n  listen: %q\npipeline:\n  max_context_bytes: 1024\n", addr), "")

	ctx := func(payload string) string {
		return "BEGIN; SELECT pg_logical_emit_message(true, 'pgtrail', " + payload + "); "
	}
	for _, q := range []string{
		`INSERT INTO docs VALUES (1, '{"a": 1e1000000, "b": [1e-16384, 2]}')`,
		ctx(`'{"user": "ann", "n": 1e1000000}'`) + `INSERT INTO docs VALUES (2, '{}'); COMMIT`,
		ctx(`'{"user": "bob", "note": "a\u0000b"}'`) + `INSERT INTO docs VALUES (3, '[]'); COMMIT`,
		ctx(`'\x7b2275736572223a22ff227d'::bytea`) + `INSERT INTO docs VALUES (4, '1'); COMMIT`, // {"user":"\xff"}: not UTF-8
		ctx(`'{"user": "eve", "pad": "' || repeat('x', 2000) || '"}'`) + `INSERT INTO docs VALUES (5, '2'); COMMIT`,
		`INSERT INTO docs VALUES (6, '{"fine": true}')`,
	} {
		exec1(t, conn, q)
	}
	lsn := pastLastCommit(t, conn)
	want := []string{
		`CREATE docs[1] {"id": 1, "doc": {"a": "1e1000000", "b": ["1e-16384", 2]}} {}`,
		`CREATE docs[2] {"id": 2, "doc": {}} {"n": "1e1000000", "user": "ann"}`,
		`CREATE docs[3] {"id": 3, "doc": []} {"note": "a\\u0000b", "user": "bob"}`,
		"CREATE docs[4] {\"id\": 4, \"doc\": 1} {\"user\": \"\ufffd\"}",
		`CREATE docs[5] {"id": 5, "doc": 2} {}`,
		`CREATE docs[6] {"id": 6, "doc": {"fine": true}} {}`,
	}
	waitForChanges(t, conn, len(want), 30*time.Second)
	var got []string
	for _, r := range auditRows(t, conn) {
		got = append(got, r.Operation+" "+r.Table+"["+r.PrimaryKey+"] "+r.After+" "+r.Context)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("stored:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	waitFor(t, 30*time.Second, "the slot to be confirmed past the last write", func() bool { return confirmedPast(t, conn, lsn) })

	var id string
	if err := conn.QueryRow(context.Background(), `SELECT id::text FROM pgtrail.changes WHERE primary_key = '1'`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	out := p.out.String()
	for _, line := range []string{
		"change holds values jsonb cannot hold; stored in their safe form",
		"table=public.docs id=" + id,
		"number_out_of_range=2",
		"context holds values jsonb cannot hold; stored in their safe form",
		"context larger than pipeline.max_context_bytes; change stored with empty context",
	} {
		if !strings.Contains(out, line) {
			t.Errorf("log lacks %q", line)
		}
	}
	metrics := httpGet(t, "http://"+addr+"/metrics")
	for _, line := range []string{
		`pgtrail_values_rewritten_total{reason="number_out_of_range"} 3`,
		`pgtrail_values_rewritten_total{reason="nul_escape"} 1`,
		`pgtrail_values_rewritten_total{reason="invalid_utf8"} 1`,
		`pgtrail_bad_context_total{prefix="pgtrail"} 1`,
		`pgtrail_changes_written_total{sink="audit"} 6`,
	} {
		if !strings.Contains(metrics, line) {
			t.Errorf("/metrics lacks %q", line)
		}
	}
}

// TestAChangeTheAuditTableRefusesIsStoredAsAMarkerAndNothingElseIs: the
// audit table refuses one change of a 3000-row transaction for its data (a
// trigger raising data_exception stands for any value PostgreSQL refuses).
// The batch is split until that change is alone; it is stored with its
// image replaced by a marker of its size and SHA-256, its context kept, and
// every other change is stored as it is. Before, the batch failed for ever.
func TestAChangeTheAuditTableRefusesIsStoredAsAMarkerAndNothingElseIs(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE items (id int PRIMARY KEY, v text)`)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	_, _, p := setupAndStart(t, url, fmt.Sprintf("http:\n  listen: %q\n", addr), "")
	exec1(t, conn, `CREATE FUNCTION pgtrail.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.after->>'v' = 'poison' THEN
				RAISE EXCEPTION 'refused change %', NEW.id USING ERRCODE = 'data_exception';
			END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER refuse BEFORE INSERT ON pgtrail.changes FOR EACH ROW EXECUTE FUNCTION pgtrail.refuse()`)
	exec1(t, conn, `BEGIN; SELECT pgtrail.set_context('{"job": "import"}');
		INSERT INTO items SELECT i, CASE WHEN i = 1234 THEN 'poison' ELSE 'ok' END FROM generate_series(1, 3000) i; COMMIT`)
	exec1(t, conn, `INSERT INTO items VALUES (5000, 'later')`)
	lsn := pastLastCommit(t, conn)
	waitForChanges(t, conn, 3001, 120*time.Second)
	waitFor(t, 30*time.Second, "the slot to be confirmed past the last write", func() bool { return confirmedPast(t, conn, lsn) })

	if n := count(t, conn, `SELECT count(*) FROM pgtrail.changes WHERE after = jsonb_build_object('id', primary_key::int, 'v', 'ok')
		AND context = '{"job": "import"}'`); n != 2999 {
		t.Fatalf("%d changes stored as they were, want 2999", n)
	}
	var id, replaced, sum, errText, ctxText string
	var bytes int
	err := conn.QueryRow(context.Background(), `SELECT id::text, after->>'pgtrail_replaced', (after->>'bytes')::int, after->>'sha256',
		after->>'error', context::text FROM pgtrail.changes WHERE primary_key = '1234'`).Scan(&id, &replaced, &bytes, &sum, &errText, &ctxText)
	if err != nil {
		t.Fatal(err)
	}
	image := `{"id":1234,"v":"poison"}` // the image as pgtrail had it
	var wantSum string
	if err := conn.QueryRow(context.Background(), `SELECT encode(sha256(convert_to($1, 'UTF8')), 'hex')`, image).Scan(&wantSum); err != nil {
		t.Fatal(err)
	}
	if replaced != "unstorable" || bytes != len(image) || sum != wantSum || !strings.Contains(errText, "refused change "+id) ||
		!strings.Contains(errText, "SQLSTATE 22000") || ctxText != `{"job": "import"}` {
		t.Fatalf("refused change stored as %s %d %s %q context %s; want unstorable %d %s, the sink's error, the context kept",
			replaced, bytes, sum, errText, ctxText, len(image), wantSum)
	}
	if n := count(t, conn, `SELECT count(*) FROM pgtrail.changes WHERE primary_key = '5000' AND after->>'v' = 'later'`); n != 1 {
		t.Fatal("the change after the refused one is not stored as it was")
	}
	if !strings.Contains(p.out.String(), "sink cannot store a change as it is: stored with its images replaced by markers") ||
		!strings.Contains(p.out.String(), "id="+id) {
		t.Errorf("the refused change is not logged with its id %s", id)
	}
	metrics := httpGet(t, "http://"+addr+"/metrics")
	if !strings.Contains(metrics, `pgtrail_unstorable_changes_total{sink="audit"} 1`) {
		t.Errorf("/metrics lacks pgtrail_unstorable_changes_total{sink=\"audit\"} 1")
	}
}

// TestReadOnlyAuditDatabaseHoldsCaptureBackAndReplacesNothing turns the
// audit database read-only under a write load (and its sink's connections
// over): the writes wait, the slot is confirmed past nothing that is not
// stored, and once it is writable again the audit table equals the
// writers' own record, with no change replaced by a marker.
func TestReadOnlyAuditDatabaseHoldsCaptureBackAndReplacesNothing(t *testing.T) {
	auditURL := cluster.NewDatabase(t)
	audit := connect(t, auditURL)
	db := audit.Config().Database
	outage(t, auditURL, "25006", func() {
		exec1(t, audit, fmt.Sprintf(`ALTER DATABASE %q SET default_transaction_read_only = on`, db))
		terminateSink(t, audit)
	}, func() {
		exec1(t, audit, fmt.Sprintf(`ALTER DATABASE %q RESET default_transaction_read_only`, db))
		terminateSink(t, audit)
	})
}

// TestFullAuditDiskHoldsCaptureBackAndReplacesNothing puts the audit
// database on a small tmpfs and lets it fill up under a write load: the
// writes wait (SQLSTATE 53100, an outage, not the data's fault), the slot is
// confirmed past nothing that is not stored, and once the disk has room the
// audit table equals the writers' own record, with no change replaced.
func TestFullAuditDiskHoldsCaptureBackAndReplacesNothing(t *testing.T) {
	// Not t.TempDir: the server's user must reach it.
	dir, err := os.MkdirTemp("", "pgtrail-full-disk-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(dir) })
	if err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", dir).Run(); err != nil {
		t.Skipf("SKIPPED, NOT RUN: cannot mount a tmpfs for the audit database's tablespace (needs root or CAP_SYS_ADMIN): %v", err)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	if pg, err := user.Lookup("postgres"); err == nil && os.Getuid() == 0 {
		uid, _ := strconv.Atoi(pg.Uid)
		gid, _ := strconv.Atoi(pg.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	space := fmt.Sprintf("full_%d", time.Now().UnixNano())
	cluster.Exec(t, "postgres", fmt.Sprintf(`CREATE TABLESPACE %s LOCATION '%s'`, space, dir))
	t.Cleanup(func() { cluster.Exec(t, "postgres", "DROP TABLESPACE "+space) })
	cluster.Exec(t, "postgres", fmt.Sprintf(`CREATE DATABASE %s TABLESPACE %s`, space, space))
	t.Cleanup(func() { cluster.Exec(t, "postgres", "DROP DATABASE "+space+" WITH (FORCE)") })
	auditURL := cluster.URL(space)

	resize := func(size uint64) {
		t.Helper()
		if out, err := exec.Command("mount", "-o", fmt.Sprintf("remount,size=%d", size), dir).CombinedOutput(); err != nil {
			t.Fatalf("resize the tmpfs: %v %s", err, out)
		}
	}
	outage(t, auditURL, "53100", func() {
		// Room for a few hundred changes more: the load fills it.
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			t.Fatal(err)
		}
		resize((st.Blocks-st.Bfree)*uint64(st.Bsize) + 1<<20)
	}, func() { resize(256 << 20) })
}

// outage runs a write load against a source database whose changes pgtrail
// stores in the database at auditURL, applies fault there, and checks that
// while the sink fails (with SQLSTATE code) nothing is stored or confirmed
// past, that after fix the audit table equals the writers' record exactly,
// and that no change was replaced by a marker.
func outage(t *testing.T, auditURL, code string, fault, fix func()) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL, pad text);
		CREATE SCHEMA bookkeeping; CREATE TABLE bookkeeping.truth (op text, id int, n int)`)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	sinks := fmt.Sprintf("sinks:\n  - name: audit\n    plugin: postgres\n    config: {url: %q}\n", auditURL)
	_, _, p := setupAndStart(t, url, sinks+fmt.Sprintf("http:\n  listen: %q\npipeline:\n  batch_size: 200\n", addr), "")
	audit := connect(t, auditURL)

	var commits atomic.Int64
	stop := writeLoad(t, url, 2, func(conn *pgx.Conn, w, i int) error {
		id := w*1_000_000 + i
		err := pgx.BeginFunc(context.Background(), conn, func(tx pgx.Tx) error {
			b := &pgx.Batch{}
			b.Queue(`INSERT INTO items VALUES ($1, 0, (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 40)))`, id)
			b.Queue(`INSERT INTO bookkeeping.truth VALUES ('CREATE', $1, 0)`, id)
			if i%3 == 2 {
				b.Queue(`UPDATE items SET n = n + 1 WHERE id = $1`, id-1)
				b.Queue(`INSERT INTO bookkeeping.truth SELECT 'UPDATE', id, n FROM items WHERE id = $1`, id-1)
			}
			return tx.SendBatch(context.Background(), b).Close()
		})
		if err == nil {
			commits.Add(1)
		}
		return err
	})
	var once sync.Once
	stopLoad := func() { once.Do(stop) }
	t.Cleanup(stopLoad)

	waitFor(t, 30*time.Second, "changes to flow", func() bool { return count(t, audit, "SELECT count(*) FROM pgtrail.changes") > 100 })
	fault()
	waitFor(t, 60*time.Second, "the sink to fail with SQLSTATE "+code, func() bool {
		return strings.Contains(p.out.String(), "SQLSTATE "+code)
	})
	stored := count(t, audit, "SELECT count(*) FROM pgtrail.changes")
	time.Sleep(500 * time.Millisecond) // writers commit more meanwhile
	lsn := pastLastCommit(t, conn)
	for range 6 {
		if confirmedPast(t, conn, lsn) {
			t.Fatalf("slot confirmed past %s while the audit database stored nothing since %d changes", lsn, stored)
		}
		if n := count(t, audit, "SELECT count(*) FROM pgtrail.changes"); n != stored {
			t.Fatalf("%d changes stored during the outage, after %d", n, stored)
		}
		time.Sleep(500 * time.Millisecond)
	}
	fix()
	time.Sleep(time.Second)
	stopLoad()
	if t.Failed() {
		return
	}
	truth := count(t, conn, `SELECT count(*) FROM bookkeeping.truth`)
	lsn = pastLastCommit(t, conn)
	t.Logf("%d transactions, %d changes; %d stored when the outage began", commits.Load(), truth, stored)
	waitForChanges(t, audit, truth, 180*time.Second)
	waitFor(t, 30*time.Second, "the slot to be confirmed past the last write", func() bool { return confirmedPast(t, conn, lsn) })

	truthRows, err := conn.Query(context.Background(), `SELECT op, id, n FROM bookkeeping.truth`)
	if err != nil {
		t.Fatal(err)
	}
	want, err := pgx.CollectRows(truthRows, pgx.RowToStructByPos[truthRow])
	if err != nil {
		t.Fatal(err)
	}
	exec1(t, audit, `CREATE TEMP TABLE truth (op text, id int, n int)`)
	if _, err := audit.CopyFrom(context.Background(), pgx.Identifier{"truth"}, []string{"op", "id", "n"},
		pgx.CopyFromSlice(len(want), func(i int) ([]any, error) { return []any{want[i].Op, want[i].ID, want[i].N}, nil })); err != nil {
		t.Fatal(err)
	}
	var missing, extra, markers int
	err = audit.QueryRow(context.Background(), `
		WITH stored AS (SELECT operation AS op, primary_key::int AS id, (after->>'n')::int AS n FROM pgtrail.changes WHERE "table" = 'items')
		SELECT (SELECT count(*) FROM (SELECT * FROM truth EXCEPT ALL SELECT * FROM stored) m),
		       (SELECT count(*) FROM (SELECT * FROM stored EXCEPT ALL SELECT * FROM truth) e),
		       (SELECT count(*) FROM pgtrail.changes WHERE before ? 'pgtrail_replaced' OR after ? 'pgtrail_replaced' OR context ? 'pgtrail_replaced')`).
		Scan(&missing, &extra, &markers)
	if err != nil {
		t.Fatal(err)
	}
	if missing != 0 || extra != 0 || markers != 0 {
		t.Fatalf("audit table differs from the truth: %d missing, %d extra, %d replaced by markers", missing, extra, markers)
	}
	metrics := httpGet(t, "http://"+addr+"/metrics")
	if strings.Contains(metrics, "pgtrail_unstorable_changes_total{") || strings.Contains(metrics, "pgtrail_values_rewritten_total{") {
		t.Errorf("an outage counted as unstorable data:\n%s", metrics)
	}
	if err := p.stop(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

type truthRow struct {
	Op    string
	ID, N int
}

// terminateSink ends the audit database's connections of pgtrail's sink, so
// that it opens new ones (with the database's settings of now).
func terminateSink(t *testing.T, audit *pgx.Conn) {
	t.Helper()
	exec1(t, audit, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE application_name = 'pgtrail-sink' AND datname = current_database()`)
}

// TestAStringOverTheLimitIsStoredAsAMarker runs capture, the pipeline and
// the PostgreSQL sink in this process, with the string limit lowered to
// 1 MiB (jsonb's own, 2^28-1 bytes, is proven against the server by
// core/values' TestStorableAgreesWithPostgreSQL): a 3 MiB text value is
// stored as a marker of its size and SHA-256, the row's other columns as
// they are, and the trail goes on.
func TestAStringOverTheLimitIsStoredAsAMarker(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE notes (id int PRIMARY KEY, title text, body text)`)
	path := writeConfig(t, url, "", "")
	if out, err := pgtrail(t, path, "setup"); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	cfg, err := config.Load(path, true)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	m := metrics.New()
	sink, err := host.Load(ctx, config.Sink{Name: "audit", Plugin: "postgres", InProcess: true, Config: map[string]any{"url": url}},
		host.Options{Builtins: host.Builtins{"postgres": func() sdk.Sink { return postgres.New() }}, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close(context.Background())
	if err := sink.Open(ctx); err != nil {
		t.Fatal(err)
	}
	src, err := pglogrepl.Open(ctx, cfg.Source.Postgres, []pglogrepl.AuditTable{{URL: url, Schema: "pgtrail", Table: "changes"}}, log, m)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- pipeline.New(src, []pipeline.Sink{sink}, pipeline.Options{MaxString: 1 << 20}, log, m).Run(ctx)
	}()
	defer func() { cancel(); <-done }()

	exec1(t, conn, `INSERT INTO notes VALUES (1, 'big', repeat('abcé', 786432)), (2, 'small', 'x')`) // 3 MiB + 786432 bytes of é
	waitForChanges(t, conn, 2, 60*time.Second)
	var title, replaced, sum, wantSum string
	var size, wantSize int
	err = conn.QueryRow(context.Background(), `SELECT c.after->>'title', c.after->'body'->>'pgtrail_replaced', (c.after->'body'->>'bytes')::int,
		c.after->'body'->>'sha256', octet_length(n.body), encode(sha256(convert_to(n.body, 'UTF8')), 'hex')
		FROM pgtrail.changes c JOIN notes n ON n.id = c.primary_key::int WHERE c.primary_key = '1'`).Scan(&title, &replaced, &size, &sum, &wantSize, &wantSum)
	if err != nil {
		t.Fatal(err)
	}
	if title != "big" || replaced != "string_too_long" || size != wantSize || sum != wantSum {
		t.Fatalf("stored title %q, body marker %q %d %s; want big, string_too_long %d %s", title, replaced, size, sum, wantSize, wantSum)
	}
	if n := count(t, conn, `SELECT count(*) FROM pgtrail.changes WHERE primary_key = '2' AND after = '{"id": 2, "title": "small", "body": "x"}'`); n != 1 {
		t.Fatal("the small row is not stored as it is")
	}
	var rewritten dto.Metric
	if err := m.ValuesRewritten.WithLabelValues("string_too_long").Write(&rewritten); err != nil || rewritten.GetCounter().GetValue() != 1 {
		t.Fatalf("pgtrail_values_rewritten_total{reason=\"string_too_long\"} = %v (%v), want 1", rewritten.GetCounter().GetValue(), err)
	}
}
