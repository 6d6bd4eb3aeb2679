package publish

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/test/natstest"
	"github.com/pgtrail/pgtrail/test/tlstest"
)

func wantErr(t *testing.T, what string, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: succeeded, want an error", what)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: error %q\ndoes not contain %q", what, err, w)
		}
	}
	if strings.Contains(err.Error(), "pw1") {
		t.Errorf("%s: error shows the password: %v", what, err)
	}
}

func TestCapturePublishesToKafkaOverMutualTLSAndSCRAM(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pki, other := tlstest.New(t), tlstest.New(t)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "bemi"), kfake.TLS(pki.ServerConfig()),
		kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-512", "capture", "Rightpw1"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cfg := config.PublishKafka{Brokers: c.ListenAddrs(),
		TLS:  config.TLS{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey},
		SASL: config.SASL{Mechanism: config.SASLScramSHA512, Username: "capture", Password: "Rightpw1"}}
	k, err := openKafka(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer k.close()
	if err := k.publish(ctx, []Event{{Subject: "bemi", Key: []byte(`{"id":1}`), Value: []byte(`{"op":"c"}`)}}); err != nil {
		t.Fatal(err)
	}
	security, err := kafkaSecurity(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(append(security, kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics("bemi"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	fs := cl.PollFetches(ctx)
	if err := fs.Err(); err != nil {
		t.Fatal(err)
	}
	if recs := fs.Records(); len(recs) != 1 || string(recs[0].Key) != `{"id":1}` || string(recs[0].Value) != `{"op":"c"}` {
		t.Fatalf("read %+v, want the one published record", recs)
	}

	wrongCA, wrongPassword := cfg, cfg
	wrongCA.TLS.CAFile = other.CAFile
	wrongPassword.SASL.Password = "Wrongpw1"
	_, err = openKafka(ctx, wrongCA)
	wantErr(t, "wrong CA", err, "certificate signed by unknown authority", "set publish.kafka.tls.ca_file to the CA that signed it")
	_, err = openKafka(ctx, wrongPassword)
	// kfake, as some brokers, refuses a login by closing the connection.
	wantErr(t, "wrong password", err, "connect to Kafka at ["+c.ListenAddrs()[0]+"]", "check publish.kafka.sasl")
}

func TestCapturePublishesToJetStreamOverMutualTLSWithCreds(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pki := tlstest.New(t)
	opts := &server.Options{TLSConfig: pki.ServerConfig(), TLSVerify: true}
	creds := natstest.Operator(t, opts)
	srv := natstest.Run(t, opts)
	cfg := config.PublishJetStream{URL: srv.ClientURL(), Stream: "DebeziumStream", DuplicateWindow: config.Duration(time.Minute),
		TLS:  config.TLS{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey},
		Auth: config.NATSAuth{CredsFile: creds}}
	j, err := openJetStream(ctx, cfg, []string{"bemi"})
	if err != nil {
		t.Fatal(err)
	}
	defer j.close()
	if err := j.publish(ctx, []Event{{Subject: "bemi", Value: []byte(`{"op":"c"}`), ID: "1"}}); err != nil {
		t.Fatal(err)
	}
	st, err := j.js.Stream(ctx, "DebeziumStream")
	if err != nil {
		t.Fatal(err)
	}
	if m, err := st.GetLastMsgForSubject(ctx, "bemi"); err != nil || string(m.Data) != `{"op":"c"}` {
		t.Fatalf("stored %v, %v; want the published event", m, err)
	}

	noCreds := cfg
	noCreds.Auth = config.NATSAuth{}
	_, err = openJetStream(ctx, noCreds, []string{"bemi"})
	wantErr(t, "no creds", err, "connect to NATS at "+srv.ClientURL(), "Authorization Violation", "check publish.jetstream.auth")
}
