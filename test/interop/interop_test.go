//go:build interop

// Package interop is the interop bed (`make interop`): real Apache Kafka in
// KRaft mode, Kafka Connect with the real Debezium PostgreSQL connector (both
// from Maven Central, see pom.xml), a private PostgreSQL, and pgtrail. A
// Bemi-style workload goes through Debezium -> Kafka -> `pgtrail run`, through
// native capture, and through `pgtrail capture` -> Kafka; the bed checks
// that the audit tables agree and that `pgtrail capture` publishes what
// Debezium publishes. It records Debezium's raw output as fixtures for
// transports/debezium (PGTRAIL_RECORD=1 rewrites them).
package interop

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/test/pgtest"
	"github.com/pgtrail/pgtrail/test/testbed"
)

var (
	cluster *pgtest.Cluster
	binary  string
	jvm     java
	broker  *kafka
)

func TestMain(m *testing.M) {
	os.Exit(bed(m))
}

func bed(m *testing.M) int {
	start := time.Now()
	lib, err := resolveJars()
	if err != nil {
		fmt.Fprintln(os.Stderr, "interop:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "interop: jars in %s (%s)\n", lib, time.Since(start).Round(time.Second))
	javaBin, err := exec.LookPath("java")
	if err != nil {
		fmt.Fprintln(os.Stderr, "interop: java not found (install a JDK 17)")
		return 1
	}
	dir, err := os.MkdirTemp("", "pgtrail-interop-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "pgtrail")
	build := exec.Command("go", "build", "-o", binary, "github.com/pgtrail/pgtrail/cmd/pgtrail")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "interop: build pgtrail:", err)
		return 1
	}
	if err := os.WriteFile(filepath.Join(dir, "log4j2.properties"), []byte(log4j), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	jvm = java{bin: javaBin, lib: lib, dir: dir}
	if broker, err = startKafka(jvm, dir); err != nil {
		fmt.Fprintln(os.Stderr, "interop:", err)
		return 1
	}
	defer broker.p.stop(10 * time.Second)
	fmt.Fprintf(os.Stderr, "interop: kafka (KRaft) on %s (%s)\n", broker.addr, time.Since(start).Round(time.Second))
	if cluster, err = pgtest.Start(pgtest.Options{}); err != nil {
		fmt.Fprintln(os.Stderr, "interop:", err)
		return 1
	}
	defer cluster.Stop()
	code := m.Run()
	fmt.Fprintf(os.Stderr, "interop: bed ran %s\n", time.Since(start).Round(time.Second))
	return code
}

// connector is the Debezium PostgreSQL connector configured as Bemi's stack
// configures it (Debezium Server's application.properties, in Kafka Connect
// terms): pgoutput, no snapshot, public schema, topic prefix bemi, every
// topic rerouted into one by ByLogicalTableRouter, JSON without schemas.
// Debezium 3 renamed snapshot.mode=never to no_data. Three settings differ
// from Bemi's: skipped.operations=none (Debezium skips TRUNCATE by
// default; pgtrail stores it), interval.handling.mode=string (Bemi leaves
// the default MicroDuration, which counts a month as 30.4375 days: intervals
// with months cannot come back exact), and, for the typed connector, schemas
// on; and the publication is made by the bed (Debezium would make the same
// one, FOR ALL TABLES, but two connectors race for it).
func connector(name, slot, prefix, url string, schemas bool) string {
	c, _ := pgx.ParseConfig(url)
	s := fmt.Sprintf(`name=%s
connector.class=io.debezium.connector.postgresql.PostgresConnector
tasks.max=1
plugin.name=pgoutput
slot.name=%s
publication.name=dbz_publication
publication.autocreate.mode=disabled
snapshot.mode=no_data
database.hostname=127.0.0.1
database.port=%d
database.dbname=%s
database.user=%s
database.password=%s
schema.include.list=public
topic.prefix=%s
skipped.operations=none
interval.handling.mode=string
transforms=Reroute
transforms.Reroute.type=io.debezium.transforms.ByLogicalTableRouter
transforms.Reroute.topic.regex=%s\\..*
transforms.Reroute.topic.replacement=%s
`, name, slot, c.Port, c.Database, c.User, c.Password, prefix, prefix, prefix)
	if schemas {
		s += `key.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=true
value.converter=org.apache.kafka.connect.json.JsonConverter
value.converter.schemas.enable=true
`
	}
	return s
}

// startConnect runs Kafka Connect standalone with the given connectors and
// waits until each one's replication slot is streaming.
func startConnect(t *testing.T, url string, connectors map[string]string) *proc {
	t.Helper()
	port, err := testbed.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	worker := fmt.Sprintf(`bootstrap.servers=%s
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=false
value.converter.schemas.enable=false
offset.storage.file.filename=%s
offset.flush.interval.ms=1000
listeners=http://127.0.0.1:%d
plugin.discovery=only_scan
`, broker.addr, filepath.Join(dir, "connect.offsets"), port)
	args := []string{filepath.Join(dir, "worker.properties")}
	if err := os.WriteFile(args[0], []byte(worker), 0o644); err != nil {
		t.Fatal(err)
	}
	var slots []string
	for slot, props := range connectors {
		path := filepath.Join(dir, slot+".properties")
		if err := os.WriteFile(path, []byte(props), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, path)
		slots = append(slots, slot)
	}
	p, err := jvm.start("kafka connect", "org.apache.kafka.connect.cli.ConnectStandalone", args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.stop(20 * time.Second)
		if t.Failed() {
			t.Logf("kafka connect output:\n%s", tail(p.out.String(), 40))
		}
	})
	conn := connect(t, url)
	waitFor(t, 3*time.Minute, "Debezium to stream from its slots", func() bool {
		if p.exited() {
			t.Fatalf("kafka connect exited:\n%s", tail(p.out.String(), 40))
		}
		var n int
		_ = conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_replication_slots WHERE active AND slot_name = ANY($1)`, slots).Scan(&n)
		return n == len(slots)
	})
	return p
}

// startPgtrail runs a pgtrail command with a config and waits for want in its log.
func startPgtrail(t *testing.T, name, config, want string, args ...string) *proc {
	t.Helper()
	path := filepath.Join(t.TempDir(), name+".yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := startProc("pgtrail "+name, "", binary, append(args, "--config", path)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.stop(30 * time.Second)
		if t.Failed() {
			t.Logf("pgtrail %s output:\n%s", name, tail(p.out.String(), 40))
		}
	})
	waitFor(t, 60*time.Second, "pgtrail "+name+" to start", func() bool {
		if p.exited() {
			t.Fatalf("pgtrail %s exited:\n%s", name, tail(p.out.String(), 40))
		}
		return strings.Contains(p.out.String(), want)
	})
	return p
}

func TestDebeziumAndNativeCaptureAgree(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, schema)
	exec1(t, conn, pgtest.BemiMigration)

	// Every reader's slot exists before the first change. The connectors
	// share one publication, made here: two would race to create it.
	exec1(t, conn, `CREATE PUBLICATION dbz_publication FOR ALL TABLES`)
	startConnect(t, url, map[string]string{
		"dbz_bemi":  connector("bemi", "dbz_bemi", "bemi", url, false),
		"dbz_typed": connector("typed", "dbz_typed", "typed", url, true),
	})
	// No heartbeats: they are non-transactional messages in the source's
	// WAL, which Debezium publishes and `pgtrail capture` does not.
	pg := fmt.Sprintf("  postgres: {url: %q, slot: %%s, status_interval: 1s, heartbeat: 0s}\n", url)
	common := "http: {listen: \"\"}\nlog: {level: debug}\n"
	sink := func(schema string) string {
		return fmt.Sprintf("sinks:\n  - name: audit\n    plugin: postgres\n    config: {url: %q, schema: %s}\n", url, schema)
	}
	startPgtrail(t, "native", "source:\n  type: postgres\n"+fmt.Sprintf(pg, "native")+sink("native")+common, "capturing", "run")
	startPgtrail(t, "capture", "source:\n  type: postgres\n"+fmt.Sprintf(pg, "capture")+common+
		fmt.Sprintf("publish:\n  type: kafka\n  topic_prefix: native\n  kafka: {brokers: [%q]}\n", broker.addr), "capturing", "capture")

	start := time.Now()
	for _, sc := range scenarios {
		sc.run(t, conn)
		exec1(t, conn, `SELECT pg_logical_emit_message(true, $1, $2)`, marker, sc.name)
	}
	last := scenarios[len(scenarios)-1].name
	dbz := readTopic(t, broker.addr, "bemi", last, 2*time.Minute)
	typed := readTopic(t, broker.addr, "typed", last, time.Minute)
	native := readTopic(t, broker.addr, "native", last, time.Minute)
	t.Logf("workload through Debezium and pgtrail capture in %s: %d, %d (with schemas) and %d records",
		time.Since(start).Round(time.Millisecond), len(dbz), len(typed), len(native))

	recordFixtures(t, "", dbz)
	recordFixtures(t, "typed_", typed)

	t.Run("CaptureEventsEqualDebeziums", func(t *testing.T) { compareEvents(t, dbz, native) })

	// Debezium's events through `pgtrail run` into audit tables of their own,
	// with the source database as the catalog of table definitions.
	for _, src := range []struct{ topic, schema string }{{"typed", "dbz_typed"}, {"bemi", "dbz_bemi"}} {
		startPgtrail(t, src.topic, fmt.Sprintf("source:\n  type: kafka\n  kafka: {brokers: [%q], topics: [%s], group: %s}\n  debezium: {catalog: %q}\n",
			broker.addr, src.topic, src.topic, url)+sink(src.schema)+common, "level=INFO", "run")
	}
	want := countStable(t, conn, "native")
	waitFor(t, 2*time.Minute, "the Debezium audit tables to fill", func() bool {
		return count(t, conn, "dbz_typed") >= want && count(t, conn, "dbz_bemi") >= want
	})
	time.Sleep(time.Second)
	t.Run("AuditFromDebeziumWithSchemasEqualsNative", func(t *testing.T) {
		compareAudit(t, conn, "native", "dbz_typed", want)
	})
	t.Run("AuditFromBemiStackEventsEqualsNative", func(t *testing.T) {
		compareAudit(t, conn, "native", "dbz_bemi", want)
	})
}

// recordFixtures writes the scenario's raw values (and keys) of Debezium's topic as
// fixtures, unless they exist and PGTRAIL_RECORD is not set. Tombstones and
// the bed's markers are left out.
func recordFixtures(t *testing.T, prefix string, recs []record) {
	t.Helper()
	dir := filepath.Join("..", "..", "transports", "debezium", "testdata", "recorded")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, part := range splitScenarios(recs) {
		path := filepath.Join(dir, prefix+part.name+".jsonl")
		if _, err := os.Stat(path); err == nil && os.Getenv("PGTRAIL_RECORD") == "" {
			continue
		}
		var vals, keys strings.Builder
		for _, r := range part.recs {
			vals.Write(r.value)
			vals.WriteByte('\n')
			if len(r.key) == 0 {
				keys.WriteString("null")
			} else {
				keys.Write(r.key)
			}
			keys.WriteByte('\n')
		}
		if err := os.WriteFile(path, []byte(vals.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(strings.TrimSuffix(path, ".jsonl")+".keys.jsonl", []byte(keys.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("recorded %s (%d messages)", path, len(part.recs))
	}
}

type part struct {
	name string
	recs []record
}

// splitScenarios cuts a topic at the markers, dropping tombstones.
func splitScenarios(recs []record) []part {
	var out []part
	var cur []record
	for _, r := range recs {
		if r.value == nil {
			continue
		}
		var m struct {
			Payload *struct {
				Message *struct{ Prefix, Content string } `json:"message"`
			} `json:"payload"`
			Message *struct{ Prefix, Content string } `json:"message"`
		}
		_ = json.Unmarshal(r.value, &m)
		msg := m.Message
		if m.Payload != nil {
			msg = m.Payload.Message
		}
		if msg != nil && msg.Prefix == marker {
			name, _ := decodeBase64(msg.Content)
			out = append(out, part{name: name, recs: cur})
			cur = nil
			continue
		}
		cur = append(cur, r)
	}
	return out
}

// The fields where `pgtrail capture` differs from Debezium by design: the
// envelope's ts_* (Debezium: when it processed the event; pgtrail: the commit
// time, so that a re-published event is identical) and the first element of
// source.sequence (Debezium's last-commit LSN from its offsets; pgtrail: null).
var (
	envelopeTs = regexp.MustCompile(`,"ts_ms":\d+(,"ts_us":\d+,"ts_ns":\d+)?}$`)
	msgTs      = regexp.MustCompile(`^\{"op":"m","ts_ms":\d+,`)
	sequence   = regexp.MustCompile(`"sequence":"\[(null|\\"\d+\\"),`)
)

func normalizeEvent(v []byte, prefix string) string {
	s := string(v)
	s = envelopeTs.ReplaceAllString(s, `,"ts_ms":T}`)
	s = msgTs.ReplaceAllString(s, `{"op":"m","ts_ms":T,`)
	s = sequence.ReplaceAllString(s, `"sequence":"[S,`)
	s = strings.ReplaceAll(s, `"name":"`+prefix+`"`, `"name":"P"`)
	return strings.ReplaceAll(s, `"__dbz__physicalTableIdentifier":"`+prefix+`.`, `"__dbz__physicalTableIdentifier":"P.`)
}

// compareEvents checks that `pgtrail capture` published, record by record,
// what Debezium published for the same changes.
func compareEvents(t *testing.T, dbz, native []record) {
	// Under REPLICA IDENTITY USING INDEX Debezium keys an old image by the
	// primary key it lacks (0) and so splits a change of the identity into a
	// delete and a create; `pgtrail capture` (transports/publish) does not
	// imitate that. The table is compared in the audit tables only.
	var skipped int
	dbz, skipped = withoutTable(dbz, "ident")
	native, _ = withoutTable(native, "ident")
	t.Logf("%d records of table ident (REPLICA IDENTITY USING INDEX) not compared: Debezium keys its old images by a primary key of 0", skipped)
	var diffs []string
	intervals := 0
	n := max(len(dbz), len(native))
	for i := range n {
		var d, p record
		if i < len(dbz) {
			d = dbz[i]
		}
		if i < len(native) {
			p = native[i]
		}
		dk, pk := normalizeEvent(d.key, "bemi"), normalizeEvent(p.key, "native")
		dv, pv := normalizeEvent(d.value, "bemi"), normalizeEvent(p.value, "native")
		if dk == pk && dv != pv {
			// The bed's connectors write intervals as ISO 8601 strings
			// (interval.handling.mode=string); `pgtrail capture` publishes
			// Debezium's default MicroDuration: the same interval, when
			// Debezium's own arithmetic turns the one into the other.
			if iv := asMicroDuration(dv); iv != dv {
				intervals++
				dv = iv
			}
			if dv != pv && strings.ReplaceAll(dv, `:"null"`, `:null`) == pv {
				// A json or jsonb column holding the JSON literal null: pgtrail's
				// change record keeps json as the embedded value (design §6), so
				// it is the same null as SQL NULL there.
				t.Logf("record %d: expected difference: a json value `null` is published as SQL NULL", i)
				continue
			}
		}
		if dk != pk || dv != pv {
			diffs = append(diffs, fmt.Sprintf("record %d:\n  debezium key %s\n  pgtrail  key %s\n  debezium %s\n  pgtrail  %s", i, dk, pk, dv, pv))
		}
	}
	if len(diffs) > 0 {
		t.Fatalf("%d of %d records differ (after the documented ts_* and sequence[0]):\n%s", len(diffs), n, strings.Join(diffs, "\n"))
	}
	t.Logf("%d records: keys and values identical but for the envelope's ts_* and sequence[0] (%d with intervals as MicroDuration, as pgtrail capture writes them)", n, intervals)
}

// withoutTable drops the records of a table (tombstones included), and says
// how many.
func withoutTable(recs []record, table string) ([]record, int) {
	var out []record
	for _, r := range recs {
		if strings.Contains(string(r.key), ".public."+table+`"`) || strings.Contains(string(r.value), `"table":"`+table+`"`) {
			continue
		}
		out = append(out, r)
	}
	return out, len(recs) - len(out)
}

// isoIntervalValue is an interval as Debezium writes it with
// interval.handling.mode=string (io.debezium.time.Interval.toIsoString).
var isoIntervalValue = regexp.MustCompile(`"P(-?\d+)Y(-?\d+)M(-?\d+)DT(-?\d+)H(-?\d+)M(-?\d+(?:\.\d+)?)S"`)

// asMicroDuration rewrites such intervals as Debezium's default
// MicroDuration: MicroDuration.durationMicros, a month 365.25/12 days, in
// Java's double arithmetic.
func asMicroDuration(s string) string {
	return isoIntervalValue.ReplaceAllStringFunc(s, func(v string) string {
		var p [6]float64
		for i, part := range isoIntervalValue.FindStringSubmatch(v)[1:] {
			p[i], _ = strconv.ParseFloat(part, 64)
		}
		days := (p[0]*12+p[1])*(365.25/12.0) + p[2]
		seconds := ((days*24+p[3])*60+p[4])*60 + p[5]
		return strconv.FormatInt(int64(seconds*1e6), 10)
	})
}

// The audit columns compared: everything but queued_at and created_at (when
// pgtrail read and wrote the change).
var auditColumns = []string{"id", "primary_key", "before", "after", "context", "database", "schema", "table",
	"operation", "committed_at", "transaction_id", "position", "seq", "unchanged_toast"}

// expected says whether a difference between the native audit row and the
// Debezium one is one that the Debezium path cannot avoid, and why. None is
// left: with source.debezium.catalog and interval.handling.mode=string both
// paths store the same rows.
type expected func(col, table, native, other string) (why string, ok bool)

// compareAudit compares two audit tables column by column, as text (jsonb
// equality would take 1.5 for 1.50). Every difference is reported; those not
// explained by allowed fail the test.
func compareAudit(t *testing.T, conn *pgx.Conn, native, other string, want int, allowed ...expected) {
	if n := count(t, conn, other); n != want {
		t.Errorf("%s.changes holds %d changes, %s.changes %d", other, n, native, want)
	}
	explained := map[string]int{}
	var unexplained []string
	for _, col := range auditColumns {
		q := fmt.Sprintf(`SELECT coalesce(n.id, o.id)::text, coalesce(n."table", o."table"), coalesce(n.%[1]s::text, 'NULL'), coalesce(o.%[1]s::text, 'NULL')
			FROM %[2]s.changes n FULL JOIN %[3]s.changes o ON o.id = n.id
			WHERE n.%[1]s::text IS DISTINCT FROM o.%[1]s::text ORDER BY n.position, n.seq`, pgx.Identifier{col}.Sanitize(), native, other)
		rows, err := conn.Query(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var id, table, a, b string
			if err := rows.Scan(&id, &table, &a, &b); err != nil {
				t.Fatal(err)
			}
			why := ""
			for _, ok := range allowed {
				if w, yes := ok(col, table, a, b); yes {
					why = w
					break
				}
			}
			if why != "" {
				if explained[why]++; explained[why] == 1 {
					t.Logf("expected difference (%s), e.g. %s %s.%s: native %s, debezium %s", why, id, table, col, a, b)
				}
				continue
			}
			unexplained = append(unexplained, fmt.Sprintf("%s %s.%s: native %s, debezium %s", id, table, col, a, b))
		}
		rows.Close()
	}
	for why, n := range explained {
		t.Logf("%s vs %s: %d rows differ by design: %s", native, other, n, why)
	}
	if len(unexplained) > 0 {
		t.Errorf("%s differs from %s in %d values:\n%s", other, native, len(unexplained), strings.Join(unexplained, "\n"))
		return
	}
	t.Logf("%s and %s: %d changes; compared %s as text: %d expected differences, no other", native, other, want,
		strings.Join(auditColumns, ", "), len(explained))
}

// countStable waits until schema's audit table stops growing and returns
// its size.
func countStable(t *testing.T, conn *pgx.Conn, schema string) int {
	t.Helper()
	last, since := -1, time.Now()
	waitFor(t, 2*time.Minute, schema+".changes to settle", func() bool {
		n := count(t, conn, schema)
		if n != last {
			last, since = n, time.Now()
		}
		return n > 0 && time.Since(since) > 2*time.Second
	})
	return last
}

func count(t *testing.T, conn *pgx.Conn, schema string) int {
	t.Helper()
	return countWhere(t, conn, "SELECT count(*) FROM "+pgx.Identifier{schema, "changes"}.Sanitize())
}

// countWhere runs a count query; a table not made yet counts 0.
func countWhere(t *testing.T, conn *pgx.Conn, q string, args ...any) int {
	t.Helper()
	var n int
	err := conn.QueryRow(context.Background(), q, args...).Scan(&n)
	if err != nil && !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func exec1(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
