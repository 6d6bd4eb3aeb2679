package debezium

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/pgtrail/pgtrail/core/values"
)

// Debezium's semantic type names (Kafka Connect schema names).
const (
	connectDecimal   = "org.apache.kafka.connect.data.Decimal"
	connectTimestamp = "org.apache.kafka.connect.data.Timestamp"
	connectDate      = "org.apache.kafka.connect.data.Date"
	connectTime      = "org.apache.kafka.connect.data.Time"
	varScaleDecimal  = "io.debezium.data.VariableScaleDecimal"
	microTimestamp   = "io.debezium.time.MicroTimestamp"
	nanoTimestamp    = "io.debezium.time.NanoTimestamp"
	milliTimestamp   = "io.debezium.time.Timestamp"
	zonedTimestamp   = "io.debezium.time.ZonedTimestamp"
	debeziumDate     = "io.debezium.time.Date"
	microTime        = "io.debezium.time.MicroTime"
	nanoTime         = "io.debezium.time.NanoTime"
	milliTime        = "io.debezium.time.Time"
	zonedTime        = "io.debezium.time.ZonedTime"
	microDuration    = "io.debezium.time.MicroDuration"
	isoInterval      = "io.debezium.time.Interval"
	debeziumJSON     = "io.debezium.data.Json"
	debeziumBits     = "io.debezium.data.Bits"
)

// sourceType is the schema parameter set by the connector's
// column.propagate.source.type: the column's PostgreSQL type name.
const sourceType = "__debezium.source.column.type"

// PostgreSQL's infinite timestamps as Debezium writes them
// (PGStatement.DATE_POSITIVE_INFINITY and DATE_NEGATIVE_INFINITY).
const (
	positiveInfinity = 9223372036825200000
	negativeInfinity = -9223372036832400000
)

// PostgreSQL's infinite dates as Debezium writes them: the days of
// +5877611-06-21 and -5877611-06-22 (PostgresValueConverter's
// POSITIVE_INFINITY_LOCAL_DATE and NEGATIVE_INFINITY_LOCAL_DATE); before
// Debezium's fix dbz#2524 the positive one was -5877611-06-21. None is a
// date PostgreSQL has.
const (
	dateInfinity           = 2146033979
	dateInfinityBefore2524 = -2147472692
	dateNegativeInfinity   = -2147472691
)

// unitOf is the unit of Debezium's time and timestamp encodings, and its
// length in nanoseconds.
func unitOf(name string) (unit string, nanos int64) {
	switch name {
	case microTimestamp, microTime:
		return "µs", 1e3
	case nanoTimestamp, nanoTime:
		return "ns", 1
	}
	return "ms", 1e6
}

