package config

import (
	"regexp"
	"slices"
)

// Publish is where `pgtrail capture` publishes natively captured changes, as
// Debezium PostgreSQL connector events, and how those events are shaped.
type Publish struct {
	Type string `yaml:"type"` // jetstream | kafka
	// TopicPrefix is Debezium's topic.prefix: the events' source.name, and the
	// subject or topic they go to (see Route).
	TopicPrefix string `yaml:"topic_prefix"`
	// Route is "single" (every event to the subject or topic TopicPrefix, as
	// Bemi's stack reroutes with ByLogicalTableRouter) or "per_table"
	// (<prefix>.<schema>.<table>, and <prefix>.message for messages: Debezium
	// without that transform).
	Route string `yaml:"route"`
	// DecimalHandlingMode is Debezium's decimal.handling.mode: precise (the
	// connector's default: base64 bytes, VariableScaleDecimal for numeric
	// without a scale) or string.
	DecimalHandlingMode string           `yaml:"decimal_handling_mode"`
	JetStream           PublishJetStream `yaml:"jetstream"`
	Kafka               PublishKafka     `yaml:"kafka"`
}

// PublishJetStream is a NATS JetStream server and the stream that holds the
// subjects published to (created when missing).
type PublishJetStream struct {
	URL    string `yaml:"url"`
	Stream string `yaml:"stream"`
	// DuplicateWindow is how long the server remembers message ids: a change
	// published again within it (after a crash) is dropped by the server.
	DuplicateWindow Duration `yaml:"duplicate_window"`
	TLS             TLS      `yaml:"tls"`
	Auth            NATSAuth `yaml:"auth"`
}

// PublishKafka is a Kafka cluster. Records are keyed as Debezium keys them
// and acknowledged by all in-sync replicas.
type PublishKafka struct {
	Brokers []string `yaml:"brokers"`
	TLS     TLS      `yaml:"tls"`
	SASL    SASL     `yaml:"sasl"`
}

var subjectToken = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func defaultPublish() Publish {
	return Publish{
		Type: "jetstream", TopicPrefix: "bemi", Route: "single", DecimalHandlingMode: "precise",
		JetStream: PublishJetStream{URL: "nats://127.0.0.1:4222", Stream: "DebeziumStream", DuplicateWindow: Duration(2 * 60e9)},
		Kafka:     PublishKafka{Brokers: []string{"127.0.0.1:9092"}},
	}
}

// validate checks the publish block; capture is the only reader, but a
// typo is better caught when the file is loaded.
func (p Publish) validate(bad func(key, format string, args ...any)) {
	switch p.Type {
	case "jetstream":
		if p.JetStream.URL == "" {
			bad("publish.jetstream.url", "required (e.g. nats://127.0.0.1:4222)")
		}
		if p.JetStream.Stream == "" {
			bad("publish.jetstream.stream", "required (e.g. DebeziumStream)")
		}
		if p.JetStream.DuplicateWindow <= 0 {
			bad("publish.jetstream.duplicate_window", "must be positive (e.g. 2m)")
		}
		validateNATS(bad, "publish.jetstream", p.JetStream.URL, p.JetStream.TLS, p.JetStream.Auth)
	case "kafka":
		if len(p.Kafka.Brokers) == 0 {
			bad("publish.kafka.brokers", "at least one broker address required (e.g. 127.0.0.1:9092)")
		}
		validateTLS(bad, "publish.kafka.tls", p.Kafka.TLS)
		validateSASL(bad, "publish.kafka.sasl", p.Kafka.SASL)
	default:
		bad("publish.type", "%q is not one of jetstream, kafka", p.Type)
	}
	if !subjectToken.MatchString(p.TopicPrefix) {
		bad("publish.topic_prefix", "%q is not a valid prefix (letters, digits, _ or -; it names subjects and topics)", p.TopicPrefix)
	}
	if !slices.Contains([]string{"single", "per_table"}, p.Route) {
		bad("publish.route", "%q is not one of single, per_table", p.Route)
	}
	if !slices.Contains([]string{"precise", "string"}, p.DecimalHandlingMode) {
		bad("publish.decimal_handling_mode", "%q is not one of precise, string", p.DecimalHandlingMode)
	}
}
