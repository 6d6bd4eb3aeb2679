package pglogrepl

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgtrail/pgtrail/core/values"
)

// Type OIDs the fake pg_type below knows; pgtype knows none of them.
const (
	moodOID         = 90001 // CREATE TYPE mood AS ENUM (...)
	moodArrayOID    = 90002
	posintOID       = 90003 // CREATE DOMAIN posint AS int4
	posintArrayOID  = 90004
	priceOID        = 90005 // CREATE DOMAIN price AS numeric
	intListOID      = 90006 // CREATE DOMAIN int_list AS int4[]
	pairOID         = 90007 // CREATE TYPE pair AS (n int, s text)
	hstoreOID       = 90008 // an extension's base type
	smallPosintOID  = 90009 // a domain over posint
	loopOID         = 90010 // a broken catalog: a domain over itself
	brokenOID       = 90011 // the look-up fails
	pairArrayOID    = 90012
	boxDomainOID    = 90013 // a domain over box
	boxDomArrayOID  = 90014
	intListArrayOID = 90015
	int2vectorOID   = 22 // pgtype does not know it; pg_type calls it an array
	fakeMissingBase = 90099
)

var fakeCatalog = map[uint32]TypeInfo{
	moodOID:         {Kind: 'e'},
	moodArrayOID:    {Kind: 'b', Base: moodOID, IsArray: true},
	posintOID:       {Kind: 'd', Base: pgtype.Int4OID},
	posintArrayOID:  {Kind: 'b', Base: posintOID, IsArray: true},
	priceOID:        {Kind: 'd', Base: pgtype.NumericOID},
	intListOID:      {Kind: 'd', Base: pgtype.Int4ArrayOID},
	pairOID:         {Kind: 'c'},
	hstoreOID:       {Kind: 'b'},
	smallPosintOID:  {Kind: 'd', Base: posintOID},
	loopOID:         {Kind: 'd', Base: loopOID},
	pairArrayOID:    {Kind: 'b', Base: pairOID, IsArray: true},
	boxDomainOID:    {Kind: 'd', Base: pgtype.BoxOID},
	boxDomArrayOID:  {Kind: 'b', Base: boxDomainOID, IsArray: true},
	int2vectorOID:   {Kind: 'b', Base: pgtype.Int2OID, IsArray: true},
	intListArrayOID: {Kind: 'b', Base: intListOID, IsArray: true},
	90098:           {Kind: 'b', IsArray: true},
	// Built-in arrays that pgtype does not register.
	pgtype.TimetzArrayOID: {Kind: 'b', Base: pgtype.TimetzOID, IsArray: true},
	791:                   {Kind: 'b', Base: moneyOID, IsArray: true},
}

// fakeResolver answers from fakeCatalog and counts the look-ups.
type fakeResolver struct {
	mu    sync.Mutex
	calls map[uint32]int
}

func (f *fakeResolver) resolve(_ context.Context, oid uint32) (TypeInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.calls == nil {
		f.calls = map[uint32]int{}
	}
	f.calls[oid]++
	if info, ok := fakeCatalog[oid]; ok {
		return info, nil
	}
	return TypeInfo{}, errors.New("connection refused")
}

type valueCase struct {
	name string
	oid  uint32
	text string
	want string
}