// appendValue appends the canonical JSON (design §6) of one column value,
// given as the connector wrote it and typed by its schema. Without a schema a
// value's type is unknown; it is kept as the connector wrote it, strings
// re-escaped canonically.
func (d *Decoder) appendValue(dst []byte, s *schema, raw json.RawMessage) ([]byte, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return dst, errors.New("empty value")
	}
	if raw[0] == 'n' {
		return append(dst, "null"...), nil
	}
	if s == nil {
		return appendUntyped(dst, raw)
	}
	if s.shaped {
		s = byShape(s, raw)
	}
	switch s.Name {
	case connectDecimal:
		if raw[0] != '"' { // JsonConverter decimal.format=NUMERIC
			return values.AppendNumeric(dst, string(raw)), nil
		}
		b, err := d.bytesValue(raw, "bytes")
		if err != nil {
			return dst, err
		}
		scale, err := strconv.Atoi(s.Parameters["scale"])
		if err != nil {
			return dst, fmt.Errorf("decimal without a scale parameter")
		}
		return values.AppendDecimal(dst, twosComplement(b), scale)
	case varScaleDecimal:
		var v struct {
			Scale *int            `json:"scale"`
			Value json.RawMessage `json:"value"`
		}
		if err := json.Unmarshal(raw, &v); err != nil || v.Scale == nil {
			return dst, fmt.Errorf("VariableScaleDecimal %s", raw)
		}
		b, err := d.bytesValue(v.Value, "bytes")
		if err != nil {
			return dst, err
		}
		return values.AppendDecimal(dst, twosComplement(b), *v.Scale)
	case microTimestamp, nanoTimestamp, milliTimestamp, connectTimestamp:
		n, err := integer(raw)
		if err != nil {
			return dst, err
		}
		switch n {
		case positiveInfinity:
			return values.AppendInfinity(dst, false), nil
		case negativeInfinity:
			return values.AppendInfinity(dst, true), nil
		}
		unit, nanos := unitOf(s.Name)
		t := time.Unix(n/(1e9/nanos), n%(1e9/nanos)*nanos).UTC()
		if !values.InTimestampRange(t) {
			return dst, fmt.Errorf("timestamp %d %s from 1970-01-01 is outside PostgreSQL's range (%s)", n, unit, values.TimestampRange)
		}
		return values.AppendTimestamp(dst, t, false), nil
	case zonedTimestamp:
		str, err := stringOf(raw)
		if err != nil {
			return dst, err
		}
		switch str {
		case "infinity", "-infinity":
			return values.AppendInfinity(dst, str[0] == '-'), nil
		}
		t, err := parseZoned(str)
		if err != nil {
			return dst, err
		}
		if !values.InTimestampRange(t) {
			return dst, fmt.Errorf("timestamp %q is outside PostgreSQL's range (%s)", str, values.TimestampRange)
		}
		return values.AppendTimestamp(dst, t, true), nil
	case debeziumDate, connectDate:
		n, err := integer(raw)
		if err != nil {
			return dst, err
		}
		switch n {
		case dateInfinity, dateInfinityBefore2524:
			return values.AppendInfinity(dst, false), nil
		case dateNegativeInfinity:
			return values.AppendInfinity(dst, true), nil
		}
		if n < values.FirstUnixDay || n >= values.EndUnixDay {
			return dst, fmt.Errorf("date %d days from 1970-01-01 is outside PostgreSQL's range (%s)", n, values.DateRange)
		}
		return values.AppendDate(dst, time.Unix(n*86400, 0).UTC()), nil
	case microTime, nanoTime, milliTime, connectTime:
		n, err := integer(raw)
		if err != nil {
			return dst, err
		}
		unit, nanos := unitOf(s.Name)
		if n < 0 || n > values.DayMicros*1000/nanos {
			return dst, fmt.Errorf("time of day %d %s is outside PostgreSQL's range (%s)", n, unit, values.TimeRange)
		}
		return values.AppendTime(dst, n*nanos/1000)
	case zonedTime:
		str, err := stringOf(raw)
		if err != nil {
			return dst, err
		}
		t, err := time.Parse("15:04:05.999999999Z07:00", str)
		if err != nil {
			return dst, err
		}
		_, off := t.Zone()
		micros := int64(t.Hour()*3600+t.Minute()*60+t.Second())*1e6 + int64(t.Nanosecond()/1000)
		return values.AppendTimeTZ(dst, micros, off)
	case microDuration:
		n, err := integer(raw)
		if err != nil {
			return dst, err
		}
		return appendDuration(dst, n), nil
	case isoInterval:
		str, err := stringOf(raw)
		if err != nil {
			return dst, err
		}
		return appendInterval(dst, str)
	case debeziumJSON:
		str, err := stringOf(raw)
		if err != nil {
			return dst, err
		}
		return values.AppendJSON(dst, []byte(str)), nil
	case debeziumBits:
		b, err := d.bytesValue(raw, "bytes")
		if err != nil {
			return dst, err
		}
		return appendBits(dst, b, s.Parameters["length"])
	}
	st := strings.ToUpper(s.Parameters[sourceType])
	switch s.Type {
	case "bytes":
		b, err := d.bytesValue(raw, "bytes")
		if err != nil {
			return dst, err
		}
		return values.AppendBytes(dst, b), nil
	case "string":
		switch st {
		case "BYTEA":
			b, err := d.bytesValue(raw, d.cfg.BinaryHandling)
			if err != nil {
				return dst, err
			}
			return values.AppendBytes(dst, b), nil
		case "NUMERIC", "DECIMAL", "MONEY": // decimal.handling.mode=string
			str, err := stringOf(raw)
			if err != nil {
				return dst, err
			}
			return values.AppendNumeric(dst, str), nil
		}
		return appendUntyped(dst, raw)
	case "boolean":
		if st == "BIT" || st == "VARBIT" { // bit(1) becomes a boolean
			switch string(raw) {
			case "true":
				return append(dst, `"1"`...), nil
			case "false":
				return append(dst, `"0"`...), nil
			}
		}
		return appendUntyped(dst, raw)
	case "float", "double", "float32", "float64": // JsonConverter writes Connect's FLOAT32 and FLOAT64 as float and double
		if raw[0] == '"' {
			return appendUntyped(dst, raw) // NaN, Infinity
		}
		bits := 64
		if s.Type == "float" || s.Type == "float32" {
			bits = 32
		}
		f, err := strconv.ParseFloat(string(raw), bits)
		if err != nil {
			return dst, err
		}
		return appendFloat(dst, f, bits), nil
	case "array":
		return d.appendArray(dst, s.Items, raw)
	}
	return appendUntyped(dst, raw)
}

