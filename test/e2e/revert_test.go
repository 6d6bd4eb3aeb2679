package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// revertPlan is the answer of /api/v1/revert.
type revertPlan struct {
	SQL       string `json:"sql"`
	Conflicts []struct {
		Change     string          `json:"change"`
		Table      string          `json:"table"`
		PrimaryKey string          `json:"primary_key"`
		Columns    []string        `json:"columns"`
		Reason     string          `json:"reason"`
		Actual     json.RawMessage `json:"actual"`
	} `json:"conflicts"`
	Unrevertable []struct {
		Change string `json:"change"`
		Reason string `json:"reason"`
	} `json:"unrevertable"`
	Reverted   []string `json:"reverted"`
	Applied    bool     `json:"applied"`
	Statements int      `json:"statements"`
	Error      string   `json:"error"`
}

// snapshot is every row of the tables, as PostgreSQL prints them, in key order.
func snapshot(t *testing.T, conn *pgx.Conn, tables ...string) string {
	t.Helper()
	var out []string
	for _, tbl := range tables {
		var s string
		q := fmt.Sprintf("SELECT coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), '') FROM %s r", tbl)
		if err := conn.QueryRow(context.Background(), q).Scan(&s); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		out = append(out, tbl+":\n"+s)
	}
	return strings.Join(out, "\n")
}

// lastXID is the transaction id of the newest change of the trail.
func lastXID(t *testing.T, a api) int64 {
	t.Helper()
	p := a.list("limit=1")
	if len(p.Changes) == 0 {
		t.Fatal("the trail is empty")
	}
	return p.Changes[0].TransactionID
}

func dbName(url string) string {
	return url[strings.LastIndexByte(url, '/')+1 : strings.IndexByte(url, '?')]
}