var valueCases = []valueCase{
	// Integers: the text is the JSON number.
	{"int2 min", pgtype.Int2OID, "-32768", `-32768`},
	{"int4 zero", pgtype.Int4OID, "0", `0`},
	{"int8 min", pgtype.Int8OID, "-9223372036854775808", `-9223372036854775808`},
	{"int8 max", pgtype.Int8OID, "9223372036854775807", `9223372036854775807`},
	{"oid max", pgtype.OIDOID, "4294967295", `4294967295`},

	// Floats: numbers as float8out prints them, special values as strings.
	{"float8", pgtype.Float8OID, "1.5", `1.5`},
	{"float8 exponent", pgtype.Float8OID, "1e+20", `1e+20`},
	{"float8 small", pgtype.Float8OID, "1.5e-07", `1.5e-07`},
	{"float8 negative zero", pgtype.Float8OID, "-0", `-0`},
	{"float8 NaN", pgtype.Float8OID, "NaN", `"NaN"`},
	{"float8 Infinity", pgtype.Float8OID, "Infinity", `"Infinity"`},
	{"float8 -Infinity", pgtype.Float8OID, "-Infinity", `"-Infinity"`},
	{"float4", pgtype.Float4OID, "0.1", `0.1`},

	// numeric: a number when float64 keeps it, else a string of its digits.
	{"numeric scale kept", pgtype.NumericOID, "1.50", `1.50`},
	{"numeric negative", pgtype.NumericOID, "-0.005", `-0.005`},
	{"numeric too precise", pgtype.NumericOID, "12345678901234567890.123456789", `"12345678901234567890.123456789"`},
	{"numeric 2^53+1", pgtype.NumericOID, "9007199254740993", `"9007199254740993"`},
	{"numeric NaN", pgtype.NumericOID, "NaN", `"NaN"`},
	{"numeric Infinity", pgtype.NumericOID, "Infinity", `"Infinity"`},
	{"numeric -Infinity", pgtype.NumericOID, "-Infinity", `"-Infinity"`},

	// money, as lc_monetary=C prints it.
	{"money", moneyOID, "$1,234.56", `1234.56`},
	{"money negative", moneyOID, "-$1.00", `-1.00`},
	{"money zero", moneyOID, "$0.00", `0.00`},
	{"money min", moneyOID, "-$92,233,720,368,547,758.08", `"-92233720368547758.08"`},

	{"bool true", pgtype.BoolOID, "t", `true`},
	{"bool false", pgtype.BoolOID, "f", `false`},

	// Strings.
	{"text empty", pgtype.TextOID, "", `""`},
	{"text unicode", pgtype.TextOID, "héllo 世界 🎉", `"héllo 世界 🎉"`},
	{"text escapes", pgtype.TextOID, "tab\there\nnew \"q\" \\ \x01 \u2028", `"tab\there\nnew \"q\" \\ \u0001 \u2028"`},
	{"text no HTML escaping", pgtype.TextOID, "<b>&</b>", `"<b>&</b>"`},
	{"varchar", pgtype.VarcharOID, "x", `"x"`},
	{"bpchar padded", pgtype.BPCharOID, "x  ", `"x  "`},
	{"name", pgtype.NameOID, "pg_class", `"pg_class"`},
	{"char", pgtype.QCharOID, "x", `"x"`},
	{"uuid", pgtype.UUIDOID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`},
	{"inet", pgtype.InetOID, "192.168.0.1/24", `"192.168.0.1/24"`},
	{"cidr", pgtype.CIDROID, "10.0.0.0/8", `"10.0.0.0/8"`},
	{"macaddr", pgtype.MacaddrOID, "08:00:2b:01:02:03", `"08:00:2b:01:02:03"`},
	{"interval", pgtype.IntervalOID, "P1DT2H", `"P1DT2H"`},
	{"int4range", pgtype.Int4rangeOID, "[1,3)", `"[1,3)"`},
	{"tsrange", pgtype.TsrangeOID, `["2024-01-01 00:00:00","2024-01-02 00:00:00")`, `"[\"2024-01-01 00:00:00\",\"2024-01-02 00:00:00\")"`},
	{"int4multirange", pgtype.Int4multirangeOID, "{[1,3),[5,7)}", `"{[1,3),[5,7)}"`},
	{"xml", pgtype.XMLOID, "<a>1</a>", `"<a>1</a>"`},
	{"bit", pgtype.BitOID, "101", `"101"`},
	{"varbit", pgtype.VarbitOID, "10", `"10"`},
	{"tsvector", pgtype.TSVectorOID, "'a':1 'b':2", `"'a':1 'b':2"`},
	{"point", pgtype.PointOID, "(1,2)", `"(1,2)"`},
	{"box", pgtype.BoxOID, "(1,1),(0,0)", `"(1,1),(0,0)"`},
	{"circle", pgtype.CircleOID, "<(1,2),3>", `"<(1,2),3>"`},
	{"unknown", pgtype.UnknownOID, "?", `"?"`},
	{"enum", moodOID, "happy", `"happy"`},
	{"composite", pairOID, `(1,"a b")`, `"(1,\"a b\")"`},
	{"extension type", hstoreOID, `"a"=>"1"`, `"\"a\"=>\"1\""`},

	// json and jsonb: the value itself.
	{"jsonb object", pgtype.JSONBOID, `{"a": [1, "x,y"], "b": null}`, `{"a": [1, "x,y"], "b": null}`},
	{"jsonb array", pgtype.JSONBOID, `[1, 2]`, `[1, 2]`},
	{"jsonb string", pgtype.JSONBOID, `"s"`, `"s"`},
	{"jsonb number", pgtype.JSONBOID, `3.50`, `3.50`},
	{"jsonb null", pgtype.JSONBOID, `null`, `null`},
	// json that jsonb cannot hold: its text, as a string.
	{"json with \\u0000", pgtype.JSONOID, `{"a": "\u0000"}`, `"{\"a\": \"\\u0000\"}"`},
	{"json with a lone surrogate", pgtype.JSONOID, `["\ud83d"]`, `"[\"\\ud83d\"]"`},
	{"json as written", pgtype.JSONOID, "{\n  \"a\" : 1\n}", "{\n  \"a\" : 1\n}"},
	{"json invalid", pgtype.JSONOID, `{bad`, `"{bad"`},

	// Dates and times.
	{"timestamptz", pgtype.TimestamptzOID, "2024-01-02 03:04:05.123456+00", `"2024-01-02T03:04:05.123456Z"`},
	{"timestamptz whole second", pgtype.TimestamptzOID, "2024-01-02 03:04:05+00", `"2024-01-02T03:04:05Z"`},
	{"timestamptz short fraction", pgtype.TimestamptzOID, "2024-01-02 03:04:05.12+00", `"2024-01-02T03:04:05.12Z"`},
	{"timestamptz trailing zeros", pgtype.TimestamptzOID, "2024-01-02 03:04:05.120000+00", `"2024-01-02T03:04:05.12Z"`},
	{"timestamptz offset", pgtype.TimestamptzOID, "2024-01-02 03:04:05.12+05:30", `"2024-01-01T21:34:05.12Z"`},
	{"timestamptz offset seconds", pgtype.TimestamptzOID, "1800-01-01 00:19:32+00:19:32", `"1800-01-01T00:00:00Z"`},
	{"timestamptz negative offset", pgtype.TimestamptzOID, "2023-12-31 22:00:00-02", `"2024-01-01T00:00:00Z"`},
	{"timestamptz BC", pgtype.TimestamptzOID, "0044-03-15 12:00:00+00 BC", `"-0043-03-15T12:00:00Z"`},
	{"timestamptz BC offset", pgtype.TimestamptzOID, "0100-01-01 00:19:32+00:19:32 BC", `"-0099-01-01T00:00:00Z"`},
	{"timestamptz far future", pgtype.TimestamptzOID, "294276-12-31 23:59:59.999999+00", `"294276-12-31T23:59:59.999999Z"`},
	{"timestamptz infinity", pgtype.TimestamptzOID, "infinity", `"infinity"`},
	{"timestamptz -infinity", pgtype.TimestamptzOID, "-infinity", `"-infinity"`},
	{"timestamp", pgtype.TimestampOID, "2024-01-02 03:04:05.5", `"2024-01-02T03:04:05.5"`},
	{"timestamp whole second", pgtype.TimestampOID, "2024-01-02 03:04:05", `"2024-01-02T03:04:05"`},
	{"timestamp BC", pgtype.TimestampOID, "0044-03-15 12:00:00.25 BC", `"-0043-03-15T12:00:00.25"`},
	{"timestamp infinity", pgtype.TimestampOID, "infinity", `"infinity"`},
	{"date", pgtype.DateOID, "2024-02-29", `"2024-02-29"`},
	{"date BC", pgtype.DateOID, "0044-03-15 BC", `"-0043-03-15"`},
	{"date 1 BC", pgtype.DateOID, "0001-01-01 BC", `"0000-01-01"`},
	{"date -infinity", pgtype.DateOID, "-infinity", `"-infinity"`},
	{"time", pgtype.TimeOID, "03:04:05.5", `"03:04:05.5"`},
	{"time midnight", pgtype.TimeOID, "00:00:00", `"00:00:00"`},
	{"time 24:00", pgtype.TimeOID, "24:00:00", `"24:00:00"`},
	{"timetz utc", pgtype.TimetzOID, "03:04:05+00", `"03:04:05Z"`},
	{"timetz offset", pgtype.TimetzOID, "03:04:05.5+05:30", `"21:34:05.5Z"`},
	{"timetz wraps", pgtype.TimetzOID, "23:00:00-02", `"01:00:00Z"`},
	{"timetz offset seconds", pgtype.TimetzOID, "03:04:05-00:00:15", `"03:04:20Z"`},

	// bytea: base64 of the bytes.
	{"bytea hex", pgtype.ByteaOID, `\x01ff00`, `"Af8A"`},
	{"bytea empty", pgtype.ByteaOID, `\x`, `""`},
	{"bytea upper hex", pgtype.ByteaOID, `\x68656C6C6F`, `"aGVsbG8="`},
	{"bytea escape format", pgtype.ByteaOID, `a\\b\001\377`, `"YVxiAf8="`},

	// Arrays: JSON arrays of the element mapping.
	{"int4[]", pgtype.Int4ArrayOID, "{1,2,NULL}", `[1,2,null]`},
	{"int4[] empty", pgtype.Int4ArrayOID, "{}", `[]`},
	{"int4[] 2-D", pgtype.Int4ArrayOID, "{{1,2},{3,NULL}}", `[[1,2],[3,null]]`},
	{"int4[] 3-D", pgtype.Int4ArrayOID, "{{{1},{2}},{{3},{4}}}", `[[[1],[2]],[[3],[4]]]`},
	{"int4[] bounds", pgtype.Int4ArrayOID, "[0:1]={1,2}", `[1,2]`},
	{"int4[] 2-D bounds", pgtype.Int4ArrayOID, "[0:1][1:1]={{1},{2}}", `[[1],[2]]`},
	{"text[] quoting", pgtype.TextArrayOID, `{"a,b","q\"u","b\\s","","NULL",NULL," sp ","{x}",plain}`,
		`["a,b","q\"u","b\\s","","NULL",null," sp ","{x}","plain"]`},
	{"text[] control and unicode", pgtype.TextArrayOID, "{\"tab\there\",\"é\\\"\\\\\\\\\"}", `["tab\there","é\"\\\\"]`},
	{"text[] 2-D", pgtype.TextArrayOID, `{{"x y",z},{"}",NULL}}`, `[["x y","z"],["}",null]]`},
	{"varchar[]", pgtype.VarcharArrayOID, "{a,b}", `["a","b"]`},
	{"bool[]", pgtype.BoolArrayOID, "{t,f,NULL}", `[true,false,null]`},
	{"numeric[]", pgtype.NumericArrayOID, "{1.50,NULL,NaN,12345678901234567890.123456789}", `[1.50,null,"NaN","12345678901234567890.123456789"]`},
	{"float8[]", pgtype.Float8ArrayOID, "{1.5,Infinity}", `[1.5,"Infinity"]`},
	{"jsonb[]", pgtype.JSONBArrayOID, `{"{\"a\": [1, \"x,y\"]}","null","\"s\"",NULL}`, `[{"a": [1, "x,y"]},null,"s",null]`},
	{"timestamptz[]", pgtype.TimestamptzArrayOID, `{"2024-01-01 01:00:00+00","2024-01-01 01:00:00+01",infinity}`, `["2024-01-01T01:00:00Z","2024-01-01T00:00:00Z","infinity"]`},
	{"date[]", pgtype.DateArrayOID, `{2024-01-01,"0044-03-15 BC"}`, `["2024-01-01","-0043-03-15"]`},
	{"money[]", 791, `{"$1,234.56",NULL}`, `[1234.56,null]`},
	{"timetz[]", pgtype.TimetzArrayOID, `{23:00:00-02}`, `["01:00:00Z"]`},
	{"bytea[]", pgtype.ByteaArrayOID, `{"\\x01ff","\\x"}`, `["Af8=",""]`},
	{"uuid[]", pgtype.UUIDArrayOID, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", `["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]`},
	{"box[]", pgtype.BoxArrayOID, "{(1,1),(0,0);(2,2),(1,1)}", `["(1,1),(0,0)","(2,2),(1,1)"]`},
	{"int4range[]", pgtype.Int4rangeArrayOID, `{"[1,3)",empty}`, `["[1,3)","empty"]`},
	{"enum[]", moodArrayOID, "{happy,sad,NULL}", `["happy","sad",null]`},
	{"domain[]", posintArrayOID, "{1,2}", `[1,2]`},
	{"composite[]", pairArrayOID, `{"(1,\"a b\")"}`, `["(1,\"a b\")"]`},
	{"box domain[]", boxDomArrayOID, "{(1,1),(0,0);(2,2),(1,1)}", `["(1,1),(0,0)","(2,2),(1,1)"]`},
	{"array of domain over array", intListArrayOID, `{"{1,2}",NULL,"{}"}`, `[[1,2],null,[]]`},
	{"int2vector is no array literal", int2vectorOID, "1 2", `"1 2"`},

	// Domains map as their base type.
	{"domain over int4", posintOID, "5", `5`},
	{"domain over numeric", priceOID, "1.50", `1.50`},
	{"domain over domain", smallPosintOID, "7", `7`},
	{"domain over int4[]", intListOID, "{1,NULL}", `[1,null]`},
}

func TestAppendMapsEveryTypeFamily(t *testing.T) {
	types := NewTypes((&fakeResolver{}).resolve)
	ctx := context.Background()
	for _, tc := range valueCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := types.Append(ctx, []byte(`{"c":`), tc.oid, []byte(tc.text))
			if err != nil {
				t.Fatalf("Append(%d, %q): %v", tc.oid, tc.text, err)
			}
			if want := `{"c":` + tc.want; string(got) != want {
				t.Errorf("Append(%d, %q) = %s, want %s", tc.oid, tc.text, got[5:], tc.want)
			}
			if !json.Valid(append(got, '}')) {
				t.Errorf("Append(%d, %q) = %s: not JSON", tc.oid, tc.text, got[5:])
			}
		})
	}
}

