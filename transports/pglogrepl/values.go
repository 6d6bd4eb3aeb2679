package pglogrepl

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgtrail/pgtrail/core/values"
)

// TypeInfo is what Types needs to know of a type that pgtype does not know
// (an enum, a domain, an extension's type, an array of those), from pg_type.
type TypeInfo struct {
	// Kind is pg_type.typtype: 'b' base, 'c' composite, 'd' domain, 'e' enum,
	// 'm' multirange, 'p' pseudo, 'r' range.
	Kind byte
	// Base is a domain's base type (typbasetype) or an array's element type
	// (typelem).
	Base uint32
	// IsArray marks an array type: typsubscript is array_subscript_handler
	// (PostgreSQL 14+) or typcategory is 'A'.
	IsArray bool
}

// Resolver looks a type up in pg_type, on an ordinary connection, e.g.
//
//	SELECT typtype, CASE WHEN typtype = 'd' THEN typbasetype ELSE typelem END,
//	       typcategory = 'A'
//	FROM pg_type WHERE oid = $1
type Resolver func(ctx context.Context, oid uint32) (TypeInfo, error)

// Types turns column values in PostgreSQL's text format, as pgoutput sends
// them, into canonical JSON (design §6, package values): integers and floats
// are numbers (NaN and infinities strings), numeric and money numbers or
// strings by the rule of values.AppendNumeric, booleans true/false, json and
// jsonb the embedded value, dates and times ISO 8601 (timestamptz and timetz
// in UTC), bytea base64, arrays JSON arrays (nested per dimension, lower
// bounds dropped), domains as their base type, and everything else (enums,
// ranges, network and geometric types, ...) the text as a JSON string. It
// knows the built-in types through pgtype and asks its Resolver about any
// other type once.
//
// The text must come from a session with DateStyle=ISO, IntervalStyle=iso_8601,
// extra_float_digits=3 and lc_monetary=C; TimeZone=UTC makes timestamptz
// cheapest. A Types is safe for concurrent use.
type Types struct {
	pg      *pgtype.Map
	resolve Resolver
	mu      sync.Mutex                       // serialises building plans
	plans   atomic.Pointer[map[uint32]*plan] // copied on write, read without locks
}

// NewTypes returns a Types that asks resolve about the types pgtype does not
// know. With a nil resolve those types are JSON strings of their text.
func NewTypes(resolve Resolver) *Types {
	t := &Types{pg: pgtype.NewMap(), resolve: resolve}
	t.plans.Store(&map[uint32]*plan{})
	return t
}

// Append appends the JSON value of one non-null column value of type oid,
// given in text format. Text that is not as the type prints it (e.g. a
// timestamp in another DateStyle) is an error; dst is then returned as it was.
func (t *Types) Append(ctx context.Context, dst []byte, oid uint32, text []byte) ([]byte, error) {
	n := len(dst)
	var err error
	if k, ok := builtinKind(oid); ok {
		dst, err = appendScalar(dst, k, text)
	} else {
		var p *plan
		if p, err = t.plan(ctx, oid); err == nil {
			dst, err = appendValue(dst, p, text)
		}
	}
	if err != nil {
		return dst[:n], err
	}
	return dst, nil
}

// kind is how a type's text becomes JSON.
type kind uint8

const (
	kindString kind = iota // anything else: the text as a JSON string
	kindInt
	kindFloat
	kindNumeric
	kindMoney
	kindBool
	kindJSON  // json: its text as stored, possibly with escapes jsonb refuses
	kindJSONB // jsonb: embeddable as the server prints it
	kindUUID
	kindBytea
	kindTimestamp
	kindTimestamptz
	kindDate
	kindTime
	kindTimetz
	kindArray
)

var kindNames = [...]string{"text", "integer", "float", "numeric", "money", "boolean", "json", "jsonb",
	"uuid", "bytea", "timestamp", "timestamptz", "date", "time", "timetz", "array"}

// plan is the resolved mapping of one type.
type plan struct {
	kind kind
	elem *plan // of an array
	// delim separates this type's values as array elements: ',' but for box.
	delim byte
}

var (
	scalarPlans = func() (p [kindArray]plan) {
		for k := range p {
			p[k] = plan{kind: kind(k), delim: ','}
		}
		return p
	}()
	boxPlan = plan{kind: kindString, delim: ';'}
)