func (d *Decoder) appendArray(dst []byte, elem *schema, raw json.RawMessage) ([]byte, error) {
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return dst, err
	}
	dst = append(dst, '[')
	for i, it := range items {
		if i > 0 {
			dst = append(dst, ',')
		}
		var err error
		if dst, err = d.appendValue(dst, elem, it); err != nil {
			return dst, err
		}
	}
	return append(dst, ']'), nil
}

// appendUntyped keeps a value as the connector wrote it, with strings
// escaped as package values escapes them.
func appendUntyped(dst []byte, raw json.RawMessage) ([]byte, error) {
	switch raw[0] {
	case '"':
		s, err := stringOf(raw)
		if err != nil {
			return dst, err
		}
		return values.AppendString(dst, s), nil
	case '[', '{':
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw); err != nil {
			return dst, err
		}
		return values.AppendJSON(dst, validUTF8(buf.Bytes())), nil
	}
	if !json.Valid(raw) {
		return dst, fmt.Errorf("invalid JSON %q", raw)
	}
	return append(dst, raw...), nil
}

// validUTF8 returns JSON text with each byte that is not UTF-8 (valid JSON
// has them in strings only) made U+FFFD, as encoding/json decodes strings.
func validUTF8(text []byte) []byte {
	if utf8.Valid(text) {
		return text
	}
	out := make([]byte, 0, len(text)+16)
	for len(text) > 0 {
		r, n := utf8.DecodeRune(text)
		if r == utf8.RuneError && n == 1 {
			out = utf8.AppendRune(out, utf8.RuneError)
		} else {
			out = append(out, text[:n]...)
		}
		text = text[n:]
	}
	return out
}

// stringOf decodes a JSON string. One that holds NUL is no PostgreSQL value
// (text cannot hold it, and the audit table's jsonb refuses it): a malformed
// event, not one to store.
func stringOf(raw json.RawMessage) (string, error) {
	if len(raw) >= 2 && raw[0] == '"' && raw[len(raw)-1] == '"' && bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) {
		// Without escapes a string (of a message already checked) is its
		// bytes; a NUL could only come escaped, and bytes that are not UTF-8
		// take the slow path, which makes them U+FFFD as PostgreSQL text
		// needs.
		return string(raw[1 : len(raw)-1]), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", err
	}
	if strings.IndexByte(s, 0) >= 0 {
		return "", fmt.Errorf("string %.40q holds a NUL character, which no PostgreSQL text can hold", s)
	}
	return s, nil
}

