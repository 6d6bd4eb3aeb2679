package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/pgtrail/pgtrail/core/config"
)

// Whatever a package logs, in either format, the log shows no credential.
func TestTheLogMasksCredentials(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		var out strings.Builder
		log := newLogger(config.Log{Level: "debug", Format: format}, &out)
		log.Error("connect to nats://u:Secret1@127.0.0.1:4222 failed",
			"err", errors.New(`parse "postgres://app:Secret2@db:x/app": invalid port`),
			"dsn", "host=db password=Secret3", "brokers", []string{"127.0.0.1:9092"})
		got := out.String()
		for _, secret := range []string{"Secret1", "Secret2", "Secret3"} {
			if strings.Contains(got, secret) {
				t.Errorf("%s log shows %s: %s", format, secret, got)
			}
		}
		if !strings.Contains(got, "nats://u:xxxxx@127.0.0.1:4222") || !strings.Contains(got, "127.0.0.1:9092") {
			t.Errorf("%s log lost what is not secret: %s", format, got)
		}
	}
}