// builtinKind maps the built-in scalar types that are not strings, and the
// common string types, without a map lookup.
func builtinKind(oid uint32) (kind, bool) {
	switch oid {
	case pgtype.Int4OID, pgtype.Int8OID, pgtype.Int2OID, pgtype.OIDOID:
		return kindInt, true
	case pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID, pgtype.NameOID:
		return kindString, true
	case pgtype.BoolOID:
		return kindBool, true
	case pgtype.NumericOID:
		return kindNumeric, true
	case pgtype.TimestamptzOID:
		return kindTimestamptz, true
	case pgtype.JSONOID:
		return kindJSON, true
	case pgtype.JSONBOID:
		return kindJSONB, true
	case pgtype.UUIDOID:
		return kindUUID, true
	case pgtype.Float8OID, pgtype.Float4OID:
		return kindFloat, true
	case pgtype.TimestampOID:
		return kindTimestamp, true
	case pgtype.DateOID:
		return kindDate, true
	case pgtype.TimeOID:
		return kindTime, true
	case pgtype.TimetzOID:
		return kindTimetz, true
	case pgtype.ByteaOID:
		return kindBytea, true
	case moneyOID:
		return kindMoney, true
	}
	return 0, false
}

const moneyOID = 790 // pgtype does not name it

// maxTypeDepth bounds chains of domains and arrays, against a resolver that
// loops.
const maxTypeDepth = 16

