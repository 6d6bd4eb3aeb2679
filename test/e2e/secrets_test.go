package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/pgtrail/pgtrail/test/natstest"
)

// Passwords that must never show in anything pgtrail prints.
const (
	natsPassword  = "NatsPw-3f9c1"
	kafkaPassword = "KafkaPw-7d2e4"
	pgPassword    = "PgPw-5b8a6"
)

func noSecret(t *testing.T, what, out string) {
	t.Helper()
	for _, pw := range []string{natsPassword, kafkaPassword, pgPassword} {
		if strings.Contains(out, pw) {
			t.Errorf("%s shows the password %s:\n%s", what, pw, out)
		}
	}
}

// secretRole makes a superuser with pgPassword in url's database and
// returns url for it.
func secretRole(t *testing.T, url string) string {
	t.Helper()
	conn := connect(t, url)
	var role string
	if err := conn.QueryRow(context.Background(), "SELECT 'secret_' || current_database()").Scan(&role); err != nil {
		t.Fatal(err)
	}
	exec1(t, conn, fmt.Sprintf(`CREATE ROLE %s LOGIN SUPERUSER PASSWORD '%s'`, role, pgPassword))
	return strings.Replace(url, "postgres:postgres@", role+":"+pgPassword+"@", 1)
}

// A run with passwords in the NATS URL and the sink's PostgreSQL URL: no
// log line, no status, no /healthz answer, and, once NATS is
// gone, no error of run, status or teardown shows one.
func TestNoOutputShowsThePasswordsOfTheURLs(t *testing.T) {
	url := secretRole(t, cluster.NewDatabase(t))
	srv := natstest.Run(t, &server.Options{Username: "pgtrail", Password: natsPassword})
	hostPort := strings.TrimPrefix(srv.ClientURL(), "nats://")
	nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo("pgtrail", natsPassword))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "DebeziumStream", Subjects: []string{"bemi"}}); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	natsURL := "nats://pgtrail:" + natsPassword + "@" + hostPort
	cfg := writeBrokerConfig(t, url, fmt.Sprintf("  type: jetstream\n  jetstream:\n    url: %q\n  debezium:\n    key_columns: [id]", natsURL),
		fmt.Sprintf("http:\n  listen: %q\n", addr))

	out, err := pgtrail(t, cfg, "status")
	if err != nil || !regexp.MustCompile(`sink audit +ok`).MatchString(out) {
		t.Fatalf("status: %v\n%s", err, out)
	}
	noSecret(t, "status", out)

	p := start(t, cfg)
	h := makeHistory(3)
	for _, ev := range h.events {
		if _, err := js.Publish(context.Background(), "bemi", ev); err != nil {
			t.Fatal(err)
		}
	}
	conn := connect(t, url)
	waitForChanges(t, conn, len(h.truth), 30*time.Second)

	// NATS goes away: the pipeline fails, and fails again at every restart
	// with the connect error, which quotes the URL.
	srv.Shutdown()
	var health string
	waitFor(t, 60*time.Second, "/healthz to report the pipeline failing, and a failed restart", func() bool {
		health = httpGet(t, "http://"+addr+"/healthz")
		return health != "ok\n" && strings.Contains(p.out.String(), "connect to NATS at nats://pgtrail:")
	})
	if !strings.Contains(p.out.String(), "connect to NATS at nats://pgtrail:xxxxx@"+hostPort) {
		t.Error("the log lacks the connect error with the password masked")
	}
	if !regexp.MustCompile(`^pipeline: failing, [a-z A-Z]+ \(see the log\)\n$`).MatchString(health) {
		t.Errorf("/healthz = %q, want the failing component and the kind of failure", health)
	}
	noSecret(t, "/healthz", health)
	if err := p.stop(); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
	noSecret(t, "the log of run", p.out.String())

	for _, cmd := range []string{"status", "teardown", "run"} {
		out, err := pgtrail(t, cfg, cmd)
		if err == nil || !strings.Contains(out, "connect to NATS at nats://pgtrail:xxxxx@"+hostPort) {
			t.Errorf("%s without NATS: err=%v, want the connect error with the password masked:\n%s", cmd, err, out)
		}
		noSecret(t, cmd, out)
	}
}

// A wrong Kafka SASL password and a wrong PostgreSQL password are refused
// with errors that name what to check and show neither password.
func TestRefusedPasswordsAreNotShown(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "bemi"), kfake.EnableSASL(),
		kfake.Superuser("SCRAM-SHA-256", "pgtrail", "Right-"+kafkaPassword))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	url := cluster.NewDatabase(t)
	kafka := fmt.Sprintf("  type: kafka\n  kafka:\n    brokers: [%q]\n    sasl: {mechanism: SCRAM-SHA-256, username: pgtrail, password: %q}",
		c.ListenAddrs()[0], kafkaPassword)
	cfg := writeBrokerConfig(t, url, kafka, "")
	for _, cmd := range []string{"status", "run"} {
		out, err := pgtrail(t, cfg, cmd)
		if err == nil || !strings.Contains(out, "check source.kafka.sasl") {
			t.Errorf("%s with a wrong SASL password: err=%v, want the refusal naming source.kafka.sasl:\n%s", cmd, err, out)
		}
		noSecret(t, cmd, out)
	}

	wrong := strings.Replace(url, "postgres:postgres@", "postgres:"+pgPassword+"@", 1)
	pg := writeConfig(t, wrong, "", "")
	for _, cmd := range []string{"setup", "status", "teardown", "run"} {
		out, err := pgtrail(t, pg, cmd)
		if err == nil || !strings.Contains(out, "password authentication failed") {
			t.Errorf("%s with a wrong PostgreSQL password: err=%v, want the refusal:\n%s", cmd, err, out)
		}
		noSecret(t, cmd, out)
	}
}
