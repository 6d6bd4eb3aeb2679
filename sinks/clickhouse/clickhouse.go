// Package clickhouse is the ClickHouse sink: every batch is one INSERT of
// JSONEachRow rows over ClickHouse's HTTP interface, into a ReplacingMergeTree
// table ordered by (schema, table, primary_key, id), so that a replayed change
// is merged with its first copy and queries with FINAL see each change once.
package clickhouse

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgtrail/pgtrail/plugins/sdk"
)

// Version is the sink's version, reported by `pgtrail plugins`.
const Version = "0.1.0"

// Config is the sink's `config` block.
type Config struct {
	// URL of the HTTP interface, http://host:8123 (credentials may be in it).
	URL      string `json:"url"`
	Database string `json:"database"`
	Table    string `json:"table"`
	User     string `json:"user"`
	Password string `json:"password"`
	// Settings are ClickHouse settings sent with every INSERT, e.g.
	// {async_insert: 1, wait_for_async_insert: 1} on servers that have them.
	Settings map[string]any `json:"settings"`
	// For an https:// URL: CAFile holds the PEM certificates of the CAs
	// that sign the server's certificate (default: the system's), CertFile
	// and KeyFile a client certificate, for a server that asks for one.
	CAFile   string `json:"ca_file"`
	CertFile string `json:"cert_file"`
	KeyFile  string `json:"key_file"`
}

// Sink writes changes to a ClickHouse table.
type Sink struct {
	cfg      Config
	endpoint *url.URL // without credentials
	user     string
	password string
	target   string // `database`.`table`
	client   *http.Client
	layout   layout // zero until the table is found
}

// New returns an unconfigured sink.
func New() *Sink { return &Sink{} }

// Describe names the sink.
func (s *Sink) Describe() sdk.Description {
	return sdk.Description{Name: "clickhouse", Version: Version, Summary: "rows in a ClickHouse ReplacingMergeTree table (HTTP interface)"}
}

var ident = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Configure reads the config block; it does not connect.
func (s *Sink) Configure(_ context.Context, raw json.RawMessage) error {
	cfg := Config{Database: "pgtrail", Table: "changes"}
	if len(raw) > 0 {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&cfg); err != nil {
			return fmt.Errorf("config: %w (known keys: url, database, table, user, password, settings, ca_file, cert_file, key_file)", err)
		}
	}
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	var u *url.URL
	var err error
	if cfg.URL == "" {
		bad("url", "required: the HTTP interface of ClickHouse, like http://127.0.0.1:8123")
	} else if u, err = sdk.ParseHTTPURL("url", cfg.URL); err != nil {
		errs = append(errs, err)
	} else if u.RawQuery != "" {
		bad("url", "has a query string (?…), which the sink does not read: give settings in config.settings, and the user and password in config.user and config.password (or as http://user:password@host:8123)")
	}
	if !ident.MatchString(cfg.Database) {
		bad("database", "%q is not a simple identifier (letters, digits, _)", cfg.Database)
	}
	if !ident.MatchString(cfg.Table) {
		bad("table", "%q is not a simple identifier (letters, digits, _)", cfg.Table)
	}
	for k, v := range cfg.Settings {
		if !ident.MatchString(k) {
			bad("settings", "%q is not a setting name", k)
		}
		switch v.(type) {
		case string, float64, bool:
		default:
			bad("settings."+k, "want a number, string or boolean")
		}
	}
	tlsCfg, err := loadTLS(cfg, u)
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	s.cfg, s.user, s.password = cfg, cfg.User, cfg.Password
	if u.User != nil && s.user == "" {
		s.user = u.User.Username()
		s.password, _ = u.User.Password()
	}
	if s.user == "" {
		s.user = "default"
	}
	u.User, u.RawQuery = nil, "" // the query string is the sink's
	if u.Path == "" {
		u.Path = "/"
	}
	s.endpoint = u
	s.target = quote(cfg.Database) + "." + quote(cfg.Table)
	s.client = &http.Client{
		Timeout: 5 * time.Minute, // a hung server must not hold the pipeline forever
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
			TLSClientConfig:     tlsCfg,
			TLSHandshakeTimeout: 10 * time.Second,
			// Below the server's keep_alive_timeout (3 s by default), so a
			// request never goes out on a connection the server is closing.
			IdleConnTimeout: 2 * time.Second, MaxIdleConnsPerHost: 2,
		},
	}
	return nil
}