func (t *Types) plan(ctx context.Context, oid uint32) (*plan, error) {
	if p, ok := (*t.plans.Load())[oid]; ok {
		return p, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	cur := *t.plans.Load()
	if p, ok := cur[oid]; ok {
		return p, nil
	}
	next := maps.Clone(cur)
	p, err := t.build(ctx, next, oid, 0)
	if err != nil {
		return nil, err
	}
	t.plans.Store(&next)
	return p, nil
}

// build resolves the plan of oid and those it depends on into plans.
func (t *Types) build(ctx context.Context, plans map[uint32]*plan, oid uint32, depth int) (*plan, error) {
	if p, ok := plans[oid]; ok {
		return p, nil
	}
	if depth > maxTypeDepth {
		return nil, fmt.Errorf("type %d: domains and arrays nested too deeply", oid)
	}
	var p *plan
	if k, ok := builtinKind(oid); ok {
		p = &scalarPlans[k]
	} else if typ, ok := t.pg.TypeForOID(oid); ok {
		switch c := typ.Codec.(type) {
		case *pgtype.ArrayCodec:
			elem, err := t.build(ctx, plans, c.ElementType.OID, depth+1)
			if err != nil {
				return nil, err
			}
			p = &plan{kind: kindArray, elem: elem, delim: ','}
		default:
			p = &scalarPlans[kindString]
			if oid == pgtype.BoxOID {
				p = &boxPlan
			}
		}
	} else if t.resolve == nil {
		p = &scalarPlans[kindString]
	} else {
		info, err := t.resolve(ctx, oid)
		if err != nil {
			return nil, fmt.Errorf("resolve type %d: %w", oid, err)
		}
		switch {
		case info.IsArray || info.Kind == 'd':
			if info.Base == 0 {
				return nil, fmt.Errorf("resolve type %d: no element or base type", oid)
			}
			base, err := t.build(ctx, plans, info.Base, depth+1)
			if err != nil {
				return nil, err
			}
			p = base // a domain maps as its base type
			if info.IsArray {
				p = &plan{kind: kindArray, elem: base, delim: ','}
			}
		default: // enum, composite, range, multirange, an extension's base type
			p = &scalarPlans[kindString]
		}
	}
	plans[oid] = p
	return p, nil
}

func appendValue(dst []byte, p *plan, text []byte) ([]byte, error) {
	if p.kind == kindArray {
		return appendArray(dst, p, text)
	}
	return appendScalar(dst, p.kind, text)
}

func appendScalar(dst []byte, k kind, text []byte) ([]byte, error) {
	switch k {
	case kindString:
		return values.AppendString(dst, unsafeString(text)), nil
	case kindInt:
		if !isInt(text) {
			return dst, invalidValue(k, text)
		}
		return append(dst, text...), nil
	case kindFloat:
		switch string(text) {
		case "NaN", "Infinity", "-Infinity":
			return appendQuoted(dst, text), nil
		}
		if !isNumber(text) {
			return dst, invalidValue(k, text)
		}
		return append(dst, text...), nil
	case kindNumeric:
		return values.AppendNumeric(dst, unsafeString(text)), nil
	case kindMoney:
		return appendMoney(dst, text), nil
	case kindBool:
		if len(text) == 1 {
			switch text[0] {
			case 't':
				return append(dst, "true"...), nil
			case 'f':
				return append(dst, "false"...), nil
			}
		}
		return dst, invalidValue(k, text)
	case kindJSON:
		return values.AppendJSON(dst, text), nil
	case kindJSONB:
		// jsonb_out prints valid JSON that jsonb can hold: no check needed
		// (json.Valid on each value was 8% of capture's CPU).
		return append(dst, text...), nil
	case kindUUID:
		for _, c := range text {
			if c < 0x20 || c >= 0x80 || c == '"' || c == '\\' {
				return values.AppendString(dst, unsafeString(text)), nil
			}
		}
		return appendQuoted(dst, text), nil
	case kindBytea:
		return appendBytea(dst, text)
	case kindTimestamp, kindTimestamptz:
		return appendTimestamp(dst, text, k == kindTimestamptz)
	case kindDate:
		return appendDate(dst, text)
	case kindTime, kindTimetz:
		return appendTime(dst, text, k == kindTimetz)
	}
	return dst, fmt.Errorf("no mapping for %s", kindNames[k])
}

// unsafeString views b as a string without copying. The functions of package values
// only read their argument during the call, so this is safe for them.
func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// appendQuoted appends text that needs no escaping as a JSON string.
func appendQuoted(dst, text []byte) []byte {
	dst = append(dst, '"')
	dst = append(dst, text...)
	return append(dst, '"')
}

func invalidValue(k kind, text []byte) error {
	const limit = 64
	if len(text) > limit {
		return fmt.Errorf("invalid %s value %q...", kindNames[k], text[:limit])
	}
	return fmt.Errorf("invalid %s value %q", kindNames[k], text)
}

func isDigit(b byte) bool { return '0' <= b && b <= '9' }

// isInt reports whether b is an integer as int8out prints it, which is a JSON
// number.
func isInt(b []byte) bool {
	if len(b) > 0 && b[0] == '-' {
		b = b[1:]
	}
	if len(b) == 0 || (b[0] == '0' && len(b) > 1) {
		return false
	}
	for _, c := range b {
		if !isDigit(c) {
			return false
		}
	}
	return true
}

// isNumber reports whether b is a JSON number; float8out's finite values are.
func isNumber(b []byte) bool {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(b) && isDigit(b[i]) {
			i++
			n++
		}
		return n
	}
	start := i
	if n := digits(); n == 0 || (n > 1 && b[start] == '0') {
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(b)
}

// appendMoney maps money by the numeric rule after dropping the currency
// symbol and thousands separators: with lc_monetary=C, "-$1,234.56" is
// -1234.56.
func appendMoney(dst, text []byte) []byte {
	var buf [64]byte
	buf[0] = '-'
	n, neg := 1, false
	for _, c := range text {
		switch {
		case isDigit(c) || c == '.':
			if n == len(buf) {
				return values.AppendString(dst, unsafeString(text))
			}
			buf[n] = c
			n++
		case c == '-' || c == '(':
			neg = true
		}
	}
	if n == 1 {
		return values.AppendString(dst, unsafeString(text))
	}
	num := buf[1:n]
	if neg {
		num = buf[:n]
	}
	return values.AppendNumeric(dst, unsafeString(num))
}

// appendBytea maps bytea, sent as "\x0102" (or in the escape format when the
// session has bytea_output=escape), to the base64 of its bytes.
func appendBytea(dst, text []byte) ([]byte, error) {
	// Decoded bytes go through buf; its size is a multiple of 3, so the
	// base64 of consecutive chunks is the base64 of the whole.
	var buf [768]byte
	n := 0
	dst = append(dst, '"')
	if len(text) >= 2 && text[0] == '\\' && text[1] == 'x' {
		h := text[2:]
		if len(h)%2 != 0 {
			return dst, invalidValue(kindBytea, text)
		}
		dst = slices.Grow(dst, base64.StdEncoding.EncodedLen(len(h)/2)+1)
		for i := 0; i < len(h); i += 2 {
			hi, lo := unhex(h[i]), unhex(h[i+1])
			if hi > 15 || lo > 15 {
				return dst, invalidValue(kindBytea, text)
			}
			buf[n] = hi<<4 | lo
			if n++; n == len(buf) {
				dst = base64.StdEncoding.AppendEncode(dst, buf[:])
				n = 0
			}
		}
	} else {
		for i := 0; i < len(text); i++ {
			c := text[i]
			if c == '\\' {
				switch {
				case i+1 < len(text) && text[i+1] == '\\':
					i++
				case i+3 < len(text) && isOctal(text[i+1]) && isOctal(text[i+2]) && isOctal(text[i+3]):
					c = (text[i+1]-'0')<<6 | (text[i+2]-'0')<<3 | (text[i+3] - '0')
					i += 3
				default:
					return dst, invalidValue(kindBytea, text)
				}
			}
			buf[n] = c
			if n++; n == len(buf) {
				dst = base64.StdEncoding.AppendEncode(dst, buf[:])
				n = 0
			}
		}
	}
	dst = base64.StdEncoding.AppendEncode(dst, buf[:n])
	return append(dst, '"'), nil
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10
	}
	return 255
}