// TestTimestampTextCopiedAgreesWithValues checks that timestamptz text in
// UTC, which is copied, maps as package values formats the same instant, and
// as the same instant written with an offset, which is computed.
func TestTimestampTextCopiedAgreesWithValues(t *testing.T) {
	types := NewTypes(nil)
	ctx := context.Background()
	ist := time.FixedZone("", 5*3600+1800)
	r := rand.New(rand.NewPCG(5, 6))
	for range 5000 {
		ts := time.UnixMicro(r.Int64N(400*365*86400*1e6) - 200*365*86400*1e6).UTC()
		want := string(values.AppendTimestamp(nil, ts, true))
		for _, text := range []string{
			ts.Format("2006-01-02 15:04:05.999999") + "+00",
			ts.In(ist).Format("2006-01-02 15:04:05.999999") + "+05:30",
		} {
			got, err := types.Append(ctx, nil, pgtype.TimestamptzOID, []byte(text))
			if err != nil || string(got) != want {
				t.Fatalf("Append(timestamptz, %q) = %s, %v; want %s", text, got, err, want)
			}
		}
		want = string(values.AppendTimestamp(nil, ts, false))
		text := ts.Format("2006-01-02 15:04:05.999999")
		if got, err := types.Append(ctx, nil, pgtype.TimestampOID, []byte(text)); err != nil || string(got) != want {
			t.Fatalf("Append(timestamp, %q) = %s, %v; want %s", text, got, err, want)
		}
	}
}

