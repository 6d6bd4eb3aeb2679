package values

import (
	"bytes"
	"encoding/json"
	"math"
	"math/big"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"
)

// stdString is encoding/json's encoding of s without HTML escaping, the
// reference AppendString must match.
func stdString(t testing.TB, s string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func TestAppendStringEscapesLikeEncodingJSON(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", `""`},
		{"plain text", `"plain text"`},
		{"héllo 世界 🎉", `"héllo 世界 🎉"`},
		{`say "hi" \o/`, `"say \"hi\" \\o/"`},
		{"a\nb\rc\td\be\ff", `"a\nb\rc\td\be\ff"`},
		{"\x00\x01\x1f\x7f", `"\u0000\u0001\u001f` + "\x7f" + `"`},
		{"<a href='x'>&amp;</a>", `"<a href='x'>&amp;</a>"`},
		{"line\u2028para\u2029", `"line\u2028para\u2029"`},
		{"bad \xff\xfe utf8", `"bad \ufffd\ufffd utf8"`},
		{"cut \xe4\xb8", `"cut \ufffd\ufffd"`},
	} {
		got := string(AppendString([]byte("x"), tc.in))
		if got != "x"+tc.want {
			t.Errorf("AppendString(%q) = %s, want %s", tc.in, got[1:], tc.want)
		}
		if std := stdString(t, tc.in); got[1:] != std {
			t.Errorf("AppendString(%q) = %s, encoding/json gives %s", tc.in, got[1:], std)
		}
	}
}

func TestAppendStringMatchesEncodingJSONOnRandomInput(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []string{"a", "Z", " ", "\"", "\\", "\n", "\x00", "\x1b", "é", "世", "🎉", "\u2028", "\xff", "\xe4\xb8", "<", "&"}
	for range 2000 {
		var sb strings.Builder
		for range r.IntN(20) {
			sb.WriteString(alphabet[r.IntN(len(alphabet))])
		}
		s := sb.String()
		if got, want := string(AppendString(nil, s)), stdString(t, s); got != want {
			t.Fatalf("AppendString(%q) = %s, encoding/json gives %s", s, got, want)
		}
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "a\"b", "\xff", "\u2028", "日本"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := string(AppendString(nil, s)), stdString(t, s); got != want {
			t.Fatalf("AppendString(%q) = %s, encoding/json gives %s", s, got, want)
		}
	})
}

