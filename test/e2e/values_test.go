package e2e

import (
	"context"
	"strings"
	"testing"
	"time"
)

// Every type of design.md §6, with the JSON each must become.
var typeCases = []struct{ column, typ, literal, want string }{
	{"c_int2", "smallint", "32767", "32767"},
	{"c_int4", "integer", "-2147483648", "-2147483648"},
	{"c_int8", "bigint", "9223372036854775807", "9223372036854775807"},
	{"c_real", "real", "1.5", "1.5"},
	{"c_double", "double precision", "3.141592653589793", "3.141592653589793"},
	{"c_num", "numeric", "1.50", "1.50"},
	{"c_num_big", "numeric", "12345678901234567890.123456789", `"12345678901234567890.123456789"`},
	{"c_num_nan", "numeric", "'NaN'", `"NaN"`},
	{"c_money", "money", "1234.56", "1234.56"},
	{"c_bool", "boolean", "true", "true"},
	{"c_text", "text", `E'h\u00e9llo "q" \\ \n\t'`, `"héllo \"q\" \\ \n\t"`},
	{"c_varchar", "varchar(10)", "'abc'", `"abc"`},
	{"c_char", "char(5)", "'ab'", `"ab   "`},
	{"c_uuid", "uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`},
	{"c_enum", "mood", "'happy'", `"happy"`},
	{"c_inet", "inet", "'192.168.0.1/24'", `"192.168.0.1/24"`},
	{"c_cidr", "cidr", "'10.0.0.0/8'", `"10.0.0.0/8"`},
	{"c_interval", "interval", "'1 day 2 hours'", `"P1DT2H"`},
	{"c_range", "int4range", "'[1,5)'", `"[1,5)"`},
	{"c_json", "json", `'{"b": 1, "a": [1, 2]}'`, `{"a": [1, 2], "b": 1}`},
	{"c_jsonb", "jsonb", `'{"x": {"y": null}}'`, `{"x": {"y": null}}`},
	{"c_jsonb_arr", "jsonb", `'[1, "two", 3.5]'`, `[1, "two", 3.5]`},
	{"c_ts", "timestamp", "'2024-02-29 13:14:15.123456'", `"2024-02-29T13:14:15.123456"`},
	{"c_tstz", "timestamptz", "'2024-02-29 13:14:15.5+02'", `"2024-02-29T11:14:15.5Z"`},
	{"c_date", "date", "'2024-02-29'", `"2024-02-29"`},
	{"c_time", "time", "'13:14:15.000001'", `"13:14:15.000001"`},
	{"c_bytea", "bytea", `'\x00ff10'`, `"AP8Q"`},
	{"c_int_arr", "integer[]", "'{1,NULL,3}'", "[1, null, 3]"},
	{"c_text_arr", "text[]", `'{"a,b","c\"d",NULL}'`, `["a,b", "c\"d", null]`},
	{"c_int_2d", "integer[]", "'{{1,2},{3,4}}'", "[[1, 2], [3, 4]]"},
	{"c_enum_arr", "mood[]", "'{happy,sad}'", `["happy", "sad"]`},
	{"c_domain", "posint", "5", "5"},
	{"c_null", "text", "NULL", "null"},
}

func TestEveryTypeRoundTripsWithExactValues(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TYPE mood AS ENUM ('happy', 'sad'); CREATE DOMAIN posint AS integer CHECK (VALUE > 0)`)
	cols, lits := []string{"id int PRIMARY KEY"}, []string{"1"}
	for _, c := range typeCases {
		cols = append(cols, c.column+" "+c.typ)
		lits = append(lits, c.literal)
	}
	exec1(t, conn, "CREATE TABLE typed ("+strings.Join(cols, ", ")+")")
	cfg := writeConfig(t, url, "", "")
	if out, err := pgtrail(t, cfg, "setup"); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	start(t, cfg)
	exec1(t, conn, "INSERT INTO typed VALUES ("+strings.Join(lits, ", ")+")")
	exec1(t, conn, "UPDATE typed SET c_int4 = 7 WHERE id = 1")
	waitForChanges(t, conn, 2, 30*time.Second)

	for _, c := range typeCases {
		var got string
		err := conn.QueryRow(context.Background(),
			"SELECT (after -> $1)::text FROM pgtrail.changes WHERE operation = 'CREATE'", c.column).Scan(&got)
		if err != nil {
			t.Fatalf("%s: %v", c.column, err)
		}
		if got != c.want {
			t.Errorf("%s %s: stored %s, want %s", c.column, c.typ, got, c.want)
		}
	}
	// The update carries every column too (REPLICA IDENTITY DEFAULT, no TOAST).
	var same bool
	err := conn.QueryRow(context.Background(), `SELECT (u.after - 'c_int4') = (c.after - 'c_int4') AND u.after -> 'c_int4' = '7'
		FROM pgtrail.changes u, pgtrail.changes c WHERE u.operation = 'UPDATE' AND c.operation = 'CREATE'`).Scan(&same)
	if err != nil || !same {
		t.Fatalf("update image differs from the insert image beyond c_int4 (err %v)", err)
	}
}

func TestOperationsKeysAndReplicaIdentities(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE pk2 (a int, b text, v int, PRIMARY KEY (a, b));
		CREATE TABLE nokey (v int);
		CREATE TABLE nokey_full (v int); ALTER TABLE nokey_full REPLICA IDENTITY FULL;
		CREATE TABLE full_pk (id int PRIMARY KEY, v text); ALTER TABLE full_pk REPLICA IDENTITY FULL;
		CREATE TABLE t1 (id int PRIMARY KEY); CREATE TABLE t2 (id int PRIMARY KEY)`)
	cfg := writeConfig(t, url, "", "")
	if out, err := pgtrail(t, cfg, "setup"); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	start(t, cfg)
	for _, q := range []string{
		`INSERT INTO pk2 VALUES (1, 'x', 1)`,
		`UPDATE pk2 SET v = 2`,
		`UPDATE pk2 SET b = 'y'`,
		`DELETE FROM pk2`,
		`INSERT INTO nokey VALUES (1)`,
		`INSERT INTO nokey_full VALUES (1)`,
		`UPDATE nokey_full SET v = 2`,
		`DELETE FROM nokey_full`,
		`INSERT INTO full_pk VALUES (1, 'a')`,
		`UPDATE full_pk SET v = 'b'`,
		`DELETE FROM full_pk`,
		`INSERT INTO t1 VALUES (1); INSERT INTO t2 VALUES (2)`,
		`TRUNCATE t1, t2`,
	} {
		exec1(t, conn, q)
	}
	want := []string{
		`CREATE pk2[[1,"x"]] before={} after={"a": 1, "b": "x", "v": 1}`,
		`UPDATE pk2[[1,"x"]] before={} after={"a": 1, "b": "x", "v": 2}`,
		`UPDATE pk2[[1,"y"]] before={"a": 1, "b": "x"} after={"a": 1, "b": "y", "v": 2}`,
		`DELETE pk2[[1,"y"]] before={"a": 1, "b": "y"} after={}`,
		`CREATE nokey[] before={} after={"v": 1}`,
		`CREATE nokey_full[] before={} after={"v": 1}`,
		`UPDATE nokey_full[] before={"v": 1} after={"v": 2}`,
		`DELETE nokey_full[] before={"v": 2} after={}`,
		`CREATE full_pk[1] before={} after={"v": "a", "id": 1}`,
		`UPDATE full_pk[1] before={"v": "a", "id": 1} after={"v": "b", "id": 1}`,
		`DELETE full_pk[1] before={"v": "b", "id": 1} after={}`,
		`CREATE t1[1] before={} after={"id": 1}`,
		`CREATE t2[2] before={} after={"id": 2}`,
		`TRUNCATE t1[] before={} after={}`,
		`TRUNCATE t2[] before={} after={}`,
	}
	waitForChanges(t, conn, len(want), 30*time.Second)
	var got []string
	for _, r := range auditRows(t, conn) {
		got = append(got, r.Operation+" "+r.Table+"["+r.PrimaryKey+"] before="+r.Before+" after="+r.After)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("stored:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestUnchangedToastValues(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
		CREATE TABLE docs_full (id int PRIMARY KEY, body text, n int); ALTER TABLE docs_full REPLICA IDENTITY FULL`)
	cfg := writeConfig(t, url, "", "")
	if out, err := pgtrail(t, cfg, "setup"); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	start(t, cfg)
	// Incompressible and large, so PostgreSQL stores it out of line.
	big := `(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 500) i)`
	exec1(t, conn, `INSERT INTO docs VALUES (1, `+big+`, 0); INSERT INTO docs_full VALUES (1, `+big+`, 0)`)
	exec1(t, conn, `UPDATE docs SET n = 1; UPDATE docs_full SET n = 1`)
	waitForChanges(t, conn, 4, 30*time.Second)

	var hasBody bool
	var toast []string
	err := conn.QueryRow(context.Background(), `SELECT after ? 'body', unchanged_toast FROM pgtrail.changes
		WHERE "table" = 'docs' AND operation = 'UPDATE'`).Scan(&hasBody, &toast)
	if err != nil {
		t.Fatal(err)
	}
	if hasBody || strings.Join(toast, ",") != "body" {
		t.Fatalf("REPLICA IDENTITY DEFAULT: after has body=%v, unchanged_toast=%v; want the key left out and named", hasBody, toast)
	}
	var same bool
	err = conn.QueryRow(context.Background(), `SELECT u.after ->> 'body' = c.after ->> 'body' AND length(u.after ->> 'body') = 16000
		AND u.unchanged_toast IS NULL
		FROM pgtrail.changes u, pgtrail.changes c WHERE u."table" = 'docs_full' AND c."table" = 'docs_full'
		AND u.operation = 'UPDATE' AND c.operation = 'CREATE'`).Scan(&same)
	if err != nil || !same {
		t.Fatalf("REPLICA IDENTITY FULL: the unchanged value was not taken from the before image (err %v)", err)
	}
	// No placeholder ever reaches the table.
	if n := count(t, conn, `SELECT count(*) FROM pgtrail.changes WHERE after::text LIKE '%unchanged%' OR after::text LIKE '%unavailable%'`); n != 0 {
		t.Fatalf("%d changes hold a placeholder", n)
	}
}
