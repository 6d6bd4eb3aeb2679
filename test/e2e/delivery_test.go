package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/test/pgtest"
)

func setupAndStart(t *testing.T, url, extra, pg string) (*pgx.Conn, string, *proc) {
	t.Helper()
	conn := connect(t, url)
	cfg := writeConfig(t, url, extra, pg)
	if out, err := pgtrail(t, cfg, "setup"); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	return conn, cfg, start(t, cfg)
}

func TestCopyAndInsertSelectStoreEveryRowOnce(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE bulk (id int PRIMARY KEY, v text); CREATE TABLE bulk_nokey (v int)`)
	setupAndStart(t, url, "", "")

	rows := make([][]any, 10000)
	for i := range rows {
		rows[i] = []any{i, "v" + strconv.Itoa(i)}
	}
	n, err := conn.CopyFrom(context.Background(), pgx.Identifier{"bulk"}, []string{"id", "v"}, pgx.CopyFromRows(rows))
	if err != nil || n != 10000 {
		t.Fatalf("copy: %d, %v", n, err)
	}
	// Identical rows in one multi-row insert into a table without a key:
	// they share an LSN and still must each be stored.
	exec1(t, conn, `INSERT INTO bulk_nokey SELECT 1 FROM generate_series(1, 10000)`)
	waitForChanges(t, conn, 20000, 60*time.Second)
	if n := count(t, conn, `SELECT count(DISTINCT primary_key) FROM pgtrail.changes WHERE "table" = 'bulk'`); n != 10000 {
		t.Fatalf("%d distinct keys of bulk stored, want 10000", n)
	}
	if n := count(t, conn, `SELECT count(DISTINCT id) FROM pgtrail.changes`); n != 20000 {
		t.Fatalf("%d distinct ids, want 20000", n)
	}
	if n := count(t, conn, `SELECT count(DISTINCT position) FROM pgtrail.changes WHERE "table" = 'bulk_nokey'`); n >= 10000 {
		t.Logf("note: multi-insert rows did not share positions (%d distinct)", n)
	}
}

// TestReplayAfterKill9StoresEachChangeExactlyOnce kills pgtrail with SIGKILL
// at random moments during a sustained write load, restarts it each time,
// and compares the audit table with the source's own record of its writes.
func TestReplayAfterKill9StoresEachChangeExactlyOnce(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
		CREATE SCHEMA bookkeeping; CREATE TABLE bookkeeping.truth (op text, id int, balance int, ctx text, seq bigserial)`)
	_, cfg, p := setupAndStart(t, url, "pipeline:\n  batch_size: 200\n", "")

	// Writers log every change they make into `truth` in the same transaction.
	var txns atomic.Int64
	stop := writeLoad(t, url, 4, func(conn *pgx.Conn, w, i int) error {
		id := w*1_000_000 + i
		who := fmt.Sprintf(`{"writer": %d, "i": %d}`, w, i)
		err := pgx.BeginFunc(context.Background(), conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(context.Background(), `SELECT pgtrail.set_context($1::jsonb)`, who); err != nil {
				return err
			}
			batch := &pgx.Batch{}
			batch.Queue(`INSERT INTO accounts VALUES ($1, 100)`, id)
			batch.Queue(`INSERT INTO bookkeeping.truth (op, id, balance, ctx) VALUES ('CREATE', $1, 100, $2)`, id, who)
			if i%3 == 0 && i > 0 {
				batch.Queue(`UPDATE accounts SET balance = balance + 1 WHERE id = $1`, id-1)
				batch.Queue(`INSERT INTO bookkeeping.truth (op, id, balance, ctx) SELECT 'UPDATE', id, balance, $2 FROM accounts WHERE id = $1`, id-1, who)
			}
			if i%7 == 0 && i > 0 {
				batch.Queue(`DELETE FROM accounts WHERE id = $1`, id-2)
				batch.Queue(`INSERT INTO bookkeeping.truth (op, id, balance, ctx) VALUES ('DELETE', $1, NULL, $2)`, id-2, who)
			}
			return tx.SendBatch(context.Background(), batch).Close()
		})
		if err == nil {
			txns.Add(1)
		}
		return err
	})

	for kill := 0; kill < 5; kill++ {
		time.Sleep(time.Duration(300+rand.IntN(900)) * time.Millisecond)
		p.kill()
		time.Sleep(time.Duration(rand.IntN(200)) * time.Millisecond)
		p = start(t, cfg)
	}
	time.Sleep(500 * time.Millisecond)
	stop()
	if t.Failed() {
		return
	}
	truth := count(t, conn, `SELECT count(*) FROM bookkeeping.truth`)
	t.Logf("%d transactions, %d changes written under 5 kills", txns.Load(), truth)
	waitForChanges(t, conn, truth, 120*time.Second)

	// Same changes, same order per row, same context: nothing lost or doubled.
	var missing, extra int
	err := conn.QueryRow(context.Background(), `
		WITH audit AS (
			SELECT operation AS op, primary_key::int AS id, (after ->> 'balance')::int AS balance, context::text AS ctx FROM pgtrail.changes
			WHERE "table" = 'accounts'),
		want AS (SELECT op, id, balance, ctx::jsonb::text AS ctx FROM bookkeeping.truth)
		SELECT (SELECT count(*) FROM (SELECT * FROM want EXCEPT ALL SELECT * FROM audit) m),
		       (SELECT count(*) FROM (SELECT * FROM audit EXCEPT ALL SELECT * FROM want) e)`).Scan(&missing, &extra)
	if err != nil {
		t.Fatal(err)
	}
	if missing != 0 || extra != 0 {
		t.Fatalf("audit table differs from the truth: %d missing, %d extra", missing, extra)
	}
	if err := p.stop(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

func TestSIGTERMDrainsConfirmsAndExitsZero(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE t (id int PRIMARY KEY)`)
	_, _, p := setupAndStart(t, url, "", "")
	exec1(t, conn, `INSERT INTO t SELECT generate_series(1, 5000)`)
	lsn := pastLastCommit(t, conn)
	waitForChanges(t, conn, 5000, 30*time.Second)
	if err := p.stop(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, tail(p.out.String(), 20))
	}
	if !confirmedPast(t, conn, lsn) {
		t.Fatal("slot not confirmed past the last write after drain")
	}
}

func TestIdleDatabaseDoesNotPinWAL(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE SCHEMA other; CREATE TABLE other.noise (v text)`)
	setupAndStart(t, url, "", "")
	// Writes to a table that is not captured move WAL on; the slot must follow.
	exec1(t, conn, `INSERT INTO other.noise SELECT repeat('x', 1000) FROM generate_series(1, 20000)`)
	lsn := pastLastCommit(t, conn)
	waitFor(t, 60*time.Second, "the slot to confirm past uncaptured writes", func() bool { return confirmedPast(t, conn, lsn) })
	if n := count(t, conn, "SELECT count(*) FROM pgtrail.changes"); n != 0 {
		t.Fatalf("%d changes stored from an uncaptured schema", n)
	}
}