func TestRevertUndoesATransactionExactlyAndIsItselfAudited(t *testing.T) {
	dbURL := cluster.NewDatabase(t)
	c := connect(t, dbURL)
	exec1(t, c, `CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
		CREATE DOMAIN posint AS int CHECK (VALUE > 0);
		CREATE TABLE kinds (
			id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
			n numeric(30,10), big numeric, f float8, r real, b boolean, t text, vc varchar(20), ch char(3),
			j json, jb jsonb, by bytea, ts timestamp, tstz timestamptz, d date, tm time, ttz timetz, iv interval,
			m money, u uuid, ip inet, pt point, rg int4range, e mood, dom posint,
			ai int[], at text[], a2 int[], ajb jsonb[], aby bytea[], ad date[],
			body text, gen int GENERATED ALWAYS AS (dom * 2) STORED);
		ALTER TABLE kinds REPLICA IDENTITY FULL;
		CREATE TABLE lines (order_id int, line int, sku text, qty int, PRIMARY KEY (order_id, line));
		ALTER TABLE lines REPLICA IDENTITY FULL`)
	conn, a := startActivityLog(t, dbURL, "  revert:\n    apply: true\n")
	db := dbName(dbURL)

	body := bigText("kept")
	exec1(t, conn, `INSERT INTO kinds (n, big, f, r, b, t, vc, ch, j, jb, by, ts, tstz, d, tm, ttz, iv, m, u, ip, pt, rg, e, dom,
			ai, at, a2, ajb, aby, ad, body) VALUES
		(12345678901234567890.0123456789, 0.1, 1e-300, 0.1, true, E'it''s a "quote" \\ back\nslash é ✓', 'varchar', 'ab',
		 '{"a": [1, 2], "b": 1}', '{"nested": {"deep": [1, {"x": null}]}, "n": 1.50}', '\x00ff27', '2026-01-02 03:04:05.123456',
		 '2026-01-02 03:04:05.5+02', '0044-03-15 BC', '24:00:00', '23:00:00+00', '1 year 2 mons 3 days 04:05:06.5',
		 12.34, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '10.1.2.3/24', '(1.5,2)', '[1,10)', 'happy', 5,
		 '{1,NULL,3}', '{"a b","q\"uote","back\\slash",NULL,""}', '{{1,2},{3,4}}', ARRAY['{"x": 1}'::jsonb, '[1, 2]'],
		 '{"\\x00ff"}', '{2026-01-01,0001-01-01 BC}', '`+body+`'),
		(NULL, 'NaN', 'Infinity', '-Infinity', NULL, '', NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'infinity', NULL, NULL, NULL,
		 NULL, NULL, NULL, NULL, 'empty', NULL, 1, '{}', NULL, NULL, NULL, NULL, NULL, NULL)`)
	exec1(t, conn, `INSERT INTO lines VALUES (1, 1, 'a', 1), (1, 2, 'b', 2), (2, 1, 'c', 3)`)
	waitForChanges(t, conn, 5, 30*time.Second)
	before := snapshot(t, conn, "kinds", "lines")

	txn(t, conn, `SELECT pgtrail.set_context('{"request":"oops"}')`,
		`UPDATE kinds SET n = 0, t = 'changed', jb = '{}', ai = '{}', body = 'short', e = 'sad', d = '2026-01-01' WHERE id = 1`,
		`DELETE FROM kinds WHERE id = 2`,
		`INSERT INTO kinds (dom) VALUES (9)`,
		`UPDATE lines SET line = 3 WHERE order_id = 1 AND line = 2`, // the key changes
		`DELETE FROM lines WHERE order_id = 1 AND line = 1`,
		`UPDATE lines SET qty = qty + 1 WHERE order_id = 2`,
		`UPDATE lines SET qty = qty + 1 WHERE order_id = 2`,
		`INSERT INTO lines VALUES (5, 5, 'new', 1)`,
		`UPDATE lines SET sku = 'newer' WHERE order_id = 5`)
	waitForChanges(t, conn, 14, 30*time.Second)
	xid := lastXID(t, a)
	if snapshot(t, conn, "kinds", "lines") == before {
		t.Fatal("the bad transaction changed nothing")
	}

	sel := fmt.Sprintf("/api/v1/revert?transaction=%s:%d", db, xid)
	var preview revertPlan
	a.get(sel, &preview)
	if len(preview.Conflicts) != 0 || len(preview.Unrevertable) != 0 || len(preview.Reverted) != 9 {
		t.Fatalf("preview: %d conflicts %+v, unrevertable %+v, %d reverted; want none, none, 9\n%s",
			len(preview.Conflicts), preview.Conflicts, preview.Unrevertable, len(preview.Reverted), preview.SQL)
	}
	for _, want := range []string{`BEGIN;`, `pg_logical_emit_message(true, 'pgtrail', '{"reverted":[`, `OVERRIDING SYSTEM VALUE`,
		`'12345678901234567890.0123456789'::numeric(30,10)`, `'0044-03-15 BC'::date`, `'happy'::mood`,
		`DELETE FROM "public"."lines" WHERE "order_id" = '5'::integer AND "line" = '5'::integer`, "COMMIT;"} {
		if !strings.Contains(preview.SQL, want) {
			t.Errorf("revert SQL lacks %s:\n%s", want, preview.SQL)
		}
	}
	// Inverses run in reverse WAL order: the last insert's update is undone first.
	if i, j := strings.Index(preview.SQL, `SET "sku" = 'new'::text`), strings.Index(preview.SQL, `DELETE FROM "public"."lines" WHERE "order_id" = '5'`); i < 0 || j < i {
		t.Errorf("the update of line (5,5) is not undone before its insert:\n%s", preview.SQL)
	}

	var applied revertPlan
	if status := a.call("POST", sel, map[string]any{"apply": true}, &applied); status != http.StatusOK || !applied.Applied {
		t.Fatalf("apply: %d %+v", status, applied)
	}
	if got := snapshot(t, conn, "kinds", "lines"); got != before {
		t.Errorf("after the revert the rows differ from before the bad transaction:\n%s\nwant:\n%s", got, before)
	}

	// The revert is in the trail, with context naming what it reverted.
	waitForChanges(t, conn, 14+applied.Statements, 30*time.Second)
	rows, err := conn.Query(context.Background(), `SELECT DISTINCT context::text FROM pgtrail.changes WHERE context ? 'reverted'`)
	if err != nil {
		t.Fatal(err)
	}
	contexts, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(contexts) != 1 || count(t, conn, `SELECT count(*) FROM pgtrail.changes WHERE context ? 'reverted'`) != applied.Statements {
		t.Fatalf("revert changes' contexts: %q, want one context on %d changes", contexts, applied.Statements)
	}
	var rc struct {
		Reverted   []string `json:"reverted"`
		RevertedBy string   `json:"reverted_by"`
		Via        string   `json:"via"`
	}
	_ = json.Unmarshal([]byte(contexts[0]), &rc)
	if !slices.Equal(rc.Reverted, applied.Reverted) || rc.RevertedBy != "loopback:127.0.0.1" || rc.Via != "pgtrail api" {
		t.Errorf("revert context %s, want reverted %v by loopback:127.0.0.1 via the api", contexts[0], applied.Reverted)
	}

	// The SQL `pgtrail revert` prints, run as it is, undoes a change too.
	before = snapshot(t, conn, "kinds", "lines")
	exec1(t, conn, `UPDATE kinds SET t = 'by cli', by = '\x01', at = '{x}' WHERE id = 1`)
	waitForChanges(t, conn, 14+applied.Statements+1, 30*time.Second)
	bad := a.list("limit=1").Changes[0]
	out, err := pgtrail(t, a.cfg, "revert", "--change", bad.ID)
	if err != nil {
		t.Fatalf("pgtrail revert: %v\n%s", err, out)
	}
	sql := out[strings.Index(out, "BEGIN;"):]
	for _, want := range []string{`"by" = '\x00ff27'::bytea`, `"at" = '{"a b","q\"uote","back\\slash",NULL,""}'::text[]`} {
		if !strings.Contains(sql, want) {
			t.Errorf("revert SQL lacks %s:\n%s", want, sql)
		}
	}
	exec1(t, conn, sql)
	if got := snapshot(t, conn, "kinds", "lines"); got != before {
		t.Errorf("after running the printed SQL the rows differ:\n%s\nwant:\n%s\nSQL:\n%s", got, before, sql)
	}
}

