// Package deadletter is what the broker sources share about dead letters:
// storing one until the broker holds it, in view of /healthz, and the
// bounded error text it carries.
package deadletter

import (
	"context"
	"log/slog"
	"unicode/utf8"

	"github.com/pgtrail/pgtrail/core/metrics"
	"github.com/pgtrail/pgtrail/core/retry"
)

// Health is the component /healthz names while a dead letter cannot be stored.
const Health = "dead letters"

// maxDetail bounds the error text a dead letter carries: a hostile message
// must not make its own dead letter too large to store.
const maxDetail = 1024

// Store calls store until it succeeds or ctx ends. The source waits for it
// (its message is confirmed only once its dead letter is stored), so every
// failure is logged, naming the dead letter by what, and /healthz shows
// the component Health failing until a store succeeds.
func Store(ctx context.Context, m *metrics.Metrics, log *slog.Logger, what string, store func(context.Context) error) error {
	err := retry.Do(ctx, retry.Default(), store, func(err error, attempt int) {
		m.SetHealth(Health, err)
		log.Error("storing a dead letter failed; its source waits for it; retrying", "dead_letter", what, "attempt", attempt, "err", err)
	})
	if err == nil {
		m.SetHealth(Health, nil)
	}
	return err
}

// Detail is err's text, cut to at most maxDetail bytes on a rune boundary.
func Detail(err error) string {
	s := err.Error()
	if len(s) <= maxDetail {
		return s
	}
	n := maxDetail
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
