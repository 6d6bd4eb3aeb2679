// Command demo runs pgtrail end to end on a throwaway PostgreSQL: it starts a
// private cluster, creates a small app schema with the Bemi ORM trigger, runs
// `pgtrail setup` and `pgtrail run`, makes writes that carry context, and
// prints the audit trail that pgtrail stored; from a terminal it then serves
// the trail in the activity log (web UI) until Ctrl-C.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sys/unix"

	"github.com/pgtrail/pgtrail/test/pgtest"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: demo PATH-TO-PGTRAIL-BINARY")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func run(binary string) error {
	ctx := context.Background()
	step("starting a throwaway PostgreSQL with wal_level=logical")
	cluster, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		return err
	}
	defer cluster.Stop()
	url := cluster.URL("postgres")
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)

	step("creating the app's tables and the Bemi ORM trigger (as the Bemi packages' migration does)")
	for _, q := range []string{schema, pgtest.BemiMigration} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return err
		}
	}

	step("pgtrail setup && pgtrail run   (DATABASE_URL=%s)", url)
	env := append(os.Environ(), "DATABASE_URL="+url)
	setup := exec.Command(binary, "setup")
	setup.Env, setup.Stdout, setup.Stderr = env, os.Stdout, os.Stderr
	if err := setup.Run(); err != nil {
		return fmt.Errorf("pgtrail setup: %w", err)
	}
	runner := exec.Command(binary, "run")
	runner.Env, runner.Stdout, runner.Stderr = env, os.Stdout, os.Stderr
	runner.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := runner.Start(); err != nil {
		return err
	}
	defer func() {
		_ = runner.Process.Signal(syscall.SIGTERM)
		_ = runner.Wait()
	}()

	step("writing: an ORM request with /*Bemi ...*/ context, and a job using pgtrail.set_context")
	for _, q := range writes {
		fmt.Println("   ", strings.TrimSpace(q))
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}

	step("the audit trail (pgtrail.changes)")
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		_ = conn.QueryRow(ctx, "SELECT count(*) FROM pgtrail.changes").Scan(&n)
		if n >= wantChanges {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d changes reached the audit table in 30s", n, wantChanges)
		}
		time.Sleep(100 * time.Millisecond)
	}
	rows, err := conn.Query(ctx, `SELECT to_char(committed_at, 'HH24:MI:SS.MS'), operation, "table", coalesce(primary_key, ''),
		before::text, after::text, context::text FROM pgtrail.changes ORDER BY committed_at, position, seq`)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "COMMITTED\tOPERATION\tTABLE\tKEY\tBEFORE\tAFTER\tCONTEXT")
	for rows.Next() {
		var at, op, table, key, before, after, c string
		if err := rows.Scan(&at, &op, &table, &key, &before, &after, &c); err != nil {
			return err
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", at, op, table, key, before, after, c)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	_ = w.Flush()
	step("who changed todo 1, and why:  SELECT operation, after, context FROM pgtrail.changes WHERE \"table\" = 'todos' AND primary_key = '1'")
	if !interactive() {
		return nil
	}
	return serveUI(binary, url)
}

// interactive reports whether the demo runs from a terminal, where it can
// wait for Ctrl-C: stdin and stdout both answer a terminal's ioctl
// (/dev/null is a character device too, so the file mode cannot tell).
func interactive() bool {
	for _, f := range []*os.File{os.Stdin, os.Stdout} {
		if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
			return false
		}
	}
	return true
}

// serveUI shows the demo's trail in the activity log until Ctrl-C.
func serveUI(binary, url string) error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := l.Addr().String()
	l.Close()
	dir, err := os.MkdirTemp("", "pgtrail-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfg := filepath.Join(dir, "pgtrail.yaml")
	yaml := fmt.Sprintf("ui:\n  url: %q\n  revert: {url: %q, apply: true}\nhttp:\n  listen: %q\nlog:\n  level: warn\n", url, url, addr)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	serve := exec.Command(binary, "serve", "--config", cfg)
	serve.Stdout, serve.Stderr = os.Stdout, os.Stderr
	serve.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := serve.Start(); err != nil {
		return fmt.Errorf("pgtrail serve: %w", err)
	}
	step("the activity log: open http://%s/  (pgtrail serve; Ctrl-C to stop)", addr)
	fmt.Printf("    try http://%s/history/public.todos/1 and the revert preview of a change\n", addr)
	<-ctx.Done()
	_ = serve.Process.Signal(syscall.SIGTERM)
	_ = serve.Wait()
	return nil
}

const schema = `
CREATE TABLE todos (id serial PRIMARY KEY, task text NOT NULL, done boolean NOT NULL DEFAULT false, due date);
ALTER TABLE todos REPLICA IDENTITY FULL; -- keep whole before images
CREATE TABLE invoices (id int PRIMARY KEY, amount numeric(20, 2), meta jsonb);

`

var writes = []string{
	`INSERT INTO todos (task, due) VALUES ('write the audit report', '2026-12-01'), ('ship pgtrail', NULL) /*Bemi {"endpoint":"POST /todos","userId":42} Bemi*/`,
	`UPDATE todos SET done = true WHERE id = 1 /*Bemi {"endpoint":"PATCH /todos/1","userId":7} Bemi*/`,
	`BEGIN; SELECT pgtrail.set_context('{"job":"invoice-import","run":"2026-11-25"}');
	 INSERT INTO invoices VALUES (1, 99.90, '{"currency":"EUR"}'), (2, 12345678901234.56, '{"currency":"USD"}');
	 DELETE FROM todos WHERE id = 2; COMMIT;`,
	`UPDATE invoices SET amount = amount * 2 WHERE id = 1`,
}

const wantChanges = 6
