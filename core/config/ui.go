package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// UI is the read side: the JSON API and the web UI over the audit table.
// `pgtrail serve` serves them alone; `pgtrail run` serves them on
// http.listen when the file has a ui: section.
type UI struct {
	// URL is the database of the audit table, read only; by default the
	// postgres sink's url.
	URL string `yaml:"url"`
	// Schema and Table locate the audit table; by default the postgres sink's.
	Schema string `yaml:"schema"`
	Table  string `yaml:"table"`
	// Tokens are the bearer tokens the API accepts; required when
	// http.listen is not a loopback address.
	Tokens []string `yaml:"tokens"`
	// StatementTimeout bounds every query of the read side.
	StatementTimeout Duration `yaml:"statement_timeout"`
	Revert           Revert   `yaml:"revert"`
	// Enabled is set when the file has a ui: section.
	Enabled bool `yaml:"-"`
}

// Revert is the source database that reverts are checked against (read for
// conflicts) and, only when Apply is on, written to.
type Revert struct {
	URL   string `yaml:"url"` // default: source.postgres.url
	Apply bool   `yaml:"apply"`
}

// minTokenLength keeps guessable tokens out: 16 characters of `openssl rand
// -hex 16` hold 64 bits.
const minTokenLength = 16

// markUI records whether the document has a ui: section.
func (c *Config) markUI(doc *yaml.Node) {
	if doc == nil || doc.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(doc.Content); i += 2 {
		if doc.Content[i].Value == "ui" {
			c.UI.Enabled = true
		}
	}
}

// fillUI takes the audit table's place from the postgres sink and the
// revert database from the source, where the ui: section leaves them out.
func (c *Config) fillUI() {
	u := &c.UI
	if u.StatementTimeout == 0 {
		u.StatementTimeout = Duration(10 * time.Second)
	}
	for _, s := range c.Sinks {
		if s.Plugin != "postgres" {
			continue
		}
		str := func(key string) string { v, _ := s.Config[key].(string); return v }
		if u.URL == "" {
			u.URL = str("url")
		}
		if u.Schema == "" {
			u.Schema = str("schema")
		}
		if u.Table == "" {
			u.Table = str("table")
		}
		break
	}
	if u.Schema == "" {
		u.Schema = "pgtrail"
	}
	if u.Table == "" {
		u.Table = "changes"
	}
	if u.Revert.URL == "" {
		u.Revert.URL = c.Source.Postgres.URL
	}
}

// validateUI checks the ui: section and what serving it needs of http.
// Neither URLs nor tokens are echoed: they hold secrets.
// serving is false for the commands that only read (history, revert).
func (c *Config) validateUI(bad func(key, format string, args ...any), serving bool) {
	u := c.UI
	switch {
	case u.URL == "":
		bad("ui.url", "required: the PostgreSQL URL of the audit table's database (or configure a postgres sink, whose url is the default)")
	case !postgresURL(u.URL):
		bad("ui.url", "not a PostgreSQL URL (e.g. postgres://user:password@host:5432/database)")
	}
	for _, f := range []struct{ key, name string }{{"ui.schema", u.Schema}, {"ui.table", u.Table}} {
		if !pgName.MatchString(f.name) {
			bad(f.key, "%q is not a simple name (1 to 63 lowercase letters, digits or _)", f.name)
		}
	}
	for i, tok := range u.Tokens {
		key := fmt.Sprintf("ui.tokens[%d]", i)
		switch {
		case tok == "":
			bad(key, "empty (is the environment variable it names set?)")
		case len(tok) < minTokenLength || strings.ContainsAny(tok, " \t\r\n"):
			bad(key, "a token must be at least %d characters without spaces (e.g. the output of `openssl rand -hex 16`)", minTokenLength)
		}
	}
	if u.StatementTimeout <= 0 {
		bad("ui.statement_timeout", "must be positive (e.g. 10s)")
	}
	if u.Revert.URL != "" && !postgresURL(u.Revert.URL) {
		bad("ui.revert.url", "not a PostgreSQL URL (e.g. postgres://user:password@host:5432/database)")
	}
	if u.Revert.Apply && u.Revert.URL == "" {
		bad("ui.revert.apply", "needs ui.revert.url (or source.postgres.url): the database reverts are applied to")
	}
	l := c.HTTP.Listen
	if !serving {
		return
	}
	if l == "" {
		bad("http.listen", "the UI and API are served on http.listen, which is off: set it (e.g. 127.0.0.1:9187)")
		return
	}
	if len(u.Tokens) == 0 && !Loopback(l) {
		bad("ui.tokens", "required because http.listen (%s) is not a loopback address: anyone who reaches it could read the trail; "+
			"set tokens: [\"${PGTRAIL_UI_TOKEN}\"], or listen on 127.0.0.1", l)
	}
}

// Loopback reports whether the listen address host:port accepts connections
// from this machine only.
func Loopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// LoadUI reads the config for `pgtrail serve` (serving) and the commands
// that read the trail (history, revert), which need only the read side: the
// ui, http and log sections are validated, the rest is not required (a
// server that only reads the audit table has no source).
func LoadUI(path string, explicit, serving bool) (*Config, error) {
	cfg, err := load(path, explicit, func(c *Config) error {
		// The read side is these commands' whole config, ui: or not.
		if !c.UI.Enabled {
			c.UI.Enabled = true
			c.fillUI()
		}
		var errs []error
		c.validateUI(func(key, format string, args ...any) {
			errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
		}, serving)
		c.validateLog(func(key, format string, args ...any) {
			errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
		})
		return errors.Join(errs...)
	})
	if err != nil {
		return nil, err
	}
	return cfg, nil
}
