package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// governanceRules ignore updated_at, pseudonymise the ssn, drop passwords
// and mask the context's ip.
const governanceRules = `rules:
  ignore_columns: ["public.*.updated_at"]
  redact:
    - {columns: ["public.users.ssn"], with: hmac}
    - {columns: ["*.*.password*"], with: drop}
    - {context: ["ip"], with: mask}
  hmac_key: "test-key"
`

// governanceWorkload inserts a user with secrets under a context with an
// ip, updates updated_at alone (ignored), then the name, and deletes it.
const governanceWorkload = `BEGIN;
	SELECT pg_logical_emit_message(true, 'pgtrail', '{"ip": "198.51.100.77", "user": "ann"}');
	INSERT INTO users VALUES (1, 'Ann', '123-45-6789', 'hunter2-secret', 1);
	COMMIT;
	UPDATE users SET updated_at = 2 WHERE id = 1;
	UPDATE users SET name = 'Anne', updated_at = 3 WHERE id = 1;
	DELETE FROM users WHERE id = 1`

// secrets are the plaintext values no sink may store.
var secrets = []string{"123-45-6789", "hunter2-secret", "198.51.100.77"}

// TestGovernanceRedactedValuesReachNoSink runs native capture into the
// audit table, ClickHouse, S3 and a third-party plugin with rules: no
// stored byte of any sink holds a redacted value, and an update of
// updated_at only is stored nowhere.
func TestGovernanceRedactedValuesReachNoSink(t *testing.T) {
	s3srv, ch := sinkServers(t)
	bucket, database := "pgtrail-gov", ch.NewDatabase(t)
	lines := filepath.Join(t.TempDir(), "changes.jsonl")
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE users (id int PRIMARY KEY, name text, ssn text, password_hash text, updated_at int)`)
	extra := sinksConfig(url, ch, database, s3srv, bucket) + fmt.Sprintf("  - name: lines\n    plugin: %q\n    config: {path: %q, flush_interval: 300ms}\n", jsonlPlugin, lines) + governanceRules
	// A typo (ssm) is warned about at start.
	extra = strings.Replace(extra, "  hmac_key:", "    - {columns: [\"public.users.ssm\"], with: mask}\n  hmac_key:", 1)
	_, _, p := setupAndStart(t, url, extra, "    replica_identity: full\n")

	exec1(t, conn, governanceWorkload)
	waitForChanges(t, conn, 3, 30*time.Second)
	if err := p.stop(); err != nil { // drains S3 and the plugin
		t.Fatalf("stop: %v", err)
	}
	if out := p.out.String(); !strings.Contains(out, "rules: column patterns match no column of a captured table") || !strings.Contains(out, "patterns=public.users.ssm") {
		t.Errorf("no warning about public.users.ssm:\n%s", tail(out, 30))
	}
	rows := auditRows(t, conn)
	var ops []string
	for _, r := range rows {
		ops = append(ops, r.Operation)
	}
	if strings.Join(ops, ",") != "CREATE,UPDATE,DELETE" {
		t.Fatalf("stored %v, want CREATE, UPDATE (name), DELETE: the updated_at-only update is not stored", rows)
	}
	if !strings.Contains(rows[0].After, `"ssn": "hmac:`) || strings.Contains(rows[0].After, "password") ||
		rows[0].Context != `{"ip": "*********0.77", "user": "ann"}` || rows[1].After != `{"id": 1, "ssn": "hmac:`+rows[0].After[strings.Index(rows[0].After, "hmac:")+5:][:64]+`", "name": "Anne", "updated_at": 3}` {
		t.Fatalf("stored rows: %v", rows)
	}

	stored := map[string][]byte{}
	var audit bytes.Buffer
	r, err := conn.Query(context.Background(), `SELECT c::text FROM pgtrail.changes c`)
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		var s string
		if err := r.Scan(&s); err != nil {
			t.Fatal(err)
		}
		audit.WriteString(s)
	}
	stored["the audit table"] = audit.Bytes()
	stored["ClickHouse"] = []byte(ch.Query(t, "SELECT * FROM "+database+".changes FORMAT TabSeparated"))
	var objects bytes.Buffer
	for key, body := range s3srv.Objects(t, bucket, "audit/app/") {
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			t.Fatalf("gunzip %s: %v", key, err)
		}
		b, _ := io.ReadAll(zr)
		objects.Write(b)
		objects.Write(body) // the raw object too
	}
	stored["S3"] = objects.Bytes()
	if stored["the plugin"], err = os.ReadFile(lines); err != nil {
		t.Fatal(err)
	}
	for sink, b := range stored {
		if !bytes.Contains(b, []byte("hmac:")) {
			t.Errorf("%s holds no pseudonym: did it store the changes? %.300s", sink, b)
		}
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s holds the redacted value %q", sink, s)
			}
		}
	}

	// `pgtrail erase` rewrites the audit table's history of users 1 and
	// says that the other sinks are not rewritten.
	cfg := cfgPath(p)
	out, err := pgtrail(t, cfg, "erase", "--table", "public.users", "--primary-key", "1", "--by", "dpo")
	if err != nil {
		t.Fatalf("erase: %v\n%s", err, out)
	}
	for _, want := range []string{"sink audit: erasure 1: 3 rows rewritten", "sink analytics (clickhouse): not erased", "sink archive (s3): not erased", "sink lines (" + jsonlPlugin + "): not erased"} {
		if !strings.Contains(out, want) {
			t.Errorf("erase output lacks %q:\n%s", want, out)
		}
	}
	for _, r := range auditRows(t, conn) {
		// With rules.hmac_key, erased values become pseudonyms.
		vals := regexp.MustCompile(`: [^,}]+`).FindAllString(r.Before+r.After, -1)
		erased := len(vals) > 0
		for _, v := range vals {
			erased = erased && strings.HasPrefix(v, `: "hmac:`)
		}
		if !strings.HasPrefix(r.PrimaryKey, "hmac:") || r.PrimaryKey == rows[0].PrimaryKey || !erased {
			t.Errorf("not erased: %v", r)
		}
	}
	if n := count(t, conn, `SELECT count(*) FROM pgtrail.erasures WHERE requested_by = 'dpo' AND rows = 3 AND finished_at IS NOT NULL`); n != 1 {
		t.Errorf("%d erasures logged, want 1", n)
	}
}

