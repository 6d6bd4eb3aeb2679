package clickhouse_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/plugins/sdk"
	"github.com/pgtrail/pgtrail/plugins/sdk/sdktest"
	"github.com/pgtrail/pgtrail/sinks/clickhouse"
	"github.com/pgtrail/pgtrail/test/clickhousetest"
)

var server *clickhousetest.Server

func TestMain(m *testing.M) {
	clickhousetest.Main(m, func(s *clickhousetest.Server) { server = s })
}

var ctx = context.Background()

func config(t testing.TB, database string, extra map[string]any) json.RawMessage {
	t.Helper()
	cfg := map[string]any{"url": server.URL(), "database": database, "table": "changes",
		"user": clickhousetest.User, "password": clickhousetest.Password}
	for k, v := range extra {
		cfg[k] = v
	}
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func configured(t testing.TB, raw json.RawMessage) *clickhouse.Sink {
	t.Helper()
	s := clickhouse.New()
	if err := s.Configure(ctx, raw); err != nil {
		t.Fatalf("Configure: %v", err)
	}
	t.Cleanup(func() { s.Close(ctx) })
	return s
}

// ready returns a sink whose table Setup made, opened.
func ready(t testing.TB, database string) *clickhouse.Sink {
	t.Helper()
	s := configured(t, config(t, database, nil))
	if err := s.Setup(ctx); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	if err := s.Open(ctx); err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

// ids returns the IDs a query with FINAL sees, once per row.
func ids(t testing.TB, database string) []uuid.UUID {
	t.Helper()
	var out []uuid.UUID
	for line := range strings.SplitSeq(strings.TrimSpace(server.Query(t, "SELECT toString(id) FROM "+database+".changes FINAL")), "\n") {
		if line != "" {
			out = append(out, uuid.MustParse(line))
		}
	}
	return out
}

func TestSinkPassesTheSDKTestKit(t *testing.T) {
	database := server.NewDatabase(t)
	sdktest.Run(t, sdktest.Harness{
		New:    func() sdk.Sink { return clickhouse.New() },
		Config: config(t, database, nil),
		Stored: func(t testing.TB) []uuid.UUID { return ids(t, database) },
	})
}

func TestSetupMakesTheTableForTheServerVersion(t *testing.T) {
	database := server.NewDatabase(t)
	ready(t, database)
	got := server.Query(t, "SELECT name, type FROM system.columns WHERE database = '"+database+"' AND table = 'changes' FORMAT TabSeparated")
	name, ts, micros := "LowCardinality(String)", "DateTime64(6, \\'UTC\\')", ""
	if major := strings.Split(server.Version(), ".")[0]; len(major) == 2 && major < "20" {
		name, ts, micros = "String", "DateTime(\\'UTC\\')", "committed_at_us\tUInt64\nqueued_at_us\tUInt64\n"
	}
	want := "id\tUUID\nprimary_key\tString\nbefore\tString\nafter\tString\ncontext\tString\n" +
		"database\t" + name + "\nschema\t" + name + "\ntable\t" + name + "\n" +
		"operation\tEnum8(\\'CREATE\\' = 1, \\'UPDATE\\' = 2, \\'DELETE\\' = 3, \\'TRUNCATE\\' = 4)\n" +
		"committed_at\t" + ts + "\nqueued_at\t" + ts + "\ncreated_at\t" + ts + "\n" + micros +
		"transaction_id\tUInt64\nposition\tUInt64\nseq\tUInt32\nunchanged_toast\tArray(String)\n"
	if got != want {
		t.Fatalf("ClickHouse %s: columns:\n%s\nwant:\n%s", server.Version(), got, want)
	}
	engine := server.Query(t, "SELECT engine, partition_key, sorting_key FROM system.tables WHERE database = '"+database+"' AND name = 'changes'")
	if !strings.HasPrefix(engine, "ReplacingMergeTree\t") {
		t.Fatalf("engine: %q, want ReplacingMergeTree", engine)
	}
}

func TestRowsHoldTheAuditColumns(t *testing.T) {
	database := server.NewDatabase(t)
	s := ready(t, database)
	at := time.Date(2024, 1, 2, 3, 4, 5, 123456000, time.UTC)
	c := &sdk.Change{
		ID: change.MakeID("app", 4083, "public", "orders", 0), Database: "app", Schema: "public", Table: "orders",
		Operation: change.Update, PrimaryKey: "[7,\"k\u00e9y\"]",
		Before: json.RawMessage(`{"id": 7, "note": "line\nbreak \"q\""}`), After: json.RawMessage(`{"id":7}`),
		Context: json.RawMessage("{\"user_id\":42,\"path\":\"/o/\u2603\"}"), UnchangedToast: []string{"body", "blob"},
		TransactionID: 900, CommittedAt: at, QueuedAt: at.Add(time.Millisecond), LSN: 4083, CommitLSN: 4096, Seq: 3,
	}
	keyless := *c
	keyless.ID, keyless.PrimaryKey, keyless.Operation, keyless.UnchangedToast = uuid.New(), "", change.Truncate, nil
	if durable, err := s.Write(ctx, []*sdk.Change{c, &keyless}); err != nil || !durable {
		t.Fatalf("Write = %v, %v; want durable", durable, err)
	}
	cols := "toString(id) AS id, primary_key, before, after, context, database, schema, table, operation, committed_at, queued_at, transaction_id, position, seq, unchanged_toast"
	times := `"committed_at":"2024-01-02 03:04:05.123456","queued_at":"2024-01-02 03:04:05.124456"`
	if major := strings.Split(server.Version(), ".")[0]; len(major) == 2 && major < "20" {
		cols += ", committed_at_us, queued_at_us"
		times = `"committed_at":"2024-01-02 03:04:05","queued_at":"2024-01-02 03:04:05"`
	}
	got := server.Query(t, "SELECT "+cols+" FROM "+database+".changes FINAL ORDER BY seq, operation FORMAT JSONEachRow")
	line := strings.Split(got, "\n")[0]
	want := fmt.Sprintf(`{"id":"%s","primary_key":"[7,\"kéy\"]","before":"{\"id\": 7, \"note\": \"line\\nbreak \\\"q\\\"\"}","after":"{\"id\":7}",`+
		`"context":"{\"user_id\":42,\"path\":\"\/o\/☃\"}","database":"app","schema":"public","table":"orders","operation":"UPDATE",`+
		`%s,"transaction_id":"900","position":"4083","seq":3,"unchanged_toast":["body","blob"]`, c.ID, times)
	if !strings.Contains(got, `"committed_at_us"`) {
		want += "}"
	} else {
		want += `,"committed_at_us":"1704164645123456","queued_at_us":"1704164645124456"}`
	}
	if normalize(t, line) != normalize(t, want) {
		t.Fatalf("row:\n%s\nwant:\n%s", line, want)
	}
	second := strings.Split(strings.TrimSpace(got), "\n")
	if len(second) != 2 || !strings.Contains(second[1], `"primary_key":"",`) || !strings.Contains(second[1], `"operation":"TRUNCATE"`) || !strings.Contains(second[1], `"unchanged_toast":[]`) {
		t.Fatalf("keyless row: %v", second)
	}
}

// normalize re-encodes a JSON object so that escapes compare equal.
func normalize(t testing.TB, s string) string {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("%v: %s", err, s)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func TestReplayedChangesAreMergedAwayAndFinalSeesThemOnce(t *testing.T) {
	database := server.NewDatabase(t)
	s := ready(t, database)
	changes := sdktest.Changes(300, time.Now())
	for _, part := range [][]*sdk.Change{changes[:200], changes[100:]} {
		if _, err := s.Write(ctx, part); err != nil {
			t.Fatal(err)
		}
	}
	if got := server.Query(t, "SELECT count() FROM "+database+".changes FINAL"); got != "300\n" {
		t.Fatalf("FINAL counts %s, want 300", got)
	}
	server.Query(t, "OPTIMIZE TABLE "+database+".changes FINAL")
	if got := server.Query(t, "SELECT count() FROM "+database+".changes"); got != "300\n" {
		t.Fatalf("after the merge the table holds %s rows, want 300", got)
	}
}

func TestMissingDatabaseSaysRunSetup(t *testing.T) {
	database := server.NewDatabase(t)
	s := configured(t, config(t, database, nil))
	err := s.Open(ctx)
	t.Logf("Open: %v", err)
	want := fmt.Sprintf("database `%s` does not exist on %s/: run `pgtrail setup`, which creates it", database, server.URL())
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Open without a database: %v; want %q", err, want)
	}
	server.Query(t, "CREATE DATABASE "+database)
	err = s.Open(ctx)
	want = fmt.Sprintf("table `%s`.`changes` does not exist on %s/: run `pgtrail setup`", database, server.URL())
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Open without a table: %v; want %q", err, want)
	}
}

func TestWriteIntoADroppedTableFailsUntilSetupMakesItAgain(t *testing.T) {
	database := server.NewDatabase(t)
	s := ready(t, database)
	changes := sdktest.Changes(20, time.Now())
	server.Query(t, "DROP TABLE "+database+".changes")
	durable, err := s.Write(ctx, changes)
	t.Logf("Write: %v", err)
	if err == nil || durable || !strings.Contains(err.Error(), "does not exist: run `pgtrail setup`") {
		t.Fatalf("Write into a dropped table = %v, %v; want an error that says to run pgtrail setup", durable, err)
	}
	if err := s.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	if durable, err := s.Write(ctx, changes); err != nil || !durable {
		t.Fatalf("retried Write = %v, %v", durable, err)
	}
	if got := len(ids(t, database)); got != 20 {
		t.Fatalf("%d changes stored, want 20", got)
	}
}

func TestWrongPasswordSaysCheckUserAndPassword(t *testing.T) {
	database := server.NewDatabase(t)
	s := configured(t, config(t, database, map[string]any{"password": "wrong"}))
	for name, err := range map[string]error{"Setup": s.Setup(ctx), "Open": s.Open(ctx), "Check": s.Check(ctx)} {
		t.Logf("%s: %v", name, err)
		if err == nil || !strings.Contains(err.Error(), `refused user "default": check config.user and config.password`) {
			t.Errorf("%s with a wrong password: %v", name, err)
		}
	}
}

func TestUnreachableServerSaysCheckTheURL(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s := configured(t, config(t, "db", map[string]any{"url": "http://" + addr}))
	start := time.Now()
	_, err = s.Write(ctx, sdktest.Changes(1, time.Now()))
	t.Logf("Write: %v", err)
	if err == nil || !strings.Contains(err.Error(), "connection refused") ||
		!strings.Contains(err.Error(), "cannot reach ClickHouse at http://"+addr+"/: is it running, and is config.url its HTTP interface?") {
		t.Fatalf("Write to nothing: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %s to fail: the sink must not retry by itself", d)
	}
}

func TestCredentialsInTheURL(t *testing.T) {
	database := server.NewDatabase(t)
	raw, _ := json.Marshal(map[string]any{"url": server.URLWithUser(), "database": database})
	s := configured(t, raw)
	if err := s.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(ctx, sdktest.Changes(3, time.Now())); err != nil {
		t.Fatal(err)
	}
	if got := len(ids(t, database)); got != 3 {
		t.Fatalf("%d changes stored, want 3", got)
	}
}

func TestSettingsGoWithEveryInsert(t *testing.T) {
	database := server.NewDatabase(t)
	ready(t, database)
	s := configured(t, config(t, database, map[string]any{"settings": map[string]any{"no_such_setting": 1}}))
	_, err := s.Write(ctx, sdktest.Changes(1, time.Now()))
	if err == nil || !strings.Contains(err.Error(), "no_such_setting") {
		t.Fatalf("Write with an unknown setting: %v; want the server to name it", err)
	}
}

func TestTeardownDropsTheTable(t *testing.T) {
	database := server.NewDatabase(t)
	s := ready(t, database)
	if err := s.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if got := server.Query(t, "SELECT count() FROM system.tables WHERE database = '"+database+"'"); got != "0\n" {
		t.Fatalf("%s tables left after Teardown", got)
	}
	if err := s.Teardown(ctx); err != nil {
		t.Fatalf("second Teardown: %v", err)
	}
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	for raw, want := range map[string]string{
		`{}`:                                      "config.url: required",
		`{"url":"http://x","tabel":1}`:            `unknown field "tabel"`,
		`{"url":"localhost:8123"}`:                "config.url",
		`{"url":"http://x","database":"a-b"}`:     `config.database: "a-b" is not a simple identifier`,
		`{"url":"http://x","table":""}`:           "config.table",
		`{"url":"http://x","settings":{"x":[1]}}`: "config.settings.x",
	} {
		err := clickhouse.New().Configure(ctx, json.RawMessage(raw))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Configure(%s) = %v, want an error containing %q", raw, err, want)
		}
	}
}