func TestSchemaChangesWhileRunning(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE evolving (id int PRIMARY KEY, a text)`)
	setupAndStart(t, url, "", "")
	exec1(t, conn, `INSERT INTO evolving VALUES (1, 'x')`)
	exec1(t, conn, `ALTER TABLE evolving ADD COLUMN b int DEFAULT 5`)
	exec1(t, conn, `INSERT INTO evolving VALUES (2, 'y', 6)`)
	exec1(t, conn, `ALTER TABLE evolving DROP COLUMN a`)
	exec1(t, conn, `INSERT INTO evolving VALUES (3, 7)`)
	exec1(t, conn, `CREATE TABLE newcomer (id int PRIMARY KEY); INSERT INTO newcomer VALUES (42)`)
	want := []string{
		`CREATE evolving[1] {"a": "x", "id": 1}`,
		`CREATE evolving[2] {"a": "y", "b": 6, "id": 2}`,
		`CREATE evolving[3] {"b": 7, "id": 3}`,
		`CREATE newcomer[42] {"id": 42}`,
	}
	waitForChanges(t, conn, len(want), 30*time.Second)
	var got []string
	for _, r := range auditRows(t, conn) {
		got = append(got, r.Operation+" "+r.Table+"["+r.PrimaryKey+"] "+r.After)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("stored:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestMillionRowTransactionWithBoundedMemory stores one transaction of a
// million row changes and reads pgtrail's peak resident memory.
func TestMillionRowTransactionWithBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("a million rows: skipped with -short")
	}
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE big (id int PRIMARY KEY, payload text, n numeric, at timestamptz)`)
	_, _, p := setupAndStart(t, url, "", "")
	exec1(t, conn, `INSERT INTO big SELECT i, md5(i::text), i * 1.5, now() FROM generate_series(1, 1000000) i`)
	waitForChanges(t, conn, 1000000, 8*time.Minute)
	// pgtrail and its sink process together: the sink runs behind the
	// plugin boundary.
	peak := func(pid int) int {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(line, "VmHWM:") {
				kb, _ := strconv.Atoi(strings.Fields(line)[1])
				return kb
			}
		}
		return 0
	}
	mainKB, peakKB := peak(p.cmd.Process.Pid), 0
	for _, child := range children(p.cmd.Process.Pid) {
		peakKB += peak(child)
	}
	t.Logf("peak RSS for a 1,000,000-row transaction: pgtrail %d MB + sink process %d MB", mainKB/1024, peakKB/1024)
	peakKB += mainKB
	if mainKB == 0 || peakKB > 200*1024 {
		t.Fatalf("peak RSS %d MB in all, want under 200 MB", peakKB/1024)
	}
}

