package natsconn

import (
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/test/natstest"
	"github.com/pgtrail/pgtrail/test/tlstest"
)

// connects reports Connect's error, after a round trip on success.
func connects(t *testing.T, url string, tc config.TLS, auth config.NATSAuth) error {
	t.Helper()
	nc, err := Connect("source.jetstream", url, tc, auth)
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := nc.Flush(); err != nil {
		t.Fatalf("round trip after connect: %v", err)
	}
	return nil
}

func wantRefused(t *testing.T, what string, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: connected, want an error", what)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: error %q\ndoes not contain %q", what, err, w)
		}
	}
}

func TestMutualTLSAndNkeyConnectAndWrongOnesFailClearly(t *testing.T) {
	pki, other := tlstest.New(t), tlstest.New(t)
	user, seed := natstest.NkeyUser(t)
	_, otherSeed := natstest.NkeyUser(t)
	srv := natstest.Run(t, &server.Options{TLSConfig: pki.ServerConfig(), TLSVerify: true,
		Nkeys: []*server.NkeyUser{{Nkey: user}}})
	url := srv.ClientURL()
	good := config.TLS{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}
	if err := connects(t, url, good, config.NATSAuth{NkeyFile: seed}); err != nil {
		t.Fatalf("right CA, client certificate and nkey: %v", err)
	}

	wrongCA := good
	wrongCA.CAFile = other.CAFile
	wantRefused(t, "wrong CA", connects(t, url, wrongCA, config.NATSAuth{NkeyFile: seed}),
		"connect to NATS at "+url, "certificate signed by unknown authority", "set source.jetstream.tls.ca_file to the CA that signed it")

	noCert := config.TLS{CAFile: pki.CAFile}
	wantRefused(t, "no client certificate", connects(t, url, noCert, config.NATSAuth{NkeyFile: seed}),
		"the server refused the TLS handshake: if it verifies clients, set source.jetstream.tls.cert_file and key_file")

	wantRefused(t, "no TLS", connects(t, url, config.TLS{}, config.NATSAuth{NkeyFile: seed}),
		"certificate signed by unknown authority")

	wantRefused(t, "wrong nkey", connects(t, url, good, config.NATSAuth{NkeyFile: otherSeed}),
		"nats: Authorization Violation", "the server refused pgtrail's credentials: check source.jetstream.auth")

	wantRefused(t, "not a seed", connects(t, url, good, config.NATSAuth{NkeyFile: pki.CAFile}),
		"source.jetstream.auth.nkey_file: ", "it must hold a user nkey seed")
}

func TestCredsFileConnectsToAnOperatorModeServer(t *testing.T) {
	opts := &server.Options{}
	creds := natstest.Operator(t, opts)
	srv := natstest.Run(t, opts)
	if err := connects(t, srv.ClientURL(), config.TLS{}, config.NATSAuth{CredsFile: creds}); err != nil {
		t.Fatalf("with the user's .creds: %v", err)
	}
	stranger, _ := nkeys.CreateAccount()
	wantRefused(t, "a user of an unknown account", connects(t, srv.ClientURL(), config.TLS{}, config.NATSAuth{CredsFile: natstest.Creds(t, stranger)}),
		"nats: Authorization Violation", "check source.jetstream.auth")
}

func TestPasswordAndTokenConnectAndNeverShowInErrors(t *testing.T) {
	srv := natstest.Run(t, &server.Options{Username: "pgtrail", Password: "Rightpw1"})
	hostPort := strings.TrimPrefix(srv.ClientURL(), "nats://")
	if err := connects(t, srv.ClientURL(), config.TLS{}, config.NATSAuth{Username: "pgtrail", Password: "Rightpw1"}); err != nil {
		t.Fatalf("auth block: %v", err)
	}
	if err := connects(t, "nats://pgtrail:Rightpw1@"+hostPort, config.TLS{}, config.NATSAuth{}); err != nil {
		t.Fatalf("password in the URL: %v", err)
	}
	err := connects(t, "nats://pgtrail:Wrongpw1@"+hostPort+",nats://pgtrail:Wrongpw2@"+hostPort, config.TLS{}, config.NATSAuth{})
	wantRefused(t, "wrong password in the URL", err,
		"connect to NATS at nats://pgtrail:xxxxx@"+hostPort+",nats://pgtrail:xxxxx@"+hostPort, "Authorization Violation")
	if strings.Contains(err.Error(), "Wrongpw") {
		t.Errorf("error shows the password: %v", err)
	}

	tok := natstest.Run(t, &server.Options{Authorization: "S3cretToken"})
	if err := connects(t, tok.ClientURL(), config.TLS{}, config.NATSAuth{Token: "S3cretToken"}); err != nil {
		t.Fatalf("token: %v", err)
	}
	err = connects(t, "nats://Wr0ngToken@"+strings.TrimPrefix(tok.ClientURL(), "nats://"), config.TLS{}, config.NATSAuth{})
	wantRefused(t, "wrong token in the URL", err, "connect to NATS at nats://xxxxx@", "Authorization Violation")
	if strings.Contains(err.Error(), "Wr0ngToken") {
		t.Errorf("error shows the token: %v", err)
	}
}
