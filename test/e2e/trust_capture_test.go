package e2e

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/test/faultproxy"
)

// lowRole makes a role with no privilege beyond creating tables in the
// database's public schema and in the database, and returns its name and a
// URL that connects as it. Roles are the cluster's: one per database, so
// that -count=N runs again.
func lowRole(t *testing.T, conn *pgx.Conn, url string) (string, string) {
	t.Helper()
	var role string
	if err := conn.QueryRow(context.Background(), "SELECT 'low_' || current_database()").Scan(&role); err != nil {
		t.Fatal(err)
	}
	exec1(t, conn, fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD 'low'; GRANT CREATE ON SCHEMA public TO %[1]s;
		GRANT CREATE ON DATABASE %s TO %[1]s`, role, pgx.Identifier{conn.Config().Database}.Sanitize()))
	return role, strings.Replace(url, "postgres:postgres@", role+":low@", 1)
}

// tableCounts is how many changes of each table an audit table holds.
func tableCounts(t *testing.T, conn *pgx.Conn, target string) map[string]int {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT "table", count(*)::int FROM `+target+` GROUP BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for rows.Next() {
		var table string
		var n int
		if err := rows.Scan(&table, &n); err != nil {
			t.Fatal(err)
		}
		got[table] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

// TestTableOwnerCannotOptOutOfTheAuditTrail: a role with no privilege but
// creating tables comments its tables as pgtrail's audit table, which
// capture once took as the sign of its own table, and writes to them. Every
// change is in the trail. pgtrail's own audit tables are still never
// captured: one in a captured schema reached by a URL written differently,
// and one in another database whose name a source table shares (that table
// is captured: it is not pgtrail's).
func TestTableOwnerCannotOptOutOfTheAuditTrail(t *testing.T) {
	url := cluster.NewDatabase(t)
	elsewhere := cluster.NewDatabase(t)
	conn := connect(t, url)
	_, lowURL := lowRole(t, conn, url)
	low := connect(t, lowURL)
	exec1(t, low, `CREATE TABLE hidden (id int PRIMARY KEY, v text);
		COMMENT ON TABLE hidden IS 'pgtrail audit table: every row change, with its context';
		CREATE TABLE hidden_parts (id int, k int, PRIMARY KEY (id, k)) PARTITION BY RANGE (k);
		CREATE TABLE hidden_parts_1 PARTITION OF hidden_parts FOR VALUES FROM (0) TO (100);
		COMMENT ON TABLE hidden_parts IS 'pgtrail audit table';
		COMMENT ON TABLE hidden_parts_1 IS 'pgtrail audit table'`)
	exec1(t, conn, `CREATE TABLE shadow (id int PRIMARY KEY); CREATE TABLE fence (id int PRIMARY KEY)`)

	sinks := fmt.Sprintf(`sinks:
  - {name: audit, plugin: postgres, config: {url: %q}}
  - {name: mirror, plugin: postgres, config: {url: %q, schema: public, table: audit_mirror}}
  - {name: elsewhere, plugin: postgres, config: {url: %q, schema: public, table: shadow}}
`, url, url+"&application_name=mirror", elsewhere)
	setupAndStart(t, url, sinks, "")

	exec1(t, low, `INSERT INTO hidden SELECT i, 'v' || i FROM generate_series(1, 50) i`)
	exec1(t, low, `UPDATE hidden SET v = 'w' WHERE id <= 10`)
	exec1(t, low, `INSERT INTO hidden_parts SELECT i, i FROM generate_series(1, 20) i`)
	exec1(t, conn, `INSERT INTO shadow SELECT generate_series(1, 10)`)
	// The trail is stored in commit order: once the fence is in every
	// audit table, so is everything before it.
	exec1(t, conn, `INSERT INTO fence VALUES (1)`)

	other := connect(t, elsewhere)
	audits := map[string]*pgx.Conn{"pgtrail.changes": conn, "public.audit_mirror": conn, "public.shadow": other}
	for _, target := range slices.Sorted(maps.Keys(audits)) {
		c := audits[target]
		waitFor(t, 30*time.Second, "the fence in "+target, func() bool {
			return count(t, c, `SELECT count(*) FROM `+target+` WHERE "table" = 'fence'`) == 1
		})
		want := map[string]int{"hidden": 60, "hidden_parts_1": 20, "shadow": 10, "fence": 1}
		if got := tableCounts(t, c, target); !maps.Equal(got, want) {
			t.Errorf("%s holds changes per table %v, want %v", target, got, want)
		}
	}
}

// TestSetupRefusesASchemaOrAuditTableAnotherRoleControls: capture never
// stores the tables of schema pgtrail, and pgtrail keeps its trail in its
// audit table; setup adopts neither from another role, says what to do, and
// goes through once that is done.
func TestSetupRefusesASchemaOrAuditTableAnotherRoleControls(t *testing.T) {
	for _, c := range []struct {
		name, prepare, sinkTable, want, fix string
	}{
		{name: "pgtrail schema of another owner", prepare: `CREATE SCHEMA pgtrail`,
			want: `schema pgtrail exists and is owned by role "low_`, fix: `ALTER SCHEMA pgtrail OWNER TO postgres`},
		{name: "audit table of another owner", prepare: `CREATE TABLE public.audit_trail (id int)`, sinkTable: "audit_trail",
			want: `audit table "public"."audit_trail" exists and is owned by role "low_`, fix: `DROP TABLE public.audit_trail`},
	} {
		t.Run(c.name, func(t *testing.T) {
			url := cluster.NewDatabase(t)
			conn := connect(t, url)
			_, lowURL := lowRole(t, conn, url)
			exec1(t, connect(t, lowURL), c.prepare)
			sinks := ""
			if c.sinkTable != "" {
				sinks = fmt.Sprintf("sinks:\n  - {name: audit, plugin: postgres, config: {url: %q, schema: public, table: %s}}\n", url, c.sinkTable)
			}
			cfg := writeConfig(t, url, sinks, "")
			out, err := pgtrail(t, cfg, "setup")
			if err == nil || !strings.Contains(out, c.want) {
				t.Fatalf("setup: err=%v, output does not say %q:\n%s", err, c.want, out)
			}
			if n := count(t, conn, `SELECT count(*) FROM pg_class WHERE relname = 'changes'`); n != 0 {
				t.Fatalf("setup made an audit table in the schema it refused")
			}
			exec1(t, conn, c.fix)
			if out, err := pgtrail(t, cfg, "setup"); err != nil {
				t.Fatalf("setup after %q: %v\n%s", c.fix, err, out)
			}
		})
	}
	t.Run("others may create in schema pgtrail", func(t *testing.T) {
		url := cluster.NewDatabase(t)
		conn := connect(t, url)
		role, _ := lowRole(t, conn, url)
		exec1(t, conn, `CREATE SCHEMA pgtrail; GRANT CREATE ON SCHEMA pgtrail TO `+role)
		cfg := writeConfig(t, url, "", "")
		want := fmt.Sprintf(`run REVOKE CREATE ON SCHEMA "pgtrail" FROM %q;`, role)
		out, err := pgtrail(t, cfg, "setup")
		if err == nil || !strings.Contains(out, want) {
			t.Fatalf("setup: err=%v, output does not say %q:\n%s", err, want, out)
		}
		exec1(t, conn, strings.TrimSuffix(strings.TrimPrefix(want, "run "), ";"))
		if out, err := pgtrail(t, cfg, "setup"); err != nil {
			t.Fatalf("setup after the REVOKE: %v\n%s", err, out)
		}
	})
}

