package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/pgtrail/pgtrail/core/values"
)

// pgName is what setup can create unquoted: a slot name allows exactly this, and
// a publication kept to it needs no quoting anywhere.
var pgName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// validate reports every problem at once, so the user fixes the file in one go.
func (c *Config) validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	required := func(key, value string) {
		if value == "" {
			bad(key, "required")
		}
	}

	pg := c.Source.Postgres
	switch c.Source.Type {
	case "postgres":
		if pg.URL == "" {
			bad("source.postgres.url", "required (set it or DATABASE_URL)")
		}
	case "jetstream":
		js := c.Source.JetStream
		required("source.jetstream.url", js.URL)
		required("source.jetstream.stream", js.Stream)
		required("source.jetstream.subject", js.Subject)
		required("source.jetstream.durable", js.Durable)
		switch {
		case js.DLQSubject == js.Subject:
			bad("source.jetstream.dlq_subject", "%q is the subject read from; dead letters need another (e.g. %s.dlq)", js.DLQSubject, js.Subject)
		case strings.ContainsAny(js.DLQSubject, "*> \t"):
			bad("source.jetstream.dlq_subject", "%q is not a literal subject: name the one subject dead letters are published to (e.g. bemi.dlq)", js.DLQSubject)
		case subjectMatches(js.Subject, js.DLQSubject):
			// The consumer would read its own dead letters, and dead-letter them again, for ever.
			bad("source.jetstream.dlq_subject", "%q is matched by source.jetstream.subject %q, so dead letters would be read again: choose a subject outside it", js.DLQSubject, js.Subject)
		}
		if js.AckWait <= 0 {
			bad("source.jetstream.ack_wait", "must be positive (e.g. 30m)")
		}
		if js.FetchMaxBytes <= 0 {
			bad("source.jetstream.fetch_max_bytes", "must be positive (e.g. 8388608)")
		}
		validateNATS(bad, "source.jetstream", js.URL, js.TLS, js.Auth)
	case "kafka":
		k := c.Source.Kafka
		if len(k.Brokers) == 0 {
			bad("source.kafka.brokers", "at least one broker address required (e.g. 127.0.0.1:9092)")
		}
		if len(k.Topics) == 0 {
			bad("source.kafka.topics", "at least one topic required")
		}
		required("source.kafka.group", k.Group)
		required("source.kafka.dlq_suffix", k.DLQSuffix)
		if k.FetchMaxBytes <= 0 {
			bad("source.kafka.fetch_max_bytes", "must be positive (e.g. 8388608)")
		}
		validateTLS(bad, "source.kafka.tls", k.TLS)
		validateSASL(bad, "source.kafka.sasl", k.SASL)
	default:
		bad("source.type", "%q is not one of postgres, jetstream, kafka", c.Source.Type)
	}
	if dz := c.Source.Debezium; c.Source.Type != "postgres" {
		required("source.debezium.unavailable_value_placeholder", dz.UnavailableValuePlaceholder)
		if !slices.Contains([]string{"bytes", "base64", "base64-url-safe", "hex"}, dz.BinaryHandlingMode) {
			bad("source.debezium.binary_handling_mode", "%q is not one of bytes, base64, base64-url-safe, hex (as the connector's binary.handling.mode)", dz.BinaryHandlingMode)
		}
		if dz.Catalog != "" && !postgresURL(dz.Catalog) {
			// Not echoed: it may hold a password.
			bad("source.debezium.catalog", "not a PostgreSQL URL (e.g. postgres://user:password@host:5432/database, or \"${DATABASE_URL}\")")
		}
	}
	// Checked whatever the source type: capture reads them too, and a typo in
	// a section is better caught now than when it is switched on.
	for _, f := range []struct{ key, name string }{{"source.postgres.slot", pg.Slot}, {"source.postgres.publication", pg.Publication}} {
		if !pgName.MatchString(f.name) {
			bad(f.key, "%q is not a valid name (use 1 to 63 lowercase letters, digits or _)", f.name)
		}
	}
	if len(pg.Tables) == 0 {
		bad("source.postgres.tables", "at least one schema.table pattern required (e.g. public.*)")
	}
	for _, f := range []struct {
		key      string
		patterns []string
	}{{"source.postgres.tables", pg.Tables}, {"source.postgres.exclude", pg.Exclude}} {
		for i, p := range f.patterns {
			if !validPattern(p) {
				bad(fmt.Sprintf("%s[%d]", f.key, i), "%q is not a schema.table pattern (e.g. public.users, public.*, audit_*.*)", p)
			}
		}
	}
	if !slices.Contains([]string{"", "default", "full"}, pg.ReplicaIdentity) {
		bad("source.postgres.replica_identity", "%q is not full (set REPLICA IDENTITY FULL on captured tables) or default (leave it, report only)", pg.ReplicaIdentity)
	}
	if pg.StatusInterval <= 0 {
		bad("source.postgres.status_interval", "must be positive (e.g. 10s)")
	}
	if pg.ReceiveTimeout < 0 || (pg.ReceiveTimeout > 0 && pg.ReceiveTimeout <= pg.StatusInterval) {
		bad("source.postgres.receive_timeout", "%s must be longer than status_interval (%s), or 0 for the server's wal_sender_timeout: capture asks the server for a message every status_interval",
			time.Duration(pg.ReceiveTimeout), time.Duration(pg.StatusInterval))
	}
	if pg.Heartbeat < 0 {
		bad("source.postgres.heartbeat", "must be 0 (off) or positive (e.g. 10s), got %s", time.Duration(pg.Heartbeat))
	}
	if pg.Coalesce < 0 || pg.Coalesce > Duration(time.Second) {
		bad("source.postgres.coalesce", "must be between 0 (read at once) and 1s, got %s (default 5ms)", time.Duration(pg.Coalesce))
	} else if pg.Coalesce >= c.Pipeline.FlushInterval && c.Pipeline.FlushInterval > 0 {
		bad("source.postgres.coalesce", "%s must be below pipeline.flush_interval (%s): the wait counts toward it",
			time.Duration(pg.Coalesce), time.Duration(c.Pipeline.FlushInterval))
	}

	if len(c.Sinks) == 0 {
		bad("sinks", "at least one sink required (add one under sinks:, or set source.postgres.url or DATABASE_URL for the default audit table)")
	}
	names := map[string]int{}
	for i, s := range c.Sinks {
		key := fmt.Sprintf("sinks[%d]", i)
		if s.Plugin == "" {
			bad(key+".plugin", "required (a built-in sink such as postgres, or the path of a plugin binary)")
		}
		s.validatePlugin(key, bad)
		switch first, dup := names[s.Name]; {
		case s.Name == "" && len(c.Sinks) > 1:
			bad(key+".name", "required when there is more than one sink")
		case dup:
			bad(key+".name", "%q is already used by sinks[%d] (names must be unique)", s.Name, first)
		default:
			names[s.Name] = i
		}
	}

	c.Publish.validate(bad)
	c.Retention.validate(c.Sinks, bad)
	c.Rules.validate(bad)
	c.validateDDL(bad)

	if c.Pipeline.BatchSize <= 0 {
		bad("pipeline.batch_size", "must be positive, got %d", c.Pipeline.BatchSize)
	}
	if c.Pipeline.FlushInterval <= 0 {
		bad("pipeline.flush_interval", "must be positive (e.g. 50ms)")
	}
	if c.Pipeline.MaxInFlight <= 0 {
		bad("pipeline.max_in_flight", "must be positive, got %d", c.Pipeline.MaxInFlight)
	}
	if c.Pipeline.MaxContextBytes < 0 {
		bad("pipeline.max_context_bytes", "must be positive (or 0 for 64 KiB), got %d", c.Pipeline.MaxContextBytes)
	}
	if n := c.Pipeline.MaxValueBytes; n < 0 || n > values.MaxJSONBString {
		bad("pipeline.max_value_bytes", "must be at most %d bytes (jsonb's longest string), or 0 for 64MiB; got %d", values.MaxJSONBString, n)
	}
	if l := c.HTTP.Listen; l != "" {
		if _, _, err := net.SplitHostPort(l); err != nil {
			bad("http.listen", "%q is not host:port (e.g. 127.0.0.1:9187, or \"\" to disable)", l)
		}
	}
	c.validateLog(bad)
	if c.UI.Enabled {
		c.validateUI(bad, true)
	}
	return errors.Join(errs...)
}

