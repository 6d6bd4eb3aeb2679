// Package monitoring reads the alert rules and the Grafana dashboard in
// configs/monitoring, for the tests that check them against promtool, the
// metrics pgtrail registers, and a real Prometheus scraping pgtrail.
package monitoring

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// Dir is configs/monitoring in this checkout.
func Dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "configs", "monitoring")
}

// Tool finds a binary of Debian's prometheus package (promtool,
// prometheus); its absence is an error, never a reason to skip.
func Tool(name string) (string, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found: run `make deps` (it installs Debian's prometheus package, which ships promtool and prometheus): %w", name, err)
	}
	return path, nil
}

// Rule is one alert rule.
type Rule struct {
	Alert string `yaml:"alert"`
	Expr  string `yaml:"expr"`
}

// Rules reads the alert rules of configs/monitoring/alerts.yml.
func Rules() ([]Rule, error) {
	b, err := os.ReadFile(filepath.Join(Dir(), "alerts.yml"))
	if err != nil {
		return nil, err
	}
	var f struct {
		Groups []struct {
			Rules []Rule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("parse alerts.yml: %w", err)
	}
	var out []Rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	return out, nil
}

// Query is one query of a dashboard panel.
type Query struct {
	Panel string
	Expr  string // as written, with Grafana's variables
}

// Dashboard reads every query of configs/monitoring/grafana-dashboard.json.
func Dashboard() ([]Query, error) {
	b, err := os.ReadFile(filepath.Join(Dir(), "grafana-dashboard.json"))
	if err != nil {
		return nil, err
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("parse grafana-dashboard.json: %w", err)
	}
	var out []Query
	for _, p := range d.Panels {
		for _, t := range p.Targets {
			out = append(out, Query{Panel: p.Title, Expr: t.Expr})
		}
	}
	return out, nil
}

// Resolve replaces Grafana's variables as the dashboard's defaults would:
// every job, and rate over window.
func (q Query) Resolve(window string) string {
	return strings.NewReplacer(`$job`, `.*`, `$__rate_interval`, window).Replace(q.Expr)
}

var metricName = regexp.MustCompile(`\bpgtrail_[a-z0-9_]+`)

// Metrics lists the pgtrail metrics an expression names, sorted.
func Metrics(expr string) []string {
	names := metricName.FindAllString(expr, -1)
	slices.Sort(names)
	return slices.Compact(names)
}

// Elsewhere are metrics the rules and dashboard name that this process
// does not always export, with why: each test of "the metric exists" says
// so instead of failing.
var Elsewhere = map[string]string{
	// The high-availability lease (its own branch) adds it; until then
	// PgtrailNoActiveInstance's absent() branch fires.
	"pgtrail_active": "exported by the high-availability lease",
	// Only the JetStream and Kafka sources dead-letter.
	"pgtrail_dead_letters_total": "exported by broker sources only, on their first dead letter",
}
