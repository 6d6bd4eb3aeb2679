package values

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrail/pgtrail/test/pgtest"
)

var storableCases = []struct {
	name, in, want string // want "": in, unchanged
	why            Reason // the reason counted, n times
	n              int
}{
	{"plain object", `{"id":1,"name":"Ann","ok":true,"n":null,"x":[1.5,-2e3,"s"]}`, "", 0, 0},
	{"escapes jsonb takes", `{"a":"\n\"\\\u00e9\ud83d\ude00\/"}`, "", 0, 0},
	{"escaped backslash before u0000", `["\\u0000"]`, "", 0, 0},
	{"number too large", `{"a":1e1000000}`, `{"a":"1e1000000"}`, NumberOutOfRange, 1},
	{"largest weight", `[1e131071,-9.99E+131071,0.001e131074]`, "", 0, 0},
	{"weight past it", `[1e131072]`, `["1e131072"]`, NumberOutOfRange, 1},
	{"weight of a fraction past it", `[0.001e131075]`, `["0.001e131075"]`, NumberOutOfRange, 1},
	{"smallest scale", `[1e-16383,0.1e-16382,-0e-16383]`, "", 0, 0},
	{"scale past it", `[1e-16384]`, `["1e-16384"]`, NumberOutOfRange, 1},
	{"trailing zeros count in the scale", `[1.50e-16382]`, `["1.50e-16382"]`, NumberOutOfRange, 1},
	{"zero with a large exponent", `[0e1073741822,0.000e131075]`, "", 0, 0},
	{"any exponent from INT_MAX/2", `[0e1073741823]`, `["0e1073741823"]`, NumberOutOfRange, 1},
	{"exponent past int64", `[1e-99999999999999999999999]`, `["1e-99999999999999999999999"]`, NumberOutOfRange, 1},
	{"too many fraction digits", "[0." + strings.Repeat("1", 16384) + "]", `["0.` + strings.Repeat("1", 16384) + `"]`, NumberOutOfRange, 1},
	{"most fraction digits", "[0." + strings.Repeat("1", 16383) + "]", "", 0, 0},
	{"too many integer digits", "[" + strings.Repeat("9", 131073) + "]", `["` + strings.Repeat("9", 131073) + `"]`, NumberOutOfRange, 1},
	{"most integer digits", "[" + strings.Repeat("9", 131072) + "]", "", 0, 0},
	{"NUL escape", `{"a":"x\u0000y"}`, `{"a":"x\\u0000y"}`, NULEscape, 1},
	{"NUL escape in a key", `{"\u0000":1}`, `{"\\u0000":1}`, NULEscape, 1},
	{"lone high surrogate", `["\ud800"]`, `["\\ud800"]`, LoneSurrogate, 1},
	{"high surrogate before another escape", `["\uD800\u0041"]`, `["\\uD800\u0041"]`, LoneSurrogate, 1},
	{"lone low surrogate", `["a\udc00b"]`, `["a\\udc00b"]`, LoneSurrogate, 1},
	{"invalid UTF-8", "[\"a\xffb\"]", `["a\ufffdb"]`, InvalidUTF8, 1},
	{"UTF-8 of a surrogate", "[\"\xed\xa0\x80\"]", `["\ufffd\ufffd\ufffd"]`, InvalidUTF8, 3},
	{"past U+10FFFF", "[\"\xf4\x90\x80\x80\"]", `["\ufffd\ufffd\ufffd\ufffd"]`, InvalidUTF8, 4},
	{"overlong", "[\"\xc0\xaf\"]", `["\ufffd\ufffd"]`, InvalidUTF8, 2},
	{"valid multibyte after 8 ASCII bytes", `["abcdefghé€😀"]`, "", 0, 0},
}

