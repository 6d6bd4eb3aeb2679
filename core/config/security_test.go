package config

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgtrail/pgtrail/test/tlstest"
)

func TestBrokerSecurityKeysLoad(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://u:p@127.0.0.1:5432/app")
	pki := tlstest.New(t)
	seed := filepath.Join(t.TempDir(), "user.nk")
	if err := os.WriteFile(seed, []byte("SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KAFKA_PASSWORD", "s3cret")
	cfg := mustLoad(t, fmt.Sprintf(`source:
  type: kafka
  kafka:
    tls: {ca_file: %[1]q, cert_file: %[2]q, key_file: %[3]q}
    sasl: {mechanism: SCRAM-SHA-512, username: pgtrail, password: "${KAFKA_PASSWORD}"}
  jetstream:
    tls: {enabled: true}
    auth: {nkey_file: %[4]q}
publish:
  type: jetstream
  jetstream: {url: "tls://127.0.0.1:4222", tls: {ca_file: %[1]q}, auth: {username: u, password: p}}
  kafka: {tls: {insecure_skip_verify: true}, sasl: {mechanism: plain, username: u, password: p}}
`, pki.CAFile, pki.ClientCert, pki.ClientKey, seed))
	k := cfg.Source.Kafka
	if want := (SASL{Mechanism: SASLScramSHA512, Username: "pgtrail", Password: "s3cret"}); k.SASL != want {
		t.Errorf("source.kafka.sasl = %+v, want %+v", k.SASL, want)
	}
	tc, err := k.TLS.Config()
	if err != nil || tc == nil || tc.RootCAs == nil || len(tc.Certificates) != 1 || tc.InsecureSkipVerify || tc.MinVersion != tls.VersionTLS12 {
		t.Errorf("source.kafka.tls config = %+v, %v: want the CA and one client certificate", tc, err)
	}
	if tc, err := cfg.Source.JetStream.TLS.Config(); err != nil || tc == nil || tc.RootCAs != nil {
		t.Errorf("enabled alone = %+v, %v: want TLS with the system's CAs", tc, err)
	}
	if tc, err := cfg.Publish.Kafka.TLS.Config(); err != nil || tc == nil || !tc.InsecureSkipVerify {
		t.Errorf("insecure_skip_verify alone = %+v, %v: want TLS without verification", tc, err)
	}
	if tc, err := (TLS{}).Config(); tc != nil || err != nil {
		t.Errorf("no tls keys = %+v, %v: want no TLS", tc, err)
	}
	if cfg.Source.JetStream.Auth.NkeyFile != seed || cfg.Publish.JetStream.Auth.Username != "u" {
		t.Errorf("auth blocks not read: %+v, %+v", cfg.Source.JetStream.Auth, cfg.Publish.JetStream.Auth)
	}
}

func TestBrokerSecurityErrorsNameTheKey(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://u:p@127.0.0.1:5432/app")
	pki, other := tlstest.New(t), tlstest.New(t)
	missing := filepath.Join(t.TempDir(), "missing.pem")
	for _, tc := range []struct {
		body string
		want []string
	}{
		{fmt.Sprintf("source: {type: kafka, kafka: {tls: {ca_file: %q}}}", missing),
			[]string{"source.kafka.tls.ca_file: open " + missing + ": no such file or directory"}},
		{fmt.Sprintf("source: {type: kafka, kafka: {tls: {ca_file: %q}}}", pki.ClientKey),
			[]string{"source.kafka.tls.ca_file: " + pki.ClientKey + " holds no PEM certificate"}},
		{fmt.Sprintf("source: {type: kafka, kafka: {tls: {cert_file: %q}}}", pki.ClientCert),
			[]string{"source.kafka.tls.key_file: required with cert_file"}},
		{fmt.Sprintf("source: {type: kafka, kafka: {tls: {key_file: %q}}}", pki.ClientKey),
			[]string{"source.kafka.tls.cert_file: required with key_file"}},
		{fmt.Sprintf("source: {type: kafka, kafka: {tls: {cert_file: %q, key_file: %q}}}", pki.ClientCert, other.ClientKey),
			[]string{"source.kafka.tls.cert_file: load with key_file: tls: private key does not match public key"}},
		{"source: {type: kafka, kafka: {sasl: {mechanism: gssapi, username: u, password: p}}}",
			[]string{`source.kafka.sasl.mechanism: "gssapi" is not one of plain, scram-sha-256, scram-sha-512`}},
		{"source: {type: kafka, kafka: {sasl: {mechanism: plain}}}",
			[]string{"source.kafka.sasl.username: required with mechanism plain", "source.kafka.sasl.password: required with mechanism plain"}},
		{"source: {type: kafka, kafka: {sasl: {username: u, password: p}}}",
			[]string{"source.kafka.sasl.mechanism: required with a username or password"}},
		{fmt.Sprintf("source: {type: jetstream, jetstream: {tls: {ca_file: %q}, auth: {creds_file: %q}}}", missing, missing),
			[]string{"source.jetstream.tls.ca_file: open " + missing, "source.jetstream.auth.creds_file: open " + missing}},
		{"source: {type: jetstream, jetstream: {auth: {nkey_file: /dev/null, token: t}}}",
			[]string{"source.jetstream.auth: source.jetstream.auth.nkey_file, source.jetstream.auth.token: use one way to authenticate"}},
		{"source: {type: jetstream, jetstream: {auth: {password: p}}}",
			[]string{"source.jetstream.auth.username: required with password"}},
		{"source: {type: jetstream, jetstream: {url: \"nats://h1:4222,nats://u:pw@h2:4222\", auth: {token: t}}}",
			[]string{"source.jetstream.url: holds credentials (user@ or user:password@) and source.jetstream.auth.token sets them too: keep one"}},
		{"publish: {type: kafka, kafka: {sasl: {mechanism: scram}, tls: {cert_file: /dev/null}}}",
			[]string{`publish.kafka.sasl.mechanism: "scram" is not one of`, "publish.kafka.tls.key_file: required with cert_file"}},
		{fmt.Sprintf("publish: {type: jetstream, jetstream: {auth: {nkey_file: %q}}}", missing),
			[]string{"publish.jetstream.auth.nkey_file: open " + missing}},
	} {
		got := loadErr(t, tc.body)
		wantContains(t, got, tc.want...)
		if strings.Contains(got, "pw@") {
			t.Errorf("error shows the URL's password: %s", got)
		}
	}
}
