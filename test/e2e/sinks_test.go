package e2e

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/test/clickhousetest"
	"github.com/pgtrail/pgtrail/test/s3test"
)

// sinkServers starts a private S3 server and ClickHouse for one test.
func sinkServers(t *testing.T) (*s3test.Server, *clickhousetest.Server) {
	t.Helper()
	s3srv, err := s3test.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s3srv.Stop)
	ch, err := clickhousetest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ch.Stop)
	return s3srv, ch
}

// sinksConfig is the config of the audit table, ClickHouse and, with an S3
// server, an S3 archive that buffers (uploads by size, and every 300 ms).
func sinksConfig(url string, ch *clickhousetest.Server, database string, s3srv *s3test.Server, bucket string) string {
	cfg := fmt.Sprintf(`http:
  listen: ""
sinks:
  - name: audit
    plugin: postgres
    config: {url: %q, schema: pgtrail, table: changes}
  - name: analytics
    plugin: clickhouse
    config: {url: %q, database: %q, user: %q, password: %q}
`, url, ch.URL(), database, clickhousetest.User, clickhousetest.Password)
	if s3srv != nil {
		cfg += fmt.Sprintf(`  - name: archive
    plugin: s3
    config:
      bucket: %q
      prefix: audit/app
      endpoint: %q
      region: %q
      path_style: true
      access_key_id: %q
      secret_access_key: %q
      flush_bytes: 64KiB
      flush_interval: 300ms
`, bucket, s3srv.URL(), s3test.Region, s3test.AccessKey, s3test.SecretKey)
	}
	return cfg
}

// auditIDs returns the ID of every change in the audit table, once per row.
func auditIDs(t testing.TB, conn *pgx.Conn) []uuid.UUID {
	t.Helper()
	rows, err := conn.Query(context.Background(), "SELECT id FROM pgtrail.changes")
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// s3IDs returns the ID of every change in the bucket's JSON lines objects,
// once per stored copy.
func s3IDs(t testing.TB, s3srv *s3test.Server, bucket string) []uuid.UUID {
	t.Helper()
	var ids []uuid.UUID
	for key, body := range s3srv.Objects(t, bucket, "audit/app/") {
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			t.Fatalf("gunzip %s: %v", key, err)
		}
		sc := bufio.NewScanner(zr)
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			var line struct {
				ID uuid.UUID `json:"id"`
			}
			if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
				t.Fatalf("%s: %v", key, err)
			}
			ids = append(ids, line.ID)
		}
		if err := sc.Err(); err != nil {
			t.Fatalf("read %s: %v", key, err)
		}
	}
	return ids
}

// clickhouseIDs returns the IDs a query with FINAL sees, once per row.
func clickhouseIDs(t testing.TB, ch *clickhousetest.Server, database string) []uuid.UUID {
	t.Helper()
	var ids []uuid.UUID
	for _, line := range strings.Fields(ch.Query(t, "SELECT toString(id) FROM "+database+".changes FINAL")) {
		ids = append(ids, uuid.MustParse(line))
	}
	return ids
}

// sameOnce fails t unless got holds every ID of want exactly once, and nothing else.
func sameOnce(t testing.TB, sink string, got, want []uuid.UUID) {
	t.Helper()
	seen := map[uuid.UUID]int{}
	for _, id := range got {
		seen[id]++
	}
	missing, doubled := 0, 0
	for _, id := range want {
		switch seen[id] {
		case 0:
			missing++
		case 1:
		default:
			doubled++
		}
	}
	if missing > 0 || doubled > 0 || len(got) != len(want) {
		t.Fatalf("%s holds %d changes, want %d: %d missing, %d stored more than once", sink, len(got), len(want), missing, doubled)
	}
}