// TestHTTPSWithOwnCAAndClientCertificate writes over the server's HTTPS
// interface, whose certificate is signed by a private CA and which asks
// every client for a certificate of that CA.
func TestHTTPSWithOwnCAAndClientCertificate(t *testing.T) {
	database := server.NewDatabase(t)
	certs := server.Certs()
	tlsKeys := map[string]any{"url": server.HTTPSURL(), "ca_file": certs.CAFile, "cert_file": certs.ClientCert, "key_file": certs.ClientKey}
	s := configured(t, config(t, database, tlsKeys))
	if err := s.Setup(ctx); err != nil {
		t.Fatalf("Setup over HTTPS: %v", err)
	}
	if durable, err := s.Write(ctx, sdktest.Changes(4, time.Now())); err != nil || !durable {
		t.Fatalf("Write over HTTPS = %v, %v", durable, err)
	}
	if got := len(ids(t, database)); got != 4 {
		t.Fatalf("%d changes stored, want 4", got)
	}
	for _, c := range []struct {
		name, leave, want string
	}{
		{"without the CA", "ca_file", "presented a certificate this sink does not trust: set config.ca_file"},
		{"without a client certificate", "cert_file", "refused the TLS handshake: if it asks for client certificates, set config.cert_file and config.key_file"},
	} {
		extra := maps.Clone(tlsKeys)
		delete(extra, c.leave)
		if c.leave == "cert_file" {
			delete(extra, "key_file")
		}
		err := configured(t, config(t, database, extra)).Check(ctx)
		t.Logf("%s: %v", c.name, err)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Check = %v, want it to say %q", c.name, err, c.want)
		}
	}
}

