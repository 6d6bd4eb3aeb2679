package config

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func TestPublishDefaultsAreBemisStackOnJetStream(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://u:p@127.0.0.1:5432/app")
	cfg := mustLoad(t, "publish:\n  type: kafka\n")
	want := Publish{Type: "kafka", TopicPrefix: "bemi", Route: "single", DecimalHandlingMode: "precise",
		JetStream: PublishJetStream{URL: "nats://127.0.0.1:4222", Stream: "DebeziumStream", DuplicateWindow: Duration(2 * time.Minute)},
		Kafka:     PublishKafka{Brokers: []string{"127.0.0.1:9092"}}}
	if !reflect.DeepEqual(cfg.Publish, want) {
		t.Errorf("publish = %+v, want %+v", cfg.Publish, want)
	}
}

func TestPublishErrorsNameTheKey(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://u:p@127.0.0.1:5432/app")
	got := loadErr(t, `publish:
  type: rabbit
  topic_prefix: "a.b"
  route: everywhere
  decimal_handling_mode: double
  jetstream: {url: "", stream: "", duplicate_window: 0s}
  kafka: {brokers: []}
  subject: x
`)
	wantContains(t, got,
		`publish.type: "rabbit" is not one of jetstream, kafka`,
		`publish.topic_prefix: "a.b" is not a valid prefix`,
		`publish.route: "everywhere" is not one of single, per_table`,
		`publish.decimal_handling_mode: "double" is not one of precise, string`,
		`unknown key publish.subject`,
	)
	got = loadErr(t, "publish:\n  type: jetstream\n  jetstream: {url: \"\", stream: \"\", duplicate_window: 0s}\n")
	wantContains(t, got, "publish.jetstream.url: required", "publish.jetstream.stream: required",
		"publish.jetstream.duplicate_window: must be positive")
	got = loadErr(t, "publish:\n  type: kafka\n  kafka: {brokers: []}\n")
	wantContains(t, got, "publish.kafka.brokers: at least one broker address required")
}

func TestCaptureExampleConfigsLoad(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://u:p@127.0.0.1:5432/app")
	for _, name := range []string{"capture-jetstream.yaml", "capture-kafka.yaml"} {
		path := filepath.Join("..", "..", "configs", name)
		if _, err := os.Stat(path); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(path, true); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