func integer(raw json.RawMessage) (int64, error) {
	return strconv.ParseInt(string(raw), 10, 64)
}

// bytesValue decodes a bytes value: JsonConverter writes Connect bytes as
// standard base64; mode says how the connector wrote a bytea column's bytes
// when it wrote them as a string.
func (d *Decoder) bytesValue(raw json.RawMessage, mode string) ([]byte, error) {
	s, err := stringOf(raw)
	if err != nil {
		return nil, err
	}
	switch mode {
	case "hex":
		return hex.DecodeString(s)
	case "base64-url-safe":
		return base64.URLEncoding.DecodeString(s)
	}
	return base64.StdEncoding.DecodeString(s)
}

// twosComplement reads Connect's Decimal encoding: the unscaled value as
// big-endian two's complement bytes.
func twosComplement(b []byte) *big.Int {
	v := new(big.Int).SetBytes(b)
	if len(b) > 0 && b[0]&0x80 != 0 {
		v.Sub(v, new(big.Int).Lsh(big.NewInt(1), uint(8*len(b))))
	}
	return v
}

// appendFloat writes a float as PostgreSQL's float8out and float4out do
// (shortest exact digits, extra_float_digits > 0): fixed notation for decimal
// exponents from -4 below the precision (15 or 6 digits), else "1e+15".
func appendFloat(dst []byte, f float64, bits int) []byte {
	switch {
	case math.IsNaN(f):
		return append(dst, `"NaN"`...)
	case math.IsInf(f, 1):
		return append(dst, `"Infinity"`...)
	case math.IsInf(f, -1):
		return append(dst, `"-Infinity"`...)
	}
	digits := 15
	if bits == 32 {
		digits = 6
	}
	if f == 0 {
		if math.Signbit(f) {
			return append(dst, "-0"...)
		}
		return append(dst, '0')
	}
	e := strconv.AppendFloat(nil, f, 'e', -1, bits)
	exp, _ := strconv.Atoi(string(e[bytes.IndexByte(e, 'e')+1:]))
	if exp < -4 || exp >= digits {
		return append(dst, e...)
	}
	return strconv.AppendFloat(dst, f, 'f', -1, bits)
}

// appendDuration writes a MicroDuration as PostgreSQL's iso_8601 interval
// style. Debezium folded months into days (30.4375 each) and days into
// microseconds, so the parts are recovered as days of 24 hours.
func appendDuration(dst []byte, micros int64) []byte {
	const day = 24 * 3600 * 1e6
	days := micros / day
	micros -= days * day
	h := micros / 3600e6
	micros -= h * 3600e6
	m := micros / 60e6
	micros -= m * 60e6
	return appendISOInterval(dst, 0, 0, days, h, m, micros/1e6, micros%1e6)
}

// appendInterval rewrites Debezium's Interval string, "P1Y2M3DT4H5M6.78S"
// with every part, in PostgreSQL's iso_8601 style, which omits zero parts.
func appendInterval(dst []byte, s string) ([]byte, error) {
	bad := func(err error) ([]byte, error) {
		if errors.Is(err, strconv.ErrRange) {
			return dst, intervalRange(s)
		}
		return dst, fmt.Errorf("interval %q is not ISO 8601 as Debezium writes it (P1Y2M3DT4H5M6.78S)", s)
	}
	if !strings.HasPrefix(s, "P") {
		return bad(nil)
	}
	var parts [6]int64
	var usec int64
	rest, inTime := s[1:], false
	for rest != "" {
		if rest[0] == 'T' {
			inTime, rest = true, rest[1:]
			continue
		}
		i := strings.IndexAny(rest, "YMDHS")
		if i <= 0 {
			return bad(nil)
		}
		num, unit := rest[:i], rest[i]
		rest = rest[i+1:]
		idx := strings.IndexByte("YMD", unit)
		if inTime {
			if idx = strings.IndexByte("HMS", unit); idx >= 0 {
				idx += 3
			}
		}
		switch {
		case idx < 0:
			return bad(nil)
		case idx == 5:
			neg := strings.HasPrefix(num, "-")
			whole, frac, _ := strings.Cut(strings.TrimPrefix(num, "-"), ".")
			sec, err := strconv.ParseInt(whole, 10, 64)
			if err != nil || len(frac) > 9 {
				return bad(err)
			}
			frac = (frac + "000000")[:6]
			us, err := strconv.ParseInt(frac, 10, 64)
			if err != nil {
				return bad(err)
			}
			if neg {
				sec, us = -sec, -us
			}
			parts[5], usec = sec, us
			continue
		}
		v, err := strconv.ParseInt(num, 10, 64)
		if err != nil {
			return bad(err)
		}
		parts[idx] = v
	}
	if !intervalFits(parts, usec) {
		return dst, intervalRange(s)
	}
	return appendISOInterval(dst, parts[0], parts[1], parts[2], parts[3], parts[4], parts[5], usec), nil
}

