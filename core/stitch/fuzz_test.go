package stitch

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// FuzzContext parses any payload under any prefix as context. What a change
// gets is always a JSON object, no larger than the payload allows (3 bytes
// a byte, for whatever form it takes); a payload of _bemi or pgtrail that is
// not kept is reported once and gives {}; other prefixes are ignored; the
// context outlives the message's buffer. Seeds: NUL escapes, lone
// surrogates, bytes that are not UTF-8, numbers no float holds, deep
// nesting, what is not an object.
func FuzzContext(f *testing.F) {
	for _, p := range []string{
		`{"user_id":42,"endpoint":"PATCH /docs/1"}`, ` {"a":1} `, `{"a":"\u0000"}`, `{"a":"\ud800"}`, "{\"a\":\"\xff\"}",
		`{"a":1e1000000}`, `[1]`, `"s"`, `null`, ``, `{`, `{"a":1}{"b":2}`, "{\"a\":\"nul\x00\"}",
		strings.Repeat(`{"a":`, 20000) + `1` + strings.Repeat(`}`, 20000), `{"\\u0000":"\\"}`, `{}`,
	} {
		for _, prefix := range []string{PrefixBemi, PrefixPgtrail, "_bemi_heartbeat"} {
			f.Add(prefix, []byte(p))
		}
	}
	f.Fuzz(func(t *testing.T, prefix string, payload []byte) {
		reports := 0
		s := &Stitcher{OnBadContext: func(string, []byte) { reports++ }}
		s.Message(1, prefix, payload)
		got := s.Next(1)
		if len(got) == 0 || got[0] != '{' || !json.Valid(got) || len(got) > 3*len(payload)+2 {
			t.Fatalf("context %q of payload %q: no JSON object, or too large", got, payload)
		}
		ours := prefix == PrefixBemi || prefix == PrefixPgtrail
		kept := string(got) != "{}" || string(bytes.TrimSpace(payload)) == "{}"
		switch {
		case !ours && (string(got) != "{}" || reports != 0):
			t.Fatalf("prefix %q: context %s, %d reports; want it ignored", prefix, got, reports)
		case ours && kept && reports != 0:
			t.Fatalf("payload %q kept as %s and reported", payload, got)
		case ours && !kept && reports != 1:
			t.Fatalf("payload %q dropped with %d reports, want 1", payload, reports)
		}
		want := string(got)
		for i := range payload { // the receive buffer is reused
			payload[i] = 'x'
		}
		if again := s.Next(1); prefix == PrefixPgtrail && string(again) != want {
			t.Fatalf("pgtrail context changed with the message's buffer: %s, was %s", again, want)
		}
	})
}
