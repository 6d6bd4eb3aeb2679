package debezium

import (
	"context"
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/test/pgtest"
)

// The real catalog query against a real server: exact column types, keys and
// replica identities, and a fresh read after ALTER TABLE.
func TestPostgresCatalog(t *testing.T) {
	cluster, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Stop)
	url := cluster.NewDatabase(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	exec := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	bed, err := os.ReadFile("testdata/recorded/schema.sql")
	if err != nil {
		t.Fatal(err)
	}
	exec(string(bed))
	exec(`ALTER TABLE docs REPLICA IDENTITY FULL`) // as the bed's toast scenario leaves it
	pc, _ := pgx.ParseConfig(url)
	db := pc.Database

	cat := NewPostgresCatalog(url)
	defer cat.Close(ctx)
	start := time.Now()
	for name, want := range bedTables() {
		got, err := cat.Table(ctx, "public", strings.TrimPrefix(name, "public."))
		if err != nil {
			t.Fatal(err)
		}
		if got == nil {
			t.Fatalf("%s: not found", name)
		}
		if got.Database != db || got.ReadAt.Before(start.Add(-time.Minute)) || got.ReadAt.After(time.Now().Add(time.Minute)) {
			t.Errorf("%s: read from %q at %s, want %q now", name, got.Database, got.ReadAt, db)
		}
		got.Database, got.ReadAt = "", time.Time{}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %+v\nwant %+v", name, got, want)
		}
	}
	if got, err := cat.Table(ctx, "public", "nope"); got != nil || err != nil {
		t.Fatalf("missing table: %v %v, want nil, nil", got, err)
	}

	// Domains are their base type with the domain's modifier; enums and
	// other types outside pg_catalog are untyped.
	exec(`CREATE TYPE mood AS ENUM ('happy', 'sad');
		CREATE DOMAIN price AS numeric(8,3);
		CREATE TABLE odd (id bigint, p price, m mood, ms mood[], b bit(4), vb varbit, tz1 timetz(1), n52 numeric(5,2)[]);
		ALTER TABLE odd REPLICA IDENTITY NOTHING`)
	got, err := cat.Table(ctx, "public", "odd")
	if err != nil {
		t.Fatal(err)
	}
	got.Database, got.ReadAt = "", time.Time{}
	want := &Table{Columns: []Column{col("id", "int8"), mod(col("p", "numeric"), numericMod(8, 3)), col("m", ""), array(col("ms", "")),
		mod(col("b", "bit"), 4), col("vb", "varbit"), mod(col("tz1", "timetz"), 1), mod(array(col("n52", "numeric")), numericMod(5, 2))},
		ReplicaIdentity: 'n'}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("odd:\n got %+v\nwant %+v", got, want)
	}

	// Through a decoder: read once, and again for a column added since.
	d := NewDecoder(Config{Catalog: cat})
	todo := func(after string) []byte {
		b, _ := json.Marshal(map[string]any{"op": "c", "before": nil, "after": json.RawMessage(after),
			"source": map[string]any{"db": db, "schema": "public", "table": "todos", "txId": 9, "lsn": 1, "ts_us": time.Now().UnixMicro()}})
		return b
	}
	if got := decodeOne(t, d, todo(`{"id":1,"task":"a","done":false}`)); got != `CREATE public.todos[1] before={} after={"id":1,"task":"a","done":false}` {
		t.Fatalf("got %s", got)
	}
	exec(`ALTER TABLE todos ADD COLUMN due timestamp(3), ADD COLUMN cost numeric(6,2)`)
	if got := decodeOne(t, d, todo(`{"id":2,"task":"b","done":true,"due":1704164645123,"cost":"MDk="}`)); got != `CREATE public.todos[2] before={} after={"id":2,"task":"b","done":true,"due":"2024-01-02T03:04:05.123","cost":123.45}` {
		t.Fatalf("after ALTER TABLE ADD COLUMN: %s", got)
	}

	exec(`ALTER TABLE users REPLICA IDENTITY FULL`)
	if got, _ := cat.Table(ctx, "public", "users"); got.ReplicaIdentity != 'f' || got.Identity != nil || !reflect.DeepEqual(got.PrimaryKey, []string{"id"}) {
		t.Fatalf("after REPLICA IDENTITY FULL: %+v", got)
	}

	// A connection the server ended is opened again.
	exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgtrail-catalog'`)
	if _, err := cat.Table(ctx, "public", "users"); err != nil {
		t.Fatalf("after the server closed the connection: %v", err)
	}

	if err := CheckCatalog(ctx, url); err != nil {
		t.Fatal(err)
	}
	down := "postgres://postgres:postgres@127.0.0.1:1/" + db
	for _, err := range []error{CheckCatalog(ctx, down), func() error { _, err := NewPostgresCatalog(down).Table(ctx, "public", "users"); return err }()} {
		if err == nil || !strings.HasPrefix(err.Error(), "source.debezium.catalog: connect to the source database: ") {
			t.Errorf("unreachable: %v", err)
		}
	}
}