// kafkaBytes returns every record of the broker's topic bemi with the
// content of logical decoding messages decoded, to search for plaintext.
func kafkaBytes(t *testing.T, broker string, want int) []byte {
	t.Helper()
	var all []byte
	for _, r := range readKafka(t, broker, want) {
		all = append(all, r.key...)
		all = append(all, r.value...)
		var ev struct {
			Message struct{ Content []byte } `json:"message"`
		}
		if json.Unmarshal(r.value, &ev) == nil {
			all = append(all, ev.Message.Content...)
		}
	}
	return all
}

// TestGovernanceCaptureRedactsBeforeTheBrokerAndBrokerIngressRedacts runs
// `pgtrail capture` with rules (no redacted value reaches Kafka, nor the
// ignored update), and `pgtrail capture` without rules into a second Kafka
// read by `pgtrail run` with rules (the broker ingress redacts before its
// sink).
func TestGovernanceCaptureRedactsBeforeTheBrokerAndBrokerIngressRedacts(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE users (id int PRIMARY KEY, name text, ssn text, password_hash text, updated_at int)`)
	publish := func(broker string) string {
		return fmt.Sprintf("publish:\n  type: kafka\n  kafka: {brokers: [%q]}\n", broker)
	}
	redacted, plain := startKafka(t), startKafka(t)
	startCapture(t, writeConfig(t, url, publish(redacted)+governanceRules, "    slot: redacted\n    replica_identity: full\n"))
	startCapture(t, writeConfig(t, url, publish(plain), "    slot: plain\n    replica_identity: full\n"))
	exec1(t, conn, governanceWorkload)

	// message, insert, update, delete and its tombstone; without rules
	// the ignored update too.
	got := kafkaBytes(t, redacted, 5)
	for _, s := range secrets {
		if bytes.Contains(got, []byte(s)) {
			t.Errorf("capture with rules published the redacted value %q", s)
		}
	}
	if n := bytes.Count(got, []byte(`"op":"u"`)); n != 1 || !bytes.Contains(got, []byte("hmac:")) {
		t.Errorf("capture with rules published %d updates (want 1) and pseudonyms: %v", n, bytes.Contains(got, []byte("hmac:")))
	}
	if all := kafkaBytes(t, plain, 6); !bytes.Contains(all, []byte(secrets[0])) || !bytes.Contains(all, []byte(secrets[2])) {
		t.Fatal("capture without rules published no plaintext: the test proves nothing")
	}

	path := filepath.Join(t.TempDir(), "broker.yaml")
	cfg := fmt.Sprintf("source:\n  type: kafka\n  kafka: {brokers: [%q], topics: [bemi], group: pgtrail}\n", plain) +
		fmt.Sprintf("sinks:\n  - name: audit\n    plugin: postgres\n    config: {url: %q, schema: viabroker}\n", url) +
		"http: {listen: \"\"}\n" + governanceRules
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := pgtrail(t, path, "setup"); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	start(t, path)
	waitFor(t, 30*time.Second, "the broker's changes in the audit table", func() bool {
		return count(t, conn, "SELECT count(*) FROM viabroker.changes") >= 3
	})
	time.Sleep(500 * time.Millisecond)
	var text, ops string
	if err := conn.QueryRow(context.Background(), `SELECT string_agg(c::text, ' '), string_agg(operation, ',' ORDER BY committed_at, position) FROM viabroker.changes c`).Scan(&text, &ops); err != nil {
		t.Fatal(err)
	}
	if ops != "CREATE,UPDATE,DELETE" || !strings.Contains(text, "hmac:") {
		t.Fatalf("stored through Kafka: %s\n%s", ops, text)
	}
	for _, s := range secrets {
		if strings.Contains(text, s) {
			t.Errorf("the audit table fed by Kafka holds the redacted value %q", s)
		}
	}
}

// TestDDLRowsAreStoredInOrderWithTheDataChanges turns on
// source.postgres.ddl: CREATE, ALTER and DROP TABLE are each a DDL row, in
// order among the row changes around them, with their context; a
// temporary table's DDL is not stored.
func TestDDLRowsAreStoredInOrderWithTheDataChanges(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE keep (id int PRIMARY KEY)`)
	_, _, p := setupAndStart(t, url, "", "    ddl: true\n")
	exec1(t, conn, `BEGIN;
		SELECT pgtrail.set_context('{"user":"dba"}');
		CREATE TABLE items (id int PRIMARY KEY, name text);
		INSERT INTO items VALUES (1, 'a');
		COMMIT;
		ALTER TABLE items ADD COLUMN price int;
		UPDATE items SET price = 5 WHERE id = 1;
		DROP TABLE items;
		CREATE TEMP TABLE scratch (x int);
		INSERT INTO keep VALUES (1)`)
	waitForChanges(t, conn, 6, 30*time.Second)
	if err := p.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	var got []string
	for _, r := range auditRows(t, conn) {
		line := r.Operation + " " + r.Table
		if r.Operation == "DDL" {
			var d struct {
				Tag       string `json:"command_tag"`
				Statement string `json:"statement"`
			}
			if err := json.Unmarshal([]byte(r.After), &d); err != nil {
				t.Fatalf("DDL row after %s: %v", r.After, err)
			}
			line += " " + d.Tag
			if !strings.Contains(d.Statement, d.Tag[:5]) {
				t.Errorf("DDL row statement %q lacks its command", d.Statement)
			}
		}
		got = append(got, line+" "+r.Context)
	}
	want := []string{
		`DDL items CREATE TABLE {"user": "dba"}`,
		`CREATE items {"user": "dba"}`,
		`DDL items ALTER TABLE {}`,
		`UPDATE items {}`,
		`DDL items DROP TABLE {}`,
		`CREATE keep {}`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("stored:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