func isOctal(c byte) bool { return '0' <= c && c <= '7' }

// Arrays.

// maxDims bounds array nesting; PostgreSQL allows 6 dimensions.
const maxDims = 32

var elemScratch = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

// appendArray maps an array literal as array_out prints it, "{1,NULL,3}" or
// "{{\"a b\",c},{d,e}}", to a JSON array of its elements' mapping, nested for
// each dimension, with NULL elements as null.
func appendArray(dst []byte, p *plan, text []byte) ([]byte, error) {
	s := text
	if len(s) > 0 && s[0] == '[' {
		// Explicit bounds, "[0:1]={1,2}"; a JSON array starts where it starts.
		i := bytes.IndexByte(s, '=')
		if i < 0 {
			return dst, invalidValue(kindArray, text)
		}
		s = s[i+1:]
	}
	if len(s) == 0 || s[0] != '{' {
		// int2vector and oidvector pass for arrays in pg_type but print "1 2".
		return values.AppendString(dst, unsafeString(text)), nil
	}
	dst, rest, err := appendDim(dst, p.elem, s, 0)
	if err == nil && len(rest) != 0 {
		err = invalidValue(kindArray, text)
	}
	return dst, err
}

// appendDim maps one brace-enclosed dimension at the start of s and returns
// what follows it.
func appendDim(dst []byte, elem *plan, s []byte, depth int) ([]byte, []byte, error) {
	if depth == maxDims {
		return dst, s, invalidValue(kindArray, s)
	}
	all := s
	s = s[1:] // '{'
	dst = append(dst, '[')
	if len(s) > 0 && s[0] == '}' {
		return append(dst, ']'), s[1:], nil
	}
	for {
		if len(s) == 0 {
			return dst, s, invalidValue(kindArray, all)
		}
		var err error
		switch s[0] {
		case '{':
			dst, s, err = appendDim(dst, elem, s, depth+1)
		case '"':
			dst, s, err = appendQuotedElem(dst, elem, s)
		default:
			i := 0
			for i < len(s) && s[i] != elem.delim && s[i] != '}' {
				i++
			}
			if isNull(s[:i]) {
				dst = append(dst, "null"...)
			} else {
				dst, err = appendValue(dst, elem, s[:i])
			}
			s = s[i:]
		}
		if err != nil {
			return dst, s, err
		}
		switch {
		case len(s) == 0:
			return dst, s, invalidValue(kindArray, all)
		case s[0] == elem.delim:
			dst = append(dst, ',')
			s = s[1:]
		case s[0] == '}':
			return append(dst, ']'), s[1:], nil
		default:
			return dst, s, invalidValue(kindArray, all)
		}
	}
}

