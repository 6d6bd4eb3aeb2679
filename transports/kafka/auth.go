package kafka

import (
	"errors"
	"fmt"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/pgtrail/pgtrail/core/config"
)

// clients is how every connection of the source reaches the brokers, with
// source.kafka's TLS and SASL: the dialer serves the consumer group, the
// partition readers and Open's checks; the transport, the dead-letter writer
// and status's offset requests.
type clients struct {
	dialer    *kafkago.Dialer
	transport *kafkago.Transport
}

func newClients(cfg config.Kafka) (clients, error) {
	tc, err := cfg.TLS.Config()
	if err != nil {
		return clients{}, fmt.Errorf("source.kafka.tls: %w", err)
	}
	mech, err := mechanism(cfg.SASL)
	if err != nil {
		return clients{}, err
	}
	return clients{
		// kafka-go's DefaultDialer, secured.
		dialer:    &kafkago.Dialer{Timeout: 10 * time.Second, DualStack: true, TLS: tc, SASLMechanism: mech},
		transport: &kafkago.Transport{TLS: tc, SASL: mech},
	}, nil
}

// mechanism is kafka-go's SASL mechanism for s: nil for none.
func mechanism(s config.SASL) (sasl.Mechanism, error) {
	switch s.Mechanism {
	case "":
		return nil, nil
	case config.SASLPlain:
		return plain.Mechanism{Username: s.Username, Password: s.Password}, nil
	case config.SASLScramSHA256, config.SASLScramSHA512:
		algo := scram.SHA256
		if s.Mechanism == config.SASLScramSHA512 {
			algo = scram.SHA512
		}
		m, err := scram.Mechanism(algo, s.Username, s.Password)
		if err != nil {
			return nil, fmt.Errorf("source.kafka.sasl: %w", err)
		}
		return m, nil
	}
	return nil, fmt.Errorf("source.kafka.sasl.mechanism: %q is not one of plain, scram-sha-256, scram-sha-512", s.Mechanism)
}

// hint says what to check when the brokers cannot be reached.
func hint(err error) string {
	if h := config.TLSHint("source.kafka.tls", err); h != "" {
		return h
	}
	switch {
	case errors.Is(err, kafkago.SASLAuthenticationFailed), errors.Is(err, kafkago.IllegalSASLState):
		return "the brokers refused pgtrail's credentials: check source.kafka.sasl"
	case errors.Is(err, kafkago.UnsupportedSASLMechanism):
		return "the brokers do not offer this SASL mechanism: check source.kafka.sasl.mechanism"
	}
	return "is Kafka running, and are source.kafka.brokers, tls and sasl right?"
}
