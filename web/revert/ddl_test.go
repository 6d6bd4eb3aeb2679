package revert

import (
	"strings"
	"testing"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/web/trail"
)

func TestASchemaChangeIsReportedAsNotUndoable(t *testing.T) {
	s := &Source{database: "app"}
	_, err := s.inverse(trail.Change{Database: "app", Schema: "public", Table: "orders", Operation: change.DDL},
		&table{quoted: `"public"."orders"`, key: []string{"id"}})
	if err == nil || !strings.Contains(err.Error(), "schema change (DDL) is not undone from the trail") {
		t.Fatalf("inverse of a DDL row: %v, want it reported as not undoable", err)
	}
}
