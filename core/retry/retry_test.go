package retry

import (
	"testing"
	"time"
)

func TestWaitsDoubleUpToMaxAndStartOverAfterALongRun(t *testing.T) {
	b := &Backoff{Initial: 100 * time.Millisecond, Max: time.Second}
	for i, want := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		want *= time.Millisecond
		if d := b.Next(); d > want || d < want*4/5 {
			t.Fatalf("wait %d: %s, want %s less at most 20%%", i, d, want)
		}
	}
	b.Ran(b.Max / 2) // a short run: the outage goes on
	if d := b.Next(); d < b.Max*4/5 {
		t.Fatalf("after a short run: %s, want about %s", d, b.Max)
	}
	b.Ran(b.Max) // a run as long as the longest wait: a new failure
	if d := b.Next(); d > b.Initial {
		t.Fatalf("after a long run: %s, want at most %s", d, b.Initial)
	}
}
