package jetstream

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/metrics"
	"github.com/pgtrail/pgtrail/test/natstest"
	"github.com/pgtrail/pgtrail/test/tlstest"
	"github.com/pgtrail/pgtrail/transports/natsconn"
)

// Open, Status and Teardown all connect with source.jetstream's tls and auth.
func TestSourceStatusAndTeardownConnectOverMutualTLSWithAnNkey(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pki := tlstest.New(t)
	user, seed := natstest.NkeyUser(t)
	_, otherSeed := natstest.NkeyUser(t)
	srv := natstest.Run(t, &server.Options{TLSConfig: pki.ServerConfig(), TLSVerify: true, Nkeys: []*server.NkeyUser{{Nkey: user}}})
	cfg := config.JetStream{URL: srv.ClientURL(), Stream: "DebeziumStream", Subject: "bemi", Durable: "pgtrail",
		DLQSubject: "bemi.dlq", AckWait: config.Duration(time.Minute),
		TLS:  config.TLS{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey},
		Auth: config.NATSAuth{NkeyFile: seed}}

	nc, err := natsconn.Connect("test", cfg.URL, cfg.TLS, cfg.Auth)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "DebeziumStream", Subjects: []string{"bemi"}}); err != nil {
		t.Fatal(err)
	}

	s, err := Open(ctx, cfg, config.Debezium{}, slog.New(slog.DiscardHandler), metrics.New())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := Status(ctx, cfg); err != nil || !st.Exists {
		t.Fatalf("status = %+v, %v; want the consumer Open made", st, err)
	}
	if err := Teardown(ctx, cfg, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if st, err := Status(ctx, cfg); err != nil || st.Exists {
		t.Fatalf("status after teardown = %+v, %v; want no consumer", st, err)
	}

	wrong := cfg
	wrong.Auth.NkeyFile = otherSeed
	_, oerr := Open(ctx, wrong, config.Debezium{}, slog.New(slog.DiscardHandler), metrics.New())
	_, serr := Status(ctx, wrong)
	terr := Teardown(ctx, wrong, slog.New(slog.DiscardHandler))
	for what, err := range map[string]error{"open": oerr, "status": serr, "teardown": terr} {
		if err == nil || !strings.Contains(err.Error(), "Authorization Violation (the server refused pgtrail's credentials: check source.jetstream.auth") {
			t.Errorf("%s with another nkey: %v, want the server's refusal naming source.jetstream.auth", what, err)
		}
	}
}
