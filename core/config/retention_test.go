package config

import (
	"slices"
	"testing"
	"time"
)

const retentionSinks = `
source: {postgres: {url: "postgres://u:p@127.0.0.1/app"}}
sinks:
  - {name: audit, plugin: postgres, config: {url: "postgres://u:p@127.0.0.1/app"}}
  - {name: archive, plugin: s3, config: {bucket: b}}
  - {name: ch, plugin: clickhouse, config: {url: "http://127.0.0.1:8123"}}
`

func TestRetentionIsForeverWhenAbsent(t *testing.T) {
	cfg := mustLoad(t, retentionSinks)
	r := cfg.Retention
	if r.Enabled() || r.Keep("public", "orders") != Forever || r.Every() != time.Hour {
		t.Fatalf("retention without a section: %+v (enabled %v)", r, r.Enabled())
	}
}

func TestRetentionRulesPickTheMostSpecificPattern(t *testing.T) {
	cfg := mustLoad(t, retentionSinks+`
retention:
  default: 90d
  tables: {"public.sessions": 7d, "audit.*": forever, "public.*": 2w, "public.log*": 36h, "*.tmp": 1d}
  archive: archive
  interval: 10m
`)
	r := cfg.Retention
	day := 24 * time.Hour
	for _, c := range []struct {
		schema, table string
		want          Period
	}{
		{"public", "sessions", Period(7 * day)},      // exact name first
		{"public", "orders", Period(14 * day)},       // public.*
		{"public", "logins", Period(36 * time.Hour)}, // public.log* is longer than public.*
		{"audit", "events", Forever},
		{"sales", "orders", Period(90 * day)}, // the default
		{"sales", "tmp", Period(day)},
	} {
		if got := r.Keep(c.schema, c.table); got != c.want {
			t.Errorf("Keep(%s.%s) = %s, want %s", c.schema, c.table, got, c.want)
		}
	}
	if !r.Enabled() || r.Archive != "archive" || r.Every() != 10*time.Minute {
		t.Fatalf("retention: %+v", r)
	}
}

func TestRetentionOfEquallySpecificPatternsKeepsTheLongest(t *testing.T) {
	cfg := mustLoad(t, retentionSinks+`
retention: {tables: {"public.a*": 7d, "public.*b": forever, "x*.y": 1d, "*x.y": 2d}}
`)
	if got := cfg.Retention.Keep("public", "ab"); got != Forever {
		t.Errorf("public.ab: %s, want forever", got)
	}
	if got := cfg.Retention.Keep("xx", "y"); got != Period(48*time.Hour) {
		t.Errorf("xx.y: %s, want 2d", got)
	}
}

func TestRetentionErrorsNameTheKey(t *testing.T) {
	for body, want := range map[string]string{
		`retention: {default: 90}`:                      "retention.default: invalid period \"90\" (use e.g. 90d, 2w, 36h, or forever)",
		`retention: {default: -3d}`:                     "invalid period \"-3d\"",
		`retention: {tables: {"public.x": 0d}}`:         "retention.tables: invalid period \"0d\"",
		`retention: {tables: {"sessions": 7d}}`:         `retention.tables: "sessions" is not a schema.table pattern`,
		`retention: {default: 1d, interval: 10s}`:       "retention.interval: 10s is too short: give at least 1m",
		`retention: {default: 1d, archive: nowhere}`:    `retention.archive: no sink is named "nowhere"`,
		`retention: {default: 1d, archive: ch}`:         `retention.archive: sink "ch" has plugin "clickhouse": archive needs an s3 sink`,
		`retention: {default: 1d, tables: {"a.b": 1x}}`: `invalid period "1x"`,
		`retention: {default: 1d, keep: 1d}`:            "unknown key retention.keep",
	} {
		wantContains(t, loadErr(t, retentionSinks+body), want)
	}
	noPostgres := `
source: {postgres: {url: "postgres://u:p@127.0.0.1/app"}}
sinks: [{name: archive, plugin: s3, config: {bucket: b}}]
retention: {default: 30d}
`
	wantContains(t, loadErr(t, noPostgres), "retention: applies to the audit table of a postgres sink, and no sink has plugin: postgres")
}

func TestRetentionPeriodsOfATableNameCoverEverySchema(t *testing.T) {
	cfg := mustLoad(t, retentionSinks+`
retention: {default: 90d, tables: {"public.sessions": 7d, "*.sess*": 2d, "audit.*": forever, "*.tmp": 1d}}
`)
	day := Period(24 * time.Hour)
	for table, want := range map[string][]Period{
		"sessions": {7 * day, 2 * day, Forever}, // and no default: *.sess* matches every schema
		"orders":   {Forever, 90 * day},
		"tmp":      {Forever, day},
	} {
		got := cfg.Retention.Periods(table)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("Periods(%s) = %v, want %v", table, got, want)
		}
	}
}
