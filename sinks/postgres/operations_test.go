package postgres

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/plugins/sdk"
)

// An audit table made before DDL rows existed refuses them until setup runs
// again, which widens its operation check.
func TestSetupLetsAnExistingAuditTableStoreDDLRows(t *testing.T) {
	s, url := openSink(t, map[string]any{})
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `ALTER TABLE pgtrail.changes DROP CONSTRAINT changes_operation_check,
		ADD CONSTRAINT changes_operation_check CHECK (operation IN ('CREATE', 'UPDATE', 'DELETE', 'TRUNCATE'))`); err != nil {
		t.Fatal(err)
	}
	at := time.Now().UTC()
	ddl := func() []*sdk.Change {
		return []*sdk.Change{{ID: uuid.New(), Database: "app", Schema: "public", Table: "items", Operation: "DDL",
			Before: json.RawMessage(`{}`), After: json.RawMessage(`{"command_tag":"CREATE TABLE"}`), Context: json.RawMessage(`{}`),
			CommittedAt: at, QueuedAt: at, LSN: 1, CommitLSN: 1}}
	}
	if _, err := s.Write(ctx, ddl()); err == nil || !strings.Contains(err.Error(), "operation_check") {
		t.Fatalf("the old check took a DDL row: %v", err)
	}
	if err := s.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(ctx, ddl()); err != nil {
		t.Fatalf("after setup: %v", err)
	}
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pgtrail.changes WHERE operation = 'DDL'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d DDL rows (%v), want 1", n, err)
	}
}