// TestBytesMatchAppendBytes checks that bytea decoded chunk by chunk gives
// the base64 of the whole.
func TestBytesMatchAppendBytes(t *testing.T) {
	types := NewTypes(nil)
	raw := make([]byte, 5000)
	for i := range raw {
		raw[i] = byte(i * 7)
	}
	var hex strings.Builder
	hex.WriteString(`\x`)
	for _, b := range raw {
		hex.WriteString(string("0123456789abcdef"[b>>4]) + string("0123456789abcdef"[b&15]))
	}
	for _, n := range []int{0, 1, 2, 3, 767, 768, 769, 1536, 5000} {
		got, err := types.Append(context.Background(), nil, pgtype.ByteaOID, []byte(hex.String()[:2+2*n]))
		if err != nil {
			t.Fatal(err)
		}
		if want := values.AppendBytes(nil, raw[:n]); string(got) != string(want) {
			t.Errorf("bytea of %d bytes = %.40s..., want %.40s...", n, got, want)
		}
	}
}

func TestAppendRejectsMalformedText(t *testing.T) {
	types := NewTypes((&fakeResolver{}).resolve)
	for _, tc := range []struct {
		name    string
		oid     uint32
		text    string
		wantErr string
	}{
		{"int letters", pgtype.Int4OID, "abc", `invalid integer value "abc"`},
		{"int empty", pgtype.Int8OID, "", "invalid integer"},
		{"int leading zero", pgtype.Int8OID, "01", "invalid integer"},
		{"bool word", pgtype.BoolOID, "true", "invalid boolean"},
		{"float garbage", pgtype.Float8OID, "1.2.3", "invalid float"},
		{"timestamptz in Postgres style", pgtype.TimestamptzOID, "Tue Jan 02 03:04:05 2024 UTC", "DateStyle=ISO"},
		{"timestamptz without zone", pgtype.TimestamptzOID, "2024-01-02 03:04:05", "invalid timestamptz"},
		{"timestamp month 13", pgtype.TimestampOID, "2024-13-01 00:00:00", "invalid timestamp"},
		{"timestamp 7 fraction digits", pgtype.TimestampOID, "2024-01-01 00:00:00.1234567", "invalid timestamp"},
		{"date trailing text", pgtype.DateOID, "2024-01-01 AD", "invalid date"},
		{"time 25h", pgtype.TimeOID, "25:00:00", "invalid time"},
		{"time past 24:00", pgtype.TimeOID, "24:00:01", "invalid time"},
		{"bytea odd hex", pgtype.ByteaOID, `\x0`, "invalid bytea"},
		{"bytea bad escape", pgtype.ByteaOID, `a\q`, "invalid bytea"},
		{"array unterminated", pgtype.Int4ArrayOID, "{1,2", "invalid array"},
		{"array unterminated quote", pgtype.TextArrayOID, `{"a}`, "invalid array"},
		{"array trailing brace", pgtype.Int4ArrayOID, "{1,2}}", "invalid array"},
		{"array bad element", pgtype.Int4ArrayOID, "{1,x}", `invalid integer value "x"`},
		{"array bounds without value", pgtype.Int4ArrayOID, "[0:1]", "invalid array"},
		{"resolver fails", brokenOID, "x", "resolve type 90011: connection refused"},
		{"array without element type", 90098, "{}", "no element or base type"},
		{"domain loop", loopOID, "x", "nested too deeply"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := []byte(`{"a":1,"c":`)
			got, err := types.Append(context.Background(), dst, tc.oid, []byte(tc.text))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Append(%d, %q) error = %v, want one containing %q", tc.oid, tc.text, err, tc.wantErr)
			}
			if string(got) != `{"a":1,"c":` {
				t.Errorf("Append(%d, %q) left dst %q, want it unchanged", tc.oid, tc.text, got)
			}
		})
	}
}

