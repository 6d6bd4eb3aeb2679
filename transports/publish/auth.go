package publish

import (
	"errors"
	"fmt"
	"io"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/pgtrail/pgtrail/core/config"
)

// kafkaSecurity is publish.kafka's TLS and SASL as franz-go options.
func kafkaSecurity(cfg config.PublishKafka) ([]kgo.Opt, error) {
	var opts []kgo.Opt
	tc, err := cfg.TLS.Config()
	if err != nil {
		return nil, fmt.Errorf("publish.kafka.tls: %w", err)
	}
	if tc != nil {
		opts = append(opts, kgo.DialTLSConfig(tc))
	}
	s := cfg.SASL
	switch s.Mechanism {
	case "":
	case config.SASLPlain:
		opts = append(opts, kgo.SASL(plain.Auth{User: s.Username, Pass: s.Password}.AsMechanism()))
	case config.SASLScramSHA256:
		opts = append(opts, kgo.SASL(scram.Auth{User: s.Username, Pass: s.Password}.AsSha256Mechanism()))
	case config.SASLScramSHA512:
		opts = append(opts, kgo.SASL(scram.Auth{User: s.Username, Pass: s.Password}.AsSha512Mechanism()))
	default:
		return nil, fmt.Errorf("publish.kafka.sasl.mechanism: %q is not one of plain, scram-sha-256, scram-sha-512", s.Mechanism)
	}
	return opts, nil
}

// kafkaHint says what to check when the brokers cannot be reached.
func kafkaHint(cfg config.PublishKafka, err error) string {
	if h := config.TLSHint("publish.kafka.tls", err); h != "" {
		return h
	}
	switch {
	case errors.Is(err, kerr.SaslAuthenticationFailed), errors.Is(err, kerr.IllegalSaslState):
		return "the brokers refused pgtrail's credentials: check publish.kafka.sasl"
	case errors.Is(err, io.EOF) && cfg.SASL.Mechanism != "":
		// Some brokers refuse a login by closing the connection.
		return "the brokers closed the connection: check publish.kafka.sasl, and publish.kafka.tls"
	case errors.Is(err, kerr.UnsupportedSaslMechanism):
		return "the brokers do not offer this SASL mechanism: check publish.kafka.sasl.mechanism"
	}
	return "is Kafka running, and are publish.kafka.brokers, tls and sasl right?"
}
