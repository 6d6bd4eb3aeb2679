package kafka

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/metrics"
	"github.com/pgtrail/pgtrail/core/pipeline"
	"github.com/pgtrail/pgtrail/test/tlstest"
)

const goodEvent = `{"op": "c", "ts_ms": 1, "before": null, "after": {"id": 1},
	"source": {"connector": "postgresql", "db": "app", "schema": "public", "table": "accounts", "txId": 7, "lsn": 100, "ts_ms": 1}}`

// secureCluster starts kfake with mutual TLS and one SASL user, pgtrail.
func secureCluster(t *testing.T, pki *tlstest.PKI, mechanism, password string) string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "bemi", "bemi.dlq"),
		kfake.TLS(pki.ServerConfig()), kfake.EnableSASL(), kfake.Superuser(mechanism, "pgtrail", password))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()[0]
}

// The consumer group, the partition readers, the dead-letter writer and
// status all connect with source.kafka's TLS and SASL.
func TestSourceReadsDeadLettersAndReportsOverMutualTLSAndSASL(t *testing.T) {
	pki := tlstest.New(t)
	for _, mech := range []string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"} {
		t.Run(mech, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			addr := secureCluster(t, pki, mech, "Rightpw1")
			cfg := config.Kafka{Brokers: []string{addr}, Topics: []string{"bemi"}, Group: "pgtrail", DLQSuffix: ".dlq",
				TLS:  config.TLS{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey},
				SASL: config.SASL{Mechanism: strings.ToLower(mech), Username: "pgtrail", Password: "Rightpw1"}}
			c, err := newClients(cfg)
			if err != nil {
				t.Fatal(err)
			}
			w := &kafkago.Writer{Addr: kafkago.TCP(addr), Topic: "bemi", Transport: c.transport, RequiredAcks: kafkago.RequireAll}
			if err := w.WriteMessages(ctx, kafkago.Message{Value: []byte("not json")}, kafkago.Message{Value: []byte(goodEvent)}); err != nil {
				t.Fatal(err)
			}
			w.Close()

			s, err := Open(ctx, cfg, config.Debezium{KeyColumns: []string{"id"}}, slog.New(slog.DiscardHandler), metrics.New())
			if err != nil {
				t.Fatal(err)
			}
			// The dead letter is durable before the next message is emitted.
			waitRow(t, ctx, s)

			r := kafkago.NewReader(kafkago.ReaderConfig{Brokers: []string{addr}, Topic: "bemi.dlq", Dialer: c.dialer,
				MaxWait: 100 * time.Millisecond}) // Close waits out a fetch
			defer r.Close()
			m, err := r.ReadMessage(ctx)
			if err != nil || string(m.Value) != "not json" {
				t.Fatalf("dead letter = %q, %v; want the malformed message", m.Value, err)
			}

			parts, err := Status(ctx, cfg)
			if err != nil || len(parts) != 1 || parts[0].End != 2 {
				t.Fatalf("status = %+v, %v; want partition 0 ending at 2", parts, err)
			}
		})
	}
}

// waitRow runs s until it emits its first row, which must be goodEvent's.
func waitRow(t *testing.T, ctx context.Context, s *Source) {
	t.Helper()
	out := make(chan []pipeline.Event, 16)
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(rctx, out) }()
	defer func() {
		stop()
		<-done
		s.Close(context.Background())
	}()
	for {
		select {
		case evs := <-out:
			for _, ev := range evs {
				if ev.Kind == pipeline.Row {
					if ev.XID != 7 || ev.Change.Table != "accounts" {
						t.Fatalf("read %+v", ev.Change)
					}
					return
				}
			}
		case err := <-done:
			t.Fatalf("Run ended: %v", err)
		case <-ctx.Done():
			t.Fatal("no row read")
		}
	}
}

func TestWrongCACertificateOrPasswordFailsWithAClearError(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pki, other := tlstest.New(t), tlstest.New(t)
	addr := secureCluster(t, pki, "SCRAM-SHA-256", "Rightpw1")
	good := config.Kafka{Brokers: []string{addr}, Topics: []string{"bemi"}, Group: "pgtrail", DLQSuffix: ".dlq",
		TLS:  config.TLS{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey},
		SASL: config.SASL{Mechanism: config.SASLScramSHA256, Username: "pgtrail", Password: "Rightpw1"}}

	wrongCA, noCert, wrongPassword, wrongMechanism, noTLS := good, good, good, good, good
	wrongCA.TLS.CAFile = other.CAFile
	noCert.TLS = config.TLS{CAFile: pki.CAFile}
	wrongPassword.SASL.Password = "Wrongpw1"
	wrongMechanism.SASL.Mechanism = config.SASLScramSHA512
	noTLS.TLS = config.TLS{}
	for _, tc := range []struct {
		name string
		cfg  config.Kafka
		want []string
	}{
		{"wrong CA", wrongCA, []string{"certificate signed by unknown authority", "set source.kafka.tls.ca_file to the CA that signed it"}},
		{"no client certificate", noCert, []string{"certificate required", "set source.kafka.tls.cert_file and key_file"}},
		{"wrong password", wrongPassword, []string{"SASL Authentication Failed", "check source.kafka.sasl"}},
		{"mechanism without the user", wrongMechanism, []string{"SASL Authentication Failed", "check source.kafka.sasl"}},
		{"no TLS", noTLS, []string{"connect to Kafka [" + addr + "]", "is Kafka running, and are source.kafka.brokers, tls and sasl right?"}},
	} {
		_, err := Open(ctx, tc.cfg, config.Debezium{}, slog.New(slog.DiscardHandler), metrics.New())
		_, serr := Status(ctx, tc.cfg)
		for what, err := range map[string]error{"open": err, "status": serr} {
			if err == nil {
				t.Errorf("%s: %s succeeded", tc.name, what)
				continue
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%s: %s error %q\ndoes not contain %q", tc.name, what, err, w)
				}
			}
			if strings.Contains(err.Error(), "pw1") {
				t.Errorf("%s: %s error shows the password: %v", tc.name, what, err)
			}
		}
	}
}
