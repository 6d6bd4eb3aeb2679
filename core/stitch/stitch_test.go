package stitch

import (
	"io"
	"log/slog"
	"testing"
)

func TestBemiContextIsConsumedByExactlyTheNextRowChange(t *testing.T) {
	var bad []string
	s := New(slog.New(slog.NewTextHandler(io.Discard, nil)), func(p string) { bad = append(bad, p) })
	s.Begin(1)
	s.Message(1, PrefixBemi, []byte(`{"a":1}`))
	if got := string(s.Next(1)); got != `{"a":1}` {
		t.Fatalf("first change: %s", got)
	}
	if got := string(s.Next(1)); got != `{}` {
		t.Fatalf("second change took a consumed _bemi context: %s", got)
	}
	s.Message(1, PrefixPgtrail, []byte(`{"t":1}`))
	s.Message(1, PrefixBemi, []byte(`{"b":2}`))
	if got := string(s.Next(1)); got != `{"b":2}` {
		t.Fatalf("_bemi must win for its own change: %s", got)
	}
	if got := string(s.Next(1)); got != `{"t":1}` {
		t.Fatalf("pgtrail context must hold for the rest of the transaction: %s", got)
	}
	s.Message(1, "_bemi_heartbeat", []byte(`{"x":1}`))
	s.Message(1, "unknown", []byte(`{"x":1}`))
	if got := string(s.Next(1)); got != `{"t":1}` {
		t.Fatalf("unknown prefixes must be ignored: %s", got)
	}
	// A new transaction starts clean, even without Begin (a broker ingress
	// may only see transaction ids).
	s.Message(1, PrefixBemi, []byte(`{"left":"over"}`))
	if got := string(s.Next(2)); got != `{}` {
		t.Fatalf("context crossed into another transaction: %s", got)
	}
	s.Message(2, PrefixPgtrail, []byte(`[1]`))
	s.Message(2, PrefixBemi, []byte(`nope`))
	if got := string(s.Next(2)); got != `{}` {
		t.Fatalf("bad payload: %s", got)
	}
	if len(bad) != 2 || bad[0] != PrefixPgtrail || bad[1] != PrefixBemi {
		t.Fatalf("bad payloads reported: %v", bad)
	}
	// JSON that jsonb refuses would fail every write of its batch.
	s.Message(3, PrefixBemi, []byte(`{"note":"\u0000"}`))
	if got := string(s.Next(3)); got != `{}` || len(bad) != 3 {
		t.Fatalf("context jsonb cannot hold: stored %s, %d reported", got, len(bad))
	}
}