// proxied returns a fault proxy in front of the test cluster and url
// rewritten to reach it through the proxy.
func proxied(t *testing.T, url string) (*faultproxy.Proxy, string) {
	t.Helper()
	p, err := faultproxy.Start(fmt.Sprintf("127.0.0.1:%d", cluster.Port()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p, strings.Replace(url, fmt.Sprintf(":%d/", cluster.Port()), fmt.Sprintf(":%d/", p.Port()), 1)
}

// itemsSchema is the table itemsLoad writes and, outside the captured
// schema, its record of each change.
const itemsSchema = `CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, n int NOT NULL);
	CREATE SCHEMA IF NOT EXISTS bookkeeping; CREATE TABLE IF NOT EXISTS bookkeeping.truth (op text, id int, n int)`

// itemsLoad writes under pgtrail until stopped: each transaction inserts an
// item, sometimes updates the one before, and records both in
// bookkeeping.truth, which commits with them or not at all.
func itemsLoad(t *testing.T, conn *pgx.Conn, url string) (stop func()) {
	t.Helper()
	exec1(t, conn, itemsSchema)
	return writeLoad(t, url, 2, func(conn *pgx.Conn, w, i int) error {
		id := w*1_000_000 + i
		time.Sleep(2 * time.Millisecond) // a steady load, not a flood: the machine is shared
		return pgx.BeginFunc(context.Background(), conn, func(tx pgx.Tx) error {
			b := &pgx.Batch{}
			b.Queue(`INSERT INTO items VALUES ($1, 0)`, id)
			b.Queue(`INSERT INTO bookkeeping.truth VALUES ('CREATE', $1, 0)`, id)
			if i%3 == 2 {
				b.Queue(`UPDATE items SET n = n + 1 WHERE id = $1`, id-1)
				b.Queue(`INSERT INTO bookkeeping.truth SELECT 'UPDATE', id, n FROM items WHERE id = $1`, id-1)
			}
			return tx.SendBatch(context.Background(), b).Close()
		})
	})
}

// sameAsTruth fails t unless the audit table holds exactly the writers'
// record: nothing missing, nothing twice.
func sameAsTruth(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	var missing, extra int
	err := conn.QueryRow(context.Background(), `
		WITH audit AS (SELECT operation AS op, primary_key::int AS id, (after ->> 'n')::int AS n FROM pgtrail.changes WHERE "table" = 'items')
		SELECT (SELECT count(*) FROM (SELECT * FROM bookkeeping.truth EXCEPT ALL SELECT * FROM audit) m),
		       (SELECT count(*) FROM (SELECT * FROM audit EXCEPT ALL SELECT * FROM bookkeeping.truth) e)`).Scan(&missing, &extra)
	if err != nil {
		t.Fatal(err)
	}
	if missing != 0 || extra != 0 {
		t.Fatalf("audit table differs from the truth: %d missing, %d extra", missing, extra)
	}
}

// partitionUnderLoad runs a write load, partitions the proxy for d, heals
// it, stops the load and waits for the trail to hold every change. during
// runs while the partition lasts. It logs how long after the heal the trail
// held every change written before it.
func partitionUnderLoad(t *testing.T, conn *pgx.Conn, url string, proxy *faultproxy.Proxy, d time.Duration, during func()) {
	t.Helper()
	stop := itemsLoad(t, conn, url)
	defer stop()
	time.Sleep(time.Second)
	proxy.Partition()
	began := time.Now()
	during()
	time.Sleep(d - time.Since(began))
	written := count(t, conn, `SELECT count(*) FROM bookkeeping.truth`)
	proxy.Heal()
	healed := time.Now()
	waitFor(t, 60*time.Second, "the trail to catch up after the heal", func() bool {
		return count(t, conn, `SELECT count(*) FROM pgtrail.changes WHERE "table" = 'items'`) >= written
	})
	t.Logf("partitioned %s; the trail held all %d changes written by the heal %s after it", d, written, time.Since(healed).Round(time.Millisecond))
	stopAndCompare(t, conn, stop)
}

// TestSourceCutLongerThanWalSenderTimeoutLosesAndDoublesNothing partitions
// the network between pgtrail and the source database, its replication and
// side connections both, under a write load and for longer than the
// server's wal_sender_timeout, with no reset. pgtrail notices within its
// receive_timeout while the partition lasts and reconnects; once healed, the
// audit table equals the writers' record.
func TestSourceCutLongerThanWalSenderTimeoutLosesAndDoublesNothing(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	proxy, viaProxy := proxied(t, url)
	// wal_sender_timeout for pgtrail's sessions alone: the server lets go
	// of the slot 4s into the partition, well after pgtrail gave up (1s,
	// checked every 300ms status interval).
	source := viaProxy + "&wal_sender_timeout=4s"
	sinks := fmt.Sprintf("sinks:\n  - {name: audit, plugin: postgres, config: {url: %q}}\n", url)
	exec1(t, conn, `CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL)`)
	cfg := writeConfig(t, source, sinks+"pipeline:\n  batch_size: 200\n", "    receive_timeout: 1s\n")
	body, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte(strings.Replace(string(body), "status_interval: 1s", "status_interval: 300ms", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := pgtrail(t, cfg, "setup"); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	p := start(t, cfg)

	partitionUnderLoad(t, conn, url, proxy, 5*time.Second, func() {
		began := time.Now()
		waitFor(t, 3*time.Second, "pgtrail to notice the cut while it lasts", func() bool {
			out := p.out.String()
			return strings.Contains(out, "the connection is stalled") || strings.Contains(out, "did not answer within")
		})
		t.Logf("pgtrail noticed the cut %s into it", time.Since(began).Round(time.Millisecond))
	})
	if err := p.stop(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

// TestAuditDatabaseCutLosesAndDoublesNothing partitions the network between
// the postgres sink and its audit database under a write load: capture is
// held back, nothing is confirmed past what the audit table holds, and once
// healed the audit table equals the writers' record.
func TestAuditDatabaseCutLosesAndDoublesNothing(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	proxy, viaProxy := proxied(t, url)
	sinks := fmt.Sprintf("sinks:\n  - {name: audit, plugin: postgres, config: {url: %q}}\n", viaProxy)
	exec1(t, conn, `CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL)`)
	_, _, p := setupAndStart(t, url, sinks+"pipeline:\n  batch_size: 200\n", "")

	partitionUnderLoad(t, conn, url, proxy, 5*time.Second, func() {
		// Whatever was durable before the cut is confirmed within a status
		// interval (1s); after that the slot stands still.
		time.Sleep(1500 * time.Millisecond)
		var before, after string
		confirmed := `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'pgtrail'`
		if err := conn.QueryRow(context.Background(), confirmed).Scan(&before); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2500 * time.Millisecond)
		if err := conn.QueryRow(context.Background(), confirmed).Scan(&after); err != nil {
			t.Fatal(err)
		}
		if after != before {
			t.Errorf("the slot was confirmed from %s to %s while the audit database was cut off", before, after)
		}
	})
	if err := p.stop(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}