func TestAppendBytesIsBase64String(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want string
	}{
		{nil, `""`},
		{[]byte{0x01, 0xff, 0x00}, `"Af8A"`},
		{[]byte("hello"), `"aGVsbG8="`},
	} {
		if got := string(AppendBytes(nil, tc.in)); got != tc.want {
			t.Errorf("AppendBytes(%x) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestAppendNumericKeepsDigitsAndLosesNoPrecision(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"0", `0`},
		{"1.50", `1.50`},
		{"-12.50", `-12.50`},
		{"0.1", `0.1`},
		{"19.99", `19.99`},
		{"0.000", `0.000`},
		{"-0.0", `-0.0`},
		{"123456789012345", `123456789012345`},
		{"9007199254740992", `9007199254740992`},       // 2^53
		{"9007199254740993", `"9007199254740993"`},     // 2^53+1 is not a float64
		{"0.30000000000000004", `0.30000000000000004`}, // 17 digits, but a float64's own
		{"12345678901234567", `"12345678901234567"`},
		{"12345678901234567890.123456789", `"12345678901234567890.123456789"`},
		{"-12345678901234567890", `"-12345678901234567890"`},
		{"100000000000000000000000", `100000000000000000000000`},
		{"0.00000000000000000001", `0.00000000000000000001`},
		{"1" + strings.Repeat("0", 400), `"1` + strings.Repeat("0", 400) + `"`},          // beyond float64
		{"0." + strings.Repeat("0", 400) + "1", `"0.` + strings.Repeat("0", 400) + `1"`}, // below float64
		{"1.0000000000000000000000000000001", `"1.0000000000000000000000000000001"`},
		{"1.0000000000000000000000000000000", `1.0000000000000000000000000000000`},
		{"NaN", `"NaN"`},
		{"Infinity", `"Infinity"`},
		{"-Infinity", `"-Infinity"`},
		// Not as numeric_out prints them, but canonical all the same.
		{"+5", `5`},
		{"007.5", `7.5`},
		{"-000", `-0`},
		{".5", `0.5`},
		{"5.", `5`},
		// Not plain decimals: kept as text.
		{"1e5", `"1e5"`},
		{"abc", `"abc"`},
		{"", `""`},
		{"-", `"-"`},
		{"1.2.3", `"1.2.3"`},
	} {
		got := AppendNumeric([]byte("x"), tc.in)
		if string(got) != "x"+tc.want {
			t.Errorf("AppendNumeric(%q) = %s, want %s", tc.in, got[1:], tc.want)
		}
		if !json.Valid(got[1:]) {
			t.Errorf("AppendNumeric(%q) = %s: not JSON", tc.in, got[1:])
		}
	}
}

// TestAppendNumericFollowsFormatFloatRule checks the documented rule, stated
// plainly, on random decimals of every size around float64's precision.
func TestAppendNumericFollowsFormatFloatRule(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 50000 {
		var sb strings.Builder
		if r.IntN(2) == 0 {
			sb.WriteByte('-')
		}
		ip := r.IntN(22)
		if ip == 0 {
			sb.WriteByte('0')
		}
		for i := range ip {
			d := r.IntN(10)
			if i == 0 && d == 0 {
				d = 1
			}
			if r.IntN(3) == 0 && i > 0 {
				d = 0
			}
			sb.WriteByte(byte('0' + d))
		}
		if fp := r.IntN(22); fp > 0 {
			sb.WriteByte('.')
			for range fp {
				d := r.IntN(10)
				if r.IntN(3) == 0 {
					d = 0
				}
				sb.WriteByte(byte('0' + d))
			}
		}
		check(t, sb.String())
		// A float64's own digits, and the same with its last digit moved.
		f := strconv.FormatFloat(r.NormFloat64()*math.Pow(10, float64(r.IntN(40)-20)), 'f', -1, 64)
		check(t, f)
		last := f[len(f)-1]
		check(t, f[:len(f)-1]+string('0'+(last-'0'+1)%10))
	}
}

func check(t *testing.T, s string) {
	t.Helper()
	f, err := strconv.ParseFloat(s, 64)
	want := err == nil && strconv.FormatFloat(f, 'f', -1, 64) == normalise(s)
	got := AppendNumeric(nil, s)
	if isNum := got[0] != '"'; isNum != want {
		t.Fatalf("AppendNumeric(%q) = %s, want number: %v", s, got, want)
	}
	if strings.Trim(string(got), `"`) != s {
		t.Fatalf("AppendNumeric(%q) = %s: digits changed", s, got)
	}
}

// normalise drops trailing fractional zeros, as FormatFloat prints decimals.
func normalise(s string) string {
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}

func TestAppendDecimalFormatsLikeNumericOut(t *testing.T) {
	big := func(s string) *big.Int {
		v, ok := new(big.Int).SetString(s, 10)
		if !ok {
			t.Fatal(s)
		}
		return v
	}
	for _, tc := range []struct {
		unscaled string
		scale    int
		want     string
	}{
		{"150", 2, `1.50`},
		{"-5", 3, `-0.005`},
		{"0", 2, `0.00`},
		{"0", 0, `0`},
		{"12", -3, `12000`},
		{"-123456", 0, `-123456`},
		{"12345678901234567890123456789", 9, `"12345678901234567890.123456789"`},
		{"-9223372036854775808", 2, `"-92233720368547758.08"`},
	} {
		if got, err := AppendDecimal(nil, big(tc.unscaled), tc.scale); string(got) != tc.want || err != nil {
			t.Errorf("AppendDecimal(%s, %d) = %s, %v; want %s", tc.unscaled, tc.scale, got, err, tc.want)
		}
	}
}

// TestAppendDecimalRefusesWhatNumericCannotHold: a scale outside numeric's
// range made the output as long as the scale says (5e7: 50 MB out of a few
// bytes) or, at -2^63, panicked (makeslice); so does a value of more digits
// than numeric has. Each is an error; the limits themselves are kept.
func TestAppendDecimalRefusesWhatNumericCannotHold(t *testing.T) {
	one := big.NewInt(1)
	long := new(big.Int).Exp(big.NewInt(10), big.NewInt(MaxNumericIntegerDigits+MaxNumericScale), nil) // 147456 digits
	for _, tc := range []struct {
		unscaled *big.Int
		scale    int
		want     string
	}{
		{one, math.MinInt64, "scale -9223372036854775808 is outside PostgreSQL's numeric range (-1000 to 16383)"},
		{one, math.MaxInt64, "scale 9223372036854775807 is outside"},
		{one, 50000000, "scale 50000000 is outside"},
		{one, -1001, "scale -1001 is outside"},
		{one, MaxNumericScale + 1, "scale 16384 is outside"},
		{long, MaxNumericScale, "decimal with scale 16383 has more than the 131072 digits numeric holds before the decimal point"},
		{new(big.Int).Lsh(one, 1<<20), 0, "more than the 131072 digits"},
		{new(big.Int).Exp(big.NewInt(10), big.NewInt(MaxNumericIntegerDigits), nil), 0, "more than the 131072 digits"},
	} {
		got, err := AppendDecimal([]byte("x"), tc.unscaled, tc.scale)
		if err == nil || !strings.Contains(err.Error(), tc.want) || string(got) != "x" {
			t.Errorf("AppendDecimal(%d bits, %d) = %.40s, %v; want dst unchanged and an error saying %q", tc.unscaled.BitLen(), tc.scale, got, err, tc.want)
		}
	}
	for _, tc := range []struct {
		unscaled *big.Int
		scale    int
		digits   int
	}{
		{one, MaxNumericScale, MaxNumericScale + 2}, // 0.000...1
		{one, MinNumericScale, 1001},                // 1000...0
		{new(big.Int).Sub(long, one), MaxNumericScale, MaxNumericIntegerDigits + MaxNumericScale + 1},
	} {
		got, err := AppendDecimal(nil, tc.unscaled, tc.scale)
		if err != nil || len(strings.Trim(string(got), `"`)) != tc.digits || !json.Valid(got) {
			t.Errorf("AppendDecimal(%d bits, %d) = %d bytes, %v; want %d characters", tc.unscaled.BitLen(), tc.scale, len(got), err, tc.digits)
		}
	}
}

func TestAppendTimestampIsISO8601WithMicroseconds(t *testing.T) {
	ist := time.FixedZone("IST", 5*3600+1800)
	for _, tc := range []struct {
		t     time.Time
		zoned bool
		want  string
	}{
		{time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC), true, `"2024-01-02T03:04:05Z"`},
		{time.Date(2024, 1, 2, 3, 4, 5, 120000000, time.UTC), true, `"2024-01-02T03:04:05.12Z"`},
		{time.Date(2024, 1, 2, 3, 4, 5, 123456789, time.UTC), true, `"2024-01-02T03:04:05.123456Z"`},
		{time.Date(2024, 1, 2, 3, 4, 5, 1000, time.UTC), false, `"2024-01-02T03:04:05.000001"`},
		{time.Date(2024, 1, 2, 3, 4, 5, 0, ist), true, `"2024-01-01T21:34:05Z"`},
		{time.Date(2024, 1, 2, 3, 4, 5, 0, ist), false, `"2024-01-02T03:04:05"`},
		{time.Date(-43, 3, 15, 12, 0, 0, 0, time.UTC), false, `"-0043-03-15T12:00:00"`}, // 44 BC
		{time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC), true, `"0000-01-01T00:00:00Z"`},      // 1 BC
		{time.Date(-4713, 11, 24, 0, 0, 0, 0, time.UTC), true, `"-4713-11-24T00:00:00Z"`},
		{time.Date(294276, 12, 31, 23, 59, 59, 999999000, time.UTC), false, `"294276-12-31T23:59:59.999999"`},
		{time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), false, `"10000-01-01T00:00:00"`},
		{time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), false, `"0001-01-01T00:00:00"`},
	} {
		if got := string(AppendTimestamp(nil, tc.t, tc.zoned)); got != tc.want {
			t.Errorf("AppendTimestamp(%v, %v) = %s, want %s", tc.t, tc.zoned, got, tc.want)
		}
	}
}

