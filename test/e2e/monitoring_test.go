package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgtrail/pgtrail/test/monitoring"
	"github.com/pgtrail/pgtrail/test/testbed"
)

// promResult is a Prometheus HTTP API answer.
type promResult struct {
	Status string `json:"status"`
	Error  string `json:"error"`
	Data   struct {
		Result json.RawMessage `json:"result"`
		Groups []struct {
			Rules []struct {
				Name      string `json:"name"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
				State     string `json:"state"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"data"`
}

// prometheus runs a real Prometheus that scrapes target every second and
// evaluates configs/monitoring/alerts.yml, and returns its base URL.
func prometheus(t *testing.T, target string) string {
	t.Helper()
	bin, err := monitoring.Tool("prometheus")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := fmt.Sprintf("global: {scrape_interval: 1s, evaluation_interval: 1s}\nrule_files: [%q]\nscrape_configs:\n  - job_name: pgtrail\n    static_configs: [{targets: [%q]}]\n",
		filepath.Join(monitoring.Dir(), "alerts.yml"), target)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	out := &testbed.Output{}
	cmd := exec.Command(bin, "--config.file", filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path", filepath.Join(dir, "data"),
		"--web.listen-address", strings.TrimPrefix(base, "http://"))
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus output:\n%s", tail(out.String(), 30))
		}
	})
	waitFor(t, 30*time.Second, "prometheus to be ready", func() bool {
		resp, err := http.Get(base + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return base
}

// promQuery runs an instant query and returns its result vector's length.
func promQuery(t *testing.T, base, expr string) int {
	t.Helper()
	var r promResult
	promGet(t, base+"/api/v1/query?query="+url.QueryEscape(expr), &r)
	if r.Status != "success" {
		t.Fatalf("query %q: %s", expr, r.Error)
	}
	var rows []json.RawMessage
	if err := json.Unmarshal(r.Data.Result, &rows); err != nil {
		t.Fatalf("query %q: result %s: %v", expr, r.Data.Result, err)
	}
	return len(rows)
}

func promGet(t *testing.T, u string, into *promResult) {
	t.Helper()
	if err := json.Unmarshal([]byte(httpGet(t, u)), into); err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
}

// exists says whether Prometheus scraped a series of metric.
func exists(t *testing.T, base, metric string) bool {
	return promQuery(t, base, fmt.Sprintf(`count({__name__=%q})`, metric)) > 0
}

// TestPrometheusScrapingPgtrailAnswersEveryDashboardQueryAndAlertRule runs
// pgtrail and a real Prometheus scraping it with the shipped rules. Every
// dashboard query returns data. Alert expressions are different: on a
// healthy pipeline they are meant to be empty, so for each rule the test
// requires that Prometheus evaluated it without error, that it is neither
// pending nor firing, and that every metric it names has series (so it
// would fire when its condition came). Metrics this process does not
// export (monitoring.Elsewhere: the lease's pgtrail_active, the broker
// sources' dead letters) are named in the log instead, and
// PgtrailNoActiveInstance may fire while pgtrail_active is absent.
func TestPrometheusScrapingPgtrailAnswersEveryDashboardQueryAndAlertRule(t *testing.T) {
	dbURL := cluster.NewDatabase(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	conn, _, _ := setupAndStart(t, dbURL, fmt.Sprintf("http:\n  listen: %q\nretention: {default: 30d, interval: 1m}\n", addr), "    heartbeat: 1s\n")
	exec1(t, conn, `CREATE TABLE orders (id int PRIMARY KEY, v text)`)
	exec1(t, conn, `INSERT INTO orders SELECT g, 'a' FROM generate_series(1, 10) g`)
	exec1(t, conn, `UPDATE orders SET v = 'b' WHERE id <= 5`)
	exec1(t, conn, `DELETE FROM orders WHERE id = 1`)
	waitForChanges(t, conn, 16, 30*time.Second)

	base := prometheus(t, addr)
	// Enough scrapes for rates over a minute, and a write inside it.
	waitFor(t, 30*time.Second, "five scrapes of pgtrail", func() bool {
		return promQuery(t, base, `count_over_time(pgtrail_changes_read_total[1m]) >= 5`) > 0
	})
	exec1(t, conn, `INSERT INTO orders VALUES (100, 'c')`)
	waitForChanges(t, conn, 17, 30*time.Second)
	waitFor(t, 30*time.Second, "the last write scraped", func() bool {
		return promQuery(t, base, `pgtrail_changes_total{table="orders",operation="CREATE"} == 11`) > 0
	})

	queries, err := monitoring.Dashboard()
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range queries {
		expr := q.Resolve("1m")
		if promQuery(t, base, expr) > 0 {
			continue
		}
		missing := absent(t, base, expr)
		if len(missing) == 0 {
			t.Errorf("panel %q: %s returns no data although its metrics exist", q.Panel, expr)
		}
		for _, m := range missing {
			if why := monitoring.Elsewhere[m]; why != "" {
				t.Logf("panel %q: no data: %s is %s", q.Panel, m, why)
			} else {
				t.Errorf("panel %q: %s returns no data: pgtrail exports no %s", q.Panel, expr, m)
			}
		}
	}

	rules, err := monitoring.Rules()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		for _, m := range absent(t, base, r.Expr) {
			if why := monitoring.Elsewhere[m]; why != "" {
				t.Logf("alert %s: %s is %s", r.Alert, m, why)
			} else {
				t.Errorf("alert %s: pgtrail exports no %s, so %q can never fire", r.Alert, m, r.Expr)
			}
		}
	}
	var rs promResult
	waitFor(t, 10*time.Second, "every rule evaluated", func() bool {
		promGet(t, base+"/api/v1/rules", &rs)
		n := 0
		for _, g := range rs.Data.Groups {
			for _, r := range g.Rules {
				if r.Health != "unknown" {
					n++
				}
			}
		}
		return n == len(rules)
	})
	for _, g := range rs.Data.Groups {
		for _, r := range g.Rules {
			if r.Health != "ok" {
				t.Errorf("alert %s: evaluation %s: %s", r.Name, r.Health, r.LastError)
			}
			if r.State == "inactive" {
				continue
			}
			if r.Name == "PgtrailNoActiveInstance" && !exists(t, base, "pgtrail_active") {
				t.Logf("alert %s is %s: pgtrail_active is %s", r.Name, r.State, monitoring.Elsewhere["pgtrail_active"])
				continue
			}
			t.Errorf("alert %s is %s on a healthy pipeline", r.Name, r.State)
		}
	}
}

// absent lists the metrics expr names that Prometheus has no series of.
func absent(t *testing.T, base, expr string) []string {
	t.Helper()
	var out []string
	for _, m := range monitoring.Metrics(expr) {
		if !exists(t, base, m) {
			out = append(out, m)
		}
	}
	return out
}
