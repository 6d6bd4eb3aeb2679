package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pgtrail/pgtrail/test/pgtest"
)

// Each failure a user can cause must say what is wrong and what to do.
func TestBadSetupGetsAClearMessage(t *testing.T) {
	replica, err := pgtest.Start(pgtest.Options{WALLevel: "replica"})
	if err != nil {
		t.Fatal(err)
	}
	defer replica.Stop()

	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	// Roles are the cluster's: one per database, so that -count=N runs again.
	var role string
	if err := conn.QueryRow(context.Background(), "SELECT 'plain_' || current_database()").Scan(&role); err != nil {
		t.Fatal(err)
	}
	exec1(t, conn, fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD 'plain'; GRANT ALL ON SCHEMA public TO %[1]s`, role))
	plain := strings.Replace(url, "postgres:postgres@", role+":plain@", 1)
	wrong := strings.Replace(url, "postgres:postgres@", "postgres:nope@", 1)

	for _, c := range []struct {
		name, url, want string
	}{
		{"wal_level replica", replica.URL("postgres"), "ALTER SYSTEM SET wal_level = logical"},
		{"no replication privilege", plain, "WITH REPLICATION"},
		{"wrong password", wrong, "check the user and password"},
		{"nothing listening", "postgres://postgres:postgres@127.0.0.1:1/postgres", "is PostgreSQL running"},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, cmd := range []string{"setup", "run"} {
				out, err := pgtrail(t, writeConfig(t, c.url, "", ""), cmd)
				if err == nil || !strings.Contains(out, c.want) {
					t.Fatalf("pgtrail %s: err=%v, output does not say %q:\n%s", cmd, err, c.want, out)
				}
			}
		})
	}
}

func TestBadConfigNamesTheKey(t *testing.T) {
	cfg := writeConfig(t, "postgres://x@127.0.0.1/x", "sinks:\n  - name: audit\n    plugin: nosuch\n", "    slot: Bad-Name\n")
	out, err := pgtrail(t, cfg, "setup")
	if err == nil || !strings.Contains(out, "source.postgres.slot") {
		t.Fatalf("err=%v, output does not name source.postgres.slot:\n%s", err, out)
	}
}

func TestNonJSONContextIsCountedAndTheChangeKept(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE t (id int PRIMARY KEY)`)
	exec1(t, conn, pgtest.BemiMigration)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	_, _, p := setupAndStart(t, url, fmt.Sprintf("http:\n  listen: %q\n", addr), "")
	exec1(t, conn, `INSERT INTO t VALUES (1) /*Bemi {broken Bemi*/`)
	exec1(t, conn, `INSERT INTO t VALUES (2) /*Bemi "a string" Bemi*/`)
	exec1(t, conn, `INSERT INTO t VALUES (3) /*Bemi {"ok":true} Bemi*/`)
	waitForChanges(t, conn, 3, 30*time.Second)
	assertContexts(t, auditRows(t, conn), []string{`CREATE t[1] {}`, `CREATE t[2] {}`, `CREATE t[3] {"ok": true}`})
	if !strings.Contains(p.out.String(), "context is not a JSON object") {
		t.Fatalf("bad context not logged:\n%s", tail(p.out.String(), 30))
	}
	metrics := httpGet(t, "http://"+addr+"/metrics")
	for _, want := range []string{
		`pgtrail_bad_context_total{prefix="_bemi"} 2`,
		`pgtrail_changes_written_total{sink="audit"} 3`,
		`pgtrail_changes_read_total 3`,
		"pgtrail_slot_lag_bytes",
		"pgtrail_confirmed_lsn",
		"pgtrail_batch_write_seconds_bucket",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if h := httpGet(t, "http://"+addr+"/healthz"); h != "ok\n" {
		t.Errorf("/healthz = %q", h)
	}
	out, err := pgtrail(t, cfgPath(p), "status")
	if err != nil || !strings.Contains(out, "confirmed position") || !regexp.MustCompile(`sink audit +ok`).MatchString(out) {
		t.Errorf("status: %v\n%s", err, out)
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDatabaseURLAloneIsEnoughAndTeardownRemovesWhatSetupMade(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE t (id int PRIMARY KEY)`)
	dir := t.TempDir() // no pgtrail.yaml here
	cmd := exec.Command(binary, "run")
	cmd.Dir, cmd.Env = dir, append(os.Environ(), "DATABASE_URL="+url)
	p := launch(t, cmd)
	exec1(t, conn, `INSERT INTO t VALUES (1)`)
	waitForChanges(t, conn, 1, 30*time.Second)
	if err := p.stop(); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}

	teardown := exec.Command(binary, "teardown", "--drop-audit-data")
	teardown.Dir, teardown.Env = dir, append(os.Environ(), "DATABASE_URL="+url)
	if out, err := teardown.CombinedOutput(); err != nil {
		t.Fatalf("teardown: %v\n%s", err, out)
	}
	if n := count(t, conn, `SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)
		+ (SELECT count(*) FROM pg_class WHERE relname = 'changes')`); n != 0 {
		t.Fatalf("%d slots, publications or audit tables left after teardown", n)
	}
}

func TestRunRefusesToReplaceADroppedSlotQuietly(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	cfg := writeConfig(t, url, "", "")
	if out, err := pgtrail(t, cfg, "setup"); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	exec1(t, conn, `SELECT pg_drop_replication_slot('pgtrail')`)
	out, err := pgtrail(t, cfg, "run")
	if err == nil || !strings.Contains(out, `replication slot "pgtrail" is missing although pgtrail made it before`) {
		t.Fatalf("run after the slot was dropped: err=%v\n%s", err, out)
	}
	if n := count(t, conn, `SELECT count(*) FROM pg_replication_slots`); n != 0 {
		t.Fatalf("run created a slot on its own")
	}
	if out, err := pgtrail(t, cfg, "setup"); err != nil || !strings.Contains(out, "replication slot created") {
		t.Fatalf("setup after the slot was dropped: %v\n%s", err, out)
	}
}