func TestAppendDateIsISO8601(t *testing.T) {
	for _, tc := range []struct {
		t    time.Time
		want string
	}{
		{time.Date(2024, 2, 29, 23, 0, 0, 0, time.UTC), `"2024-02-29"`},
		{time.Date(-43, 3, 15, 0, 0, 0, 0, time.UTC), `"-0043-03-15"`},
		{time.Unix(-86400, 0).UTC(), `"1969-12-31"`}, // Debezium's Date: days since the epoch
	} {
		if got := string(AppendDate(nil, tc.t)); got != tc.want {
			t.Errorf("AppendDate(%v) = %s, want %s", tc.t, got, tc.want)
		}
	}
}

func TestAppendTimeOfDay(t *testing.T) {
	const h, m, s = 3600e6, 60e6, 1e6
	for _, tc := range []struct {
		micros int64
		want   string
	}{
		{0, `"00:00:00"`},
		{3*h + 4*m + 5*s + 500000, `"03:04:05.5"`},
		{23*h + 59*m + 59*s + 999999, `"23:59:59.999999"`},
		{24 * h, `"24:00:00"`},
	} {
		if got, err := AppendTime(nil, tc.micros); string(got) != tc.want || err != nil {
			t.Errorf("AppendTime(%d) = %s, %v; want %s", tc.micros, got, err, tc.want)
		}
	}
	for _, tc := range []struct {
		micros int64
		offset int
		want   string
	}{
		{3*h + 4*m + 5*s, 0, `"03:04:05Z"`},
		{3*h + 4*m + 5*s + 500000, 5*3600 + 1800, `"21:34:05.5Z"`},
		{23 * h, -2 * 3600, `"01:00:00Z"`},
		{3*h + 4*m + 5*s, -15, `"03:04:20Z"`},
		{24 * h, 0, `"24:00:00Z"`},
	} {
		if got, err := AppendTimeTZ(nil, tc.micros, tc.offset); string(got) != tc.want || err != nil {
			t.Errorf("AppendTimeTZ(%d, %d) = %s, %v; want %s", tc.micros, tc.offset, got, err, tc.want)
		}
	}
}

