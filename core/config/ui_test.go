package config

import (
	"strings"
	"testing"
	"time"
)

func TestUITakesTheAuditTableFromThePostgresSink(t *testing.T) {
	cfg := mustLoad(t, `
source:
  postgres: {url: "postgres://u@127.0.0.1/app"}
sinks:
  - {name: lake, plugin: s3, config: {bucket: b}}
  - {name: audit, plugin: postgres, config: {url: "postgres://u@127.0.0.1/audit", schema: trail, table: log}}
ui:
  tokens: ["0123456789abcdef"]
`)
	u := cfg.UI
	if !u.Enabled || u.URL != "postgres://u@127.0.0.1/audit" || u.Schema != "trail" || u.Table != "log" ||
		u.Revert.URL != "postgres://u@127.0.0.1/app" || u.Revert.Apply || time.Duration(u.StatementTimeout) != 10*time.Second {
		t.Errorf("ui = %+v", u)
	}
	if cfg := mustLoad(t, "source:\n  postgres: {url: \"postgres://u@127.0.0.1/app\"}\n"); cfg.UI.Enabled {
		t.Error("a file without ui: enables the UI")
	}
}

func TestUIValidationNamesTheKeyAndNeverEchoesSecrets(t *testing.T) {
	err := loadErr(t, `
source:
  postgres: {url: "postgres://u@127.0.0.1/app"}
http: {listen: "0.0.0.0:9187"}
ui:
  url: "not a url with password hunter2"
  table: "Bad-Name"
  statement_timeout: -1s
  revert: {url: "mysql://x:hunter2@h/db"}
`)
	wantContains(t, err, "ui.url: not a PostgreSQL URL", `ui.table: "Bad-Name" is not a simple name`,
		"ui.statement_timeout: must be positive", "ui.revert.url: not a PostgreSQL URL",
		"ui.tokens: required because http.listen (0.0.0.0:9187) is not a loopback address")
	if strings.Contains(err, "hunter2") {
		t.Errorf("error echoes a secret: %s", err)
	}
	err = loadErr(t, "source:\n  postgres: {url: \"postgres://u@127.0.0.1/app\"}\nhttp: {listen: \"\"}\nui: {}\n")
	wantContains(t, err, "http.listen: the UI and API are served on http.listen, which is off")
}

func TestLoadUIDoesNotRequireASourceWhenOnlyReading(t *testing.T) {
	unsetenv(t, "DATABASE_URL")
	path := writeConfig(t, "ui:\n  url: \"postgres://u@127.0.0.1/audit\"\nhttp: {listen: \"\"}\n")
	if _, err := LoadUI(path, true, false); err != nil {
		t.Errorf("history/revert with only ui.url: %v", err)
	}
	if _, err := LoadUI(path, true, true); err == nil {
		t.Error("serve with http.listen off: no error")
	}
	if _, err := Load(path, true); err == nil {
		t.Error("run with no source: no error")
	}
}

func TestLoopbackAddresses(t *testing.T) {
	for addr, want := range map[string]bool{"127.0.0.1:1": true, "127.3.2.1:1": true, "[::1]:1": true, "localhost:1": true,
		":1": false, "0.0.0.0:1": false, "[::]:1": false, "10.0.0.1:1": false, "example.com:1": false, "junk": false} {
		if got := Loopback(addr); got != want {
			t.Errorf("Loopback(%q) = %v, want %v", addr, got, want)
		}
	}
}
