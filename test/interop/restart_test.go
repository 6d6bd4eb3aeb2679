//go:build interop

package interop

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestRealKafkaRestartLosesAndDoublesNothing is the real-broker half of the
// broker restart fault (kfake's is test/e2e): `pgtrail capture` publishes a
// write load to Apache Kafka and `pgtrail run` stores it from there while the
// broker is stopped, once by kill -9 and once by SIGTERM, and started again
// on its data dir and ports; then the audit table must equal the writers'
// record, nothing missing and nothing twice.
func TestRealKafkaRestartLosesAndDoublesNothing(t *testing.T) {
	dir := t.TempDir()
	k, err := startKafka(jvm, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		k.p.stop(10 * time.Second)
		if t.Failed() {
			t.Logf("kafka output:\n%s", tail(k.p.out.String(), 40))
		}
	})
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, truthSchema)

	common := "http: {listen: \"\"}\nlog: {level: debug}\npipeline: {batch_size: 100}\n"
	capture := startPgtrail(t, "capture", fmt.Sprintf("source:\n  type: postgres\n  postgres: {url: %q, slot: capture, status_interval: 1s}\n", url)+common+
		fmt.Sprintf("publish:\n  type: kafka\n  topic_prefix: restart\n  kafka: {brokers: [%q]}\n", k.addr), "capturing", "capture")
	// The topic exists, with something in it, before run subscribes.
	exec1(t, conn, `SELECT pg_logical_emit_message(true, $1, 'start')`, marker)
	readTopic(t, k.addr, "restart", "start", time.Minute)
	run := startPgtrail(t, "run", fmt.Sprintf("source:\n  type: kafka\n  kafka: {brokers: [%q], topics: [restart], group: restart}\n", k.addr)+
		fmt.Sprintf("sinks:\n  - name: audit\n    plugin: postgres\n    config: {url: %q, schema: restart}\n", url)+common, "level=INFO", "run")

	stop := writeItems(t, url)
	defer stop()
	for i, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		how := map[syscall.Signal]string{syscall.SIGKILL: "kill -9", syscall.SIGTERM: "SIGTERM"}[sig]
		time.Sleep(3 * time.Second)
		stopped := time.Now()
		if sig == syscall.SIGKILL {
			_ = k.p.cmd.Process.Kill()
			<-k.p.done
		} else {
			k.p.stop(30 * time.Second)
		}
		t.Logf("restart %d: kafka stopped by %s in %s (%s)", i+1, how, time.Since(stopped).Round(time.Millisecond), k.p.cmd.ProcessState)
		time.Sleep(2 * time.Second)
		down := time.Now()
		if err := k.start(); err != nil {
			t.Fatalf("restart %d: %v", i+1, err)
		}
		back := time.Now()
		id := -(i + 1)
		writeItem(t, conn, id)
		waitFor(t, 90*time.Second, fmt.Sprintf("item %d in the audit table", id), func() bool {
			return countWhere(t, conn, `SELECT count(*) FROM restart.changes WHERE "table" = 'items' AND primary_key = $1`, fmt.Sprint(id)) > 0
		})
		t.Logf("restart %d: kafka listening again on %s %s after it was started; the first change after it stored %s later",
			i+1, k.addr, back.Sub(down).Round(time.Millisecond), time.Since(back).Round(time.Millisecond))
	}
	stop()

	truth := countWhere(t, conn, `SELECT count(*) FROM bookkeeping.truth`)
	t.Logf("%d changes written under 2 restarts of Apache Kafka (kill -9, SIGTERM)", truth)
	waitFor(t, 2*time.Minute, fmt.Sprintf("%d changes of items in the audit table", truth), func() bool {
		return countWhere(t, conn, `SELECT count(*) FROM restart.changes WHERE "table" = 'items'`) >= truth
	})
	time.Sleep(2 * time.Second) // a change published twice would land by now
	var missing, extra int
	err = conn.QueryRow(context.Background(), `
		WITH audit AS (SELECT operation, primary_key::int, (after ->> 'n')::int FROM restart.changes WHERE "table" = 'items')
		SELECT (SELECT count(*) FROM (TABLE bookkeeping.truth EXCEPT ALL TABLE audit) m),
		       (SELECT count(*) FROM (TABLE audit EXCEPT ALL TABLE bookkeeping.truth) e)`).Scan(&missing, &extra)
	if err != nil {
		t.Fatal(err)
	}
	if missing != 0 || extra != 0 {
		t.Fatalf("audit table differs from the writers' record: %d missing, %d extra", missing, extra)
	}
	t.Logf("audit table equals the writers' record (EXCEPT ALL both ways); capture logged %d warnings and errors, run %d",
		problems(capture), problems(run))
}

// problems counts a pgtrail process's WARN and ERROR log lines: the broker
// outages must have been seen, not slept through.
func problems(p *proc) int {
	out := p.out.String()
	return strings.Count(out, "level=WARN") + strings.Count(out, "level=ERROR")
}

// truthSchema is the table the load writes and, outside it, the writers'
// record of each change (operation, id, n as the audit table stores them).
const truthSchema = `CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL);
	CREATE SCHEMA bookkeeping; CREATE TABLE bookkeeping.truth (op text, id int, n int)`

// writeItem inserts item id and records it, in one transaction.
func writeItem(t *testing.T, conn *pgx.Conn, id int) {
	t.Helper()
	exec1(t, conn, `WITH i AS (INSERT INTO items VALUES ($1, 0) RETURNING id, n)
		INSERT INTO bookkeeping.truth SELECT 'CREATE', id, n FROM i`, id)
}

// writeItems writes from two connections until stopped: each transaction
// inserts an item and records it, every third also updates the item before
// and records that; the record commits with the change or not at all.
func writeItems(t *testing.T, url string) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := 1; w <= 2; w++ {
		conn := connect(t, url)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				time.Sleep(2 * time.Millisecond) // a steady load on a shared machine
				id := w*1_000_000 + i
				err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
					b := &pgx.Batch{}
					b.Queue(`INSERT INTO items VALUES ($1, 0)`, id)
					b.Queue(`INSERT INTO bookkeeping.truth VALUES ('CREATE', $1, 0)`, id)
					if i%3 == 2 {
						b.Queue(`WITH u AS (UPDATE items SET n = n + 1 WHERE id = $1 RETURNING id, n)
							INSERT INTO bookkeeping.truth SELECT 'UPDATE', id, n FROM u`, id-1)
					}
					return tx.SendBatch(ctx, b).Close()
				})
				if err != nil && ctx.Err() == nil {
					t.Errorf("writer %d: %v", w, err)
					return
				}
			}
		}()
	}
	var once sync.Once
	return func() { once.Do(func() { cancel(); wg.Wait() }) }
}
