package e2e

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// The activity log's API, tested on trails made by real captured changes:
// `pgtrail run` with a ui: section serves it on http.listen.

// apiChange is a change as the API returns it.
type apiChange struct {
	ID             string                        `json:"id"`
	PrimaryKey     *string                       `json:"primary_key"`
	Before         json.RawMessage               `json:"before"`
	After          json.RawMessage               `json:"after"`
	Context        json.RawMessage               `json:"context"`
	Database       string                        `json:"database"`
	Schema         string                        `json:"schema"`
	Table          string                        `json:"table"`
	Operation      string                        `json:"operation"`
	CommittedAt    time.Time                     `json:"committed_at"`
	TransactionID  int64                         `json:"transaction_id"`
	Position       int64                         `json:"position"`
	Seq            int32                         `json:"seq"`
	UnchangedToast []string                      `json:"unchanged_toast"`
	Diff           map[string][2]json.RawMessage `json:"diff"`
}

// String is the change in a form tests compare: operation table[key].
func (c apiChange) String() string {
	pk := ""
	if c.PrimaryKey != nil {
		pk = *c.PrimaryKey
	}
	return c.Operation + " " + c.Table + "[" + pk + "]"
}

type apiPage struct {
	Changes       []apiChange `json:"changes"`
	NextCursor    *string     `json:"next_cursor"`
	SearchBounded bool        `json:"search_bounded"`
}

// api is a served activity log.
type api struct {
	t     *testing.T
	base  string // http://127.0.0.1:port
	token string
	cfg   string // the config file, for CLI commands
}

// call sends a request and decodes the JSON answer into out (when not nil),
// returning the status.
func (a api) call(method, path string, body any, out any) int {
	a.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, a.base+path, rd)
	if err != nil {
		a.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		a.t.Fatal(err)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			a.t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, raw, err)
		}
	}
	return resp.StatusCode
}

// get fetches path, which must answer 200, into out.
func (a api) get(path string, out any) {
	a.t.Helper()
	if status := a.call("GET", path, nil, out); status != http.StatusOK {
		a.t.Fatalf("GET %s: status %d, want 200 (%+v)", path, status, out)
	}
}

// list fetches /api/v1/changes with the query.
func (a api) list(query string) apiPage {
	a.t.Helper()
	var p apiPage
	a.get("/api/v1/changes?"+query, &p)
	return p
}

// startActivityLog sets up capture of url and starts `pgtrail run` serving
// the API (extraUI is added under ui:).
func startActivityLog(t *testing.T, url, extraUI string) (*pgx.Conn, api) {
	t.Helper()
	port := freePort(t)
	extra := fmt.Sprintf("http:\n  listen: 127.0.0.1:%d\nui:\n  statement_timeout: 5s\n%s", port, extraUI)
	conn, cfg, _ := setupAndStart(t, url, extra, "")
	return conn, api{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", port), cfg: cfg}
}

// strs lists the changes as strings, for comparing sequences.
func strs(cs []apiChange) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.String()
	}
	return out
}

func wantChanges(t *testing.T, what string, got []apiChange, want ...string) {
	t.Helper()
	if !slices.Equal(strs(got), want) {
		t.Errorf("%s:\n got %q\nwant %q", what, strs(got), want)
	}
}

// jsonEq compares JSON texts by value.
func jsonEq(a, b string) bool {
	var x, y any
	return json.Unmarshal([]byte(a), &x) == nil && json.Unmarshal([]byte(b), &y) == nil &&
		fmt.Sprint(x) == fmt.Sprint(y)
}

