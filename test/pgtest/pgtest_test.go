package pgtest_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrail/pgtrail/test/pgtest"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Options{}, func(c *pgtest.Cluster) { cluster = c })
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func queryString(t *testing.T, conn *pgx.Conn, sql string, args ...any) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&s); err != nil {
		t.Fatalf("query %q: %v", sql, err)
	}
	return s
}

func TestDefaultClusterHasLogicalWAL(t *testing.T) {
	conn := connect(t, cluster.URL("postgres"))
	if got := queryString(t, conn, "SHOW wal_level"); got != "logical" {
		t.Fatalf("wal_level = %q, want logical", got)
	}
	if got := queryString(t, conn, "SHOW TimeZone"); got != "UTC" {
		t.Fatalf("TimeZone = %q, want UTC", got)
	}
}

func TestNewDatabaseAcceptsLogicalSlot(t *testing.T) {
	conn := connect(t, cluster.NewDatabase(t))
	got := queryString(t, conn, "SELECT slot_name::text FROM pg_create_logical_replication_slot('s', 'pgoutput')")
	if got != "s" {
		t.Fatalf("slot name = %q, want s", got)
	}
}

func TestNewDatabaseIsDroppedWithItsActiveSlot(t *testing.T) {
	var name string
	var repl *pgconn.PgConn
	t.Run("use", func(t *testing.T) {
		url := cluster.NewDatabase(t)
		cfg, err := pgconn.ParseConfig(url)
		if err != nil {
			t.Fatal(err)
		}
		name = cfg.Database
		cluster.Exec(t, url, "SELECT pg_create_logical_replication_slot('busy', 'test_decoding')")
		// Leave a walsender streaming from the slot, as a killed pgtrail might.
		cfg.RuntimeParams["replication"] = "database"
		repl, err = pgconn.ConnectConfig(context.Background(), cfg)
		if err != nil {
			t.Fatalf("replication connect: %v", err)
		}
		repl.Frontend().Send(&pgproto3.Query{String: "START_REPLICATION SLOT busy LOGICAL 0/0"})
		if err := repl.Frontend().Flush(); err != nil {
			t.Fatalf("start replication: %v", err)
		}
		msg, err := repl.Frontend().Receive()
		if _, ok := msg.(*pgproto3.CopyBothResponse); !ok {
			t.Fatalf("start replication: got %T, %v; want CopyBothResponse", msg, err)
		}
	})
	defer repl.Close(context.Background())
	conn := connect(t, cluster.URL("postgres"))
	left := queryString(t, conn, `SELECT count(*)::text FROM pg_database WHERE datname = $1`, name)
	slots := queryString(t, conn, `SELECT count(*)::text FROM pg_replication_slots WHERE slot_name = 'busy'`)
	if left != "0" || slots != "0" {
		t.Fatalf("after cleanup: %s databases named %s, %s slots named busy; want 0 and 0", left, name, slots)
	}
}

func TestWrongPasswordIsRefused(t *testing.T) {
	cfg, err := pgx.ParseConfig(cluster.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = "wrong"
	_, err = pgx.ConnectConfig(context.Background(), cfg)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Fatalf("connect with wrong password: err = %v, want SQLSTATE 28P01", err)
	}
}

func TestReplicaClusterReportsReplicaAndStopsTwice(t *testing.T) {
	c, err := pgtest.Start(pgtest.Options{WALLevel: "replica", Settings: map[string]string{"work_mem": "8MB"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	if c.Port() == cluster.Port() {
		t.Fatalf("second cluster shares port %d", c.Port())
	}
	conn, err := pgx.Connect(context.Background(), c.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	if got := queryString(t, conn, "SHOW wal_level"); got != "replica" {
		t.Fatalf("wal_level = %q, want replica", got)
	}
	if got := queryString(t, conn, "SHOW work_mem"); got != "8MB" {
		t.Fatalf("work_mem = %q, want 8MB", got)
	}
	conn.Close(context.Background())
	c.Stop()
	c.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if conn, err := pgx.Connect(ctx, c.URL("postgres")); err == nil {
		conn.Close(ctx)
		t.Fatal("stopped cluster still accepts connections")
	}
}

// The bench counts the server's CPU from the postmaster down.
func TestPostmasterPIDIsTheParentOfBackends(t *testing.T) {
	pid, err := cluster.PostmasterPID()
	if err != nil {
		t.Fatal(err)
	}
	conn := connect(t, cluster.URL("postgres"))
	backend := queryString(t, conn, "SELECT pg_backend_pid()::text")
	stat, err := os.ReadFile("/proc/" + backend + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if fields[1] != strconv.Itoa(pid) {
		t.Fatalf("backend %s has parent %s, want the postmaster %d", backend, fields[1], pid)
	}
}

// A restart, clean or by crash, keeps the port, the settings and what was
// committed.
func TestRestartKeepsPortSettingsAndData(t *testing.T) {
	c, err := pgtest.Start(pgtest.Options{Settings: map[string]string{"work_mem": "8MB"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop) // after the database's own clean-up
	url := c.NewDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), "CREATE TABLE kept (v int); INSERT INTO kept VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	port := c.Port()
	for _, crash := range []bool{false, true} {
		before, _ := c.PostmasterPID()
		if err := c.Restart(crash); err != nil {
			t.Fatalf("restart (crash %v): %v", crash, err)
		}
		after, _ := c.PostmasterPID()
		if c.Port() != port || after == before {
			t.Fatalf("restart (crash %v): port %d -> %d, postmaster %d -> %d", crash, port, c.Port(), before, after)
		}
		conn := connect(t, url)
		if got := queryString(t, conn, "SELECT sum(v)::text || ' ' || current_setting('work_mem') FROM kept"); got != "1 8MB" {
			t.Fatalf("after restart (crash %v): %q, want the row and work_mem 8MB", crash, got)
		}
	}
}