func TestResolverAskedOnceOnlyForTypesPgtypeDoesNotKnow(t *testing.T) {
	fake := &fakeResolver{}
	types := NewTypes(fake.resolve)
	ctx := context.Background()
	for range 3 {
		for _, tc := range valueCases {
			if _, err := types.Append(ctx, nil, tc.oid, []byte(tc.text)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for oid, n := range fake.calls {
		if _, known := pgtype.NewMap().TypeForOID(oid); known {
			t.Errorf("resolver asked about %d, which pgtype knows", oid)
		}
		if n != 1 {
			t.Errorf("resolver asked about %d %d times, want once", oid, n)
		}
	}
	for _, oid := range []uint32{moodOID, moodArrayOID, posintOID, smallPosintOID, intListOID, int2vectorOID} {
		if fake.calls[oid] != 1 {
			t.Errorf("resolver asked about %d %d times, want once", oid, fake.calls[oid])
		}
	}
	// A failed look-up is not cached: the next value asks again.
	for range 2 {
		if _, err := types.Append(ctx, nil, brokenOID, []byte("x")); err == nil {
			t.Fatal("want an error")
		}
	}
	if fake.calls[brokenOID] != 2 {
		t.Errorf("resolver asked about a failing type %d times, want 2", fake.calls[brokenOID])
	}
}

func TestAppendIsSafeForConcurrentUse(t *testing.T) {
	types := NewTypes((&fakeResolver{}).resolve)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for _, tc := range valueCases {
				got, err := types.Append(context.Background(), nil, tc.oid, []byte(tc.text))
				if err != nil || string(got) != tc.want {
					t.Errorf("%s: got %s, %v", tc.name, got, err)
				}
			}
		})
	}
	wg.Wait()
}