// txn runs statements in one transaction.
func txn(t *testing.T, conn *pgx.Conn, stmts ...string) {
	t.Helper()
	tx, err := conn.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range stmts {
		if _, err := tx.Exec(context.Background(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// bigText is a value PostgreSQL stores out of line (TOAST): long, and
// random enough not to compress below the threshold.
func bigText(seed string) string {
	var b strings.Builder
	for i := 0; b.Len() < 12000; i++ {
		fmt.Fprintf(&b, "%s-%d-%x ", seed, i, i*2654435761)
	}
	return b.String()
}

func TestActivityLogAPIReadsACapturedTrail(t *testing.T) {
	dbURL := cluster.NewDatabase(t)
	db := dbURL[strings.LastIndexByte(dbURL, '/')+1 : strings.IndexByte(dbURL, '?')]
	c := connect(t, dbURL)
	exec1(t, c, `CREATE TABLE items (id int PRIMARY KEY, name text, qty int, price numeric(12,2), tags text[], meta jsonb, body text);
		ALTER TABLE items REPLICA IDENTITY FULL;
		CREATE TABLE lines (order_id int, line int, sku text, qty int, PRIMARY KEY (order_id, line));
		ALTER TABLE lines REPLICA IDENTITY FULL;
		CREATE TABLE notes (id int PRIMARY KEY, title text, body text)`) // default replica identity
	conn, a := startActivityLog(t, dbURL, "")
	_ = c

	body := bigText("toast")
	txn(t, conn, `SELECT pgtrail.set_context('{"user_id":42,"request":"r1"}')`,
		`INSERT INTO items VALUES (1, 'one', 1, 9.99, '{a,b}', '{"color":"red","size":{"w":1,"h":2}}', 'short'),
			(2, 'two', 2, 19.99, '{}', '{}', 'short'), (3, 'three', 3, 0.5, NULL, NULL, NULL)`,
		`INSERT INTO lines VALUES (1, 1, 'sku-1', 1), (1, 2, 'sku-2', 1)`)
	txn(t, conn, `SELECT pgtrail.set_context('{"user_id":7,"request":"r2"}')`,
		`UPDATE items SET qty = 5, meta = jsonb_set(meta, '{size,h}', '3') WHERE id = 1`,
		`UPDATE lines SET qty = 3 WHERE order_id = 1 AND line = 2`)
	txn(t, conn, `UPDATE items SET body = '`+body+`' WHERE id = 2`)
	txn(t, conn, `SELECT pgtrail.set_context('{"user_id":42,"request":"r4"}')`,
		`UPDATE items SET name = 'zwei' WHERE id = 2`)
	txn(t, conn, `SELECT pgtrail.set_context('{"user_id":7,"request":"r5"}')`,
		`DELETE FROM items WHERE id = 3`, `DELETE FROM lines WHERE order_id = 1 AND line = 1`)
	txn(t, conn, `INSERT INTO notes VALUES (1, 'first', '`+body+`')`)
	txn(t, conn, `UPDATE notes SET title = 'renamed' WHERE id = 1`) // body: unchanged TOAST, not sent
	waitForChanges(t, conn, 13, 30*time.Second)

	all := a.list("limit=1000")
	newestFirst := []string{"UPDATE notes[1]", "CREATE notes[1]", "DELETE lines[[1,1]]", "DELETE items[3]",
		"UPDATE items[2]", "UPDATE items[2]", "UPDATE lines[[1,2]]", "UPDATE items[1]",
		"CREATE lines[[1,2]]", "CREATE lines[[1,1]]", "CREATE items[3]", "CREATE items[2]", "CREATE items[1]"}
	wantChanges(t, "all changes, newest first", all.Changes, newestFirst...)
	if all.NextCursor != nil {
		t.Errorf("next_cursor = %q on the last page, want null", *all.NextCursor)
	}
	byStr := map[string]apiChange{}
	for _, ch := range all.Changes {
		if _, dup := byStr[ch.String()]; !dup {
			byStr[ch.String()] = ch
		}
	}
	t1, t2 := byStr["CREATE items[1]"], byStr["UPDATE items[1]"]
	t4 := all.Changes[4] // UPDATE items[2] name
	del := byStr["DELETE items[3]"]

	t.Run("each change carries the audit table's columns and the diff of what it changed", func(t *testing.T) {
		if t1.Database != db || t1.Schema != "public" || !jsonEq(string(t1.Context), `{"user_id":42,"request":"r1"}`) {
			t.Errorf("CREATE items[1]: database %q schema %q context %s", t1.Database, t1.Schema, t1.Context)
		}
		if len(t1.Diff) != 7 || string(t1.Diff["name"][0]) != "null" || string(t1.Diff["name"][1]) != `"one"` {
			t.Errorf("CREATE diff = %s, want every column from null", mustJSON(t1.Diff))
		}
		if len(t2.Diff) != 2 || string(t2.Diff["qty"][0]) != "1" || string(t2.Diff["qty"][1]) != "5" ||
			!jsonEq(string(t2.Diff["meta"][1]), `{"color":"red","size":{"w":1,"h":3}}`) {
			t.Errorf("UPDATE diff = %s, want qty and meta only", mustJSON(t2.Diff))
		}
		if len(del.Diff) != 7 || string(del.Diff["price"][0]) != "0.50" || string(del.Diff["price"][1]) != "null" {
			t.Errorf("DELETE diff = %s, want every column to null", mustJSON(del.Diff))
		}
		toast := all.Changes[5] // UPDATE items[2] body
		var after struct{ Body string }
		_ = json.Unmarshal(toast.After, &after)
		if after.Body != body || len(toast.Diff) != 1 {
			t.Errorf("TOAST update: body of %d characters, diff %v; want %d, body only", len(after.Body), keys(toast.Diff), len(body))
		}
		var one apiChange
		a.get("/api/v1/changes/"+t2.ID, &one)
		if one.ID != t2.ID || one.String() != "UPDATE items[1]" || len(one.Diff) != 2 {
			t.Errorf("GET /changes/{id} = %v", one)
		}
	})

	t.Run("every filter selects exactly its changes", func(t *testing.T) {
		cases := []struct {
			query string
			want  []string
		}{
			{"table=lines", []string{"DELETE lines[[1,1]]", "UPDATE lines[[1,2]]", "CREATE lines[[1,2]]", "CREATE lines[[1,1]]"}},
			{"table=public.notes", []string{"UPDATE notes[1]", "CREATE notes[1]"}},
			{"schema=public&table=notes&operation=update", []string{"UPDATE notes[1]"}},
			{"schema=other", nil},
			{"database=" + db + "&operation=DELETE", []string{"DELETE lines[[1,1]]", "DELETE items[3]"}},
			{"operation=DELETE,CREATE&table=items", []string{"DELETE items[3]", "CREATE items[3]", "CREATE items[2]", "CREATE items[1]"}},
			{"table=items&primary_key=1", []string{"UPDATE items[1]", "CREATE items[1]"}},
			{"primary_key=" + url.QueryEscape("[1,2]"), []string{"UPDATE lines[[1,2]]", "CREATE lines[[1,2]]"}},
			{fmt.Sprintf("transaction_id=%d", t2.TransactionID), []string{"UPDATE lines[[1,2]]", "UPDATE items[1]"}},
			{"since=" + url.QueryEscape(t2.CommittedAt.Format(time.RFC3339Nano)) + "&until=" + url.QueryEscape(t4.CommittedAt.Format(time.RFC3339Nano)),
				[]string{"UPDATE items[2]", "UPDATE lines[[1,2]]", "UPDATE items[1]"}},
			{"context=" + url.QueryEscape(`{"user_id":42}`), []string{"UPDATE items[2]", "CREATE lines[[1,2]]", "CREATE lines[[1,1]]",
				"CREATE items[3]", "CREATE items[2]", "CREATE items[1]"}},
			{"context=" + url.QueryEscape(`{"user_id":7,"request":"r5"}`), []string{"DELETE lines[[1,1]]", "DELETE items[3]"}},
			{"q=ZWEI", []string{"UPDATE items[2]"}},
			{"q=sku-1", []string{"DELETE lines[[1,1]]", "CREATE lines[[1,1]]"}},
			{"q=" + url.QueryEscape("50%"), nil}, // % is literal, not a wildcard
			{"q=renamed&table=notes", []string{"UPDATE notes[1]"}},
		}
		for _, tc := range cases {
			p := a.list(tc.query + "&limit=1000")
			wantChanges(t, tc.query, p.Changes, tc.want...)
		}
	})

	t.Run("bad filters are refused naming the parameter", func(t *testing.T) {
		for query, want := range map[string]string{
			"operation=MERGE":       `operation: "MERGE" is not one of CREATE, UPDATE, DELETE, TRUNCATE`,
			"since=yesterday":       `since: "yesterday" is not an RFC 3339 time`,
			"until=2026-13-01":      `until: "2026-13-01" is not an RFC 3339 time`,
			"context=%5B1%5D":       `context: "[1]" is not a JSON object`,
			"limit=1001":            `limit: "1001" is not a number from 1 to 1000`,
			"limit=0":               `limit: "0" is not a number from 1 to 1000`,
			"cursor=abc":            `cursor: not a cursor from next_cursor`,
			"transaction_id=x":      `transaction_id: "x" is not a whole number`,
			"user=42":               `unknown parameter "user"`,
			"table=items&sort=desc": `unknown parameter "sort"`,
		} {
			var e struct{ Error string }
			if status := a.call("GET", "/api/v1/changes?"+query, nil, &e); status != http.StatusBadRequest || !strings.Contains(e.Error, want) {
				t.Errorf("?%s: %d %q, want 400 with %q", query, status, e.Error, want)
			}
		}
		var e struct{ Error string }
		if status := a.call("GET", "/api/v1/changes/not-a-uuid", nil, &e); status != http.StatusBadRequest {
			t.Errorf("/changes/not-a-uuid: %d %q, want 400", status, e.Error)
		}
		if status := a.call("GET", "/api/v1/changes/00000000-0000-0000-0000-000000000000", nil, &e); status != http.StatusNotFound || e.Error == "" {
			t.Errorf("/changes/{unknown}: %d %q, want 404 with an error", status, e.Error)
		}
		if status := a.call("GET", "/api/v1/nothing", nil, &e); status != http.StatusNotFound || !strings.Contains(e.Error, "no such API path") {
			t.Errorf("/api/v1/nothing: %d %q, want 404", status, e.Error)
		}
		if status := a.call("GET", "/api/v1/as-of/public.items/1", nil, &e); status != http.StatusBadRequest || !strings.Contains(e.Error, "at: required") {
			t.Errorf("as-of without at: %d %q", status, e.Error)
		}
	})

	t.Run("a record's history is its changes oldest first, composite keys too", func(t *testing.T) {
		var p apiPage
		a.get("/api/v1/history/public.items/1", &p)
		wantChanges(t, "history of items 1", p.Changes, "CREATE items[1]", "UPDATE items[1]")
		p = apiPage{}
		a.get("/api/v1/history/public.lines/"+url.PathEscape("[1,2]"), &p)
		wantChanges(t, "history of lines [1,2]", p.Changes, "CREATE lines[[1,2]]", "UPDATE lines[[1,2]]")
		if len(p.Changes) == 2 && (len(p.Changes[1].Diff) != 1 || string(p.Changes[1].Diff["qty"][1]) != "3") {
			t.Errorf("diff of the line's update = %s", mustJSON(p.Changes[1].Diff))
		}
		p = apiPage{}
		a.get("/api/v1/history/public.items/2?limit=2", &p)
		wantChanges(t, "first page of items 2", p.Changes, "CREATE items[2]", "UPDATE items[2]")
		if p.NextCursor == nil {
			t.Fatal("history of 3 changes by 2: no next_cursor")
		}
		next := *p.NextCursor
		p = apiPage{}
		a.get("/api/v1/history/public.items/2?limit=2&cursor="+next, &p)
		wantChanges(t, "second page of items 2", p.Changes, "UPDATE items[2]")
	})

	t.Run("a transaction's changes come in order", func(t *testing.T) {
		var p apiPage
		a.get(fmt.Sprintf("/api/v1/transactions/%s/%d", db, t1.TransactionID), &p)
		wantChanges(t, "transaction 1", p.Changes, "CREATE items[1]", "CREATE items[2]", "CREATE items[3]",
			"CREATE lines[[1,1]]", "CREATE lines[[1,2]]")
		var e struct{ Error string }
		if status := a.call("GET", fmt.Sprintf("/api/v1/transactions/%s/1", db), nil, &e); status != http.StatusNotFound {
			t.Errorf("unknown transaction: %d %q, want 404", status, e.Error)
		}
	})

	t.Run("as-of gives the row as it was at its boundaries", func(t *testing.T) {
		type state struct {
			Row    map[string]json.RawMessage `json:"row"`
			Change *struct{ ID string }       `json:"change"`
			Image  string                     `json:"image"`
		}
		asOf := func(record string, at time.Time) state {
			var s state
			a.get("/api/v1/as-of/"+record+"?at="+url.QueryEscape(at.Format(time.RFC3339Nano)), &s)
			return s
		}
		us := time.Microsecond
		if s := asOf("public.items/1", t1.CommittedAt.Add(-us)); s.Row != nil || s.Change == nil || s.Change.ID != t1.ID || s.Image != "before" {
			t.Errorf("items 1 just before its insert: %+v, want row null (from the insert)", s)
		}
		if s := asOf("public.items/1", t1.CommittedAt); string(s.Row["qty"]) != "1" || s.Change.ID != t1.ID {
			t.Errorf("items 1 at its insert: %+v, want qty 1", s)
		}
		if s := asOf("public.items/1", t2.CommittedAt.Add(-us)); string(s.Row["qty"]) != "1" {
			t.Errorf("items 1 just before its update: %+v, want qty 1", s)
		}
		if s := asOf("public.items/1", t2.CommittedAt); string(s.Row["qty"]) != "5" || s.Change.ID != t2.ID {
			t.Errorf("items 1 at its update: %+v, want qty 5", s)
		}
		if s := asOf("public.items/3", del.CommittedAt.Add(-us)); string(s.Row["name"]) != `"three"` {
			t.Errorf("items 3 just before its delete: %+v, want the row", s)
		}
		if s := asOf("public.items/3", del.CommittedAt); s.Row != nil || s.Change.ID != del.ID {
			t.Errorf("items 3 at its delete: %+v, want row null", s)
		}
		if s := asOf("public.items/3", time.Now().Add(time.Hour)); s.Row != nil {
			t.Errorf("items 3 after its delete: %+v, want row null", s)
		}
		// The rename of a note without REPLICA IDENTITY FULL did not send its
		// TOAST body: as-of takes it from the insert.
		rename := all.Changes[0]
		s := asOf("public.notes/1", rename.CommittedAt)
		var b string
		_ = json.Unmarshal(s.Row["body"], &b)
		if !slices.Equal(rename.UnchangedToast, []string{"body"}) || string(s.Row["title"]) != `"renamed"` || b != body {
			t.Errorf("notes 1 after the rename: unchanged_toast %v, title %s, body of %d characters; want [body], renamed, %d",
				rename.UnchangedToast, s.Row["title"], len(b), len(body))
		}
	})

	t.Run("export streams the filtered changes as NDJSON and CSV", func(t *testing.T) {
		resp, err := http.Get(a.base + "/api/v1/export?format=ndjson&table=items")
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var got []apiChange
		for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
			var ch apiChange
			if err := json.Unmarshal([]byte(line), &ch); err != nil {
				t.Fatalf("NDJSON line %q: %v", line, err)
			}
			got = append(got, ch)
		}
		wantChanges(t, "NDJSON export of items", got, "DELETE items[3]", "UPDATE items[2]", "UPDATE items[2]", "UPDATE items[1]",
			"CREATE items[3]", "CREATE items[2]", "CREATE items[1]")
		if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
			t.Errorf("Content-Type %q", ct)
		}
		resp, err = http.Get(a.base + "/api/v1/export?format=csv&context=" + url.QueryEscape(`{"user_id":7}`))
		if err != nil {
			t.Fatal(err)
		}
		records, err := csv.NewReader(resp.Body).ReadAll()
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(records) != 5 || records[0][0] != "id" || records[0][5] != "operation" || records[1][5] != "DELETE" || records[1][6] != "[1,1]" {
			t.Errorf("CSV export: %q", records)
		}
		if !strings.Contains(resp.Header.Get("Content-Disposition"), ".csv") {
			t.Errorf("Content-Disposition %q", resp.Header.Get("Content-Disposition"))
		}
	})

	t.Run("pages neither skip nor repeat a change while new changes arrive", func(t *testing.T) {
		var got []apiChange
		p := a.list("limit=4")
		for i := 0; ; i++ {
			got = append(got, p.Changes...)
			if p.NextCursor == nil {
				break
			}
			// New changes land between pages, newer than every page.
			exec1(t, conn, fmt.Sprintf(`INSERT INTO notes VALUES (%d, 'new', 'x')`, 100+i))
			waitForChanges(t, conn, 13+i+1, 30*time.Second)
			p = a.list("limit=4&cursor=" + url.QueryEscape(*p.NextCursor))
		}
		if len(got) != 13 {
			t.Errorf("paged through %d changes, want 13", len(got))
		}
		for i := range min(len(got), len(all.Changes)) {
			if got[i].ID != all.Changes[i].ID {
				t.Fatalf("change %d of the pages is %v, want %v", i, got[i], all.Changes[i])
			}
		}
	})
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
