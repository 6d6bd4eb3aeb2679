package config

import (
	"fmt"
	"slices"
	"strings"
)

// Rules govern what reaches the sinks: updates that only touch ignored
// columns are not stored, and redacted columns and context keys are replaced
// before any sink (or broker, for `pgtrail capture`) sees them.
type Rules struct {
	// IgnoreColumns are schema.table.column patterns: an UPDATE whose only
	// changed columns match is not stored.
	IgnoreColumns []string    `yaml:"ignore_columns"`
	Redact        []Redaction `yaml:"redact"`
	// HMACKey keys the hmac pseudonyms; required when a rule uses hmac.
	HMACKey string `yaml:"hmac_key"`
}

// Redaction replaces the values of Columns (schema.table.column patterns)
// and Context keys (dotted paths into the context object, e.g.
// headers.authorization) as With says.
type Redaction struct {
	Columns []string `yaml:"columns"`
	Context []string `yaml:"context"`
	With    string   `yaml:"with"` // drop | null | mask | hmac
}

// RedactModes are the values Redaction.With takes.
var RedactModes = []string{"drop", "null", "mask", "hmac"}

// Empty reports whether the rules do nothing.
func (r Rules) Empty() bool { return len(r.IgnoreColumns) == 0 && len(r.Redact) == 0 }

// SplitColumnPattern splits a schema.table.column pattern.
func SplitColumnPattern(p string) (schema, table, column string, ok bool) {
	parts := strings.Split(p, ".")
	if len(parts) != 3 || slices.Contains(parts, "") {
		return "", "", "", false
	}
	return parts[0], parts[1], parts[2], true
}

// Glob matches name against pattern where * stands for any run of
// characters: the matcher of table patterns, for rules too.
func Glob(pattern, name string) bool { return glob(pattern, name) }

func (r Rules) validate(bad func(key, format string, args ...any)) {
	columns := func(key string, patterns []string) {
		for i, p := range patterns {
			if _, _, _, ok := SplitColumnPattern(p); !ok {
				bad(fmt.Sprintf("%s[%d]", key, i), "%q is not a schema.table.column pattern (e.g. public.users.ssn, *.*.password*)", p)
			}
		}
	}
	columns("rules.ignore_columns", r.IgnoreColumns)
	hmac := ""
	for i, rd := range r.Redact {
		key := fmt.Sprintf("rules.redact[%d]", i)
		if len(rd.Columns) == 0 && len(rd.Context) == 0 {
			bad(key, "names no columns and no context keys (add columns: [schema.table.column] or context: [key])")
		}
		columns(key+".columns", rd.Columns)
		for j, p := range rd.Context {
			if p == "" || strings.HasPrefix(p, ".") || strings.HasSuffix(p, ".") || strings.Contains(p, "..") {
				bad(fmt.Sprintf("%s.context[%d]", key, j), "%q is not a context key path (e.g. ip, headers.authorization)", p)
			}
		}
		switch {
		case rd.With == "":
			bad(key+".with", "required: one of %s (quote null: with: \"null\", else YAML reads no value)", strings.Join(RedactModes, ", "))
		case !slices.Contains(RedactModes, rd.With):
			bad(key+".with", "%q is not one of %s", rd.With, strings.Join(RedactModes, ", "))
		case rd.With == "hmac" && hmac == "":
			hmac = key + ".with"
		}
	}
	if hmac != "" && r.HMACKey == "" {
		bad("rules.hmac_key", "required by %s: hmac (set it, e.g. hmac_key: \"${PGTRAIL_HMAC_KEY}\")", hmac)
	}
}

// validateDDL refuses DDL rows for a sink that cannot store them.
func (c *Config) validateDDL(bad func(key, format string, args ...any)) {
	if !c.Source.Postgres.DDL {
		return
	}
	for i, s := range c.Sinks {
		if s.Plugin == "clickhouse" {
			bad("source.postgres.ddl", "sinks[%d] (clickhouse) cannot store DDL rows yet (its operation column is an Enum without DDL): turn ddl off or remove that sink", i)
		}
	}
}
