package clickhouse

import (
	"strings"
	"testing"
)

func TestNewTablesUseDateTime64FromClickHouse20(t *testing.T) {
	for version, want := range map[string]layout{
		"18.16.1": legacy, "19.17.9.60": legacy, "20.1.2.4": modern, "24.8.4.13": modern, "25.10": modern,
	} {
		if got := layoutFor(version); got != want {
			t.Errorf("layoutFor(%q) = %d, want %d", version, got, want)
		}
	}
	if ddl := createTable("`d`.`t`", modern); !strings.Contains(ddl, `"committed_at" DateTime64(6, 'UTC')`) || strings.Contains(ddl, "_us") {
		t.Errorf("modern DDL:\n%s", ddl)
	}
}

func TestAnExistingTableKeepsItsLayout(t *testing.T) {
	cols := map[string]string{}
	for _, c := range strings.Fields("id primary_key before after context database schema table operation queued_at created_at transaction_id position seq unchanged_toast") {
		cols[c] = "String"
	}
	cols["committed_at"] = "DateTime('UTC')"
	if _, err := layoutOf(cols); err == nil || !strings.Contains(err.Error(), "not made by pgtrail") {
		t.Errorf("a table without committed_at_us nor DateTime64: %v", err)
	}
	cols["committed_at_us"] = "UInt64"
	if l, err := layoutOf(cols); l != legacy || err != nil {
		t.Errorf("a table with committed_at_us (after an upgrade to a server with DateTime64): %d, %v; want legacy", l, err)
	}
	delete(cols, "committed_at_us")
	cols["committed_at"] = "DateTime64(6, 'UTC')"
	if l, err := layoutOf(cols); l != modern || err != nil {
		t.Errorf("a DateTime64 table: %d, %v; want modern", l, err)
	}
	delete(cols, "seq")
	if _, err := layoutOf(cols); err == nil || !strings.Contains(err.Error(), "no column seq") {
		t.Errorf("a table without seq: %v", err)
	}
}