func TestAuditTableInACapturedSchemaIsNeverCaptured(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE t (id int PRIMARY KEY)`)
	sinks := fmt.Sprintf("sinks:\n  - name: audit\n    plugin: postgres\n    config: {url: %q, schema: public, table: audit_trail}\n", url)
	setupAndStart(t, url, sinks, "")
	exec1(t, conn, `INSERT INTO t SELECT generate_series(1, 100)`)
	waitFor(t, 30*time.Second, "100 changes", func() bool {
		return count(t, conn, "SELECT count(*) FROM public.audit_trail") >= 100
	})
	time.Sleep(time.Second) // were its own writes captured, they would show by now
	if n := count(t, conn, "SELECT count(*) FROM public.audit_trail"); n != 100 {
		t.Fatalf("audit table holds %d changes, want 100: it captured its own writes", n)
	}
	if n := count(t, conn, `SELECT count(*) FROM public.audit_trail WHERE "table" LIKE 'audit_trail%'`); n != 0 {
		t.Fatalf("%d changes of the audit table itself", n)
	}
}

// TestServerRestartsMidStreamLoseAndDoubleNothing restarts PostgreSQL under
// pgtrail during a write load, once cleanly and once as a crash (immediate
// shutdown, recovery at start). pgtrail rides both out, restarting its
// pipeline from the slot's confirmed position, and the audit table matches
// the writers' own record, which commits with their changes or not at all.
func TestServerRestartsMidStreamLoseAndDoubleNothing(t *testing.T) {
	c, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop) // after the database's and pgtrail's clean-up
	url := c.NewDatabase(t)
	exec1(t, connect(t, url), `CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL);
		CREATE SCHEMA bookkeeping; CREATE TABLE bookkeeping.truth (op text, id int)`)
	_, _, p := setupAndStart(t, url, "pipeline:\n  batch_size: 100\n", "")

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var commits, failures atomic.Int64
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var conn *pgx.Conn
			defer func() {
				if conn != nil {
					conn.Close(context.Background())
				}
			}()
			for i := 0; ctx.Err() == nil; i++ {
				if conn == nil || conn.IsClosed() {
					var err error
					if conn, err = pgx.Connect(ctx, url); err != nil {
						conn = nil
						time.Sleep(50 * time.Millisecond)
						continue
					}
				}
				id := w*1_000_000 + i
				err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
					b := &pgx.Batch{}
					b.Queue(`INSERT INTO items VALUES ($1, 0)`, id)
					b.Queue(`INSERT INTO bookkeeping.truth VALUES ('CREATE', $1)`, id)
					if i%3 == 2 {
						b.Queue(`UPDATE items SET n = n + 1 WHERE id = $1`, id-1)
						b.Queue(`INSERT INTO bookkeeping.truth SELECT 'UPDATE', id FROM items WHERE id = $1`, id-1)
					}
					return tx.SendBatch(ctx, b).Close()
				})
				if err != nil {
					failures.Add(1) // the server went away: the truth table says whether it committed
					continue
				}
				commits.Add(1)
			}
		}()
	}
	for _, crash := range []bool{false, true} {
		time.Sleep(time.Duration(800+rand.IntN(700)) * time.Millisecond)
		if err := c.Restart(crash); err != nil {
			cancel()
			wg.Wait()
			t.Fatal(err)
		}
	}
	time.Sleep(1500 * time.Millisecond)
	cancel()
	wg.Wait()

	conn := connect(t, url)
	truth := count(t, conn, `SELECT count(*) FROM bookkeeping.truth`)
	t.Logf("%d transactions committed, %d failed, %d changes, 2 server restarts", commits.Load(), failures.Load(), truth)
	waitForChanges(t, conn, truth, 120*time.Second)
	var missing, extra int
	err = conn.QueryRow(context.Background(), `
		WITH audit AS (SELECT operation AS op, primary_key::int AS id FROM pgtrail.changes WHERE "table" = 'items')
		SELECT (SELECT count(*) FROM (SELECT * FROM bookkeeping.truth EXCEPT ALL SELECT * FROM audit) m),
		       (SELECT count(*) FROM (SELECT * FROM audit EXCEPT ALL SELECT * FROM bookkeeping.truth) e)`).Scan(&missing, &extra)
	if err != nil {
		t.Fatal(err)
	}
	if missing != 0 || extra != 0 {
		t.Fatalf("audit table differs from the truth: %d missing, %d extra", missing, extra)
	}
	if n := strings.Count(p.out.String(), "restarting from the last confirmed position"); n == 0 {
		t.Fatalf("pgtrail never restarted its pipeline:\n%s", tail(p.out.String(), 30))
	}
	if err := p.stop(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}