func (c *Config) validateLog(bad func(key, format string, args ...any)) {
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		bad("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	if !slices.Contains([]string{"text", "json"}, c.Log.Format) {
		bad("log.format", "%q is not one of text, json", c.Log.Format)
	}
}

func validPattern(p string) bool {
	schema, table, ok := strings.Cut(p, ".")
	return ok && schema != "" && table != "" && !strings.Contains(table, ".")
}

// Match reports whether schema.table is captured: matched by a Tables pattern
// and by no Exclude pattern.
func (p Postgres) Match(schema, table string) bool {
	return matchAny(p.Tables, schema, table) && !matchAny(p.Exclude, schema, table)
}

func matchAny(patterns []string, schema, table string) bool {
	for _, pat := range patterns {
		s, t, ok := strings.Cut(pat, ".")
		if ok && glob(s, schema) && glob(t, table) {
			return true
		}
	}
	return false
}

// glob matches name against pattern where * stands for any run of characters.
// Nothing else is special: PostgreSQL names may hold ?, [ and \.
func glob(pattern, name string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == name
	}
	if !strings.HasPrefix(name, parts[0]) {
		return false
	}
	name = name[len(parts[0]):]
	for _, mid := range parts[1 : len(parts)-1] {
		i := strings.Index(name, mid)
		if i < 0 {
			return false
		}
		name = name[i+len(mid):]
	}
	return strings.HasSuffix(name, parts[len(parts)-1])
}

// postgresURL reports whether s looks like what pgx connects with: a
// postgres:// or postgresql:// URL, or a keyword=value connection string.
func postgresURL(s string) bool {
	if u, err := url.Parse(s); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		return true
	}
	k, _, ok := strings.Cut(strings.TrimSpace(s), "=")
	return ok && k != "" && !strings.ContainsAny(k, " /:@")
}

// subjectMatches says whether NATS subject filter (with * for one token, >
// for the rest) matches the literal subject.
func subjectMatches(filter, subject string) bool {
	f, s := strings.Split(filter, "."), strings.Split(subject, ".")
	for i, tok := range f {
		switch {
		case tok == ">":
			return len(s) > i
		case i >= len(s) || (tok != "*" && tok != s[i]):
			return false
		}
	}
	return len(f) == len(s)
}