func TestRevertReportsRowsChangedSinceAndAppliesNothingUnlessForced(t *testing.T) {
	dbURL := cluster.NewDatabase(t)
	c := connect(t, dbURL)
	exec1(t, c, `CREATE TABLE items (id int PRIMARY KEY, name text, qty int); ALTER TABLE items REPLICA IDENTITY FULL`)
	conn, a := startActivityLog(t, dbURL, "  revert:\n    apply: true\n")
	exec1(t, conn, `INSERT INTO items VALUES (1, 'one', 1), (2, 'two', 2), (3, 'three', 3)`)
	txn(t, conn, `UPDATE items SET qty = 0 WHERE id IN (1, 2)`, `DELETE FROM items WHERE id = 3`)
	waitForChanges(t, conn, 6, 30*time.Second)
	xid := lastXID(t, a)
	bad := a.list("limit=3").Changes // DELETE 3, UPDATE 2, UPDATE 1
	// Later changes: item 1 renamed, item 3 inserted again.
	exec1(t, conn, `UPDATE items SET name = 'later' WHERE id = 1`)
	exec1(t, conn, `INSERT INTO items VALUES (3, 'reborn', 30)`)
	waitForChanges(t, conn, 8, 30*time.Second)

	sel := fmt.Sprintf("/api/v1/revert?transaction=%s:%d", dbName(dbURL), xid)
	var p revertPlan
	a.get(sel, &p)
	if len(p.Conflicts) != 2 {
		t.Fatalf("conflicts %+v, want 2", p.Conflicts)
	}
	byKey := map[string]int{}
	for i, cf := range p.Conflicts {
		byKey[cf.PrimaryKey] = i
	}
	one, three := p.Conflicts[byKey["1"]], p.Conflicts[byKey["3"]]
	if !slices.Equal(one.Columns, []string{"name"}) || one.Change != bad[2].ID || !strings.Contains(string(one.Actual), `"later"`) {
		t.Errorf("conflict on item 1: %+v, want column name, left by %s", one, bad[2].ID)
	}
	if three.Change != bad[0].ID || !strings.Contains(three.Reason, "inserted again") {
		t.Errorf("conflict on item 3: %+v", three)
	}
	before := snapshot(t, conn, "items")
	var refused revertPlan
	if status := a.call("POST", sel, map[string]any{"apply": true}, &refused); status != http.StatusConflict || refused.Applied || len(refused.Conflicts) != 2 {
		t.Errorf("apply with conflicts: %d %+v, want 409 and nothing applied", status, refused)
	}
	if got := snapshot(t, conn, "items"); got != before {
		t.Errorf("a refused revert changed rows:\n%s\nwant:\n%s", got, before)
	}
	// Forced, the revert of item 1's update sets back only what it changed.
	var forced revertPlan
	body := map[string]any{"apply": true, "force": true, "change": bad[2].ID}
	if status := a.call("POST", "/api/v1/revert", body, &forced); status != http.StatusOK || !forced.Applied {
		t.Fatalf("forced apply: %d %+v", status, forced)
	}
	var name string
	var qty int
	if err := conn.QueryRow(context.Background(), "SELECT name, qty FROM items WHERE id = 1").Scan(&name, &qty); err != nil || name != "later" || qty != 1 {
		t.Errorf("item 1 after the forced revert: %q %d (%v), want later 1", name, qty, err)
	}

	// A body that is not JSON is refused (no cross-site form posts).
	req, _ := http.NewRequest("POST", a.base+sel, strings.NewReader(`apply=true`))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Errorf("form post: %v %v, want 415", resp.StatusCode, err)
	}

	// The CLI reads the same trail.
	waitForChanges(t, conn, 9, 30*time.Second)
	out, err := pgtrail(t, a.cfg, "history", "public.items", "1")
	if err != nil || strings.Count(out, "UPDATE") != 3 || !strings.Contains(out, `qty: 0 -> 1`) || !strings.Contains(out, `name: "one" -> "later"`) {
		t.Errorf("pgtrail history: %v\n%s", err, out)
	}
	out, err = pgtrail(t, a.cfg, "history", "public.items", "3", "--as-of", bad[0].CommittedAt.Add(-time.Microsecond).Format(time.RFC3339Nano))
	if err != nil || !strings.Contains(out, `"name": "three"`) {
		t.Errorf("pgtrail history --as-of: %v\n%s", err, out)
	}
	out, err = pgtrail(t, a.cfg, "revert", "--transaction", fmt.Sprintf("%s:%d", dbName(dbURL), xid), "--apply")
	if err == nil || !strings.Contains(out, "conflict: public.items 3") || !strings.Contains(out, "nothing applied") {
		t.Errorf("pgtrail revert --apply with conflicts: %v\n%s", err, out)
	}
}