func TestStorableRewritesOnlyWhatJSONBRefuses(t *testing.T) {
	for _, c := range storableCases {
		t.Run(c.name, func(t *testing.T) {
			want := c.want
			if want == "" {
				want = c.in
			}
			got, n := Storable([]byte(c.in), MaxJSONBString)
			if string(got) != want {
				t.Fatalf("Storable(%.80q) = %.80q, want %.80q", c.in, got, want)
			}
			var wantN Rewrites
			wantN[c.why] = c.n
			if n != wantN {
				t.Fatalf("Storable(%.80q) counted %v, want %v", c.in, n, wantN)
			}
			if !json.Valid(got) {
				t.Fatalf("not JSON: %.80q", got)
			}
		})
	}
}

func TestStorableReturnsItsInputWhenNothingIsRewritten(t *testing.T) {
	in := []byte(`{"id":1,"name":"Ann"}`)
	got, _ := Storable(in, MaxJSONBString)
	if &got[0] != &in[0] {
		t.Fatal("Storable copied text it did not change")
	}
	if n := testing.AllocsPerRun(100, func() { Storable(in, MaxJSONBString) }); n != 0 {
		t.Fatalf("%v allocations, want 0", n)
	}
}

// A string over the limit becomes a marker with its size and the SHA-256 of
// its text as JSON decodes it; rewrites inside it are not counted.
func TestStorableReplacesAStringOverTheLimitByAMarker(t *testing.T) {
	value := "a\"b\n\u00e9\U0001F600\x00" + strings.Repeat("x", 40) // 50 bytes of UTF-8
	sum := sha256.Sum256([]byte(value))
	in, _ := json.Marshal(map[string]any{"big": value, "small": "\x00", "n": 1e300})
	got, n := Storable(in, len(value)-1)
	want := fmt.Sprintf(`{"big":{"pgtrail_replaced":"string_too_long","bytes":%d,"sha256":"%s"},"n":1e+300,"small":"\\u0000"}`,
		len(value), hex.EncodeToString(sum[:]))
	if string(got) != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	if n != (Rewrites{StringTooLong: 1, NULEscape: 1}) {
		t.Fatalf("counted %v", n)
	}
	if got, n := Storable(in, len(value)); !bytes.Equal(got, bytes.ReplaceAll(in, []byte(`\u0000`), []byte(`\\u0000`))) || n != (Rewrites{NULEscape: 2}) {
		t.Fatalf("a string of exactly the limit: %s, %v; want it kept, both NULs rewritten", got, n)
	}
}

// The real limit: a string of MaxJSONBString bytes is left alone, one byte
// more is a marker.
func TestStorableStringLimitIsJSONBs(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 512 MB: skipped with -short")
	}
	text := make([]byte, MaxJSONBString+3)
	text[0] = '"'
	for i := 1; i < len(text)-1; i++ {
		text[i] = 'x'
	}
	text[len(text)-1] = '"'
	if got, n := Storable(text, MaxJSONBString); n != (Rewrites{StringTooLong: 1}) || !bytes.HasPrefix(got, []byte(`{"pgtrail_replaced":"string_too_long","bytes":268435456,"sha256":"`)) {
		t.Fatalf("a string one byte over the limit: %.100s, %v; want a marker", got, n)
	}
	at := text[1 : len(text)-1][:MaxJSONBString]
	fits := append(append([]byte{'"'}, at...), '"')
	if _, n := Storable(fits, MaxJSONBString); n.Any() {
		t.Fatalf("a string of exactly %d bytes was rewritten: %v", MaxJSONBString, n)
	}
}

