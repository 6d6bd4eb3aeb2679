package values

import (
	"bytes"
	"encoding/json"
	"math"
	"math/big"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// Every converter's output is JSON, whatever its input; those that take a
// size or a count from their input (a scale, a number of microseconds) turn
// what PostgreSQL has no value for into an error, and the rest stay within a
// few bytes of their input.

func FuzzAppendNumeric(f *testing.F) {
	for _, s := range []string{"0", "-12.50", "1e1000000", "NaN", "-Infinity", "0." + strings.Repeat("0", 20000) + "1",
		"9007199254740993", "+007.5", ".", "-", "1.2.3", "\x00", "\xff", "１２３"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := AppendNumeric(nil, s)
		if !json.Valid(out) {
			t.Fatalf("AppendNumeric(%q) = %s: not JSON", s, out)
		}
		if len(out) > 6*len(s)+11 { // a string of escapes at most; "-Infinity"
			t.Fatalf("AppendNumeric(%q) = %d bytes", s, len(out))
		}
	})
}

func FuzzAppendDecimal(f *testing.F) {
	for _, c := range []struct {
		unscaled []byte
		neg      bool
		scale    int
	}{
		{[]byte{1}, false, math.MinInt64}, {[]byte{1}, false, 50000000}, {[]byte{1}, true, MaxNumericScale},
		{[]byte{1}, false, MinNumericScale}, {nil, false, 2}, {[]byte{0x96}, true, -3}, {make([]byte, 70000), false, 0},
	} {
		f.Add(c.unscaled, c.neg, c.scale)
	}
	f.Fuzz(func(t *testing.T, unscaled []byte, neg bool, scale int) {
		v := new(big.Int).SetBytes(unscaled)
		if neg {
			v.Neg(v)
		}
		out, err := AppendDecimal(nil, v, scale)
		if err != nil {
			if len(out) != 0 {
				t.Fatalf("AppendDecimal(%d bits, %d): %v, and wrote %d bytes", v.BitLen(), scale, err, len(out))
			}
			if scale >= MinNumericScale && scale <= MaxNumericScale && v.BitLen() <= maxNumericBits && len(v.String())-scale <= MaxNumericIntegerDigits {
				t.Fatalf("AppendDecimal(%d bits, %d): %v for a value numeric holds", v.BitLen(), scale, err)
			}
			return
		}
		if !json.Valid(out) {
			t.Fatalf("AppendDecimal(%d bits, %d) = %.100s: not JSON", v.BitLen(), scale, out)
		}
		digits := len(v.String())
		if len(out) > digits+max(scale, -scale)+4 {
			t.Fatalf("AppendDecimal(%d digits, %d) = %d bytes", digits, scale, len(out))
		}
		if scale < MinNumericScale || scale > MaxNumericScale {
			t.Fatalf("AppendDecimal(%d bits, %d) = %.100s: a scale numeric does not have", v.BitLen(), scale, out)
		}
	})
}

func FuzzAppendTime(f *testing.F) {
	for _, c := range []struct {
		micros int64
		offset int
	}{
		{-504000000000, 0}, {1584000000000, 0}, {DayMicros, 0}, {DayMicros, -MaxZoneOffset}, {0, MaxZoneOffset + 1},
		{math.MinInt64, math.MinInt}, {math.MaxInt64, math.MaxInt}, {45296789012, 19800},
	} {
		f.Add(c.micros, c.offset)
	}
	f.Fuzz(func(t *testing.T, micros int64, offset int) {
		inDay := micros >= 0 && micros <= DayMicros
		out, err := AppendTime(nil, micros)
		if (err == nil) != inDay || err == nil && !validClock(out, `"`) {
			t.Fatalf("AppendTime(%d) = %s, %v", micros, out, err)
		}
		out, err = AppendTimeTZ(nil, micros, offset)
		if (err == nil) != (inDay && offset >= -MaxZoneOffset && offset <= MaxZoneOffset) || err == nil && !validClock(out, `Z"`) {
			t.Fatalf("AppendTimeTZ(%d, %d) = %s, %v", micros, offset, out, err)
		}
	})
}

// validClock reports whether out is a JSON string "hh:mm:ss[.ffffff]" and
// then end, of a time from 00:00:00 to 24:00:00.
func validClock(out []byte, end string) bool {
	s, ok := strings.CutSuffix(string(out), end)
	if !json.Valid(out) || !ok || len(s) < 9 || s[0] != '"' {
		return false
	}
	_, err := time.Parse("15:04:05.999999", s[1:])
	return err == nil || strings.HasPrefix(s, `"24:00:00`) && len(s) == 9
}

func FuzzAppendTimestamp(f *testing.F) {
	for _, c := range []struct {
		sec, nsec int64
		zoned     bool
	}{
		{0, 0, true}, {-210866803200, 0, false}, {9224318015, 999999999, true}, {math.MinInt64, 0, true},
		{math.MaxInt64, math.MaxInt64, false}, {-62135596800, -1, false},
	} {
		f.Add(c.sec, c.nsec, c.zoned)
	}
	f.Fuzz(func(t *testing.T, sec, nsec int64, zoned bool) {
		ts := time.Unix(sec, nsec)
		out := AppendTimestamp(nil, ts, zoned)
		out = AppendDate(out, ts)
		if !json.Valid([]byte("[" + strings.Replace(string(out), `""`, `","`, 1) + "]")) {
			t.Fatalf("AppendTimestamp and AppendDate of %v = %s: not JSON", ts, out)
		}
		if len(out) > 80 {
			t.Fatalf("AppendTimestamp and AppendDate of %v = %s", ts, out)
		}
	})
}

// FuzzAppendJSON: any text becomes JSON, whose escapes jsonb takes when the
// text is what a PostgreSQL text can be (UTF-8 without NUL). Numbers numeric
// cannot hold are embedded as they are: putting those in a safe form is the
// pipeline's job, for every ingress at once.
func FuzzAppendJSON(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `{"a":"\u0000"}`, `"\ud800"`, `"\ud83d\ude00"`, `[1e1000000]`, `{"a":`,
		strings.Repeat("[", 20000) + strings.Repeat("]", 20000), "\"\xff\"", `"\\u0000"`, "", "nul\x00l", "{\"a\":\"\xff\"}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, text []byte) {
		out := AppendJSON(nil, text)
		pgText := utf8.Valid(text) && !bytes.Contains(text, []byte{0})
		if !json.Valid(out) || pgText && (!jsonbEscapes(out) || !utf8.Valid(out)) {
			t.Fatalf("AppendJSON(%q) = %q: not JSON jsonb takes", text, out)
		}
		if len(out) > 6*len(text)+2 {
			t.Fatalf("AppendJSON(%q) = %d bytes", text, len(out))
		}
		if Embeddable(text) && string(out) != string(text) {
			t.Fatalf("AppendJSON(%q) = %q, want the embeddable text itself", text, out)
		}
	})
}
