// Package config loads pgtrail's one YAML config file: environment expansion,
// strict decoding, defaults and validation, with errors that name the key.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// DefaultPath is the config file every command reads unless --config says otherwise.
const DefaultPath = "./pgtrail.yaml"

// Config is the whole file.
type Config struct {
	Source   Source   `yaml:"source"`
	Sinks    []Sink   `yaml:"sinks"`
	Pipeline Pipeline `yaml:"pipeline"`
	HTTP     HTTP     `yaml:"http"`
	Log      Log      `yaml:"log"`
	Publish  Publish  `yaml:"publish"` // where `pgtrail capture` publishes
	UI       UI       `yaml:"ui"`      // the activity log: API and web UI
	// Retention removes old changes from the audit table (retention.go).
	Retention Retention `yaml:"retention"`
	// Rules ignore and redact values before any sink (rules.go).
	Rules Rules `yaml:"rules"`
}

// Source selects the ingress; only the section named by Type is required.
type Source struct {
	Type      string    `yaml:"type"` // postgres | jetstream | kafka
	Postgres  Postgres  `yaml:"postgres"`
	JetStream JetStream `yaml:"jetstream"`
	Kafka     Kafka     `yaml:"kafka"`
	Debezium  Debezium  `yaml:"debezium"` // how the broker sources read Debezium events
}

// Postgres is native capture from a replication slot.
type Postgres struct {
	URL            string   `yaml:"url"`
	Slot           string   `yaml:"slot"`
	Publication    string   `yaml:"publication"`
	Tables         []string `yaml:"tables"`  // schema.table patterns, * matches any run of characters
	Exclude        []string `yaml:"exclude"` // patterns removed from Tables
	StatusInterval Duration `yaml:"status_interval"`
	// Coalesce is how long capture waits, when WAL arrives after a quiet
	// spell, before it reads: the walsender sends every message on its own,
	// and reading each as it comes costs a wake-up per message. The wait
	// counts toward the batch's flush_interval, so below it it adds no
	// latency. 0 reads at once.
	Coalesce Duration `yaml:"coalesce"`
	// ReceiveTimeout is how long capture waits for any message from the
	// server (it asks for one every status interval) before it takes the
	// replication connection for stalled and reconnects; it also bounds
	// each query capture makes. 0: the server's wal_sender_timeout.
	ReceiveTimeout Duration `yaml:"receive_timeout"`
	// ReplicaIdentity "full" makes setup and run set REPLICA IDENTITY FULL
	// on every captured table, so updates and deletes carry the whole old
	// row (before images, reverts) at some WAL cost; "" only reports the
	// tables without it.
	ReplicaIdentity string `yaml:"replica_identity"`
	// Heartbeat is how often capture writes a non-transactional logical
	// message (prefix pgtrail_heartbeat, never stored) into the source's
	// WAL, so that lag is known in seconds and the slot advances on an idle
	// database. 0 sends none.
	Heartbeat Duration `yaml:"heartbeat"`
	// MaxRetainedWAL is the WAL the slot may hold back before capture warns
	// (log, `pgtrail status`). 0 never warns on size.
	MaxRetainedWAL Size `yaml:"max_retained_wal"`
	// DDL makes setup install event triggers whose messages pgtrail stores
	// as DDL rows (transports/pglogrepl/ddl.go).
	DDL bool `yaml:"ddl"`
}

// DefaultFetchMaxBytes bounds one broker fetch unless fetch_max_bytes says
// otherwise (the sources take 0 for it too).
const DefaultFetchMaxBytes = 8 << 20

// JetStream is Debezium change events read from a NATS JetStream stream.
type JetStream struct {
	URL     string `yaml:"url"`
	Stream  string `yaml:"stream"`
	Subject string `yaml:"subject"`
	Durable string `yaml:"durable"`
	// DLQSubject receives malformed messages; "<subject>.dlq" when empty.
	DLQSubject string `yaml:"dlq_subject"`
	// AckWait is how long the server waits for an ack before redelivering.
	// pgtrail never relies on redelivery (it restarts from the ack floor),
	// so it is long: a big transaction stays unacked until it is complete.
	AckWait Duration `yaml:"ack_wait"`
	// FetchMaxBytes bounds one pull (at most 512 messages and this many
	// bytes); a message larger than it is pulled alone.
	FetchMaxBytes int      `yaml:"fetch_max_bytes"`
	TLS           TLS      `yaml:"tls"`
	Auth          NATSAuth `yaml:"auth"`
}