func intervalRange(s string) error {
	return fmt.Errorf("interval %q is outside PostgreSQL's range (months and days of 32 bits, the time of 64 bits of microseconds)", s)
}

// intervalFits reports whether an interval's parts (years, months, days,
// hours, minutes, seconds) and microseconds fit PostgreSQL's Interval: its
// months and days are int32, its time int64 microseconds.
func intervalFits(parts [6]int64, usec int64) bool {
	in32 := func(v int64) bool { return math.MinInt32 <= v && v <= math.MaxInt32 }
	if !in32(parts[0]) || !in32(parts[1]) || !in32(parts[0]*12+parts[1]) || !in32(parts[2]) {
		return false
	}
	t, ok := usec, true
	for i, unit := range [3]int64{3600e6, 60e6, 1e6} {
		if t, ok = addScaled(t, parts[3+i], unit); !ok {
			return false
		}
	}
	return true
}

// addScaled returns acc + v×unit, and false when that overflows int64.
func addScaled(acc, v, unit int64) (int64, bool) {
	if v > math.MaxInt64/unit || v < math.MinInt64/unit {
		return 0, false
	}
	sum := acc + v*unit
	if (v > 0 && sum < acc) || (v < 0 && sum > acc) {
		return 0, false
	}
	return sum, true
}

// appendISOInterval writes an interval as EncodeInterval's INTSTYLE_ISO_8601.
func appendISOInterval(dst []byte, y, mon, d, h, m, sec, usec int64) []byte {
	dst = append(dst, '"')
	if y == 0 && mon == 0 && d == 0 && h == 0 && m == 0 && sec == 0 && usec == 0 {
		return append(dst, `PT0S"`...)
	}
	dst = append(dst, 'P')
	part := func(v int64, unit byte) {
		if v != 0 {
			dst = strconv.AppendInt(dst, v, 10)
			dst = append(dst, unit)
		}
	}
	part(y, 'Y')
	part(mon, 'M')
	part(d, 'D')
	if h != 0 || m != 0 || sec != 0 || usec != 0 {
		dst = append(dst, 'T')
	}
	part(h, 'H')
	part(m, 'M')
	if sec != 0 || usec != 0 {
		if sec < 0 || usec < 0 {
			dst = append(dst, '-')
		}
		dst = strconv.AppendInt(dst, abs(sec), 10)
		if usec != 0 {
			f := []byte(fmt.Sprintf(".%06d", abs(usec)))
			dst = append(dst, bytes.TrimRight(f, "0")...)
		}
		dst = append(dst, 'S')
	}
	return append(dst, '"')
}

func abs(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}

// maxBits is the longest bit string PostgreSQL has: bit(83886080), the
// length limit of anybit_typmodin (MaxAttrSize bytes of bits).
const maxBits = 10 * 1024 * 1024 * 8