// loadTLS reads the CA and client certificate files, for an https:// URL u
// (nil when the URL is bad). Without them it returns nil: the system's CAs.
func loadTLS(cfg Config, u *url.URL) (*tls.Config, error) {
	if cfg.CAFile == "" && cfg.CertFile == "" && cfg.KeyFile == "" {
		return nil, nil
	}
	if u != nil && u.Scheme != "https" {
		return nil, errors.New("config.ca_file, cert_file and key_file: TLS settings for an http:// URL: use https:// and the server's https_port, or leave them out")
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("config.cert_file: cert_file and key_file go together: set both (a client certificate and its key), or neither")
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("config.ca_file: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("config.ca_file: %s holds no PEM certificate (-----BEGIN CERTIFICATE-----)", cfg.CAFile)
		}
	}
	if cfg.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("config.cert_file and key_file: load the client certificate %s and key %s: %w", cfg.CertFile, cfg.KeyFile, err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

func quote(ident string) string { return "`" + ident + "`" }

// Setup creates the database and the table, choosing the table's layout by
// the server's version. Idempotent: an existing table is kept as it is.
func (s *Sink) Setup(ctx context.Context) error {
	v, err := s.version(ctx)
	if err != nil {
		return err
	}
	if _, err := s.exec(ctx, "CREATE DATABASE IF NOT EXISTS "+quote(s.cfg.Database), nil); err != nil {
		return s.explain("create database "+quote(s.cfg.Database), err)
	}
	if _, err := s.exec(ctx, createTable(s.target, layoutFor(v)), nil); err != nil {
		return s.explain("create table "+s.target, err)
	}
	return nil
}

// Teardown drops the table (the database stays: it may hold other tables).
func (s *Sink) Teardown(ctx context.Context) error {
	if _, err := s.exec(ctx, "DROP TABLE IF EXISTS "+s.target, nil); err != nil {
		return s.explain("drop table "+s.target, err)
	}
	return nil
}

// Open checks the table and learns its layout.
func (s *Sink) Open(ctx context.Context) error {
	l, err := s.findLayout(ctx)
	if err != nil {
		return err
	}
	s.layout = l
	return nil
}

// Check asks the server to answer a query.
func (s *Sink) Check(ctx context.Context) error {
	if _, err := s.exec(ctx, "SELECT 1", nil); err != nil {
		return s.explain("query SELECT 1", err)
	}
	return nil
}

// Close releases idle connections.
func (s *Sink) Close(context.Context) error {
	if s.client != nil {
		s.client.CloseIdleConnections()
	}
	return nil
}

// Flush has nothing to do: every Write is durable when it returns.
func (s *Sink) Flush(context.Context) error { return nil }

// Write inserts the batch in one INSERT, which ClickHouse applies whole or
// not at all.
func (s *Sink) Write(ctx context.Context, batch []*sdk.Change) (bool, error) {
	if len(batch) == 0 {
		return true, nil
	}
	if s.layout == 0 {
		if err := s.Open(ctx); err != nil {
			return false, err
		}
	}
	body := make([]byte, 0, len(batch)*512)
	createdAt := time.Now()
	for _, c := range batch {
		body = s.layout.appendRow(body, c, createdAt)
	}
	q := "INSERT INTO " + s.target + " FORMAT JSONEachRow"
	if _, err := s.exec(ctx, q, body); err != nil {
		return false, s.explain(fmt.Sprintf("insert %d changes into %s", len(batch), s.target), err)
	}
	return true, nil
}

// version asks the server for its version: "18.16.1", "24.8.4.13".
func (s *Sink) version(ctx context.Context) (string, error) {
	out, err := s.exec(ctx, "SELECT version()", nil)
	if err != nil {
		return "", s.explain("ask the server version", err)
	}
	return strings.TrimSpace(out), nil
}

// findLayout reads the table's columns.
func (s *Sink) findLayout(ctx context.Context) (layout, error) {
	out, err := s.exec(ctx, fmt.Sprintf("SELECT name, type FROM system.columns WHERE database = '%s' AND table = '%s' FORMAT TabSeparated",
		s.cfg.Database, s.cfg.Table), nil)
	if err != nil {
		return 0, s.explain("look up table "+s.target, err)
	}
	cols := map[string]string{}
	for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		if name, typ, ok := strings.Cut(line, "\t"); ok {
			cols[name] = typ
		}
	}
	if len(cols) == 0 {
		n, err := s.exec(ctx, fmt.Sprintf("SELECT count() FROM system.databases WHERE name = '%s'", s.cfg.Database), nil)
		if err != nil {
			return 0, s.explain("look up database "+quote(s.cfg.Database), err)
		}
		if strings.TrimSpace(n) == "0" {
			return 0, fmt.Errorf("database %s does not exist on %s: run `pgtrail setup`, which creates it (or fix config.database)", quote(s.cfg.Database), s.endpoint)
		}
		return 0, fmt.Errorf("table %s does not exist on %s: run `pgtrail setup`, which creates it (or fix config.table)", s.target, s.endpoint)
	}
	l, err := layoutOf(cols)
	if err != nil {
		return 0, fmt.Errorf("table %s: %w", s.target, err)
	}
	return l, nil
}

// exec sends one statement. With a body, the statement goes in the URL and
// the body is its data (INSERT ... FORMAT); without, the statement is the body.
func (s *Sink) exec(ctx context.Context, sql string, data []byte) (string, error) {
	u := *s.endpoint
	q := url.Values{}
	body := []byte(sql)
	if data != nil {
		q.Set("query", sql)
		for _, k := range slices.Sorted(maps.Keys(s.cfg.Settings)) {
			q.Set(k, settingValue(s.cfg.Settings[k]))
		}
		body = data
	}
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.SetBasicAuth(s.user, s.password)
	resp, err := s.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("read the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", newServerError(resp, out)
	}
	return string(out), nil
}

func settingValue(v any) string {
	switch v := v.(type) {
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case bool:
		if v {
			return "1"
		}
		return "0"
	default:
		return fmt.Sprint(v)
	}
}

// serverError is an exception ClickHouse answered with.
type serverError struct {
	status int
	code   int // ClickHouse's error code, 0 when unknown
	msg    string
}

var codeInBody = regexp.MustCompile(`^Code: (\d+)`)

func newServerError(resp *http.Response, body []byte) *serverError {
	e := &serverError{status: resp.StatusCode, msg: strings.TrimSpace(string(body))}
	// Drop the stack trace that old servers append.
	if i := strings.Index(e.msg, ", Stack trace"); i > 0 {
		e.msg = e.msg[:i]
	}
	if c, err := strconv.Atoi(resp.Header.Get("X-ClickHouse-Exception-Code")); err == nil {
		e.code = c
	} else if m := codeInBody.FindStringSubmatch(e.msg); m != nil {
		e.code, _ = strconv.Atoi(m[1])
	}
	return e
}

func (e *serverError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.status, e.msg) }

