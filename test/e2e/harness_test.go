package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/test/pgtest"
	"github.com/pgtrail/pgtrail/test/testbed"
)

var (
	cluster *pgtest.Cluster
	binary  string
	// Sink plugins built from outside the core: the example JSON Lines sink
	// and one that speaks another protocol version.
	jsonlPlugin, wrongVersionPlugin string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pgtrail-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "pgtrail")
	jsonlPlugin = filepath.Join(dir, "pgtrail-sink-jsonl")
	wrongVersionPlugin = filepath.Join(dir, "pgtrail-sink-wrongversion")
	for out, pkg := range map[string]string{
		binary:             "github.com/pgtrail/pgtrail/cmd/pgtrail",
		jsonlPlugin:        "github.com/pgtrail/pgtrail/plugins/examples/jsonl",
		wrongVersionPlugin: "./testdata/wrongversion",
	} {
		build := exec.Command("go", "build", "-o", out, pkg)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build", pkg+":", err)
			os.Exit(1)
		}
	}
	defer os.RemoveAll(dir)
	pgtest.Main(m, pgtest.Options{}, func(c *pgtest.Cluster) { cluster = c })
}

// proc is a running `pgtrail run`.
type proc struct {
	t    testing.TB
	cmd  *exec.Cmd
	out  *testbed.Output
	done chan struct{}
	err  error
}

// writeConfig writes a config for database url: pg is added to
// source.postgres, extra is appended at the top level.
func writeConfig(t testing.TB, url, extra, pg string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pgtrail.yaml")
	cfg := fmt.Sprintf("source:\n  type: postgres\n  postgres:\n    url: %q\n    status_interval: 1s\n%slog:\n  level: debug\n%s", url, pg, extra)
	if !regexp.MustCompile(`(?m)^http:`).MatchString(extra) {
		cfg += "http:\n  listen: \"\"\n"
	}
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// pgtrail runs one command to completion and returns its combined output.
func pgtrail(t testing.TB, config string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, append(args, "--config", config)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// start launches `pgtrail run` with the config and waits until it streams.
func start(t testing.TB, config string) *proc {
	t.Helper()
	return launch(t, exec.Command(binary, "run", "--config", config))
}

// launch starts a pgtrail process that reads a source and waits until it
// streams. It is killed at cleanup, and its output logged if the test failed.
func launch(t testing.TB, cmd *exec.Cmd) *proc {
	t.Helper()
	return launchUntil(t, cmd, "capturing")
}

// launchUntil starts a pgtrail process and waits until its output holds
// marker.
func launchUntil(t testing.TB, cmd *exec.Cmd, marker string) *proc {
	t.Helper()
	p := &proc{t: t, cmd: cmd, out: &testbed.Output{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	what := strings.Join(cmd.Args[:2], " ")
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s output:\n%s", what, tail(p.out.String(), 60))
		}
	})
	waitFor(t, 30*time.Second, what+" to log "+marker, func() bool {
		select {
		case <-p.done:
			t.Fatalf("%s exited at start-up: %v\n%s", what, p.err, p.out.String())
		default:
		}
		return strings.Contains(p.out.String(), marker)
	})
	return p
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// cfgPath is the config file the process runs with.
func cfgPath(p *proc) string { return p.cmd.Args[len(p.cmd.Args)-1] }

// kill ends the process with SIGKILL: no drain, no final confirmation.
func (p *proc) kill() {
	if p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-p.done
}

// stop sends SIGTERM and returns the exit error once it exits.
func (p *proc) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(60 * time.Second):
		p.t.Fatalf("pgtrail did not exit within 60s of SIGTERM\n%s", tail(p.out.String(), 40))
		return nil
	}
}

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func connect(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func exec1(t testing.TB, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func count(t testing.TB, conn *pgx.Conn, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// pastLastCommit is a WAL position at or past the end of conn's last
// commit: the insert position. Not pg_current_wal_lsn(): with the test
// cluster's synchronous_commit=off the write position can still be short of
// the commit, inside the transaction, where a slot's confirmation is
// legitimate (the slot sends every transaction that commits after it).
func pastLastCommit(t testing.TB, conn *pgx.Conn) string {
	t.Helper()
	var lsn string
	if err := conn.QueryRow(context.Background(), "SELECT pg_current_wal_insert_lsn()::text").Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	return lsn
}

// confirmedPast says whether the slot pgtrail is confirmed at or past lsn.
func confirmedPast(t testing.TB, conn *pgx.Conn, lsn string) bool {
	t.Helper()
	var ok bool
	err := conn.QueryRow(context.Background(), "SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_replication_slots WHERE slot_name = 'pgtrail'", lsn).Scan(&ok)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// waitForChanges waits until the audit table holds n changes.
func waitForChanges(t testing.TB, conn *pgx.Conn, n int, timeout time.Duration) {
	t.Helper()
	var got int
	waitFor(t, timeout, fmt.Sprintf("%d changes in the audit table", n), func() bool {
		got = count(t, conn, "SELECT count(*) FROM pgtrail.changes")
		if got > n {
			t.Fatalf("audit table holds %d changes, more than the %d expected", got, n)
		}
		return got == n
	})
}

// auditRow is one stored change, in the columns a user reads.
type auditRow struct {
	Operation, Table, PrimaryKey string
	Before, After, Context       string
}

func (r auditRow) String() string {
	return fmt.Sprintf("%s %s[%s] before=%s after=%s context=%s", r.Operation, r.Table, r.PrimaryKey, r.Before, r.After, r.Context)
}

// auditRows returns the stored changes in source order.
func auditRows(t testing.TB, conn *pgx.Conn) []auditRow {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT operation, "table", coalesce(primary_key, ''),
		before::text, after::text, context::text FROM pgtrail.changes ORDER BY committed_at, position, seq`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[auditRow])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// writeLoad runs n writers, each on its own connection, calling
// write(conn, writer, i) for i = 0, 1, … until the returned stop is called;
// stop waits for them. A failed write fails the test and ends its writer.
func writeLoad(t testing.TB, url string, n int, write func(conn *pgx.Conn, w, i int) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(context.Background(), url)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close(context.Background())
			for i := 0; ctx.Err() == nil; i++ {
				if err := write(conn, w, i); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	return func() {
		cancel()
		wg.Wait()
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
