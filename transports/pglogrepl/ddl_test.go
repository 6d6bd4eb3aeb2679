package pglogrepl

import (
	"bytes"
	"context"
	"log/slog"
	"regexp"
	"strings"
	"testing"
)

// Without a superuser, setup installs no event trigger and logs the SQL for
// one to run, on one line; that line, run by a superuser, installs them.
func TestDDLSetupWithoutASuperuserLogsRunnableSQL(t *testing.T) {
	c := startCluster(t)
	url := c.NewDatabase(t)
	ctx := context.Background()
	admin, err := connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, `CREATE ROLE ddl_low LOGIN PASSWORD 'low'; CREATE SCHEMA pgtrail`); err != nil {
		t.Fatal(err)
	}
	low, err := connect(ctx, strings.Replace(url, "postgres:postgres@", "ddl_low:low@", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer low.Close(ctx)
	var buf bytes.Buffer
	if err := setupDDL(ctx, low, slog.New(slog.NewTextHandler(&buf, nil))); err != nil {
		t.Fatalf("setup as a non-superuser: %v", err)
	}
	m := regexp.MustCompile(`sql="(.*)"\n`).FindStringSubmatch(buf.String())
	if m == nil || !strings.Contains(buf.String(), "event triggers need a superuser") {
		t.Fatalf("log: %s", buf.String())
	}
	var n int
	if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_event_trigger`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d event triggers (%v) after setup without a superuser", n, err)
	}
	if _, err := admin.Exec(ctx, m[1]); err != nil {
		t.Fatalf("the logged SQL: %v\n%s", err, m[1])
	}
	if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'pgtrail_%'`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d event triggers (%v) after running the logged SQL, want 2", n, err)
	}
}
