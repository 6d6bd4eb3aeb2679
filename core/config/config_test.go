package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// writeConfig writes body to a fresh file and returns its path.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pgtrail.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// unsetenv removes name for the test and restores it after.
func unsetenv(t *testing.T, name string) {
	t.Helper()
	t.Setenv(name, "")
	os.Unsetenv(name)
}

func mustLoad(t *testing.T, body string) *Config {
	t.Helper()
	cfg, err := Load(writeConfig(t, body), true)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return cfg
}

// loadErr loads body and returns the error text, failing when there is none.
func loadErr(t *testing.T, body string) string {
	t.Helper()
	_, err := Load(writeConfig(t, body), true)
	if err == nil {
		t.Fatalf("Load succeeded, want an error")
	}
	return err.Error()
}

func wantContains(t *testing.T, got string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("error %q\ndoes not contain %q", got, w)
		}
	}
}

func TestDefaultsFromDatabaseURLOnly(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://u:p@127.0.0.1:5432/app")
	cfg, err := Load(filepath.Join(t.TempDir(), "pgtrail.yaml"), false)
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Source: Source{
			Type: "postgres",
			Postgres: Postgres{
				URL: "postgres://u:p@127.0.0.1:5432/app", Slot: "pgtrail", Publication: "pgtrail",
				Tables: []string{"public.*"}, StatusInterval: Duration(10 * time.Second), Coalesce: Duration(5 * time.Millisecond), Heartbeat: Duration(10 * time.Second), MaxRetainedWAL: 10 << 30,
			},
			JetStream: JetStream{URL: "nats://127.0.0.1:4222", Stream: "DebeziumStream", Subject: "bemi", Durable: "pgtrail",
				DLQSubject: "bemi.dlq", AckWait: Duration(30 * time.Minute), FetchMaxBytes: 8 << 20},
			Kafka: Kafka{Brokers: []string{"127.0.0.1:9092"}, Topics: []string{"bemi"}, Group: "pgtrail", DLQSuffix: ".dlq", FetchMaxBytes: 8 << 20},
			Debezium: Debezium{UnavailableValuePlaceholder: "__debezium_unavailable_value", BinaryHandlingMode: "bytes",
				KeyColumns: []string{"id"}},
		},
		Sinks:    []Sink{{Name: "audit", Plugin: "postgres", Config: map[string]any{"url": "postgres://u:p@127.0.0.1:5432/app"}}},
		Pipeline: Pipeline{BatchSize: 5000, FlushInterval: Duration(50 * time.Millisecond), MaxInFlight: 2},
		HTTP:     HTTP{Listen: "127.0.0.1:9187"},
		Log:      Log{Level: "info", Format: "text"},
		Publish:  defaultPublish(),
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got  %+v\nwant %+v", cfg, want)
	}
}

func TestMissingFileNamedExplicitlyIsAnError(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://127.0.0.1/app")
	path := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := Load(path, true)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("err = %v, want fs.ErrNotExist", err)
	}
	wantContains(t, err.Error(), "load config "+path+": file does not exist (check --config)")
}

func TestMissingDefaultFileNeedsDatabaseURL(t *testing.T) {
	unsetenv(t, "DATABASE_URL")
	path := filepath.Join(t.TempDir(), "pgtrail.yaml")
	_, err := Load(path, false)
	if err == nil {
		t.Fatal("Load succeeded without a file or DATABASE_URL")
	}
	wantContains(t, err.Error(), path+" not found and DATABASE_URL is not set (create the file or set DATABASE_URL)")
}

