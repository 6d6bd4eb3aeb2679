package publish

import (
	"encoding/base64"
	"encoding/json"
	"math/big"
	"testing"
)

// The encodings below are Debezium's, as recorded by the interop bed from
// the real connector (test/interop) for the same PostgreSQL values.

func TestDecimalIsJavaBigIntegerBytes(t *testing.T) {
	for _, tc := range []struct {
		unscaled string
		want     string // base64
	}{
		{"1234", "BNI="}, {"1230", "BM4="}, {"-5", "+w=="}, {"15", "Dw=="}, {"0", "AA=="},
		{"-1", "/w=="}, {"128", "AIA="}, {"-128", "gA=="}, {"-129", "/38="},
		{"12345678901234567890123", "Ap1Ctk52cUJEyw=="}, {"9999999999", "AlQL4/8="},
	} {
		n, _ := new(big.Int).SetString(tc.unscaled, 10)
		if got := base64.StdEncoding.EncodeToString(twosComplement(n)); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.unscaled, got, tc.want)
		}
	}
}

func TestNumericPreciseAndString(t *testing.T) {
	precise, str := &Encoder{}, &Encoder{opts: Options{DecimalString: true}}
	for _, tc := range []struct {
		raw    string
		scale  int
		want   string
		string string
	}{
		{`12.30`, 2, `"BM4="`, `"12.30"`},
		{`1.5`, -1, `{"scale":1,"value":"Dw=="}`, `"1.5"`},
		{`"12345678901234567890.123"`, -1, `{"scale":3,"value":"Ap1Ctk52cUJEyw=="}`, `"12345678901234567890.123"`},
		{`-0.05`, 2, `"+w=="`, `"-0.05"`},
		{`"NaN"`, -1, `null`, `"NaN"`},
	} {
		got, err := precise.decimal(nil, json.RawMessage(tc.raw), tc.scale)
		if err != nil || string(got) != tc.want {
			t.Errorf("precise %s: %s %v, want %s", tc.raw, got, err, tc.want)
		}
		got, _ = str.decimal(nil, json.RawMessage(tc.raw), tc.scale)
		if string(got) != tc.string {
			t.Errorf("string %s: %s, want %s", tc.raw, got, tc.string)
		}
	}
}

func TestFloatsAreWrittenAsJavaWritesThem(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		bits int
		want string
	}{
		{"1.5", 64, "1.5"}, {"5", 64, "5.0"}, {"1e+20", 64, "1.0E20"}, {"100000000000000000000", 64, "1.0E20"},
		{"1.10000002", 32, "1.1"}, {"-2.5", 32, "-2.5"}, {"0.0001", 64, "1.0E-4"}, {`"NaN"`, 64, `"NaN"`},
	} {
		if got := string(appendFloat(nil, json.RawMessage(tc.raw), tc.bits)); got != tc.want {
			t.Errorf("%s (float%d): %s, want %s", tc.raw, tc.bits, got, tc.want)
		}
	}
}

func TestIntervalIsMicroDurationWithAverageMonths(t *testing.T) {
	for _, tc := range []struct {
		iso  string
		want int64
	}{
		{"P1DT2H3M4.5S", 93784500000}, {"P-1M", -2629800000000}, {"PT0S", 0}, {"P1Y", 31557600000000},
	} {
		if got, ok := durationMicros(tc.iso); !ok || got != tc.want {
			t.Errorf("%s: %d %v, want %d", tc.iso, got, ok, tc.want)
		}
	}
}

func TestZonedTimestampHasTheColumnsFractionalDigits(t *testing.T) {
	for _, tc := range []struct {
		in     string
		typmod int32
		want   string
	}{
		{"2024-01-02T01:04:05.5", -1, "2024-01-02T01:04:05.500000"},
		{"1999-12-31T23:59:59", -1, "1999-12-31T23:59:59.000000"},
		{"1999-12-31T23:59:59.123", 3, "1999-12-31T23:59:59.123"},
		{"1999-12-31T23:59:59", 0, "1999-12-31T23:59:59"},
	} {
		if got := padFraction(tc.in, tc.typmod); got != tc.want {
			t.Errorf("%s (%d): %s, want %s", tc.in, tc.typmod, got, tc.want)
		}
	}
}

func TestNotNullDefaultsFillKeyOnlyImages(t *testing.T) {
	for _, tc := range []struct {
		def  *string
		want string
	}{
		{nil, "null"}, {ptr("false"), "false"}, {ptr("42"), "42"}, {ptr("-1.5"), "-1.5"},
		{ptr("'it''s'::text"), `"it's"`}, {ptr("now()"), "null"}, {ptr("nextval('s'::regclass)"), "null"},
	} {
		if got := string(defaultJSON(tc.def)); got != tc.want {
			t.Errorf("%v: %s, want %s", tc.def, got, tc.want)
		}
	}
}

func ptr(s string) *string { return &s }

// Debezium's Json is the value's JSON text, a JSON string scalar included;
// only a json value pgtrail stored as a string of its text (an escape jsonb
// refuses) is published as that text.
func TestJSONValuesAreTheirText(t *testing.T) {
	e := &Encoder{}
	for _, tc := range []struct {
		oid       uint32
		raw, want string
	}{
		{3802, `{"a":[1,2]}`, `"{\"a\":[1,2]}"`},
		{3802, `"hello"`, `"\"hello\""`},
		{3802, `"42"`, `"\"42\""`},
		{114, `"hello"`, `"\"hello\""`},
		{114, `"{\"a\":\"\\u0000\"}"`, `"{\"a\":\"\\u0000\"}"`},
		{114, `"\"\\u0000\""`, `"\"\\u0000\""`},
		{114, `12.5`, `"12.5"`},
	} {
		got, err := e.value(nil, tc.oid, -1, 0, json.RawMessage(tc.raw))
		if err != nil || string(got) != tc.want {
			t.Errorf("oid %d %s: %s (%v), want %s", tc.oid, tc.raw, got, err, tc.want)
		}
	}
}