// Kafka is Debezium change events read from Kafka topics.
type Kafka struct {
	Brokers []string `yaml:"brokers"`
	Topics  []string `yaml:"topics"`
	Group   string   `yaml:"group"`
	// DLQSuffix names the topic that receives a topic's malformed messages.
	DLQSuffix string `yaml:"dlq_suffix"`
	// FetchMaxBytes bounds what one fetch of a partition asks the broker
	// for; a record batch larger than it still comes whole.
	FetchMaxBytes int  `yaml:"fetch_max_bytes"`
	TLS           TLS  `yaml:"tls"`
	SASL          SASL `yaml:"sasl"`
}

// Debezium says how Debezium's connector was configured, where it matters for
// reading its events.
type Debezium struct {
	// UnavailableValuePlaceholder is the connector's
	// unavailable.value.placeholder: it marks unchanged TOAST values.
	UnavailableValuePlaceholder string `yaml:"unavailable_value_placeholder"`
	// BinaryHandlingMode is the connector's binary.handling.mode.
	BinaryHandlingMode string `yaml:"binary_handling_mode"`
	// KeyColumns form the primary key of a row whose message has no key
	// (Debezium Server's NATS sink publishes values only).
	KeyColumns []string `yaml:"key_columns"`
	// Catalog is a PostgreSQL URL of the source database. When set, each
	// table's definition is read from it: the types of values of events
	// without the schema envelope, the primary key, the replica identity.
	Catalog string `yaml:"catalog"`
}

// Sink is one destination. Config is passed to the plugin as written.
type Sink struct {
	Name   string         `yaml:"name"`
	Plugin string         `yaml:"plugin"` // a built-in name, or the path of a plugin binary
	Config map[string]any `yaml:"config"`
	// InProcess runs a built-in sink inside the pgtrail process instead of
	// behind the plugin boundary: no crash isolation, for benchmarks and tests.
	InProcess bool `yaml:"in_process"`
	// SHA256 is the sum a plugin binary must have to be run (64 hex digits).
	SHA256 string `yaml:"sha256"`
	// Env names the environment variables the plugin process gets beyond
	// PATH, HOME, TMPDIR, TZ, LANG and the like: names, or prefixes as AWS_*.
	Env []string `yaml:"env"`
}

// Pipeline bounds memory and latency between source and sinks.
type Pipeline struct {
	BatchSize     int      `yaml:"batch_size"`
	FlushInterval Duration `yaml:"flush_interval"`
	MaxInFlight   int      `yaml:"max_in_flight"`
	// MaxContextBytes caps a context message; a larger one is a bad
	// context (the change is stored with {}). 0: 64 KiB.
	MaxContextBytes int `yaml:"max_context_bytes"`
	// MaxValueBytes caps one string value of a row image; a longer one is
	// stored as a marker with its size and SHA-256. 0: DefaultMaxValueBytes.
	MaxValueBytes Size `yaml:"max_value_bytes"`
}

// DefaultMaxValueBytes is pipeline.max_value_bytes when unset: a quarter of
// jsonb's limit, so that one value costs about 2.3 bytes of memory per byte
// at most in pgtrail (README, "Memory").
const DefaultMaxValueBytes = 64 << 20

// MaxValue is pipeline.max_value_bytes, or its default.
func (p Pipeline) MaxValue() int {
	if p.MaxValueBytes == 0 {
		return DefaultMaxValueBytes
	}
	return int(p.MaxValueBytes)
}

// HTTP serves /metrics and /healthz; an empty Listen disables it.
type HTTP struct {
	Listen string `yaml:"listen"`
}

// Log configures the process logger.
type Log struct {
	Level  string `yaml:"level"`  // debug | info | warn | error
	Format string `yaml:"format"` // text | json
}

// Duration is a time.Duration written as "10s" or "50ms".
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q (use e.g. 10s or 50ms)", s)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration back in the form it is read.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

func (d Duration) String() string { return time.Duration(d).String() }