func TestExpand(t *testing.T) {
	env := map[string]string{"SET": "v", "EMPTY": "", "DATABASE_URL": "postgres://src"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	for _, tc := range []struct{ in, want, err string }{
		{in: "plain", want: "plain"},
		{in: "${SET}", want: "v"},
		{in: "a-${SET}-b", want: "a-v-b"},
		{in: "${EMPTY}", want: ""},
		{in: "${UNSET:-dflt}", want: "dflt"},
		{in: "${EMPTY:-dflt}", want: "dflt"},
		{in: "${SET:-dflt}", want: "v"},
		{in: "${UNSET:-}", want: ""},
		{in: "${DESTINATION_URL:-${DATABASE_URL}}", want: "postgres://src"},
		{in: "${UNSET:-${ALSO_UNSET:-deep}}", want: "deep"},
		{in: "${SET:-${NOT_SET}}", want: "v"}, // an unused default does not fail
		{in: "${UNSET:-x$$y}", want: "x$y"},
		{in: "pa$$word", want: "pa$word"},
		{in: "$${SET}", want: "${SET}"},
		{in: "$5 and $", want: "$5 and $"},
		{in: "${NOT_SET}", err: "environment variable NOT_SET is not set"},
		{in: "${UNSET:-${NOT_SET}}", err: "environment variable NOT_SET is not set"},
		{in: "${SET", err: "unterminated ${ (close it with })"},
		{in: "${UNSET:-${SET}", err: "unterminated ${ (close it with })"},
		{in: "${}", err: `invalid reference "${}"`},
		{in: "${SET-x}", err: `invalid reference "${SET-x}"`},
		{in: "${1X}", err: `invalid reference "${1X}"`},
	} {
		got, err := expand(tc.in, lookup)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("expand(%q) err = %v, want %q", tc.in, err, tc.err)
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("expand(%q) = %q, %v, want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestNestedEnvDefaultInSinkConfig(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://src")
	unsetenv(t, "DESTINATION_URL")
	body := `sinks:
  - name: audit
    plugin: postgres
    config: {url: "${DESTINATION_URL:-${DATABASE_URL}}", schema: pgtrail}
`
	if got := mustLoad(t, body).Sinks[0].Config["url"]; got != "postgres://src" {
		t.Errorf("url = %v, want the DATABASE_URL fallback", got)
	}
	t.Setenv("DESTINATION_URL", "postgres://dst")
	if got := mustLoad(t, body).Sinks[0].Config["url"]; got != "postgres://dst" {
		t.Errorf("url = %v, want DESTINATION_URL", got)
	}
}

func TestDollarDollarIsLiteralDollar(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://src")
	cfg := mustLoad(t, `sinks:
  - plugin: s3
    config: {secret: "pa$$word", template: "$${NOT_EXPANDED}"}
`)
	c := cfg.Sinks[0].Config
	if c["secret"] != "pa$word" || c["template"] != "${NOT_EXPANDED}" {
		t.Errorf("config = %v", c)
	}
}

func TestEnvValueWithYAMLSyntaxStaysOneString(t *testing.T) {
	// Expansion happens after parsing, so these characters cannot inject keys.
	tricky := "postgres://u:p#: {x}\n - [y]@h/db"
	t.Setenv("DATABASE_URL", tricky)
	t.Setenv("PORT", "5432")
	cfg := mustLoad(t, `source:
  postgres:
    url: ${DATABASE_URL}
sinks:
  - plugin: postgres
    config:
      url: "${DATABASE_URL}"
      port: ${PORT}
      literal_port: 5432
`)
	if cfg.Source.Postgres.URL != tricky {
		t.Errorf("url = %q", cfg.Source.Postgres.URL)
	}
	// Expanded values are strings; values written in the file keep their YAML type.
	if c := cfg.Sinks[0].Config; c["url"] != tricky || c["port"] != "5432" || c["literal_port"] != 5432 {
		t.Errorf("config = %#v", c)
	}
}

func TestEnvValuesParseIntoTypedFields(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://src")
	t.Setenv("BATCH", "100")
	t.Setenv("FLUSH", "1s")
	unsetenv(t, "INFLIGHT")
	cfg := mustLoad(t, `pipeline:
  batch_size: "${BATCH}"
  flush_interval: ${FLUSH}
  max_in_flight: ${INFLIGHT:-2}
`)
	if p := cfg.Pipeline; p.BatchSize != 100 || p.FlushInterval != Duration(time.Second) || p.MaxInFlight != 2 {
		t.Errorf("pipeline = %+v", p)
	}
}

func TestUnsetVariableErrorNamesKeyAndVariable(t *testing.T) {
	unsetenv(t, "DATABASE_URL")
	unsetenv(t, "SINK_TOKEN")
	got := loadErr(t, `source:
  postgres:
    url: ${DATABASE_URL}
sinks:
  - plugin: x
    config: {nested: {token: "${SINK_TOKEN}"}}
`)
	wantContains(t, got,
		"line 3: source.postgres.url: environment variable DATABASE_URL is not set",
		"line 6: sinks[0].config.nested.token: environment variable SINK_TOKEN is not set")
}

func TestUnterminatedReferenceNamesKey(t *testing.T) {
	got := loadErr(t, "http:\n  listen: \"${LISTEN:-127.0.0.1:9187\"\n")
	wantContains(t, got, "line 2: http.listen: unterminated ${ (close it with })")
}

func TestUnknownKeyNamesPathAndLine(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://src")
	got := loadErr(t, `sinks:
  - name: audit
    plugin: postgres
    confg: {url: x}
sourse: {}
source:
  postgres: {slots: x}
`)
	wantContains(t, got,
		"line 4: unknown key sinks[0].confg",
		"line 5: unknown key sourse",
		"line 7: unknown key source.postgres.slots")
}

func TestDecodeErrorsNameKey(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://src")
	for _, tc := range []struct{ body, want string }{
		{"pipeline:\n  batch_size: lots\n", `line 2: pipeline.batch_size: expected a whole number, got "lots"`},
		{"pipeline:\n  flush_interval: 50\n", `line 2: pipeline.flush_interval: invalid duration "50" (use e.g. 10s or 50ms)`},
		{"source:\n  postgres:\n    max_retained_wal: lots\n", `line 3: source.postgres.max_retained_wal: invalid size "lots" (use e.g. 10GB, 512MiB or a number of bytes)`},
		{"source:\n  postgres:\n    tables: public.*\n", `line 3: source.postgres.tables: expected a list of strings, got "public.*"`},
		{"source:\n  postgres: yes\n", "line 2: source.postgres: expected a mapping of keys"},
		{"sinks: {plugin: postgres}\n", "line 1: sinks: expected a list"},
		{"- a\n", "line 1: top level: expected a mapping of keys"},
		{"log:\n  level: info\n  level: debug\n", "line 3: duplicate key log.level (first at line 2)"},
		{"log: [\n", "yaml: line 1"},
	} {
		wantContains(t, loadErr(t, tc.body), tc.want)
	}
}

func TestValidationErrorsNameKey(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://src")
	for _, tc := range []struct{ body, want string }{
		{"source: {type: mysql}", `source.type: "mysql" is not one of postgres, jetstream, kafka`},
		{"source: {postgres: {slot: Pg-Trail}}", `source.postgres.slot: "Pg-Trail" is not a valid name (use 1 to 63 lowercase letters, digits or _)`},
		{"source: {postgres: {slot: \"\"}}", `source.postgres.slot: "" is not a valid name`},
		{"source: {postgres: {slot: " + strings.Repeat("a", 64) + "}}", `source.postgres.slot: "` + strings.Repeat("a", 64) + `" is not a valid name`},
		{"source: {postgres: {publication: \"pub lic\"}}", `source.postgres.publication: "pub lic" is not a valid name`},
		{"source: {postgres: {tables: []}}", "source.postgres.tables: at least one schema.table pattern required (e.g. public.*)"},
		{"source: {postgres: {tables: [public.a, users]}}", `source.postgres.tables[1]: "users" is not a schema.table pattern (e.g. public.users, public.*, audit_*.*)`},
		{"source: {postgres: {tables: [a.b.c]}}", `source.postgres.tables[0]: "a.b.c" is not a schema.table pattern`},
		{"source: {postgres: {exclude: [.x]}}", `source.postgres.exclude[0]: ".x" is not a schema.table pattern`},
		{"source: {postgres: {status_interval: 0s}}", "source.postgres.status_interval: must be positive (e.g. 10s)"},
		{"source: {postgres: {heartbeat: -1s}}", "source.postgres.heartbeat: must be 0 (off) or positive (e.g. 10s), got -1s"},
		{"source: {postgres: {coalesce: 2s}}", "source.postgres.coalesce: must be between 0 (read at once) and 1s, got 2s (default 5ms)"},
		{"source: {postgres: {coalesce: 50ms}}", "source.postgres.coalesce: 50ms must be below pipeline.flush_interval (50ms): the wait counts toward it"},
		{"source: {postgres: {receive_timeout: 10s}}", "source.postgres.receive_timeout: 10s must be longer than status_interval (10s), or 0 for the server's wal_sender_timeout"},
		{"source: {postgres: {receive_timeout: -1s}}", "source.postgres.receive_timeout: -1s must be longer than status_interval"},
		{"source: {type: jetstream, jetstream: {url: \"\", stream: \"\", subject: \"\", durable: \"\"}}",
			"source.jetstream.url: required\nsource.jetstream.stream: required\nsource.jetstream.subject: required\nsource.jetstream.durable: required"},
		{"source: {type: kafka, kafka: {brokers: [], topics: [], group: \"\"}}",
			"source.kafka.brokers: at least one broker address required (e.g. 127.0.0.1:9092)\nsource.kafka.topics: at least one topic required\nsource.kafka.group: required"},
		{"source: {type: jetstream, jetstream: {dlq_subject: bemi, ack_wait: 0s}}",
			"source.jetstream.dlq_subject: \"bemi\" is the subject read from; dead letters need another (e.g. bemi.dlq)\nsource.jetstream.ack_wait: must be positive (e.g. 30m)"},
		{"source: {type: jetstream, jetstream: {subject: \"bemi.*\", dlq_subject: bemi.dlq, fetch_max_bytes: 0}}",
			"source.jetstream.dlq_subject: \"bemi.dlq\" is matched by source.jetstream.subject \"bemi.*\", so dead letters would be read again: choose a subject outside it\nsource.jetstream.fetch_max_bytes: must be positive"},
		{"source: {type: jetstream, jetstream: {subject: \"bemi.>\"}}",
			"source.jetstream.dlq_subject: \"bemi.>.dlq\" is not a literal subject: name the one subject dead letters are published to (e.g. bemi.dlq)"},
		{"source: {type: jetstream, jetstream: {subject: \"bemi.>\", dlq_subject: bemi.x.dlq}}",
			"source.jetstream.dlq_subject: \"bemi.x.dlq\" is matched by source.jetstream.subject \"bemi.>\""},
		{"source: {type: kafka, kafka: {fetch_max_bytes: -1}}", "source.kafka.fetch_max_bytes: must be positive (e.g. 8388608)"},
		{"source: {type: kafka, debezium: {binary_handling_mode: raw, unavailable_value_placeholder: \"\"}}",
			"source.debezium.unavailable_value_placeholder: required\nsource.debezium.binary_handling_mode: \"raw\" is not one of bytes, base64, base64-url-safe, hex"},
		{"source: {type: kafka, debezium: {catalog: \"mysql://u:secret@db/app\"}}",
			"source.debezium.catalog: not a PostgreSQL URL (e.g. postgres://user:password@host:5432/database, or \"${DATABASE_URL}\")"},
		{"sinks: [{name: a}]", "sinks[0].plugin: required (a built-in sink such as postgres, or the path of a plugin binary)"},
		{"sinks: [{plugin: postgres}, {name: b, plugin: s3}]", "sinks[0].name: required when there is more than one sink"},
		{"sinks: [{name: a, plugin: postgres}, {name: a, plugin: s3}]", `sinks[1].name: "a" is already used by sinks[0] (names must be unique)`},
		{"pipeline: {batch_size: 0}", "pipeline.batch_size: must be positive, got 0"},
		{"pipeline: {flush_interval: -1s}", "pipeline.flush_interval: must be positive (e.g. 50ms)"},
		{"pipeline: {max_in_flight: 0}", "pipeline.max_in_flight: must be positive, got 0"},
		{"pipeline: {max_value_bytes: 1GiB}", "pipeline.max_value_bytes: must be at most 268435455 bytes (jsonb's longest string), or 0 for 64MiB; got 1073741824"},
		{"http: {listen: localhost}", `http.listen: "localhost" is not host:port (e.g. 127.0.0.1:9187, or "" to disable)`},
		{"log: {level: verbose}", `log.level: "verbose" is not one of debug, info, warn, error`},
		{"log: {format: xml}", `log.format: "xml" is not one of text, json`},
	} {
		wantContains(t, loadErr(t, tc.body), tc.want)
	}
}

func TestPostgresURLRequiredForPostgresSource(t *testing.T) {
	unsetenv(t, "DATABASE_URL")
	got := loadErr(t, "sinks: [{plugin: s3}]\n")
	wantContains(t, got, "source.postgres.url: required (set it or DATABASE_URL)")
	// Other sources do not need it.
	mustLoad(t, "source: {type: kafka}\nsinks: [{plugin: s3}]\n")
}

func TestNoSinkWithoutDatabaseIsAnError(t *testing.T) {
	unsetenv(t, "DATABASE_URL")
	got := loadErr(t, "source: {type: jetstream}\n")
	wantContains(t, got, "sinks: at least one sink required")
}

func TestValidationReportsEveryProblemAtOnce(t *testing.T) {
	unsetenv(t, "DATABASE_URL")
	got := loadErr(t, "source: {postgres: {slot: BAD}}\nsinks: [{name: x, plugn: s3}]\nlog: {level: loud}\n")
	wantContains(t, got,
		"line 2: unknown key sinks[0].plugn\n",
		"source.postgres.url: required (set it or DATABASE_URL)\n",
		`source.postgres.slot: "BAD" is not a valid name`,
		"sinks[0].plugin: required",
		`log.level: "loud" is not one of debug, info, warn, error`)
	if n := strings.Count(got, "\n") + 1; n != 5 {
		t.Errorf("got %d problems, want 5:\n%s", n, got)
	}
}

func TestNoSinksUsesDefaultAuditSinkOnSourceURL(t *testing.T) {
	unsetenv(t, "DATABASE_URL")
	cfg := mustLoad(t, "source: {postgres: {url: \"postgres://from-file\"}}\n")
	want := []Sink{{Name: "audit", Plugin: "postgres", Config: map[string]any{"url": "postgres://from-file"}}}
	if !reflect.DeepEqual(cfg.Sinks, want) {
		t.Errorf("sinks = %+v, want %+v", cfg.Sinks, want)
	}
}

func TestSingleSinkNameDefaultsToPlugin(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://src")
	if got := mustLoad(t, "sinks: [{plugin: /opt/bin/pgtrail-sink-kv}]").Sinks[0].Name; got != "pgtrail-sink-kv" {
		t.Errorf("name = %q", got)
	}
}

func TestHTTPListen(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://src")
	if got := mustLoad(t, `http: {listen: ""}`).HTTP.Listen; got != "" {
		t.Errorf(`listen: "" gave %q, want disabled`, got)
	}
	if got := mustLoad(t, "http: {listen: }").HTTP.Listen; got != "127.0.0.1:9187" {
		t.Errorf("empty value gave %q, want the default", got)
	}
	if got := mustLoad(t, `http: {listen: ":9999"}`).HTTP.Listen; got != ":9999" {
		t.Errorf("listen = %q", got)
	}
}

func TestMatch(t *testing.T) {
	p := Postgres{
		Tables:  []string{"public.*", "billing.invoice*", "tenant_*.orders"},
		Exclude: []string{"public.schema_migrations", "*.*_tmp", "public.a*z"},
	}
	for _, tc := range []struct {
		schema, table string
		want          bool
	}{
		{"public", "users", true},
		{"public", "schema_migrations", false},
		{"public", "users_tmp", false},
		{"public", "az", false},
		{"public", "abcz", false},
		{"public", "abcza", true},
		{"billing", "invoices", true},
		{"billing", "invoice", true},
		{"billing", "payments", false},
		{"billing", "invoice_tmp", false},
		{"tenant_42", "orders", true},
		{"tenant_42", "orders_tmp", false},
		{"tenant_42", "users", false},
		{"tenant", "orders", false},
		{"Public", "users", false},
		{"pg_catalog", "pg_class", false},
	} {
		if got := p.Match(tc.schema, tc.table); got != tc.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.schema, tc.table, got, tc.want)
		}
	}
	if !(Postgres{Tables: []string{"*.*"}}).Match("a", "b") {
		t.Error("*.* does not match everything")
	}
	if (Postgres{Tables: []string{"a*b*a.x"}}).Match("aba", "x") != true || (Postgres{Tables: []string{"a*b*a.x"}}).Match("ab", "x") {
		t.Error("multi-star glob")
	}
	if (Postgres{Tables: []string{"pub?ic.*"}}).Match("public", "x") {
		t.Error("? must be literal")
	}
}

