package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Retention says how long the audit table keeps changes. Whole partitions
// past every rule are dropped; rows of tables with a shorter rule are
// deleted from the partitions that stay.
type Retention struct {
	// Default is how long changes are kept at least; Forever when absent.
	Default Period `yaml:"default"`
	// Tables are rules for some tables, by schema.table pattern (* matches
	// any run of characters); the most specific pattern wins.
	Tables map[string]Period `yaml:"tables"`
	// Archive names an S3 sink that receives the rows before they go.
	Archive string `yaml:"archive"`
	// Interval is how often `pgtrail run` applies the rules; see Every.
	Interval Duration `yaml:"interval"`
}

// Every is how often `pgtrail run` applies the rules: Interval, 1h by default.
func (r Retention) Every() time.Duration {
	if r.Interval == 0 {
		return time.Hour
	}
	return time.Duration(r.Interval)
}

// Period is how long changes are kept; Forever (zero) keeps them.
type Period time.Duration

// Forever keeps changes for good.
const Forever Period = 0

// UnmarshalYAML reads "forever", days ("90d"), weeks ("2w") or a Go
// duration ("36h").
func (p *Period) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := parsePeriod(s)
	if err != nil {
		return err
	}
	*p = v
	return nil
}

func parsePeriod(s string) (Period, error) {
	bad := fmt.Errorf("invalid period %q (use e.g. 90d, 2w, 36h, or forever)", s)
	if s == "forever" {
		return Forever, nil
	}
	var unit time.Duration
	switch {
	case strings.HasSuffix(s, "d"):
		unit = 24 * time.Hour
	case strings.HasSuffix(s, "w"):
		unit = 7 * 24 * time.Hour
	default:
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return 0, bad
		}
		return Period(d), nil
	}
	n, err := strconv.Atoi(s[:len(s)-1])
	if err != nil || n <= 0 || n > 100_000 {
		return 0, bad
	}
	return Period(time.Duration(n) * unit), nil
}

// MarshalYAML writes the period back in a form it is read in.
func (p Period) MarshalYAML() (any, error) { return p.String(), nil }

func (p Period) String() string {
	switch d := time.Duration(p); {
	case p == Forever:
		return "forever"
	case d%(24*time.Hour) == 0:
		return strconv.Itoa(int(d/(24*time.Hour))) + "d"
	default:
		return d.String()
	}
}

// Enabled reports whether any rule removes anything.
func (r Retention) Enabled() bool {
	if r.Default != Forever {
		return true
	}
	for _, p := range r.Tables {
		if p != Forever {
			return true
		}
	}
	return false
}

// Keep returns the rule for schema.table: that of the most specific
// matching pattern in Tables (a name without * first, then the longest
// pattern; of equally long ones the longest period), else Default.
func (r Retention) Keep(schema, table string) Period {
	best, found := "", false
	var keep Period
	for pat, p := range r.Tables {
		if !matchAny([]string{pat}, schema, table) {
			continue
		}
		if !found || moreSpecific(pat, best) || (specificity(pat) == specificity(best) && longer(p, keep)) {
			best, keep, found = pat, p, true
		}
	}
	if !found {
		return r.Default
	}
	return keep
}

// Periods returns every period Keep may give a table of this name,
// whatever its schema: those of the patterns its name matches, and Default
// unless one of them matches every schema.
func (r Retention) Periods(table string) []Period {
	var out []Period
	everySchema := false
	for pat, p := range r.Tables {
		s, t, _ := strings.Cut(pat, ".")
		if glob(t, table) {
			out = append(out, p)
			everySchema = everySchema || s == "*"
		}
	}
	if !everySchema {
		out = append(out, r.Default)
	}
	return out
}

// specificity ranks a pattern: exact names above any pattern, then by length.
func specificity(pat string) int {
	if !strings.Contains(pat, "*") {
		return 1 << 20
	}
	return len(pat)
}

func moreSpecific(a, b string) bool { return specificity(a) > specificity(b) }

// longer reports whether a keeps changes longer than b.
func longer(a, b Period) bool { return b != Forever && (a == Forever || a > b) }

// validate checks the retention block against the sinks it acts on.
func (r Retention) validate(sinks []Sink, bad func(key, format string, args ...any)) {
	for pat := range r.Tables {
		if !validPattern(pat) {
			bad("retention.tables", "%q is not a schema.table pattern (e.g. public.sessions, audit.*)", pat)
		}
	}
	if r.Every() < time.Minute {
		bad("retention.interval", "%s is too short: give at least 1m (default 1h)", r.Every())
	}
	if !r.Enabled() && r.Archive == "" {
		return
	}
	postgres := false
	for _, s := range sinks {
		postgres = postgres || s.Plugin == "postgres"
	}
	if !postgres {
		bad("retention", "applies to the audit table of a postgres sink, and no sink has plugin: postgres")
	}
	if r.Archive == "" {
		return
	}
	for _, s := range sinks {
		if s.Name != r.Archive {
			continue
		}
		if s.Plugin != "s3" {
			bad("retention.archive", "sink %q has plugin %q: archive needs an s3 sink, whose objects pgtrail reads back to check that every row is there before it removes any", s.Name, s.Plugin)
		}
		return
	}
	bad("retention.archive", "no sink is named %q (name one of sinks[].name, with plugin: s3)", r.Archive)
}
