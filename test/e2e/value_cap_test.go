package e2e

import (
	"context"
	"testing"
	"time"
)

// TestAValueOverMaxValueBytesIsStoredAsAMarker runs `pgtrail run` with
// pipeline.max_value_bytes lowered to 1MiB: a text value one byte over it is
// stored as the string_too_long marker with the size and SHA-256 of its
// text (capped as capture decodes it), a value of exactly 1 MiB verbatim.
func TestAValueOverMaxValueBytesIsStoredAsAMarker(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE notes (id int PRIMARY KEY, body text)`)
	path := writeConfig(t, url, "pipeline:\n  max_value_bytes: 1MiB\n", "")
	if out, err := pgtrail(t, path, "setup"); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	start(t, path)
	exec1(t, conn, `INSERT INTO notes VALUES (1, repeat('é"x', 262144)), (2, repeat('é"x', 262144) || '!')`) // 1 MiB, and one byte more
	waitForChanges(t, conn, 2, 60*time.Second)

	if n := count(t, conn, `SELECT count(*) FROM pgtrail.changes c JOIN notes n ON n.id = c.primary_key::int
		WHERE c.primary_key = '1' AND c.after->>'body' = n.body AND octet_length(n.body) = 1048576`); n != 1 {
		t.Error("the 1 MiB value is not stored verbatim")
	}
	var after, want string
	err := conn.QueryRow(context.Background(), `SELECT c.after::text, jsonb_build_object('id', 2, 'body', jsonb_build_object(
			'pgtrail_replaced', 'string_too_long', 'bytes', octet_length(n.body), 'sha256', encode(sha256(convert_to(n.body, 'UTF8')), 'hex')))::text
		FROM pgtrail.changes c JOIN notes n ON n.id = c.primary_key::int WHERE c.primary_key = '2'`).Scan(&after, &want)
	if err != nil {
		t.Fatal(err)
	}
	if after != want {
		t.Errorf("stored %s, want %s", after, want)
	}
}