func TestDesignExampleParses(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://u@127.0.0.1/app")
	unsetenv(t, "DESTINATION_URL")
	cfg := mustLoad(t, `source:
  type: postgres            # postgres | jetstream | kafka
  postgres: {url: "${DATABASE_URL}", slot: pgtrail, publication: pgtrail, tables: ["public.*"], exclude: [public.sessions], status_interval: 5s}
  jetstream: {url: "nats://127.0.0.1:4222", stream: DebeziumStream, subject: bemi, durable: pgtrail}
  kafka: {brokers: ["127.0.0.1:9092"], topics: ["bemi"], group: pgtrail}
sinks:
  - name: audit
    plugin: postgres        # a built-in name, or the path of a plugin binary
    config: {url: "${DESTINATION_URL:-${DATABASE_URL}}", schema: pgtrail, table: changes}
  - name: archive
    plugin: s3
    config: {bucket: audit, prefix: "pgtrail/", part_size: 8}
pipeline: {batch_size: 1000, flush_interval: 100ms, max_in_flight: 8}
http: {listen: "127.0.0.1:9187"}   # /metrics, /healthz
log: {level: debug, format: json}
`)
	want := &Config{
		Source: Source{
			Type: "postgres",
			Postgres: Postgres{
				URL: "postgres://u@127.0.0.1/app", Slot: "pgtrail", Publication: "pgtrail",
				Tables: []string{"public.*"}, Exclude: []string{"public.sessions"}, StatusInterval: Duration(5 * time.Second), Coalesce: Duration(5 * time.Millisecond), Heartbeat: Duration(10 * time.Second), MaxRetainedWAL: 10 << 30,
			},
			JetStream: JetStream{URL: "nats://127.0.0.1:4222", Stream: "DebeziumStream", Subject: "bemi", Durable: "pgtrail",
				DLQSubject: "bemi.dlq", AckWait: Duration(30 * time.Minute), FetchMaxBytes: 8 << 20},
			Kafka: Kafka{Brokers: []string{"127.0.0.1:9092"}, Topics: []string{"bemi"}, Group: "pgtrail", DLQSuffix: ".dlq", FetchMaxBytes: 8 << 20},
			Debezium: Debezium{UnavailableValuePlaceholder: "__debezium_unavailable_value", BinaryHandlingMode: "bytes",
				KeyColumns: []string{"id"}},
		},
		Sinks: []Sink{
			{Name: "audit", Plugin: "postgres", Config: map[string]any{"url": "postgres://u@127.0.0.1/app", "schema": "pgtrail", "table": "changes"}},
			{Name: "archive", Plugin: "s3", Config: map[string]any{"bucket": "audit", "prefix": "pgtrail/", "part_size": 8}},
		},
		Pipeline: Pipeline{BatchSize: 1000, FlushInterval: Duration(100 * time.Millisecond), MaxInFlight: 8},
		HTTP:     HTTP{Listen: "127.0.0.1:9187"},
		Log:      Log{Level: "debug", Format: "json"},
		Publish:  defaultPublish(),
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got  %+v\nwant %+v", cfg, want)
	}
	if !cfg.Source.Postgres.Match("public", "users") || cfg.Source.Postgres.Match("public", "sessions") {
		t.Error("Match does not follow tables/exclude")
	}
}