// TestConfigErrorsNeverEchoThePassword gives bad URLs that hold a password:
// the errors name config.url and say what is wrong, without the password.
func TestConfigErrorsNeverEchoThePassword(t *testing.T) {
	for raw, want := range map[string]string{
		`{"url":"localhost:8123?user=u&password=hunter2"}`: "config.url: not an http:// or https:// URL",
		`{"url":"ftp://u:hunter2@db:8123"}`:                "config.url: not an http:// or https:// URL",
		`{"url":"http://u:hunter2@db:port"}`:               "config.url: not a valid URL",
		`{"url":"http://u:hunter2@/"}`:                     "config.url: the URL names no host",
		`{"url":"http://db:8123/?password=hunter2"}`:       "config.url: has a query string",
		`{"url":"u:hunter2@db:8123"}`:                      "config.url: not an http:// or https:// URL",
	} {
		err := clickhouse.New().Configure(ctx, json.RawMessage(raw))
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Configure(%s) = %v; want an error containing %q and not the password", raw, err, want)
		}
	}
}

func TestTLSConfigErrorsNameTheKey(t *testing.T) {
	certs := server.Certs()
	notPEM := filepath.Join(t.TempDir(), "ca.txt")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o600)
	for raw, want := range map[string]string{
		`{"url":"http://db:8123","ca_file":"` + certs.CAFile + `"}`:                                             "TLS settings for an http:// URL: use https://",
		`{"url":"https://db:8123","cert_file":"` + certs.ClientCert + `"}`:                                      "config.cert_file: cert_file and key_file go together",
		`{"url":"https://db:8123","ca_file":"/nonexistent/ca.pem"}`:                                             "config.ca_file: open /nonexistent/ca.pem: no such file",
		`{"url":"https://db:8123","ca_file":"` + notPEM + `"}`:                                                  "config.ca_file: " + notPEM + " holds no PEM certificate",
		`{"url":"https://db:8123","cert_file":"` + certs.ClientCert + `","key_file":"` + certs.ServerKey + `"}`: "load the client certificate",
	} {
		err := clickhouse.New().Configure(ctx, json.RawMessage(raw))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Configure(%s) = %v, want an error containing %q", raw, err, want)
		}
	}
}