// TestSinksHoldEveryChangeOnceAcrossKill9 runs the postgres source into the
// audit table, S3 and ClickHouse at once, kills pgtrail with SIGKILL three
// times during a write load (S3 holding buffered changes each time), stops
// it with SIGTERM, which drains, and checks that each sink holds every change
// exactly once.
func TestSinksHoldEveryChangeOnceAcrossKill9(t *testing.T) {
	s3srv, ch := sinkServers(t)
	bucket, database := "pgtrail-e2e", ch.NewDatabase(t) // setup makes both
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
		CREATE SCHEMA bookkeeping; CREATE TABLE bookkeeping.truth (n int)`)
	_, cfg, p := setupAndStart(t, url, sinksConfig(url, ch, database, s3srv, bucket)+"pipeline:\n  batch_size: 100\n", "")

	// Two writers; each transaction records in `truth` how many changes it made.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var txns atomic.Int64
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wc, err := pgx.Connect(context.Background(), url)
			if err != nil {
				t.Error(err)
				return
			}
			defer wc.Close(context.Background())
			for i := 0; ctx.Err() == nil; i++ {
				id := w*1_000_000 + i
				b := &pgx.Batch{}
				b.Queue(`INSERT INTO accounts VALUES ($1, 100)`, id)
				n := 1
				if i%3 == 2 {
					b.Queue(`UPDATE accounts SET balance = balance + 1 WHERE id = $1`, id-1)
					n++
				}
				if i%5 == 4 {
					b.Queue(`DELETE FROM accounts WHERE id = $1`, id-2)
					n++
				}
				b.Queue(`INSERT INTO bookkeeping.truth VALUES ($1)`, n)
				err := pgx.BeginFunc(context.Background(), wc, func(tx pgx.Tx) error {
					return tx.SendBatch(context.Background(), b).Close()
				})
				if err != nil {
					t.Error(err)
					return
				}
				txns.Add(1)
			}
		}()
	}
	for range 3 {
		time.Sleep(time.Duration(400+rand.IntN(600)) * time.Millisecond)
		p.kill()
		time.Sleep(time.Duration(rand.IntN(200)) * time.Millisecond)
		p = start(t, cfg)
	}
	time.Sleep(300 * time.Millisecond)
	cancel()
	wg.Wait()
	if t.Failed() {
		return
	}
	want := count(t, conn, `SELECT coalesce(sum(n), 0) FROM bookkeeping.truth`)
	t.Logf("%d transactions, %d changes under 3 kills", txns.Load(), want)
	waitForChanges(t, conn, want, 60*time.Second)
	// Every change has been read and handed to every sink; SIGTERM makes
	// the last buffered ones durable before pgtrail exits.
	if err := p.stop(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	ids := auditIDs(t, conn)
	sameOnce(t, "the audit table", ids, ids) // no id twice
	sameOnce(t, "S3", s3IDs(t, s3srv, bucket), ids)
	sameOnce(t, "ClickHouse (FINAL)", clickhouseIDs(t, ch, database), ids)
}

// TestSinksClickHouseOutageHoldsBackConfirmation drops the ClickHouse table
// under a running pgtrail: the failure is logged with what to do, the slot is
// not confirmed past the changes ClickHouse lacks, and once `pgtrail setup`
// makes the table again every change arrives, once, and is confirmed.
func TestSinksClickHouseOutageHoldsBackConfirmation(t *testing.T) {
	_, ch := sinkServers(t)
	database := ch.NewDatabase(t)
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE items (id int PRIMARY KEY)`)
	conn, cfg, p := setupAndStart(t, url, sinksConfig(url, ch, database, nil, ""), "")
	exec1(t, conn, `INSERT INTO items SELECT generate_series(1, 100)`)
	waitFor(t, 30*time.Second, "100 changes in ClickHouse", func() bool { return len(clickhouseIDs(t, ch, database)) == 100 })

	ch.Query(t, "DROP TABLE "+database+".changes")
	exec1(t, conn, `INSERT INTO items SELECT generate_series(101, 150)`)
	lsn := pastLastCommit(t, conn)
	waitForChanges(t, conn, 150, 30*time.Second) // the audit table has them
	waitFor(t, 30*time.Second, "the failure in the log", func() bool {
		return regexp.MustCompile(`sink (write|flush) failed; retrying.*sink=analytics.*does not exist: run .pgtrail setup.`).MatchString(p.out.String())
	})
	time.Sleep(1500 * time.Millisecond) // several status intervals
	if confirmedPast(t, conn, lsn) {
		t.Fatal("slot confirmed past changes ClickHouse does not hold")
	}

	if out, err := pgtrail(t, cfg, "setup"); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	waitFor(t, 30*time.Second, "the slot to be confirmed once ClickHouse holds the changes", func() bool { return confirmedPast(t, conn, lsn) })
	// The dropped table took the first 100 with it; the 50 made during the
	// outage are there, once.
	var during []uuid.UUID
	rows, err := conn.Query(context.Background(), `SELECT id FROM pgtrail.changes WHERE primary_key::int > 100`)
	if err != nil {
		t.Fatal(err)
	}
	if during, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID]); err != nil {
		t.Fatal(err)
	}
	sameOnce(t, "ClickHouse (FINAL)", clickhouseIDs(t, ch, database), during)
	if err := p.stop(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

// TestSinksExampleConfigsSetUpAndReportHealthy runs `pgtrail setup` and
// `pgtrail status` with the example configs as shipped, pointed at the test
// servers through the environment variables they read.
func TestSinksExampleConfigsSetUpAndReportHealthy(t *testing.T) {
	s3srv, ch := sinkServers(t)
	t.Setenv("S3_ENDPOINT", s3srv.URL())
	t.Setenv("S3_PATH_STYLE", "true")
	t.Setenv("AWS_ACCESS_KEY_ID", s3test.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s3test.SecretKey)
	t.Setenv("AWS_REGION", s3test.Region)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("CLICKHOUSE_URL", ch.URL())
	t.Setenv("CLICKHOUSE_USER", clickhousetest.User)
	t.Setenv("CLICKHOUSE_PASSWORD", clickhousetest.Password)
	t.Cleanup(func() { ch.Query(t, "DROP DATABASE IF EXISTS pgtrail") })
	for file, sinks := range map[string][]string{
		"s3.yaml":         {"archive"},
		"clickhouse.yaml": {"analytics"},
		"multi-sink.yaml": {"audit", "archive", "analytics"},
	} {
		t.Run(file, func(t *testing.T) {
			t.Setenv("DATABASE_URL", cluster.NewDatabase(t))
			t.Setenv("S3_BUCKET", "example-"+strings.TrimSuffix(file, ".yaml"))
			cfg := "../../configs/" + file
			if out, err := pgtrail(t, cfg, "setup"); err != nil {
				t.Fatalf("setup: %v\n%s", err, out)
			}
			out, err := pgtrail(t, cfg, "status")
			if err != nil {
				t.Fatalf("status: %v\n%s", err, out)
			}
			for _, name := range sinks {
				if !regexp.MustCompile(`(?m)^sink ` + name + `\s+ok$`).MatchString(out) {
					t.Errorf("status does not report sink %s ok:\n%s", name, out)
				}
			}
		})
	}
	if got := ch.Query(t, "SELECT count() FROM system.tables WHERE database = 'pgtrail' AND name = 'changes'"); got != "1\n" {
		t.Fatalf("setup made %s ClickHouse tables pgtrail.changes, want 1", got)
	}
}
