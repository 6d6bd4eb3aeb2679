package e2e

import (
	"context"
	"strings"
	"testing"
	"time"
)

func replident(t *testing.T, url, table string) string {
	t.Helper()
	var r string
	conn := connect(t, url)
	if err := conn.QueryRow(context.Background(), "SELECT relreplident::text FROM pg_class WHERE oid = $1::regclass", table).Scan(&r); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestSetupReportsTablesWithoutFullReplicaIdentityAndSetsItWhenAsked(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE excluded (id int PRIMARY KEY)`)
	report := writeConfig(t, url, "", "    exclude: [\"public.excluded\"]\n")
	out, err := pgtrail(t, report, "setup")
	if err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	if !strings.Contains(out, `statement="ALTER TABLE \"public\".\"a\" REPLICA IDENTITY FULL;"`) || strings.Contains(out, "excluded") ||
		replident(t, url, "a") != "d" {
		t.Fatalf("setup without replica_identity: want a report naming public.a only, and nothing changed:\n%s", out)
	}

	full := writeConfig(t, url, "", "    exclude: [\"public.excluded\"]\n    replica_identity: full\n")
	if out, err := pgtrail(t, full, "setup"); err != nil || !strings.Contains(out, "replica identity set to FULL") {
		t.Fatalf("setup with replica_identity: full: %v\n%s", err, out)
	}
	if replident(t, url, "a") != "f" || replident(t, url, "excluded") != "d" {
		t.Fatalf("replica identity of a %s, of excluded %s; want f, d", replident(t, url, "a"), replident(t, url, "excluded"))
	}

	// A table created while run runs gets it on its first change.
	start(t, full)
	exec1(t, conn, `CREATE TABLE later (id int PRIMARY KEY, v text); INSERT INTO later VALUES (1, 'x')`)
	waitFor(t, 30*time.Second, "REPLICA IDENTITY FULL on the new table", func() bool { return replident(t, url, "later") == "f" })
	exec1(t, conn, `UPDATE later SET v = 'y' WHERE id = 1`)
	waitForChanges(t, conn, 2, 30*time.Second)
	rows := auditRows(t, conn)
	if got := rows[1].String(); got != `UPDATE later[1] before={"v": "x", "id": 1} after={"v": "y", "id": 1} context={}` {
		t.Errorf("update after the identity was set: %s, want the whole old row", got)
	}
}