// Load reads the config at path. A missing file is an error when the user named
// it (explicit); otherwise DATABASE_URL alone is enough to run, so the defaults
// capture and store into that database.
func Load(path string, explicit bool) (*Config, error) {
	return load(path, explicit, (*Config).validate)
}

// load reads and decodes the file at path and checks it with validate.
func load(path string, explicit bool, validate func(*Config) error) (*Config, error) {
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && explicit:
		return nil, fmt.Errorf("load config %s: %w (check --config)", path, fs.ErrNotExist)
	case errors.Is(err, fs.ErrNotExist):
		if os.Getenv("DATABASE_URL") == "" {
			return nil, fmt.Errorf("load config: %s not found and DATABASE_URL is not set (create the file or set DATABASE_URL)", path)
		}
		data = nil
	case err != nil:
		return nil, fmt.Errorf("load config: %w", err)
	}
	cfg, err := parse(data, validate)
	if err != nil {
		return nil, fmt.Errorf("load config %s: %w", path, err)
	}
	return cfg, nil
}

// parse turns the file's bytes (nil for none) into a Config checked by validate.
func parse(data []byte, validate func(*Config) error) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, err
	}
	cfg := defaults()
	var errs []error
	if len(root.Content) > 0 {
		doc := root.Content[0]
		expandNode(doc, "", &errs)
		decodeNode(doc, reflectValue(&cfg), "", &errs)
		cfg.markUI(doc)
	}
	cfg.fill()
	if cfg.UI.Enabled {
		cfg.fillUI()
	}
	// Validate even after decode errors (a failed field keeps its default), so
	// one run lists every problem.
	if err := errors.Join(append(errs, validate(&cfg))...); err != nil {
		return nil, err
	}
	return &cfg, nil
}

func defaults() Config {
	return Config{
		Source: Source{
			Type: "postgres",
			Postgres: Postgres{
				URL:            os.Getenv("DATABASE_URL"),
				Slot:           "pgtrail",
				Publication:    "pgtrail",
				Tables:         []string{"public.*"},
				StatusInterval: Duration(10 * time.Second),
				Coalesce:       Duration(5 * time.Millisecond),
				Heartbeat:      Duration(10 * time.Second),
				MaxRetainedWAL: 10 << 30,
			},
			JetStream: JetStream{URL: "nats://127.0.0.1:4222", Stream: "DebeziumStream", Subject: "bemi", Durable: "pgtrail",
				AckWait: Duration(30 * time.Minute), FetchMaxBytes: DefaultFetchMaxBytes},
			Kafka: Kafka{Brokers: []string{"127.0.0.1:9092"}, Topics: []string{"bemi"}, Group: "pgtrail", DLQSuffix: ".dlq",
				FetchMaxBytes: DefaultFetchMaxBytes},
			Debezium: Debezium{UnavailableValuePlaceholder: "__debezium_unavailable_value", BinaryHandlingMode: "bytes",
				KeyColumns: []string{"id"}},
		},
		Pipeline: Pipeline{BatchSize: 5000, FlushInterval: Duration(50 * time.Millisecond), MaxInFlight: 2},
		HTTP:     HTTP{Listen: "127.0.0.1:9187"},
		Log:      Log{Level: "info", Format: "text"},
		Publish:  defaultPublish(),
	}
}

// fill applies the defaults that depend on other values.
func (c *Config) fill() {
	for _, s := range []*SASL{&c.Source.Kafka.SASL, &c.Publish.Kafka.SASL} {
		s.Mechanism = strings.ToLower(s.Mechanism) // Kafka's docs write them upper case
	}
	if js := &c.Source.JetStream; js.DLQSubject == "" && js.Subject != "" {
		js.DLQSubject = js.Subject + ".dlq"
	}
	// With no sink written, audit into the source database, as the default
	// (file-less) setup does.
	if len(c.Sinks) == 0 && c.Source.Postgres.URL != "" {
		c.Sinks = []Sink{{Name: "audit", Plugin: "postgres", Config: map[string]any{"url": c.Source.Postgres.URL}}}
	}
	if len(c.Sinks) == 1 && c.Sinks[0].Name == "" && c.Sinks[0].Plugin != "" {
		c.Sinks[0].Name = filepath.Base(c.Sinks[0].Plugin)
	}
}