// TestTimesOutsideTheDayAreErrors: a time of day outside 00:00:00 to
// 24:00:00 wrapped its digits past '9' and below '0': -140 hours became
// `""0:00:00"` and 440 hours `"\0:00:00"`, neither of them JSON, which failed
// every write of the batch. They are errors now, as are zone offsets beyond
// PostgreSQL's 15:59:59.
func TestTimesOutsideTheDayAreErrors(t *testing.T) {
	for _, micros := range []int64{-1, -504000000000, DayMicros + 1, 1584000000000, math.MaxInt64, math.MinInt64} {
		got, err := AppendTime([]byte("x"), micros)
		if err == nil || !strings.Contains(err.Error(), "is outside PostgreSQL's range (00:00:00 to 24:00:00)") || string(got) != "x" {
			t.Errorf("AppendTime(%d) = %s, %v; want an error", micros, got, err)
		}
		got, err = AppendTimeTZ([]byte("x"), micros, 3600)
		if err == nil || string(got) != "x" {
			t.Errorf("AppendTimeTZ(%d) = %s, %v; want an error", micros, got, err)
		}
	}
	for _, off := range []int{MaxZoneOffset + 1, -MaxZoneOffset - 1, math.MaxInt} {
		if got, err := AppendTimeTZ(nil, 0, off); err == nil {
			t.Errorf("AppendTimeTZ(0, %d) = %s, want an error", off, got)
		}
	}
	if got, err := AppendTimeTZ(nil, 0, -MaxZoneOffset); string(got) != `"15:59:59Z"` || err != nil {
		t.Errorf("AppendTimeTZ(0, -15:59:59) = %s, %v", got, err)
	}
}