func TestRevertReportsWhatTheTrailCannotUndo(t *testing.T) {
	dbURL := cluster.NewDatabase(t)
	c := connect(t, dbURL)
	exec1(t, c, `CREATE TABLE plain (id int PRIMARY KEY, v text); -- default replica identity: key-only before images
		CREATE TABLE logs (id int PRIMARY KEY, v text); ALTER TABLE logs REPLICA IDENTITY FULL;
		CREATE TABLE nokey (v text); ALTER TABLE nokey REPLICA IDENTITY FULL;
		CREATE TABLE grown (id int PRIMARY KEY, v text); ALTER TABLE grown REPLICA IDENTITY FULL;
		CREATE TABLE shrunk (id int PRIMARY KEY, v text); ALTER TABLE shrunk REPLICA IDENTITY FULL`)
	conn, a := startActivityLog(t, dbURL, "  revert:\n    apply: true\n")
	exec1(t, conn, `INSERT INTO plain VALUES (1, 'a'), (2, 'b'); INSERT INTO logs VALUES (1, 'x'); INSERT INTO nokey VALUES ('n');
		INSERT INTO grown VALUES (1, 'g'); INSERT INTO shrunk VALUES (1, 's')`)
	txn(t, conn, `SELECT pgtrail.set_context('{"request":"mixed"}')`,
		`UPDATE plain SET v = 'changed' WHERE id = 1`, `DELETE FROM plain WHERE id = 2`,
		`TRUNCATE logs`, `UPDATE nokey SET v = 'm'`, `DELETE FROM grown`, `UPDATE shrunk SET v = 't'`)
	waitForChanges(t, conn, 12, 30*time.Second)
	// The tables change shape since.
	exec1(t, conn, `ALTER TABLE grown ADD COLUMN w int; ALTER TABLE shrunk DROP COLUMN v`)
	sel := "/api/v1/revert?context=" + url.QueryEscape(`{"request":"mixed"}`)
	var p revertPlan
	a.get(sel, &p)
	var reasons []string
	for _, u := range p.Unrevertable {
		reasons = append(reasons, u.Reason)
	}
	slices.Sort(reasons)
	want := []string{
		"a TRUNCATE removed every row of the table, and the trail does not hold them",
		`column "v" is no longer in public.shrunk`,
		"public.grown has columns added since the delete (w): what the row would hold in them is not in the trail",
		"table public.nokey has no primary key (nor replica identity index) to find the row by",
		"the before image lacks id, v: public.plain was captured without REPLICA IDENTITY FULL, so what the update replaced is not in the trail",
		"the before image lacks v: public.plain was captured without REPLICA IDENTITY FULL, so the deleted row is not in the trail",
	}
	if !slices.Equal(reasons, want) || p.SQL != "" {
		t.Errorf("unrevertable:\n%s\nwant:\n%s\nSQL: %q", strings.Join(reasons, "\n"), strings.Join(want, "\n"), p.SQL)
	}
	var refused revertPlan
	if status := a.call("POST", sel, map[string]any{"apply": true}, &refused); status != http.StatusUnprocessableEntity || refused.Applied {
		t.Errorf("apply: %d %+v, want 422", status, refused)
	}
	var e struct{ Error string }
	for q, want := range map[string]string{
		"":               "give exactly one of change=ID",
		"?change=x":      `change: "x" is not a change id`,
		"?transaction=7": `transaction: "7" is not DATABASE:TRANSACTION_ID`,
	} {
		if status := a.call("GET", "/api/v1/revert"+q, nil, &e); status != http.StatusBadRequest || !strings.Contains(e.Error, want) {
			t.Errorf("revert%s: %d %q, want 400 with %q", q, status, e.Error, want)
		}
	}
}
