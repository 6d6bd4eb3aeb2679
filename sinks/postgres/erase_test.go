package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/plugins/sdk"
)

// rowTexts returns every audit row as text, by id.
func rowTexts(t testing.TB, conn *pgx.Conn) map[string]string {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT id::text, c::text FROM pgtrail.changes c`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for rows.Next() {
		var id, text string
		if err := rows.Scan(&id, &text); err != nil {
			t.Fatal(err)
		}
		out[id] = text
	}
	return out
}

// TestEraseRemovesTheSubjectsValuesAndCompletesAfterAnInterruption stores
// the history of public.users 42 among other rows, interrupts an erasure
// midway (a trigger fails the fourth rewritten row), and runs it again: the
// subject's values (and the matching context values) are gone from every
// row of its history, every other row is byte for byte as it was, the
// changes themselves stay, and the erasure is logged once, without values.
func TestEraseRemovesTheSubjectsValuesAndCompletesAfterAnInterruption(t *testing.T) {
	s, url := openSink(t, map[string]any{})
	ctx := context.Background()
	at := time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)
	mk := func(i int, table, op, key, before, after, cx string) *sdk.Change {
		return &sdk.Change{ID: uuid.New(), Database: "app", Schema: "public", Table: table, Operation: change.Operation(op), PrimaryKey: key,
			Before: json.RawMessage(before), After: json.RawMessage(after), Context: json.RawMessage(cx),
			CommittedAt: at.Add(time.Duration(i) * time.Minute), QueuedAt: at, LSN: uint64(i + 1), CommitLSN: uint64(i + 1)}
	}
	subject := []*sdk.Change{
		mk(0, "users", "CREATE", "42", `{}`, `{"id":42,"name":"Ann Secret","email":"ann@secret.example","note":null}`, `{"user_id":42,"endpoint":"/signup"}`),
		mk(1, "users", "UPDATE", "42", `{"id":42,"name":"Ann Secret","email":"ann@secret.example","note":null}`, `{"id":42,"name":"Ann Secret","email":"ann2@secret.example","note":null}`, `{"user_id":42}`),
		mk(2, "users", "UPDATE", "42", `{"id":42,"name":"Ann Secret","email":"ann2@secret.example","note":null}`, `{"id":42,"name":"Ann B Secret","email":"ann2@secret.example","note":"x"}`, `{"user_id":1}`),
		mk(3, "users", "DELETE", "42", `{"id":42,"name":"Ann B Secret","email":"ann2@secret.example","note":"x"}`, `{}`, `{}`),
	}
	byUser := mk(4, "orders", "CREATE", "7", `{}`, `{"id":7,"total":5}`, `{"user_id":42,"endpoint":"/orders"}`)
	others := []*sdk.Change{
		mk(5, "users", "CREATE", "43", `{}`, `{"id":43,"name":"Bob","email":"bob@example.com"}`, `{"user_id":43}`),
		mk(6, "orders", "CREATE", "42", `{}`, `{"id":42,"total":9}`, `{"user_id":1}`), // same key, other table
		mk(7, "accounts", "UPDATE", "42", `{"id":42}`, `{"id":42,"users":1}`, `{}`),
	}
	if _, err := s.Write(ctx, append(append(append([]*sdk.Change{}, subject...), byUser), others...)); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	before := rowTexts(t, conn)

	e := Erasure{Schema: "public", Table: "users", PrimaryKey: "42", Context: map[string]any{"user_id": 42.0}, By: "dpo@example.com", BatchSize: 2}
	if rep, err := s.Erase(ctx, Erasure{Schema: "public", Table: "users", PrimaryKey: "42", Context: e.Context, DryRun: true}); err != nil || rep.Rows != 5 {
		t.Fatalf("dry run: %+v, %v; want 5 rows (4 of the history, 1 by the user)", rep, err)
	}
	if _, err := conn.Exec(ctx, `CREATE SEQUENCE boom;
		CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF nextval('boom') > 3 THEN RAISE EXCEPTION 'interrupted'; END IF; RETURN NEW; END $$;
		CREATE TRIGGER boom BEFORE UPDATE ON pgtrail.changes FOR EACH ROW EXECUTE FUNCTION boom()`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Erase(ctx, e); err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("first run: %v, want the trigger's interruption", err)
	}
	var logged, half int64
	if err := conn.QueryRow(ctx, `SELECT count(*), sum(rows) FROM pgtrail.erasures WHERE finished_at IS NULL`).Scan(&logged, &half); err != nil || logged != 1 || half != 2 {
		t.Fatalf("after the interruption: %d unfinished erasures with %d rows (%v), want 1 with 2 (one batch)", logged, half, err)
	}
	if _, err := conn.Exec(ctx, `DROP TRIGGER boom ON pgtrail.changes`); err != nil {
		t.Fatal(err)
	}
	rep, err := s.Erase(ctx, e)
	if err != nil || !rep.Resumed || rep.Rows != 3 {
		t.Fatalf("second run: %+v, %v; want the erasure resumed with the 3 rows left", rep, err)
	}

	after := rowTexts(t, conn)
	touched := map[string]bool{byUser.ID.String(): true}
	for _, c := range subject {
		touched[c.ID.String()] = true
	}
	for id, text := range before {
		if !touched[id] && after[id] != text {
			t.Errorf("row %s changed:\n%s\n%s", id, text, after[id])
		}
	}
	for _, c := range subject {
		text := after[c.ID.String()]
		for _, v := range []string{"Ann", "secret.example", `"x"`, `"primary_key": "42"`, `"user_id": 42`, ":42"} {
			if strings.Contains(text, v) {
				t.Errorf("erased row still holds %s: %s", v, text)
			}
		}
		if !strings.Contains(text, `"operation": "`+string(c.Operation)+`"`) && !strings.Contains(text, ","+string(c.Operation)+",") {
			t.Errorf("the change itself is gone: %s", text)
		}
	}
	var a, cx, key string
	if err := conn.QueryRow(ctx, `SELECT after::text, context::text, primary_key FROM pgtrail.changes WHERE id = $1`, subject[2].ID).Scan(&a, &cx, &key); err != nil {
		t.Fatal(err)
	}
	if a != `{"id": "pgtrail:erased", "name": "pgtrail:erased", "note": "pgtrail:erased", "email": "pgtrail:erased"}` || cx != `{"user_id": 1}` || key != Tombstone {
		t.Fatalf("erased update: after %s context %s key %s", a, cx, key)
	}
	if err := conn.QueryRow(ctx, `SELECT after::text, context::text FROM pgtrail.changes WHERE id = $1`, byUser.ID).Scan(&a, &cx); err != nil {
		t.Fatal(err)
	}
	if a != `{"id": 7, "total": 5}` || cx != `{"user_id": "pgtrail:erased", "endpoint": "/orders"}` {
		t.Fatalf("change by the user: after %s context %s; want only the context's user_id erased", a, cx)
	}
	var log string
	if err := conn.QueryRow(ctx, `SELECT format('%s|%s|%s|%s|%s', ran_by, requested_by, audit_table, filter, rows) FROM pgtrail.erasures WHERE finished_at IS NOT NULL`).Scan(&log); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`%s|dpo@example.com|pgtrail.changes|{"table": "users", "schema": "public", "context_keys": ["user_id"]}|5`, "postgres")
	if log != want {
		t.Fatalf("erasure log %s, want %s", log, want)
	}

	// Without --where-context only the row's history is rewritten.
	before = rowTexts(t, conn)
	if rep, err := s.Erase(ctx, Erasure{Schema: "public", Table: "users", PrimaryKey: "43"}); err != nil || rep.Rows != 1 || rep.Resumed {
		t.Fatalf("erase users 43: %+v, %v; want 1 row", rep, err)
	}
	after = rowTexts(t, conn)
	for id, text := range before {
		if changed := after[id] != text; changed != (id == others[0].ID.String()) {
			t.Errorf("row %s changed %v:\n%s\n%s", id, changed, text, after[id])
		}
	}
}
