// Package natsconn connects to NATS as the config says: TLS (the CAs that
// verify the server, a client certificate) and credentials (a .creds file,
// an nkey seed, a user and password, or a token). The JetStream source, its
// status and teardown, and capture's publisher all connect through it.
package natsconn

import (
	"errors"
	"fmt"
	"net"

	"github.com/nats-io/nats.go"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/redact"
)

// Connect connects to url (one or more comma-separated servers) with the
// tls and auth blocks under key (e.g. "source.jetstream"), which names the
// keys to check in its errors. The URL in an error has its credentials
// masked.
func Connect(key, url string, t config.TLS, auth config.NATSAuth, extra ...nats.Option) (*nats.Conn, error) {
	opts, err := options(key, t, auth)
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(url, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w (%s)", redact.String(url), err, hint(key, err))
	}
	return nc, nil
}

func options(key string, t config.TLS, auth config.NATSAuth) ([]nats.Option, error) {
	var opts []nats.Option
	tc, err := t.Config()
	if err != nil {
		return nil, fmt.Errorf("%s.tls: %w", key, err)
	}
	if tc != nil {
		opts = append(opts, nats.Secure(tc))
	}
	switch {
	case auth.CredsFile != "":
		opts = append(opts, nats.UserCredentials(auth.CredsFile))
	case auth.NkeyFile != "":
		o, err := nats.NkeyOptionFromSeed(auth.NkeyFile)
		if err != nil {
			return nil, fmt.Errorf("%s.auth.nkey_file: %w (it must hold a user nkey seed, SU...)", key, err)
		}
		opts = append(opts, o)
	case auth.Username != "":
		opts = append(opts, nats.UserInfo(auth.Username, auth.Password))
	case auth.Token != "":
		opts = append(opts, nats.Token(auth.Token))
	}
	return opts, nil
}

// hint says what to check for a failed connect.
func hint(key string, err error) string {
	var netErr net.Error
	if h := config.TLSHint(key+".tls", err); h != "" {
		return h
	}
	switch {
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked):
		return "the server refused pgtrail's credentials: check " + key + ".auth, or the user and password in " + key + ".url"
	case errors.Is(err, nats.ErrTLS):
		// The server read no client certificate, and said so by closing.
		return "the server refused the TLS handshake: if it verifies clients, set " + key + ".tls.cert_file and key_file"
	case errors.Is(err, nats.ErrSecureConnWanted):
		return "the server does not offer TLS: check " + key + ".tls"
	case errors.Is(err, nats.ErrSecureConnRequired):
		return "the server requires TLS: set " + key + ".tls (e.g. enabled: true, ca_file) or use a tls:// URL"
	case errors.As(err, &netErr), errors.Is(err, nats.ErrNoServers):
		return "is nats-server running, and is " + key + ".url right?"
	}
	return "check " + key
}