func TestEmptyFileIsDefaults(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://src")
	cfg := mustLoad(t, "# nothing but a comment\n")
	if cfg.Source.Postgres.URL != "postgres://src" || len(cfg.Sinks) != 1 || cfg.Sinks[0].Name != "audit" {
		t.Errorf("cfg = %+v", cfg)
	}
}

func TestDebeziumCatalogIsExpandedAndValidated(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://u:p@127.0.0.1:5432/app")
	cfg := mustLoad(t, "source: {type: kafka, debezium: {catalog: \"${DATABASE_URL}\"}}\nsinks: [{plugin: postgres}]")
	if got := cfg.Source.Debezium.Catalog; got != "postgres://u:p@127.0.0.1:5432/app" {
		t.Fatalf("catalog %q", got)
	}
	for _, ok := range []string{"postgresql://db/app", "host=db dbname=app user=u"} {
		mustLoad(t, "source: {type: jetstream, debezium: {catalog: \""+ok+"\"}}\nsinks: [{plugin: postgres}]")
	}
	// Optional: no catalog by default.
	if got := mustLoad(t, "source: {type: kafka}\nsinks: [{plugin: postgres}]").Source.Debezium.Catalog; got != "" {
		t.Fatalf("default catalog %q, want none", got)
	}
	// The URL is not echoed: it may hold a password.
	if msg := loadErr(t, "source: {type: kafka, debezium: {catalog: \"mysql://u:secret@db/app\"}}\nsinks: [{plugin: postgres}]"); strings.Contains(msg, "secret") {
		t.Fatalf("error shows the password: %s", msg)
	}
}

