// Package retry is pgtrail's one backoff helper: every reconnect and every
// re-delivery waits through it, so they all back off the same way.
package retry

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff yields exponentially growing waits with jitter, capped at Max.
type Backoff struct {
	Initial time.Duration
	Max     time.Duration
	attempt int
}

// Default is the backoff used when a caller has no reason to choose another.
func Default() *Backoff { return &Backoff{Initial: 100 * time.Millisecond, Max: 10 * time.Second} }

// Next returns the next wait: Initial doubled per attempt, capped, with up to
// 20% jitter so that restarted workers do not retry in lockstep.
func (b *Backoff) Next() time.Duration {
	d := b.Initial << min(b.attempt, 20)
	if d <= 0 || d > b.Max {
		d = b.Max
	}
	b.attempt++
	return d - time.Duration(rand.Int64N(int64(d)/5+1))
}

// Reset starts over after a success.
func (b *Backoff) Reset() { b.attempt = 0 }

// Ran tells the backoff how long what it guards ran before it failed: after
// a run longer than the longest wait the failure is a new one, and the next
// wait starts over from Initial instead of staying at Max for ever.
func (b *Backoff) Ran(d time.Duration) {
	if d >= b.Max {
		b.Reset()
	}
}

// Wait sleeps for the next wait, or returns ctx's error if it ends first.
func (b *Backoff) Wait(ctx context.Context) error {
	t := time.NewTimer(b.Next())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Do calls f until it succeeds or ctx ends, waiting between attempts and
// telling onErr about each failure. It returns ctx's error when it gives up.
func Do(ctx context.Context, b *Backoff, f func(context.Context) error, onErr func(err error, wait int)) error {
	for attempt := 1; ; attempt++ {
		err := f(ctx)
		if err == nil {
			b.Reset()
			return nil
		}
		if onErr != nil {
			onErr(err, attempt)
		}
		if werr := b.Wait(ctx); werr != nil {
			return err
		}
	}
}