func TestInTimestampRangeIsPostgresRange(t *testing.T) {
	for _, tc := range []struct {
		t    time.Time
		want bool
	}{
		{time.Date(-4713, 11, 24, 0, 0, 0, 0, time.UTC), true},
		{time.Date(-4713, 11, 23, 23, 59, 59, 999999000, time.UTC), false},
		{time.Date(294276, 12, 31, 23, 59, 59, 999999000, time.UTC), true},
		{time.Date(294277, 1, 1, 0, 0, 0, 0, time.UTC), false},
		{time.UnixMilli(math.MaxInt64), false},
		{time.UnixMicro(math.MaxInt64), true},
	} {
		if got := InTimestampRange(tc.t); got != tc.want {
			t.Errorf("InTimestampRange(%v) = %v", tc.t, got)
		}
	}
	if d := time.Date(-4713, 11, 24, 0, 0, 0, 0, time.UTC).Unix() / 86400; d != FirstUnixDay {
		t.Errorf("FirstUnixDay %d, want %d", FirstUnixDay, d)
	}
	if d := time.Date(5874898, 1, 1, 0, 0, 0, 0, time.UTC).Unix() / 86400; d != EndUnixDay {
		t.Errorf("EndUnixDay %d, want %d", EndUnixDay, d)
	}
}

func TestAppendInfinity(t *testing.T) {
	if got := string(AppendInfinity(nil, false)); got != `"infinity"` {
		t.Errorf("AppendInfinity(false) = %s", got)
	}
	if got := string(AppendInfinity(nil, true)); got != `"-infinity"` {
		t.Errorf("AppendInfinity(true) = %s", got)
	}
}

func TestAppendDoesNotAllocate(t *testing.T) {
	dst := make([]byte, 0, 1024)
	ts := time.Date(2024, 1, 2, 3, 4, 5, 123456000, time.UTC)
	for name, f := range map[string]func(){
		"string":         func() { AppendString(dst, "a \"quoted\" text\n with ünïcode") },
		"numeric":        func() { AppendNumeric(dst, "1234.50") },
		"numeric long":   func() { AppendNumeric(dst, "0.30000000000000004") },
		"numeric wide":   func() { AppendNumeric(dst, "12345678901234567890.123456789") },
		"timestamp":      func() { AppendTimestamp(dst, ts, true) },
		"bytes":          func() { AppendBytes(dst, []byte("0123456789")) },
		"time with zone": func() { _, _ = AppendTimeTZ(dst, 12345678, 3600) },
	} {
		if n := testing.AllocsPerRun(100, f); n != 0 {
			t.Errorf("%s: %v allocations, want 0", name, n)
		}
	}
}

func BenchmarkAppendString(b *testing.B) {
	dst := make([]byte, 0, 256)
	s := "The quick brown fox jumps over the lazy dog, twice: \"quoted\"."
	b.ReportAllocs()
	b.SetBytes(int64(len(s)))
	for b.Loop() {
		dst = AppendString(dst[:0], s)
	}
}

func BenchmarkAppendNumeric(b *testing.B) {
	dst := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		dst = AppendNumeric(dst[:0], "1234.50")
		dst = AppendNumeric(dst, "0.30000000000000004")
	}
}

// TestEmbeddableRefusesWhatJsonbRefuses: valid JSON that the json type
// takes and jsonb does not (PostgreSQL: "unsupported Unicode escape
// sequence") is not embeddable; everything else valid is.
func TestEmbeddableRefusesWhatJsonbRefuses(t *testing.T) {
	for text, want := range map[string]bool{
		`{"a":1}`:                       true,
		`{"a":"\u00e9\n\"x\\u0000"}`:    true, // \\u0000 is a backslash, then text
		`"\ud83d\ude00"`:                true, // a surrogate pair
		`["\u0041", "\\", "\\\\u0000"]`: true,
		`{"a":"\u0000"}`:                false,
		`{"a":"x\u0000y"}`:              false,
		`"\ud83d"`:                      false, // high surrogate alone
		`"\ud83dx"`:                     false,
		`"\ud83d\u0041"`:                false, // followed by no low surrogate
		`"\ude00"`:                      false, // low surrogate alone
		`{"a":`:                         false, // not JSON
		``:                              false,
	} {
		if got := Embeddable([]byte(text)); got != want {
			t.Errorf("Embeddable(%s) = %v, want %v", text, got, want)
		}
	}
}
