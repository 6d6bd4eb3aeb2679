package postgres

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/plugins/sdk"
	"github.com/pgtrail/pgtrail/plugins/sdk/sdktest"
	"github.com/pgtrail/pgtrail/test/pgtest"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Options{}, func(c *pgtest.Cluster) { cluster = c })
}

func TestSinkPassesTheSDKTestKit(t *testing.T) {
	url := cluster.NewDatabase(t)
	cfg, _ := json.Marshal(map[string]string{"url": url, "schema": "audit", "table": "trail"})
	sdktest.Run(t, sdktest.Harness{
		New:    func() sdk.Sink { return New() },
		Config: cfg,
		Stored: func(t testing.TB) []uuid.UUID {
			conn, err := pgx.Connect(context.Background(), url)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			rows, err := conn.Query(context.Background(), "SELECT id FROM audit.trail")
			if err != nil {
				t.Fatal(err)
			}
			ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
			if err != nil {
				t.Fatal(err)
			}
			return ids
		},
	})
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	for raw, want := range map[string]string{
		`{}`:                                 "config.url: required",
		`{"url":"postgres://x/y","tabel":1}`: `unknown field "tabel"`,
		`{"url":"postgres://x/y","schema":"Bad"}`: "config.schema",
	} {
		err := New().Configure(context.Background(), json.RawMessage(raw))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Configure(%s) = %v, want an error containing %q", raw, err, want)
		}
	}
}
