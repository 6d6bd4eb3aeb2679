package config

import (
	"testing"
)

func TestRulesLoadAsWritten(t *testing.T) {
	t.Setenv("PGTRAIL_HMAC_KEY", "k1")
	cfg := mustLoad(t, retentionSinks+`
rules:
  ignore_columns: ["public.*.updated_at", "*.*.cached_*"]
  redact:
    - {columns: ["public.users.ssn", "*.*.password*"], with: hmac}
    - {context: ["ip", "headers.authorization"], with: mask}
  hmac_key: "${PGTRAIL_HMAC_KEY}"
`)
	r := cfg.Rules
	if r.Empty() || len(r.IgnoreColumns) != 2 || len(r.Redact) != 2 || r.HMACKey != "k1" ||
		r.Redact[0].With != "hmac" || r.Redact[1].Context[1] != "headers.authorization" {
		t.Fatalf("rules: %+v", r)
	}
	if !mustLoad(t, retentionSinks).Rules.Empty() {
		t.Fatal("no rules: section, yet rules are not empty")
	}
}

func TestRulesErrorsNameTheKey(t *testing.T) {
	msg := loadErr(t, retentionSinks+`
rules:
  ignore_columns: ["public.updated_at"]
  redact:
    - {columns: ["public.users.ssn"], with: hmac}
    - {columns: ["a.b.c"], with: scramble}
    - {with: mask}
    - {context: ["headers..x"], with: null}
`)
	wantContains(t, msg, `rules.ignore_columns[0]: "public.updated_at" is not a schema.table.column pattern`)
	wantContains(t, msg, `rules.hmac_key: required by rules.redact[0].with: hmac`)
	wantContains(t, msg, `rules.redact[1].with: "scramble" is not one of drop, null, mask, hmac`)
	wantContains(t, msg, `rules.redact[2]: names no columns and no context keys`)
	wantContains(t, msg, `rules.redact[3].context[0]: "headers..x" is not a context key path`)
	wantContains(t, msg, `rules.redact[3].with: required: one of drop, null, mask, hmac (quote null`)
}

func TestDDLWithAClickHouseSinkIsRefused(t *testing.T) {
	wantContains(t, loadErr(t, `
source: {postgres: {url: "postgres://u:p@127.0.0.1/app", ddl: true}}
sinks:
  - {name: audit, plugin: postgres, config: {url: "postgres://u:p@127.0.0.1/app"}}
  - {name: ch, plugin: clickhouse, config: {url: "http://127.0.0.1:8123"}}
`), "source.postgres.ddl: sinks[1] (clickhouse) cannot store DDL rows yet")
	if !mustLoad(t, `source: {postgres: {url: "postgres://u:p@127.0.0.1/app", ddl: true}}`).Source.Postgres.DDL {
		t.Fatal("ddl: true not read")
	}
}
