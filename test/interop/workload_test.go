//go:build interop

package interop

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"
)

// schema is the bed's tables, kept with the events recorded from them, whose
// tests create them too.
var schema = func() string {
	b, err := os.ReadFile(filepath.Join("..", "..", "transports", "debezium", "testdata", "recorded", "schema.sql"))
	if err != nil {
		panic(err)
	}
	return string(b)
}()

type scenario struct {
	name string
	run  func(t *testing.T, conn *pgx.Conn)
}

func statements(qs ...string) func(t *testing.T, conn *pgx.Conn) {
	return func(t *testing.T, conn *pgx.Conn) {
		for _, q := range qs {
			exec1(t, conn, q)
		}
	}
}

// scenarios run in order; each is recorded as a fixture of its own.
var scenarios = []scenario{
	{"bemi_context", func(t *testing.T, conn *pgx.Conn) {
		statements(
			`INSERT INTO todos VALUES (1, 'a') /*Bemi {"endpoint":"/todos","userId":1} Bemi*/`,
			`INSERT INTO todos VALUES (2, 'b'), (3, 'c') /*Bemi {"endpoint":"/bulk","userId":2} Bemi*/`,
		)(t, conn)
		err := pgx.BeginFunc(context.Background(), conn, func(tx pgx.Tx) error {
			for _, q := range []string{
				`UPDATE todos SET task = 'a2' WHERE id = 1 /*Bemi {"op":"first"} Bemi*/`,
				`INSERT INTO users VALUES (1, 'ann')`,
				`INSERT INTO users VALUES (2, 'bob') /*Bemi {"op":"second"} Bemi*/`,
				`UPDATE users SET name = 'bo' WHERE id = 2`,
				`SELECT pgtrail.set_context('{"user":"ann"}')`,
				`UPDATE users SET name = 'an' WHERE id = 1`,
			} {
				if _, err := tx.Exec(context.Background(), q); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		statements(
			`INSERT INTO comments VALUES (10, 2, 'x'), (11, 2, 'y')`,
			`DELETE FROM todos WHERE id = 2 /*Bemi {"endpoint":"/delete"} Bemi*/`,
			`UPDATE todos SET done = true WHERE id = 3 /*Bemi not json Bemi*/`,
		)(t, conn)
	}},
	{"types", statements(
		`INSERT INTO typed VALUES (1, 12.30, 1.5, '2024-01-02 03:04:05.5+02', '2024-01-02', '2024-01-02 03:04:05.123',
			'03:04:05.5', '{"x": [1, 2], "s": "é"}', '{a,"b c",NULL}', '\x0102ff', 1.5, 1.1, '1 day 02:03:04.5',
			'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 9007199254740993, '-1234.5', '03:04:05.25+02', '2024-01-02 03:04:05.123456') /*Bemi {"userId":3} Bemi*/`,
		`INSERT INTO typed VALUES (2, -0.05, 12345678901234567890.123, '1999-12-31 23:59:59+00', '1970-01-01', '2000-01-01 00:00:00',
			'00:00:00', 'null', '{}', '\x', 1e20, -2.5, '-1 mon', NULL, -1, 0, '23:59:59-01', '1970-01-01')`,
		`UPDATE typed SET price = 99999999.99, meta = '[1, "two"]', iv = '1 year 2 mons 3 days 04:05:06.78' WHERE id = 1`,
		// JSON string scalars: Debezium's Json is the JSON text, quotes included.
		`UPDATE typed SET meta = '"hello"' WHERE id = 1`,
		`UPDATE typed SET meta = '"42"' WHERE id = 1`,
		`DELETE FROM typed WHERE id = 2`,
	)},
	{"catalog", statements(
		// ident has REPLICA IDENTITY USING INDEX; precise, types whose
		// encoding depends on the declared precision or scale.
		`INSERT INTO ident VALUES (1, 'a', 1), (2, 'b', 2)`,
		`UPDATE ident SET v = 10 WHERE id = 1`,
		`UPDATE ident SET code = 'c' WHERE id = 2`,
		`DELETE FROM ident WHERE id = 1`,
		`INSERT INTO precise VALUES (1, '1990-05-06', '2024-01-02 03:04:05', '03:04:05', '2024-01-02 03:04:05.12+00',
			'{1.5,-2,NULL}', '{2024-01-02,NULL}')`,
		`UPDATE precise SET born = NULL, nums = '{}' WHERE id = 1`,
		`DELETE FROM precise WHERE id = 1`,
	)},
	{"toast", statements(
		`INSERT INTO docs SELECT 1, string_agg(md5(i::text), ''), 0 FROM generate_series(1, 400) i`,
		`UPDATE docs SET n = 1 WHERE id = 1 /*Bemi {"op":"toast"} Bemi*/`,
		`ALTER TABLE docs REPLICA IDENTITY FULL`,
		`UPDATE docs SET n = 2 WHERE id = 1`,
		`DELETE FROM docs WHERE id = 1`,
	)},
	{"keys_and_truncate", func(t *testing.T, conn *pgx.Conn) {
		// COPY writes one WAL record for many rows: they share an LSN.
		rows := [][]any{{1}, {1}, {2}}
		if _, err := conn.CopyFrom(context.Background(), pgx.Identifier{"bulk_nokey"}, []string{"v"}, pgx.CopyFromRows(rows)); err != nil {
			t.Fatal(err)
		}
		statements(
			`INSERT INTO composite VALUES (1, 'x', 5), (1, 'y', 6)`,
			`UPDATE composite SET b = 'z' WHERE a = 1 AND b = 'x' /*Bemi {"op":"rekey"} Bemi*/`,
			`TRUNCATE bulk_nokey, composite`,
		)(t, conn)
	}},
}

func decodeBase64(s string) (string, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	return string(b), err
}