// appendQuotedElem maps the double-quoted element at the start of s, in which
// a backslash escapes the next byte, and returns what follows it.
func appendQuotedElem(dst []byte, elem *plan, s []byte) ([]byte, []byte, error) {
	escaped := false
	i := 1
	for ; i < len(s) && s[i] != '"'; i++ {
		if s[i] == '\\' {
			escaped = true
			i++
		}
	}
	if i >= len(s) {
		return dst, s, invalidValue(kindArray, s)
	}
	body, rest := s[1:i], s[i+1:]
	if !escaped {
		dst, err := appendValue(dst, elem, body)
		return dst, rest, err
	}
	bp := elemScratch.Get().(*[]byte)
	b := (*bp)[:0]
	for j := 0; j < len(body); j++ {
		if body[j] == '\\' {
			j++
		}
		b = append(b, body[j])
	}
	dst, err := appendValue(dst, elem, b)
	if cap(b) <= 64<<10 {
		*bp = b
		elemScratch.Put(bp)
	}
	return dst, rest, err
}

// isNull reports whether an unquoted element is NULL; array_out quotes an
// element whose text is "NULL".
func isNull(b []byte) bool {
	return len(b) == 4 && b[0]|0x20 == 'n' && b[1]|0x20 == 'u' && b[2]|0x20 == 'l' && b[3]|0x20 == 'l'
}

// Dates and times, as printed with DateStyle=ISO.

// appendTimestamp maps "2024-01-02 03:04:05.123456", with "+00", "+05:30"
// or "-00:19:32" after it for timestamptz, and " BC" last for BC dates.
func appendTimestamp(dst, text []byte, zoned bool) ([]byte, error) {
	k := kindTimestamp
	if zoned {
		k = kindTimestamptz
	}
	if inf, neg := isInfinity(text); inf {
		return values.AppendInfinity(dst, neg), nil
	}
	d, ok := parseDate(text)
	if !ok || d.n == len(text) || text[d.n] != ' ' {
		return dst, invalidTime(k, text)
	}
	clockAt := d.n + 1
	c, ok := parseClock(text[clockAt:])
	if !ok || c.hour > 23 {
		return dst, invalidTime(k, text)
	}
	rest := text[clockAt+c.n:]
	off := 0
	if zoned {
		var n int
		if off, n, ok = parseOffset(rest); !ok {
			return dst, invalidTime(k, text)
		}
		rest = rest[n:]
	}
	bc, ok := parseBC(rest)
	if !ok {
		return dst, invalidTime(k, text)
	}
	if off == 0 && !bc && d.yearDigits >= 4 {
		// Already ISO 8601 in UTC but for the 'T' and the zone: copy.
		dst = append(dst, '"')
		dst = append(dst, text[:d.n]...)
		dst = append(dst, 'T')
		dst = append(dst, c.trimmed(text[clockAt:])...)
		if zoned {
			dst = append(dst, 'Z')
		}
		return append(dst, '"'), nil
	}
	t := time.Date(d.astroYear(bc), time.Month(d.month), d.day, c.hour, c.minute, c.sec, c.usec*1000, time.UTC)
	t = t.Add(-time.Duration(off) * time.Second)
	return values.AppendTimestamp(dst, t, zoned), nil
}

// appendDate maps "2024-01-02", with " BC" after it for BC dates.
func appendDate(dst, text []byte) ([]byte, error) {
	if inf, neg := isInfinity(text); inf {
		return values.AppendInfinity(dst, neg), nil
	}
	d, ok := parseDate(text)
	if !ok {
		return dst, invalidTime(kindDate, text)
	}
	bc, ok := parseBC(text[d.n:])
	if !ok {
		return dst, invalidTime(kindDate, text)
	}
	if !bc && d.yearDigits >= 4 {
		return appendQuoted(dst, text), nil
	}
	return values.AppendDate(dst, time.Date(d.astroYear(bc), time.Month(d.month), d.day, 0, 0, 0, 0, time.UTC)), nil
}

// appendTime maps "03:04:05.123456", with an offset after it for timetz.
func appendTime(dst, text []byte, zoned bool) ([]byte, error) {
	k := kindTime
	if zoned {
		k = kindTimetz
	}
	c, ok := parseClock(text)
	if !ok || (c.hour == 24 && (c.minute != 0 || c.sec != 0 || c.usec != 0)) {
		return dst, invalidTime(k, text)
	}
	off, n := 0, 0
	if zoned {
		if off, n, ok = parseOffset(text[c.n:]); !ok {
			return dst, invalidTime(k, text)
		}
	}
	if c.n+n != len(text) {
		return dst, invalidTime(k, text)
	}
	if !zoned {
		return appendQuoted(dst, c.trimmed(text)), nil
	}
	if off == 0 {
		dst = append(dst, '"')
		dst = append(dst, c.trimmed(text)...)
		return append(dst, 'Z', '"'), nil
	}
	micros := (int64(c.hour)*3600+int64(c.minute)*60+int64(c.sec))*1e6 + int64(c.usec)
	return values.AppendTimeTZ(dst, micros, off)
}

