package main

import (
	"context"
	"strings"

	"github.com/pgtrail/pgtrail/core/redact"
	"github.com/pgtrail/pgtrail/core/rules"
	"github.com/pgtrail/pgtrail/transports/pglogrepl"
)

// rules compiles the rules: section. With native capture, column patterns
// that match no column of a captured table are warned about: a typo there
// would leave a value unredacted.
func (a *app) rules(ctx context.Context) (*rules.Set, error) {
	r, err := rules.New(a.cfg.Rules)
	if err != nil || r == nil || a.cfg.Source.Type != "postgres" {
		return r, err
	}
	cols, err := pglogrepl.CapturedColumns(ctx, a.cfg.Source.Postgres)
	if err != nil {
		a.log.Warn("rules: could not check column patterns against the captured tables", "err", redact.Error(err))
		return r, nil
	}
	if bad := r.Unmatched(cols); len(bad) > 0 {
		a.log.Warn("rules: column patterns match no column of a captured table (rules.ignore_columns, rules.redact[].columns); check them for typos",
			"patterns", strings.Join(bad, ", "))
	}
	return r, nil
}
