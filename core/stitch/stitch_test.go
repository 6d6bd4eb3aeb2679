package stitch

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/pgtrail/pgtrail/core/values"
)

func TestBemiContextIsConsumedByExactlyTheNextRowChange(t *testing.T) {
	var bad []string
	s := New(slog.New(slog.NewTextHandler(io.Discard, nil)), 1<<10, func(p string) { bad = append(bad, p) }, nil)
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
}

// A context with values jsonb refuses is kept, with them in their safe
// form (it would fail every write of its batch as it is); a context over
// the cap is a bad context.
func TestContextJSONBCannotHoldIsKeptInItsSafeForm(t *testing.T) {
	var bad []string
	var rewritten values.Rewrites
	s := New(slog.New(slog.NewTextHandler(io.Discard, nil)), 64, func(p string) { bad = append(bad, p) },
		func(n values.Rewrites) {
			for r, k := range n {
				rewritten[r] += k
			}
		})
	for _, c := range []struct{ in, want string }{
		{`{"user":42,"note":"a\u0000b"}`, `{"user":42,"note":"a\\u0000b"}`},
		{`{"user":42,"n":1e1000000}`, `{"user":42,"n":"1e1000000"}`},
		{"{\"user\":42,\"s\":\"\xff\"}", `{"user":42,"s":"\ufffd"}`},
		{`{"fits":"` + strings.Repeat("x", 53) + `"}`, `{"fits":"` + strings.Repeat("x", 53) + `"}`}, // 64 bytes
		{`{"over":"` + strings.Repeat("x", 54) + `"}`, `{}`},
	} {
		s.Message(1, PrefixPgtrail, []byte(c.in))
		if got := string(s.Next(1)); got != c.want {
			t.Errorf("context %.70q stored as %s, want %s", c.in, got, c.want)
		}
	}
	if rewritten != (values.Rewrites{values.NumberOutOfRange: 1, values.NULEscape: 1, values.InvalidUTF8: 1}) {
		t.Errorf("rewrites reported: %v", rewritten)
	}
	if len(bad) != 1 || bad[0] != PrefixPgtrail {
		t.Errorf("bad payloads reported: %v, want the one over the cap", bad)
	}
}