// ClickHouse error codes that call for the user's action.
const (
	codeUnknownTable       = 60
	codeUnknownDatabase    = 81
	codeReadonly           = 164
	codeUnknownUser        = 192
	codeWrongPassword      = 193
	codeRequiredPassword   = 194
	codeAccessDenied       = 497
	codeAuthenticationFail = 516
)

// explain wraps err with the operation, and says what to do.
func (s *Sink) explain(op string, err error) error {
	var se *serverError
	var ne net.Error
	var oe *net.OpError
	var hint string
	switch {
	case errors.As(err, &se):
		switch se.code {
		case codeUnknownUser, codeWrongPassword, codeRequiredPassword, codeAuthenticationFail:
			hint = fmt.Sprintf("ClickHouse at %s refused user %q: check config.user and config.password", s.endpoint, s.user)
		case codeUnknownDatabase:
			hint = fmt.Sprintf("database %s does not exist: run `pgtrail setup`, which creates it (or fix config.database)", quote(s.cfg.Database))
		case codeUnknownTable:
			hint = fmt.Sprintf("table %s does not exist: run `pgtrail setup`, which creates it (or fix config.table)", s.target)
		case codeAccessDenied, codeReadonly:
			hint = fmt.Sprintf("user %q may not do this: grant it CREATE on database %s and INSERT, SELECT on %s", s.user, quote(s.cfg.Database), s.target)
		}
	case untrusted(err):
		hint = fmt.Sprintf("ClickHouse at %s presented a certificate this sink does not trust: set config.ca_file to the PEM file of the CA that signed it, and use the host name (or IP) the certificate is for", s.endpoint)
	case errors.As(err, &oe) && oe.Op == "remote error":
		hint = fmt.Sprintf("ClickHouse at %s refused the TLS handshake: if it asks for client certificates, set config.cert_file and config.key_file", s.endpoint)
	case errors.As(err, &ne):
		hint = fmt.Sprintf("cannot reach ClickHouse at %s: is it running, and is config.url its HTTP interface?", s.endpoint)
	}
	if hint != "" {
		return fmt.Errorf("%s: %w (%s)", op, err, hint)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// untrusted tells whether err is the server's certificate failing
// verification.
func untrusted(err error) bool {
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	return errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &ci)
}
