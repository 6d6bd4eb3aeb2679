package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
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
	_, _, p := setupAndStart(t, url, extra, "    replica_identity: full\n")

	exec1(t, conn, `BEGIN;
		SELECT pg_logical_emit_message(true, 'pgtrail', '{"ip": "198.51.100.77", "user": "ann"}');
		INSERT INTO users VALUES (1, 'Ann', '123-45-6789', 'hunter2-secret', 1);
		COMMIT;
		UPDATE users SET updated_at = 2 WHERE id = 1;
		UPDATE users SET name = 'Anne', updated_at = 3 WHERE id = 1;
		DELETE FROM users WHERE id = 1`)
	waitForChanges(t, conn, 3, 30*time.Second)
	if err := p.stop(); err != nil { // drains S3 and the plugin
		t.Fatalf("stop: %v", err)
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
}
