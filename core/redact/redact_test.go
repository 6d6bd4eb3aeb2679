package redact

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"testing"
)

func TestStringHidesEveryCredentialAndKeepsTheRest(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"postgres://app:s3cret@db:5432/app?sslmode=verify-full", "postgres://app:xxxxx@db:5432/app?sslmode=verify-full"},
		{"postgres://app@db/app", "postgres://app@db/app"},
		{"nats://u:pw@h1:4222,nats://h2:4222,nats://v:pw2@h3:4222", "nats://u:xxxxx@h1:4222,nats://h2:4222,nats://v:xxxxx@h3:4222"},
		{"nats://h1:4222,nats://v:pw2@h3:4222", "nats://h1:4222,nats://v:xxxxx@h3:4222"},
		// A lone user part is a NATS token, but a PostgreSQL user name.
		{"nats://T0KEN@h:4222", "nats://xxxxx@h:4222"},
		{"tls://T0KEN@h:4222", "tls://xxxxx@h:4222"},
		// Raw @, / and # in a password (malformed, but quoted by parse errors).
		{"postgres://app:p@ss@db/app", "postgres://app:xxxxx@db/app"},
		{`parse "postgres://app:pa/ss@db/app": invalid port`, `parse "postgres://app:xxxxx@db/app": invalid port`},
		{`parse "nats://u:pa#ss@h:4222": invalid`, `parse "nats://u:xxxxx@h:4222": invalid`},
		{"connect to NATS at nats://u:pw@127.0.0.1:4222: nats: Authorization Violation", "connect to NATS at nats://u:xxxxx@127.0.0.1:4222: nats: Authorization Violation"},
		{"postgres://db/app?user=app&password=s3cret&sslpassword=k3y&sslmode=require", "postgres://db/app?user=app&password=xxxxx&sslpassword=xxxxx&sslmode=require"},
		{"host=db user=app password=s3cret dbname=app", "host=db user=app password=xxxxx dbname=app"},
		{"host=db password='s3 cret' dbname=app", "host=db password='xxxxx' dbname=app"},
		{"https://h/?X-Amz-Security-Token=abc&X-Amz-Signature=def&x=1", "https://h/?X-Amz-Security-Token=xxxxx&X-Amz-Signature=xxxxx&x=1"},
		{`{"url":"s3://b","secret_access_key":"abc","token": "def"}`, `{"url":"s3://b","secret_access_key":"xxxxx","token": "xxxxx"}`},
		{"passwordfile=/etc/pw keyfile=/k", "passwordfile=/etc/pw keyfile=/k"},
		{"time=10:00 level=INFO msg=ok", "time=10:00 level=INFO msg=ok"},
		{"", ""},
	} {
		if got := String(c.in); got != c.want {
			t.Errorf("String(%q)\n got %q\nwant %q", c.in, got, c.want)
		}
		if got := String(c.want); got != c.want {
			t.Errorf("String is not idempotent on %q: %q", c.want, got)
		}
	}
}

// url.Parse quotes the whole URL in its errors: the error must come out
// clean whatever the password holds.
func TestErrorHidesThePasswordOfAURLThatDoesNotParse(t *testing.T) {
	for _, pw := range []string{"a/b", "a?b", "a#b", "a b", "a@b", "a%zz"} {
		_, err := url.Parse("postgres://app:" + pw + "@db:port/app")
		if err == nil {
			t.Fatalf("password %q: want a parse error", pw)
		}
		if got := Error(err); strings.Contains(got, pw) {
			t.Errorf("password %q shows in %q", pw, got)
		}
	}
	if Error(nil) != "" {
		t.Error("Error(nil) is not empty")
	}
	if got := Error(errors.New("plain")); got != "plain" {
		t.Errorf("Error changed a plain message: %q", got)
	}
}

func TestAttrMasksEveryLoggedValueAndTheMessage(t *testing.T) {
	var out strings.Builder
	log := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{ReplaceAttr: Attr}))
	log.With("url", "nats://u:Secret1@h:4222").Error("connect to postgres://app:Secret2@db/app failed",
		"err", fmt.Errorf("dial: %w", errors.New("parse \"postgres://app:Secret3@db:x\": invalid port")),
		"config", map[string]any{"dsn": "host=db password=Secret4"},
		slog.Group("sink", "url", "nats://Secret5@h", "sasl_password", "Secret6"),
		"n", 3)
	got := out.String()
	for _, secret := range []string{"Secret1", "Secret2", "Secret3", "Secret4", "Secret5", "Secret6"} {
		if strings.Contains(got, secret) {
			t.Errorf("log shows %s: %s", secret, got)
		}
	}
	for _, want := range []string{"url=nats://u:xxxxx@h:4222", `msg="connect to postgres://app:xxxxx@db/app failed"`,
		`err="dial: parse \"postgres://app:xxxxx@db:x\": invalid port"`, "sink.url=nats://xxxxx@h", "sink.sasl_password=xxxxx", "n=3"} {
		if !strings.Contains(got, want) {
			t.Errorf("log %q\nlacks %q", got, want)
		}
	}
}