// TestStorableAgreesWithPostgreSQL sends every case to a real server:
// what Storable leaves alone jsonb takes, what it rewrites jsonb refuses,
// and what it rewrites to jsonb takes. And jsonb's own string limit is
// MaxJSONBString.
func TestStorableAgreesWithPostgreSQL(t *testing.T) {
	c, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	jsonb := func(text []byte) error {
		var ok bool
		return conn.QueryRow(ctx, "SELECT $1::text::jsonb IS NOT NULL", string(text)).Scan(&ok)
	}
	for _, sc := range storableCases {
		out, n := Storable([]byte(sc.in), MaxJSONBString)
		err := jsonb([]byte(sc.in))
		if (err == nil) == n.Any() {
			t.Errorf("%s: jsonb says %v, Storable rewrote %v", sc.name, err, n)
		}
		if err := jsonb(out); err != nil {
			t.Errorf("%s: jsonb refuses what Storable made of it (%.80q): %v", sc.name, out, err)
		}
	}

	if testing.Short() {
		t.Skip("strings of 256 MB in the server: skipped with -short")
	}
	limit := func(n int) error {
		var ok bool
		return conn.QueryRow(ctx, `SELECT ('"' || repeat('x', $1) || '"')::jsonb IS NOT NULL`, n).Scan(&ok)
	}
	var pgErr *pgconn.PgError
	if err := limit(MaxJSONBString + 1); !errors.As(err, &pgErr) || !strings.Contains(pgErr.Message, "string too long") {
		t.Fatalf("a jsonb string of %d bytes: %v, want string too long", MaxJSONBString+1, err)
	}
	// At the limit the string itself passes, and only its container (the
	// array wrapping a scalar) is too large.
	if err := limit(MaxJSONBString); !errors.As(err, &pgErr) || strings.Contains(pgErr.Message, "string too long") {
		t.Fatalf("a jsonb string of %d bytes: %v, want the container's limit only", MaxJSONBString, err)
	}
}

// BenchmarkStorable scans the images of a typical row, as the pipeline does
// for every change: the cost on the hot path when nothing is rewritten.
func BenchmarkStorable(b *testing.B) {
	row := []byte(`{"id":1234567890123,"account_id":42,"quantity":3,"sku":"SKU-2024-000123",` +
		`"email":"alice.smith@example.com","note":"Deliver after 5pm; ring twice.\nThanks!","price":1234.50,` +
		`"total":3703.5000,"created_at":"2024-01-02T03:04:05.123456Z","updated_at":"2024-03-04T05:06:07.89Z",` +
		`"active":true,"metadata":{"tags":["a","b"],"source":"web","ip":"10.0.0.1","retries":0}}`)
	b.SetBytes(int64(len(row)))
	b.ReportAllocs()
	for b.Loop() {
		if _, n := Storable(row, MaxJSONBString); n.Any() {
			b.Fatal(n)
		}
	}
}

// FuzzStorable checks the fast look against the scanner: what the fast look
// passes the scanner leaves alone, and what Storable returns is JSON that it
// would leave alone.
func FuzzStorable(f *testing.F) {
	for _, c := range storableCases {
		f.Add([]byte(c.in))
	}
	f.Add([]byte(`["x1e999999y", "1.5e-99999", 3e5, "é1E9999999"]`))
	f.Fuzz(func(t *testing.T, in []byte) {
		if !json.Valid(in) {
			return
		}
		full := scanner{text: in, maxString: MaxJSONBString}
		full.scan()
		if storable(in, MaxJSONBString) && full.n.Any() {
			t.Fatalf("fast look passed %q, the scanner rewrites %v", in, full.n)
		}
		out, _ := Storable(in, MaxJSONBString)
		if !json.Valid(out) {
			t.Fatalf("Storable(%q) = %q: not JSON", in, out)
		}
		if again, n := Storable(out, MaxJSONBString); n.Any() || !bytes.Equal(again, out) {
			t.Fatalf("Storable(%q) = %q, which it rewrites again: %v", in, out, n)
		}
	})
}

// TestStringOverTheLimitIsNotCopied: replacing a long string by its marker
// allocates the rest of the text and the marker, not the string again.
func TestStringOverTheLimitIsNotCopied(t *testing.T) {
	const size = 32 << 20
	text := []byte(`{"id":1,"body":"` + strings.Repeat("x", size) + `"}`)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	out, n := Storable(text, 1<<20)
	runtime.ReadMemStats(&after)
	if n[StringTooLong] != 1 || !bytes.HasPrefix(out, []byte(`{"id":1,"body":{"pgtrail_replaced":"string_too_long","bytes":33554432,`)) {
		t.Fatalf("Storable = %s, %v", out, n)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<10 {
		t.Errorf("replacing a %d-byte string allocated %d bytes, want at most 64 KiB", size, alloc)
	}
}
