package monitoring

import (
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtrail/pgtrail/core/metrics"
)

// TestAlertRulesPassPromtool checks the rules and runs their unit tests
// with promtool; without promtool the test fails, saying how to get it.
func TestAlertRulesPassPromtool(t *testing.T) {
	promtool, err := Tool("promtool")
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"check", "rules", "alerts.yml"},
		{"test", "rules", "alerts_test.yml"},
		{"check", "config", "prometheus.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = Dir()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// registered lists the names of every metric metrics.New registers, with a
// histogram's series, read from each collector's descriptions.
func registered(t *testing.T) map[string]bool {
	m := metrics.New()
	names := map[string]bool{}
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		for i := range v.NumField() {
			f := v.Field(i)
			if !v.Type().Field(i).IsExported() {
				continue
			}
			if f.Kind() == reflect.Struct {
				walk(f)
				continue
			}
			c, ok := f.Interface().(prometheus.Collector)
			if !ok || f.IsNil() {
				continue
			}
			ch := make(chan *prometheus.Desc, 16)
			go func() { c.Describe(ch); close(ch) }()
			for d := range ch {
				if name := fqName.FindStringSubmatch(d.String()); name != nil {
					names[name[1]] = true
					for _, s := range []string{"_bucket", "_sum", "_count"} {
						names[name[1]+s] = true
					}
				}
			}
		}
	}
	walk(reflect.ValueOf(m).Elem())
	if !names["pgtrail_changes_read_total"] || !names["pgtrail_lag_seconds"] {
		t.Fatalf("reading the registered metrics failed: got %v", names)
	}
	return names
}

// TestEveryMetricTheRulesAndDashboardNameIsRegistered: a rule or panel
// naming a metric pgtrail does not export would stay silent for ever.
func TestEveryMetricTheRulesAndDashboardNameIsRegistered(t *testing.T) {
	known := registered(t)
	rules, err := Rules()
	if err != nil {
		t.Fatal(err)
	}
	queries, err := Dashboard()
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) < 10 || len(queries) < 15 {
		t.Fatalf("read %d rules and %d dashboard queries from %s, want at least 10 and 15", len(rules), len(queries), filepath.Clean(Dir()))
	}
	check := func(where, expr string) {
		names := Metrics(expr)
		if len(names) == 0 {
			t.Errorf("%s: %q names no pgtrail metric", where, expr)
		}
		for _, n := range names {
			if !known[n] && Elsewhere[n] == "" {
				t.Errorf("%s: %q names %s, which pgtrail does not register", where, expr, n)
			}
		}
	}
	for _, r := range rules {
		check("alert "+r.Alert, r.Expr)
	}
	for _, q := range queries {
		check("panel "+q.Panel, q.Expr)
	}
}
