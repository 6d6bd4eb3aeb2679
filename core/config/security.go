package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
)

// TLS secures the connections to a broker. It is on when enabled, a file or
// insecure_skip_verify is set; enabled: true alone verifies the broker with
// the system's CAs (as managed Kafka services need).
type TLS struct {
	Enabled bool `yaml:"enabled"`
	// CAFile holds the PEM certificates of the CAs that may sign the
	// broker's certificate, in place of the system's.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are pgtrail's client certificate and its key, for
	// brokers that verify clients (mutual TLS).
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// InsecureSkipVerify accepts any certificate of the broker: encryption
	// without authentication, for tests only.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// On reports whether TLS is asked for.
func (t TLS) On() bool {
	return t.Enabled || t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.InsecureSkipVerify
}

// Config builds the client TLS config: nil when TLS is off. It is the one
// place that reads the files, for validation at load and for every broker
// client at connect. Its errors are *KeyError.
func (t TLS) Config() (*tls.Config, error) {
	if !t.On() {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: t.InsecureSkipVerify}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, &KeyError{"ca_file", err}
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, &KeyError{"ca_file", fmt.Errorf("%s holds no PEM certificate (-----BEGIN CERTIFICATE-----)", t.CAFile)}
		}
	}
	switch {
	case t.CertFile == "" && t.KeyFile == "":
	case t.CertFile == "":
		return nil, &KeyError{"cert_file", errors.New("required with key_file (the client certificate that goes with the key)")}
	case t.KeyFile == "":
		return nil, &KeyError{"key_file", errors.New("required with cert_file (the private key of the client certificate)")}
	default:
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, &KeyError{"cert_file", fmt.Errorf("load with key_file: %w", err)}
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// KeyError is a problem with one key of a block, named relative to the
// block (ca_file of a tls block).
type KeyError struct {
	Key string
	Err error
}

func (e *KeyError) Error() string { return e.Key + ": " + e.Err.Error() }

func (e *KeyError) Unwrap() error { return e.Err }

// TLSHint says which key of the tls block under key (e.g.
// "source.kafka.tls") to check when err is a failed TLS handshake; "" when
// it is not one. Every broker client words its errors with it.
func TLSHint(key string, err error) string {
	var (
		unknownCA x509.UnknownAuthorityError
		verify    *tls.CertificateVerificationError
		badHost   x509.HostnameError
		invalid   x509.CertificateInvalidError
		alert     tls.AlertError
		record    tls.RecordHeaderError
		op        *net.OpError
	)
	switch {
	case errors.As(err, &unknownCA), errors.As(err, &verify):
		return "the server's certificate is not signed by a trusted CA: set " + key + ".ca_file to the CA that signed it"
	case errors.As(err, &badHost), errors.As(err, &invalid):
		return "the server's certificate does not fit: check its host names and dates against the address pgtrail connects to"
	case errors.As(err, &alert), errors.As(err, &op) && op.Op == "remote error":
		return "the server refused the TLS handshake: if it verifies clients, set " + key + ".cert_file and key_file"
	case errors.As(err, &record):
		return "the server does not speak TLS: check " + key + " and the server's listener"
	}
	return ""
}

// SASL authenticates pgtrail to Kafka. An empty mechanism means none.
type SASL struct {
	Mechanism string `yaml:"mechanism"` // plain | scram-sha-256 | scram-sha-512
	Username  string `yaml:"username"`
	Password  string `yaml:"password"`
}

// SASL mechanisms, as Mechanism holds them after loading (lowercase).
const (
	SASLPlain       = "plain"
	SASLScramSHA256 = "scram-sha-256"
	SASLScramSHA512 = "scram-sha-512"
)

// NATSAuth is how pgtrail proves who it is to a NATS server: one of a
// credentials file, an nkey seed file, a user and password, or a token (or
// credentials in the URL, or none).
type NATSAuth struct {
	// CredsFile is a .creds file (a user JWT and its nkey seed), for servers
	// in operator (JWT) mode.
	CredsFile string `yaml:"creds_file"`
	// NkeyFile holds a user's nkey seed (SU...).
	NkeyFile string `yaml:"nkey_file"`
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	Token    string `yaml:"token"`
}

// validateTLS checks a tls block that is switched on.
func validateTLS(bad func(key, format string, args ...any), key string, t TLS) {
	_, err := t.Config()
	if ke, ok := errors.AsType[*KeyError](err); ok {
		bad(key+"."+ke.Key, "%v", ke.Err)
	} else if err != nil {
		bad(key, "%v", err)
	}
}

// validateSASL checks a Kafka sasl block.
func validateSASL(bad func(key, format string, args ...any), key string, s SASL) {
	switch s.Mechanism {
	case "":
		if s.Username != "" || s.Password != "" {
			bad(key+".mechanism", "required with a username or password (one of plain, scram-sha-256, scram-sha-512)")
		}
		return
	case SASLPlain, SASLScramSHA256, SASLScramSHA512:
	default:
		bad(key+".mechanism", "%q is not one of plain, scram-sha-256, scram-sha-512", s.Mechanism)
	}
	if s.Username == "" {
		bad(key+".username", "required with mechanism %s", s.Mechanism)
	}
	if s.Password == "" {
		bad(key+".password", "required with mechanism %s", s.Mechanism)
	}
}

// validateNATS checks the tls and auth blocks of a NATS connection to
// rawURL; key is the block that holds them.
func validateNATS(bad func(key, format string, args ...any), key, rawURL string, t TLS, a NATSAuth) {
	validateTLS(bad, key+".tls", t)
	var ways []string
	for _, w := range []struct{ key, value string }{{"creds_file", a.CredsFile}, {"nkey_file", a.NkeyFile}, {"username", a.Username}, {"token", a.Token}} {
		if w.value != "" {
			ways = append(ways, key+".auth."+w.key)
		}
	}
	if a.Password != "" && a.Username == "" {
		bad(key+".auth.username", "required with password")
	}
	if a.Username != "" && a.Password == "" {
		bad(key+".auth.password", "required with username")
	}
	if len(ways) > 1 {
		bad(key+".auth", "%s: use one way to authenticate", strings.Join(ways, ", "))
	}
	for _, f := range []struct{ key, path string }{{"creds_file", a.CredsFile}, {"nkey_file", a.NkeyFile}} {
		if f.path == "" {
			continue
		}
		if _, err := os.ReadFile(f.path); err != nil {
			bad(key+".auth."+f.key, "%v", err)
		}
	}
	if len(ways) > 0 && slices.ContainsFunc(strings.Split(rawURL, ","), func(s string) bool {
		u, err := url.Parse(strings.TrimSpace(s))
		return err == nil && u.User != nil
	}) {
		// Not echoed: the URL holds a secret.
		bad(key+".url", "holds credentials (user@ or user:password@) and %s sets them too: keep one", ways[0])
	}
}