func TestDebeziumExampleConfigsLoad(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://u:p@127.0.0.1:5432/app")
	t.Setenv("DESTINATION_URL", "postgres://u:p@127.0.0.1:5432/audit")
	for _, name := range []string{"debezium-jetstream.yaml", "debezium-kafka.yaml"} {
		cfg, err := Load(filepath.Join("..", "..", "configs", name), true)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if cfg.Source.Debezium.Catalog != "postgres://u:p@127.0.0.1:5432/app" {
			t.Errorf("%s: catalog %q", name, cfg.Source.Debezium.Catalog)
		}
	}
}

func TestMaxValueBytesDefaultsTo64MiBAndTakesUnits(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://src")
	for body, want := range map[string]int{"": 64 << 20, "pipeline: {max_value_bytes: 1MiB}": 1 << 20, "pipeline: {max_value_bytes: 268435455}": 1<<28 - 1} {
		if got := mustLoad(t, body).Pipeline.MaxValue(); got != want {
			t.Errorf("%q: MaxValue() = %d, want %d", body, got, want)
		}
	}
}

func TestSizesParseWithUnits(t *testing.T) {
	for in, want := range map[string]Size{"10GB": 10e9, "512MiB": 512 << 20, "1.5GiB": 3 << 29, "4096": 4096, "1 TB": 1e12, "2KiB": 2048} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "ten GB", "-1GB", "10 parsecs"} {
		if _, err := ParseSize(in); err == nil || !strings.Contains(err.Error(), "use e.g. 10GB") {
			t.Errorf("ParseSize(%q): want an error naming the form, got %v", in, err)
		}
	}
}
