package e2e

import (
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/pgtrail/pgtrail/test/pgtest"
	"github.com/pgtrail/pgtrail/transports/appcontext"
)

func TestBemiContextAttachesToExactlyItsOwnRowChange(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE todos (id int PRIMARY KEY, task text);
		CREATE TABLE users (id int PRIMARY KEY, name text);
		CREATE TABLE comments (id int PRIMARY KEY, todo_id int REFERENCES todos ON DELETE CASCADE, body text);
		CREATE TABLE sessions (id int PRIMARY KEY, token text)`) // excluded, but triggered
	exec1(t, conn, pgtest.BemiMigration)
	// A table outside the audited schemas that carries the trigger too.
	exec1(t, conn, `CREATE SCHEMA internal; CREATE TABLE internal.jobs (id int PRIMARY KEY);
		CREATE TRIGGER _bemi_row_trigger_jobs BEFORE INSERT OR UPDATE OR DELETE ON internal.jobs
		FOR EACH ROW EXECUTE FUNCTION _bemi_row_trigger_func()`)
	cfg := writeConfig(t, url, "", "    exclude: [\"public.sessions\"]\n")
	if out, err := pgtrail(t, cfg, "setup"); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	start(t, cfg)

	// Single-row statements.
	exec1(t, conn, `INSERT INTO todos VALUES (1, 'a') /*Bemi {"endpoint":"/todos","userId":1} Bemi*/`)
	// Multi-row statement: every row carries the statement's context.
	exec1(t, conn, `INSERT INTO todos VALUES (2, 'b'), (3, 'c') /*Bemi {"endpoint":"/bulk","userId":2} Bemi*/`)
	// Several statements with different contexts in one transaction, with a
	// statement without a comment in between, and an unaudited table whose
	// trigger still emits a message.
	tx, err := conn.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`UPDATE todos SET task = 'a2' WHERE id = 1 /*Bemi {"op":"first"} Bemi*/`,
		`INSERT INTO sessions VALUES (1, 'secret') /*Bemi {"op":"session"} Bemi*/`,
		`INSERT INTO users VALUES (1, 'ann')`,
		`INSERT INTO internal.jobs VALUES (1) /*Bemi {"op":"job"} Bemi*/`,
		`INSERT INTO users VALUES (3, 'cy')`,
		`INSERT INTO users VALUES (2, 'bob') /*Bemi {"op":"second"} Bemi*/`,
		`UPDATE users SET name = 'bo' WHERE id = 2`,
	} {
		if _, err := tx.Exec(context.Background(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	// A cascading delete: the child rows are deleted by the same statement.
	exec1(t, conn, `INSERT INTO comments VALUES (10, 2, 'x'), (11, 2, 'y')`)
	exec1(t, conn, `DELETE FROM todos WHERE id = 2 /*Bemi {"endpoint":"/delete"} Bemi*/`)
	// A payload that is not JSON: the change is kept, with no context.
	exec1(t, conn, `UPDATE todos SET task = 'c2' WHERE id = 3 /*Bemi not json Bemi*/`)

	want := []string{
		`CREATE todos[1] {"userId": 1, "endpoint": "/todos"}`,
		`CREATE todos[2] {"userId": 2, "endpoint": "/bulk"}`,
		`CREATE todos[3] {"userId": 2, "endpoint": "/bulk"}`,
		`UPDATE todos[1] {"op": "first"}`,
		`CREATE users[1] {}`,
		`CREATE users[3] {}`,
		`CREATE users[2] {"op": "second"}`,
		`UPDATE users[2] {}`,
		`CREATE comments[10] {}`,
		`CREATE comments[11] {}`,
		`DELETE todos[2] {"endpoint": "/delete"}`,
		`DELETE comments[10] {"endpoint": "/delete"}`,
		`DELETE comments[11] {"endpoint": "/delete"}`,
		`UPDATE todos[3] {}`,
	}
	waitForChanges(t, conn, len(want), 30*time.Second)
	assertContexts(t, auditRows(t, conn), want)
}

func TestPgtrailContextAppliesToTheRestOfItsTransaction(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE items (id int PRIMARY KEY, n int)`)
	cfg := writeConfig(t, url, "", "")
	if out, err := pgtrail(t, cfg, "setup"); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	start(t, cfg)

	txn(t, conn, `INSERT INTO items VALUES (1, 0)`,
		`SELECT pgtrail.set_context('{"user":"ann","request":"r1"}')`,
		`INSERT INTO items VALUES (2, 0), (3, 0)`,
		`UPDATE items SET n = 1 WHERE id = 1`,
		`SELECT pg_logical_emit_message(true, 'pgtrail', '{"user":"bob"}')`,
		`DELETE FROM items WHERE id = 3`)
	// Context never crosses into the next transaction.
	txn(t, conn, `UPDATE items SET n = 2 WHERE id = 2`)
	// Heartbeats and unknown prefixes are not changes and not context.
	txn(t, conn, `SELECT pg_logical_emit_message(true, '_bemi_heartbeat', 'x')`,
		`SELECT pg_logical_emit_message(true, 'other', '{"user":"eve"}')`,
		`SELECT pgtrail.set_context('[1,2]')`,
		`INSERT INTO items VALUES (4, 0)`)

	want := []string{
		`CREATE items[1] {}`,
		`CREATE items[2] {"user": "ann", "request": "r1"}`,
		`CREATE items[3] {"user": "ann", "request": "r1"}`,
		`UPDATE items[1] {"user": "ann", "request": "r1"}`,
		`DELETE items[3] {"user": "bob"}`,
		`UPDATE items[2] {}`,
		`CREATE items[4] {}`,
	}
	waitForChanges(t, conn, len(want), 30*time.Second)
	assertContexts(t, auditRows(t, conn), want)
}

func assertContexts(t *testing.T, rows []auditRow, want []string) {
	t.Helper()
	var got []string
	for _, r := range rows {
		got = append(got, r.Operation+" "+r.Table+"["+r.PrimaryKey+"] "+r.Context)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("stored changes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestGoApplicationContextPackageSetsContextFromContextContext(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE items (id int PRIMARY KEY)`)
	setupAndStart(t, url, "", "")

	ctx := appcontext.With(context.Background(), map[string]any{"user": "ann"})
	ctx = appcontext.With(ctx, map[string]any{"request": "r-1"})
	err := appcontext.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO items VALUES (1), (2)`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := appcontext.SetSQL(appcontext.With(ctx, map[string]any{"user": "bob"}), tx); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`DELETE FROM items WHERE id = 2`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	// No context in the context.Context: nothing is written, the change has none.
	if err := appcontext.BeginFunc(context.Background(), conn, func(tx pgx.Tx) error {
		_, err := tx.Exec(context.Background(), `UPDATE items SET id = 3 WHERE id = 1`)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`CREATE items[1] {"user": "ann", "request": "r-1"}`,
		`CREATE items[2] {"user": "ann", "request": "r-1"}`,
		`DELETE items[2] {"user": "bob", "request": "r-1"}`,
		`UPDATE items[3] {}`,
	}
	waitForChanges(t, conn, len(want), 30*time.Second)
	assertContexts(t, auditRows(t, conn), want)
}
