package api

import (
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/pgtrail/pgtrail/core/change"
)

func TestOperationFilterTakesEveryStoredOperationAndNamesTheParameterOtherwise(t *testing.T) {
	allowed := []string{"operation"}
	l, err := parseListing(url.Values{"operation": {"update, ddl,TRUNCATE"}}, allowed, 50)
	if err != nil {
		t.Fatal(err)
	}
	want := []change.Operation{change.Update, change.DDL, change.Truncate}
	if !slices.Equal(l.filter.Operations, want) {
		t.Fatalf("operations %v, want %v", l.filter.Operations, want)
	}
	_, err = parseListing(url.Values{"operation": {"MERGE"}}, allowed, 50)
	if err == nil || !strings.HasPrefix(err.Error(), `operation: "MERGE" is not one of CREATE, UPDATE, DELETE, TRUNCATE, DDL`) {
		t.Fatalf("err = %v, want one naming the operation parameter", err)
	}
}