func TestUnknownTypesAreStringsWithoutResolver(t *testing.T) {
	got, err := NewTypes(nil).Append(context.Background(), nil, posintArrayOID, []byte("{1,2}"))
	if err != nil || string(got) != `"{1,2}"` {
		t.Errorf("Append = %s, %v; want \"{1,2}\"", got, err)
	}
}

func TestHotPathDoesNotAllocate(t *testing.T) {
	if raceEnabled() {
		t.Skip("the race detector makes sync.Pool, which json.Valid uses, drop items")
	}
	types := NewTypes((&fakeResolver{}).resolve)
	ctx := context.Background()
	dst := make([]byte, 0, 4096)
	for _, tc := range []struct {
		oid  uint32
		text string
	}{
		{pgtype.Int8OID, "-9223372036854775808"},
		{pgtype.Int4OID, "42"},
		{pgtype.TextOID, "a \"quoted\" text\n with ünïcode"},
		{pgtype.VarcharOID, "alice@example.com"},
		{pgtype.BoolOID, "t"},
		{pgtype.NumericOID, "1234.50"},
		{pgtype.NumericOID, "12345678901234567890.123456789"},
		{pgtype.TimestamptzOID, "2024-01-02 03:04:05.123456+00"},
		{pgtype.TimestamptzOID, "2024-01-02 03:04:05.123456+05:30"},
		{pgtype.TimestampOID, "0044-03-15 12:00:00 BC"},
		{pgtype.DateOID, "2024-01-02"},
		{pgtype.TimetzOID, "03:04:05+02"},
		{pgtype.JSONBOID, `{"a": [1, 2, {"b": "c"}]}`},
		{pgtype.UUIDOID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
		{pgtype.Float8OID, "1.5e-07"},
		{moneyOID, "-$1,234.56"},
		{pgtype.ByteaOID, `\x0102030405`},
		{pgtype.InetOID, "10.0.0.1"},
		{moodOID, "happy"},
		{pgtype.Int4ArrayOID, "{1,2,NULL}"},
		{pgtype.TextArrayOID, `{"a,b","q\"u"}`},
	} {
		text := []byte(tc.text)
		_, _ = types.Append(ctx, dst, tc.oid, text) // resolve and cache
		n := testing.AllocsPerRun(100, func() {
			if _, err := types.Append(ctx, dst[:0], tc.oid, text); err != nil {
				t.Fatal(err)
			}
		})
		if n != 0 {
			t.Errorf("Append(%d, %q): %v allocations, want 0", tc.oid, tc.text, n)
		}
	}
}

func raceEnabled() bool {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range info.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// BenchmarkAppendRow encodes a typical 12-column row into a JSON object, as
// the decoder does for each row image.
func BenchmarkAppendRow(b *testing.B) {
	type column struct {
		name string
		oid  uint32
		text []byte
	}
	row := []column{
		{"id", pgtype.Int8OID, []byte("1234567890123")},
		{"account_id", pgtype.Int4OID, []byte("42")},
		{"quantity", pgtype.Int2OID, []byte("3")},
		{"sku", pgtype.TextOID, []byte("SKU-2024-000123")},
		{"email", pgtype.VarcharOID, []byte("alice.smith@example.com")},
		{"note", pgtype.TextOID, []byte("Deliver after 5pm; ring twice.\nThanks!")},
		{"price", pgtype.NumericOID, []byte("1234.50")},
		{"total", pgtype.NumericOID, []byte("3703.5000")},
		{"created_at", pgtype.TimestamptzOID, []byte("2024-01-02 03:04:05.123456+00")},
		{"updated_at", pgtype.TimestamptzOID, []byte("2024-03-04 05:06:07.89+00")},
		{"active", pgtype.BoolOID, []byte("t")},
		{"metadata", pgtype.JSONBOID, []byte(`{"tags": ["a", "b"], "source": "web", "ip": "10.0.0.1", "retries": 0}`)},
	}
	types := NewTypes(nil)
	ctx := context.Background()
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = append(buf[:0], '{')
		for i, c := range row {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = values.AppendString(buf, c.name)
			buf = append(buf, ':')
			var err error
			if buf, err = types.Append(ctx, buf, c.oid, c.text); err != nil {
				b.Fatal(err)
			}
		}
		buf = append(buf, '}')
	}
	b.SetBytes(int64(len(buf)))
	if !json.Valid(buf) {
		b.Fatalf("not JSON: %s", buf)
	}
}