func invalidTime(k kind, text []byte) error {
	return fmt.Errorf("%w (the session must run with DateStyle=ISO)", invalidValue(k, text))
}

func isInfinity(text []byte) (inf, neg bool) {
	switch string(text) {
	case "infinity":
		return true, false
	case "-infinity":
		return true, true
	}
	return false, false
}

// isoDate is a parsed "YYYY-MM-DD"; n is its length in the text.
type isoDate struct {
	year, month, day int
	yearDigits, n    int
}

// astroYear is the year in astronomical numbering: 1 BC is 0.
func (d isoDate) astroYear(bc bool) int {
	if bc {
		return 1 - d.year
	}
	return d.year
}

func parseDate(s []byte) (d isoDate, ok bool) {
	i := 0
	for i < len(s) && isDigit(s[i]) && i < 9 {
		d.year = d.year*10 + int(s[i]-'0')
		i++
	}
	d.yearDigits = i
	if i == 0 || len(s) < i+6 || s[i] != '-' || s[i+3] != '-' {
		return d, false
	}
	var ok1, ok2 bool
	d.month, ok1 = twoDigits(s[i+1:])
	d.day, ok2 = twoDigits(s[i+4:])
	d.n = i + 6
	return d, ok1 && ok2 && 1 <= d.month && d.month <= 12 && 1 <= d.day && d.day <= 31
}

// isoClock is a parsed "HH:MM:SS[.ffffff]"; n is its length in the text.
type isoClock struct {
	hour, minute, sec, usec int
	n                       int
}

func parseClock(s []byte) (c isoClock, ok bool) {
	if len(s) < 8 || s[2] != ':' || s[5] != ':' {
		return c, false
	}
	var ok1, ok2, ok3 bool
	c.hour, ok1 = twoDigits(s)
	c.minute, ok2 = twoDigits(s[3:])
	c.sec, ok3 = twoDigits(s[6:])
	if !ok1 || !ok2 || !ok3 || c.hour > 24 || c.minute > 59 || c.sec > 59 {
		return c, false
	}
	c.n = 8
	if len(s) > 8 && s[8] == '.' {
		i := 9
		for i < len(s) && isDigit(s[i]) && i < 15 {
			c.usec = c.usec*10 + int(s[i]-'0')
			i++
		}
		if i == 9 || (i < len(s) && isDigit(s[i])) {
			return c, false
		}
		for range 15 - i {
			c.usec *= 10
		}
		c.n = i
	}
	return c, true
}

// trimmed returns the clock's text, at the start of s, without trailing
// fractional zeros.
func (c isoClock) trimmed(s []byte) []byte {
	s = s[:c.n]
	if c.n == 8 {
		return s
	}
	for s[len(s)-1] == '0' {
		s = s[:len(s)-1]
	}
	if s[len(s)-1] == '.' {
		s = s[:len(s)-1]
	}
	return s
}

// parseOffset parses "+HH", "+HH:MM" or "+HH:MM:SS" into seconds east of UTC.
func parseOffset(s []byte) (off, n int, ok bool) {
	if len(s) < 3 || (s[0] != '+' && s[0] != '-') {
		return 0, 0, false
	}
	h, ok := twoDigits(s[1:])
	off, n = h*3600, 3
	for unit := 60; ok && unit >= 1 && len(s) >= n+3 && s[n] == ':'; unit /= 60 {
		var v int
		v, ok = twoDigits(s[n+1:])
		off += v * unit
		n += 3
	}
	if s[0] == '-' {
		off = -off
	}
	return off, n, ok
}

// parseBC parses the end of a date or timestamp: nothing, or " BC".
func parseBC(s []byte) (bc, ok bool) {
	switch string(s) {
	case "":
		return false, true
	case " BC":
		return true, true
	}
	return false, false
}

func twoDigits(s []byte) (int, bool) {
	if len(s) < 2 || !isDigit(s[0]) || !isDigit(s[1]) {
		return 0, false
	}
	return int(s[0]-'0')*10 + int(s[1]-'0'), true
}