// appendBits writes io.debezium.data.Bits (a Java BitSet's little-endian
// bytes, bit 0 the last character) as PostgreSQL's bit string text, with the
// declared length; a varbit's leading zeros are not in the bytes. Debezium
// pads the bytes of a bit(n) to its ⌈n/8⌉ bytes, but for the up to 64 bits of
// a value it read as a number: a length beyond the bytes is the message's
// error, which keeps the text at most 8 characters a byte.
func appendBits(dst, b []byte, length string) ([]byte, error) {
	n, err := strconv.Atoi(length)
	switch {
	case err != nil || n <= 0 || n == math.MaxInt32: // a varbit without a length: pgjdbc's unknown length
		n = 8 * len(b)
	case n > maxBits:
		return dst, fmt.Errorf("bit string length %d is outside PostgreSQL's range (1 to %d)", n, maxBits)
	case n > 8*max(len(b), 8):
		return dst, fmt.Errorf("bit string length %d needs %d bytes, the value has %d", n, (n+7)/8, len(b))
	}
	for i := n; i < 8*len(b); i++ {
		if b[i/8]>>(i%8)&1 == 1 {
			return dst, fmt.Errorf("bit %d is set, past the bit string length %d", i, n)
		}
	}
	dst = append(dst, '"')
	for i := n - 1; i >= 0; i-- {
		bit := byte('0')
		if i/8 < len(b) && b[i/8]>>(i%8)&1 == 1 {
			bit = '1'
		}
		dst = append(dst, bit)
	}
	return append(dst, '"'), nil
}

// parseZoned parses a ZonedTimestamp, ISO 8601 as Java writes it: a year
// past 9999 is signed ("+10000-01-01T00:00:00Z"), and so is one before 1 BC
// ("-0043-03-15T12:00:00Z" is 44 BC), which time.Parse does not read.
func parseZoned(s string) (time.Time, error) {
	if len(s) == 0 || s[0] != '+' && s[0] != '-' {
		return time.Parse(time.RFC3339Nano, s)
	}
	digits, rest, ok := strings.Cut(s[1:], "-")
	year, err := strconv.Atoi(digits)
	if !ok || err != nil || len(digits) < 4 || len(digits) > 9 || digits[0] == '+' || digits[0] == '-' {
		return time.Time{}, fmt.Errorf("timestamp %q is not ISO 8601", s)
	}
	if s[0] == '-' {
		year = -year
	}
	t, err := time.Parse(time.RFC3339Nano, "2000-"+rest) // a leap year: February 29 parses
	if err != nil {
		return time.Time{}, fmt.Errorf("timestamp %q is not ISO 8601: %w", s, err)
	}
	y := time.Date(year, t.Month(), t.Day(), t.Hour(), t.Minute(), t.Second(), t.Nanosecond(), t.Location())
	if y.Day() != t.Day() {
		return time.Time{}, fmt.Errorf("timestamp %q: %d has no February 29", s, year)
	}
	return y, nil
}

// textOf renders a canonical JSON value as the text PostgreSQL prints for it
// (DateStyle ISO, TimeZone UTC), which is what native capture stores as a
// one-column primary key.
func textOf(v []byte, s *schema) string {
	switch {
	case string(v) == "true":
		return "t"
	case string(v) == "false":
		return "f"
	case len(v) == 0 || v[0] != '"':
		return string(v)
	}
	str, _ := stringOf(v)
	name := ""
	if s != nil {
		name = s.Name
		if s.Type == "bytes" && name == "" {
			b, _ := base64.StdEncoding.DecodeString(str)
			return `\x` + hex.EncodeToString(b)
		}
	}
	switch name {
	case microTimestamp, nanoTimestamp, milliTimestamp, connectTimestamp:
		return strings.Replace(str, "T", " ", 1)
	case zonedTimestamp:
		return strings.Replace(strings.TrimSuffix(str, "Z"), "T", " ", 1) + "+00"
	case zonedTime:
		return strings.TrimSuffix(str, "Z") + "+00"
	}
	return str
}
