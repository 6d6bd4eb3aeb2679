package publish

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/pipeline"
	"github.com/pgtrail/pgtrail/core/values"
)

// DebeziumVersion is the release of the Debezium PostgreSQL connector whose
// event format the encoder reproduces (source.version), checked against it by
// the interop bed.
const DebeziumVersion = "3.6.1.Final"

// Unavailable is Debezium's unavailable.value.placeholder: it stands for an
// unchanged TOAST value that PostgreSQL did not send.
const Unavailable = "__debezium_unavailable_value"

// Event is one broker message.
type Event struct {
	Subject string // subject or topic
	Key     []byte // Debezium's key (the primary key struct); nil without one
	Value   []byte // nil for a Kafka tombstone
	// ID identifies the change (change.MakeID) or message: the same on every
	// re-publication, so the broker or the consumer can drop duplicates.
	ID string
}

// Options shape the events.
type Options struct {
	TopicPrefix string // Debezium's topic.prefix
	// PerTable routes to <prefix>.<schema>.<table> (and <prefix>.message);
	// otherwise everything goes to <prefix>, as Bemi's ByLogicalTableRouter
	// does, and keys carry __dbz__physicalTableIdentifier as that transform adds.
	PerTable bool
	// DecimalString is decimal.handling.mode=string; otherwise precise.
	DecimalString bool
	// Tombstones follows a delete with a record of its key and no value, as
	// Debezium's tombstones.on.delete does on Kafka.
	Tombstones bool
}

// Encoder turns changes and messages, natively captured, into the JSON
// (schemas disabled) that the Debezium PostgreSQL connector publishes for
// them, with its default converters (time.precision.mode=adaptive,
// interval.handling.mode=numeric, binary.handling.mode=bytes). Values start
// from pgtrail's canonical JSON (core/values) and the column's type.
//
// Deliberate differences, so that an event published again after a crash is
// byte-identical: the envelope's ts_ms/ts_us/ts_ns are the commit time (not
// the time of publication), and the first element of source.sequence
// (Debezium's last-commit LSN, kept in its offsets) is null.
type Encoder struct {
	opts Options
	cat  *catalog
	// Messages at one LSN are told apart by their occurrence; a replay starts
	// at a transaction boundary, so counting within the run suffices.
	msgLSN uint64
	msgOcc uint32
}

// NewEncoder returns an encoder that looks table shapes up in the source
// database at url.
func NewEncoder(opts Options, url string) *Encoder {
	return &Encoder{opts: opts, cat: newCatalog(url)}
}

// Close releases the catalog connection.
func (e *Encoder) Close(ctx context.Context) { e.cat.close(ctx) }

// Encode returns the events of one batch item: a row change (a delete and its
// tombstone when enabled) or a logical decoding message.
func (e *Encoder) Encode(ctx context.Context, c *change.Change) ([]Event, error) {
	if c.Operation == pipeline.OpMessage {
		ev, err := e.message(c)
		return []Event{ev}, err
	}
	return e.row(ctx, c)
}

func (e *Encoder) message(c *change.Change) (Event, error) {
	var m struct {
		Prefix  string `json:"prefix"`
		Content []byte `json:"content"`
	}
	if err := json.Unmarshal(c.After, &m); err != nil {
		return Event{}, fmt.Errorf("message at %d: %w", c.LSN, err)
	}
	if c.LSN == e.msgLSN {
		e.msgOcc++
	} else {
		e.msgLSN, e.msgOcc = c.LSN, 0
	}
	v := make([]byte, 0, 512+len(m.Content)*4/3)
	v = append(v, `{"op":"m","ts_ms":`...)
	v = strconv.AppendInt(v, c.CommittedAt.UnixMilli(), 10)
	v = append(v, `,"source":`...)
	v = e.source(v, c, "", "")
	v = append(v, `,"transaction":null,"message":{"prefix":`...)
	v = values.AppendString(v, m.Prefix)
	v = append(v, `,"content":"`...)
	v = base64.StdEncoding.AppendEncode(v, m.Content)
	v = append(v, `"}}`...)

	k := append([]byte(`{"prefix":`), values.AppendString(nil, m.Prefix)...)
	return Event{
		Subject: e.subject("message"),
		Key:     e.closeKey(k, "message"),
		Value:   v,
		ID:      change.MakeID(c.Database, c.LSN, "", "", e.msgOcc).String(),
	}, nil
}

var ops = map[change.Operation]string{change.Create: "c", change.Update: "u", change.Delete: "d", change.Truncate: "t"}

func (e *Encoder) row(ctx context.Context, c *change.Change) ([]Event, error) {
	op, ok := ops[c.Operation]
	if !ok {
		return nil, fmt.Errorf("change %s: unknown operation %q", c.ID, c.Operation)
	}
	before, err := objectOf(c.Before)
	if err != nil {
		return nil, fmt.Errorf("change %s: before: %w", c.ID, err)
	}
	after, err := objectOf(c.After)
	if err != nil {
		return nil, fmt.Errorf("change %s: after: %w", c.ID, err)
	}
	t, err := e.cat.lookup(ctx, c.Schema, c.Table, false)
	if err != nil {
		return nil, err
	}
	if !t.has(before) || !t.has(after) || !t.hasNames(c.UnchangedToast) {
		if t, err = e.cat.lookup(ctx, c.Schema, c.Table, true); err != nil {
			return nil, err
		}
	}

	// An update that changes the primary key is, in Debezium, a delete of
	// the old key (and its tombstone) and a create of the new one.
	if op == "u" && len(t.key) > 0 && before != nil && keyChanged(t, before, after) {
		del, err := e.rowEvent(c, t, "d", before, nil, nil)
		if err != nil {
			return nil, err
		}
		del.ID = uuid.NewSHA1(c.ID, []byte("delete")).String()
		evs := []Event{del}
		if e.opts.Tombstones {
			evs = append(evs, Event{Subject: del.Subject, Key: del.Key})
		}
		cr, err := e.rowEvent(c, t, "c", nil, after, c.UnchangedToast)
		return append(evs, cr), err
	}
	ev, err := e.rowEvent(c, t, op, before, after, c.UnchangedToast)
	if err != nil {
		return nil, err
	}
	evs := []Event{ev}
	if op == "d" && e.opts.Tombstones {
		evs = append(evs, Event{Subject: ev.Subject, Key: ev.Key})
	}
	return evs, nil
}

// rowEvent renders one row event of op with the given images.
func (e *Encoder) rowEvent(c *change.Change, t *table, op string, before, after map[string]json.RawMessage, toast []string) (Event, error) {
	var err error
	v := make([]byte, 0, 256+2*(len(c.Before)+len(c.After)))
	v = append(v, `{"before":`...)
	if v, err = e.image(v, t, before, nil, op == "c" || op == "t"); err != nil {
		return Event{}, fmt.Errorf("change %s: before: %w", c.ID, err)
	}
	v = append(v, `,"after":`...)
	if v, err = e.image(v, t, after, toast, op == "d" || op == "t"); err != nil {
		return Event{}, fmt.Errorf("change %s: after: %w", c.ID, err)
	}
	v = append(v, `,"source":`...)
	v = e.source(v, c, c.Schema, c.Table)
	v = append(v, `,"transaction":null,"op":"`...)
	v = append(v, op...)
	v = append(v, '"')
	v = appendTimes(v, c.CommittedAt)
	v = append(v, '}')

	ev := Event{Subject: e.subject(c.Schema + "." + c.Table), Value: v, ID: c.ID.String()}
	if op != "t" && len(t.key) > 0 {
		img := after
		if op == "d" {
			img = before
		}
		if ev.Key, err = e.key(t, img, c.Schema+"."+c.Table); err != nil {
			return Event{}, fmt.Errorf("change %s: key: %w", c.ID, err)
		}
	}
	return ev, nil
}

func keyChanged(t *table, before, after map[string]json.RawMessage) bool {
	for _, i := range t.key {
		name := t.columns[i].name
		if b, ok := before[name]; ok && !bytes.Equal(b, after[name]) {
			return true
		}
	}
	return false
}

// source appends the source block. Its ts_* are the commit time; txId the
// transaction; lsn the change's (a message's: the end of its WAL record).
func (e *Encoder) source(v []byte, c *change.Change, schema, table string) []byte {
	us := c.CommittedAt.UnixMicro()
	v = append(v, `{"version":"`+DebeziumVersion+`","connector":"postgresql","name":`...)
	v = values.AppendString(v, e.opts.TopicPrefix)
	v = append(v, `,"ts_ms":`...)
	v = strconv.AppendInt(v, c.CommittedAt.UnixMilli(), 10)
	v = append(v, `,"snapshot":"false","db":`...)
	v = values.AppendString(v, c.Database)
	v = append(v, `,"sequence":"[null,\"`...)
	v = strconv.AppendUint(v, c.LSN, 10)
	v = append(v, `\"]","ts_us":`...)
	v = strconv.AppendInt(v, us, 10)
	v = append(v, `,"ts_ns":`...)
	v = strconv.AppendInt(v, us*1000, 10)
	v = append(v, `,"schema":`...)
	v = values.AppendString(v, schema)
	v = append(v, `,"table":`...)
	v = values.AppendString(v, table)
	v = append(v, `,"txId":`...)
	v = strconv.AppendUint(v, c.TransactionID, 10)
	v = append(v, `,"lsn":`...)
	v = strconv.AppendUint(v, c.LSN, 10)
	return append(v, `,"xmin":null,"origin":null,"origin_lsn":null}`...)
}

// appendTimes appends the envelope's ts_ms, ts_us and ts_ns.
func appendTimes(v []byte, t time.Time) []byte {
	us := t.UnixMicro()
	v = append(v, `,"ts_ms":`...)
	v = strconv.AppendInt(v, t.UnixMilli(), 10)
	v = append(v, `,"ts_us":`...)
	v = strconv.AppendInt(v, us, 10)
	v = append(v, `,"ts_ns":`...)
	return strconv.AppendInt(v, us*1000, 10)
}

func (e *Encoder) subject(name string) string {
	if e.opts.PerTable {
		return e.opts.TopicPrefix + "." + name
	}
	return e.opts.TopicPrefix
}

// closeKey ends a key struct, adding the routed table's identity as
// ByLogicalTableRouter does when it merges topics.
func (e *Encoder) closeKey(k []byte, name string) []byte {
	if !e.opts.PerTable {
		k = append(k, `,"__dbz__physicalTableIdentifier":`...)
		k = values.AppendString(k, e.opts.TopicPrefix+"."+name)
	}
	return append(k, '}')
}

func (e *Encoder) key(t *table, img map[string]json.RawMessage, name string) ([]byte, error) {
	k := []byte{'{'}
	for n, i := range t.key {
		col := t.columns[i]
		if n > 0 {
			k = append(k, ',')
		}
		k = append(values.AppendString(k, col.name), ':')
		raw, ok := img[col.name]
		if !ok {
			raw = json.RawMessage("null")
		}
		var err error
		if k, err = e.value(k, col.oid, col.typmod, col.elem, raw); err != nil {
			return nil, fmt.Errorf("column %s: %w", col.name, err)
		}
	}
	return e.closeKey(k, name), nil
}

// image appends a row image in column order: null when absent, a column
// PostgreSQL did not send as Debezium's placeholder, and a column missing
// from a key-only image as null.
func (e *Encoder) image(v []byte, t *table, img map[string]json.RawMessage, toast []string, absent bool) ([]byte, error) {
	if absent || img == nil {
		return append(v, "null"...), nil
	}
	v = append(v, '{')
	for i, col := range t.columns {
		if i > 0 {
			v = append(v, ',')
		}
		v = append(values.AppendString(v, col.name), ':')
		raw, ok := img[col.name]
		switch {
		case ok:
			var err error
			if v, err = e.value(v, col.oid, col.typmod, col.elem, raw); err != nil {
				return nil, fmt.Errorf("column %s: %w", col.name, err)
			}
		case slices.Contains(toast, col.name):
			v = appendPlaceholder(v, col)
		default:
			var err error
			if v, err = e.value(v, col.oid, col.typmod, col.elem, col.fill); err != nil {
				return nil, fmt.Errorf("column %s: %w", col.name, err)
			}
		}
	}
	return append(v, '}'), nil
}

func appendPlaceholder(v []byte, col column) []byte {
	switch {
	case col.oid == pgtype.ByteaOID:
		v = append(v, '"')
		v = base64.StdEncoding.AppendEncode(v, []byte(Unavailable))
		return append(v, '"')
	case col.elem != 0:
		return append(v, `["`+Unavailable+`"]`...)
	}
	return append(v, `"`+Unavailable+`"`...)
}

func (t *table) has(img map[string]json.RawMessage) bool {
	for name := range img {
		if !slices.ContainsFunc(t.columns, func(c column) bool { return c.name == name }) {
			return false
		}
	}
	return true
}

func (t *table) hasNames(names []string) bool {
	for _, name := range names {
		if !slices.ContainsFunc(t.columns, func(c column) bool { return c.name == name }) {
			return false
		}
	}
	return true
}

// objectOf parses a canonical image; nil for an empty one.
func objectOf(raw json.RawMessage) (map[string]json.RawMessage, error) {
	if len(raw) == 0 || bytes.Equal(raw, change.Empty) {
		return nil, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	if len(m) == 0 {
		return nil, nil
	}
	return m, nil
}

const (
	moneyOID    = 790
	intervalOID = 1186
	moneyScale  = 2 // Debezium's money.fraction.digits
	// daysPerMonth is Debezium's MicroDuration.DAYS_PER_MONTH_AVG.
	daysPerMonth = 365.25 / 12.0
)

// value appends the Debezium encoding of one canonical value of type oid.
func (e *Encoder) value(v []byte, oid uint32, typmod int32, elem uint32, raw json.RawMessage) ([]byte, error) {
	if string(raw) == "null" {
		return append(v, "null"...), nil
	}
	if elem != 0 {
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return append(v, raw...), nil // not an array literal pgtrail could map: as is
		}
		v = append(v, '[')
		for i, it := range items {
			if i > 0 {
				v = append(v, ',')
			}
			var err error
			if v, err = e.value(v, elem, -1, 0, it); err != nil {
				return nil, err
			}
		}
		return append(v, ']'), nil
	}
	switch oid {
	case pgtype.NumericOID:
		return e.decimal(v, raw, numericScale(typmod))
	case moneyOID:
		return e.decimal(v, raw, moneyScale)
	case pgtype.Float4OID:
		return appendFloat(v, raw, 32), nil
	case pgtype.Float8OID:
		return appendFloat(v, raw, 64), nil
	case pgtype.JSONOID, pgtype.JSONBOID:
		// Debezium's Json is the value's JSON text. Only a json value can
		// have been stored as a string of its text instead (valid JSON with
		// an escape jsonb refuses, values.AppendJSON): then that text is
		// the value's. Any other string, "hello" included, is a JSON string.
		if oid == pgtype.JSONOID && len(raw) > 0 && raw[0] == '"' {
			if text := unquote(raw); json.Valid(text) && !values.Embeddable(text) {
				return append(v, raw...), nil
			}
		}
		return values.AppendString(v, string(raw)), nil
	case pgtype.DateOID:
		s, ok := str(raw)
		t, err := time.Parse("2006-01-02", s)
		if !ok || err != nil {
			return append(v, raw...), nil // infinity, BC dates: as pgtrail has them
		}
		return strconv.AppendInt(v, t.Unix()/86400, 10), nil
	case pgtype.TimestampOID:
		s, ok := str(raw)
		t, err := time.Parse("2006-01-02T15:04:05.999999", s)
		if !ok || err != nil {
			return append(v, raw...), nil
		}
		if 0 <= typmod && typmod <= 3 {
			return strconv.AppendInt(v, t.UnixMilli(), 10), nil
		}
		return strconv.AppendInt(v, t.UnixMicro(), 10), nil
	case pgtype.TimeOID:
		s, ok := str(raw)
		micros, ok2 := clockMicros(s)
		if !ok || !ok2 {
			return append(v, raw...), nil
		}
		if 0 <= typmod && typmod <= 3 {
			return strconv.AppendInt(v, micros/1000, 10), nil
		}
		return strconv.AppendInt(v, micros, 10), nil
	case pgtype.TimestamptzOID:
		// ZonedTimestamp: ISO 8601 in UTC with the column's fractional digits
		// (6 without a precision), as Debezium formats it.
		s, ok := str(raw)
		if !ok || !strings.HasSuffix(s, "Z") || len(s) < 20 {
			return append(v, raw...), nil
		}
		return values.AppendString(v, padFraction(s[:len(s)-1], typmod)+"Z"), nil
	case intervalOID:
		s, ok := str(raw)
		micros, ok2 := durationMicros(s)
		if !ok || !ok2 {
			return append(v, raw...), nil
		}
		return strconv.AppendInt(v, micros, 10), nil
	}
	// Integers, booleans, strings (text, uuid, enums, network types, ...),
	// bytea (base64 both ways), timestamptz and timetz (ISO 8601 in UTC, as
	// ZonedTimestamp and ZonedTime): the canonical JSON is Debezium's.
	return append(v, raw...), nil
}

func str(raw json.RawMessage) (string, bool) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

func unquote(raw json.RawMessage) []byte {
	s, _ := str(raw)
	return []byte(s)
}

// numericScale is the scale of numeric(p,s); -1 for numeric without one.
func numericScale(typmod int32) int {
	if typmod < 4 {
		return -1
	}
	return int((typmod - 4) & 0xffff)
}

// decimal appends a numeric: precise as Debezium's Decimal (base64 of the
// unscaled value's two's-complement bytes, at the column's scale) or, with no
// scale, VariableScaleDecimal {"scale","value"}; or the plain digits in string
// mode. NaN and infinities have no precise form: null, as Debezium sends.
func (e *Encoder) decimal(v []byte, raw json.RawMessage, scale int) ([]byte, error) {
	digits := string(raw)
	if s, ok := str(raw); ok {
		digits = s
	}
	unscaled, own, ok := parseDecimal(digits)
	if e.opts.DecimalString {
		return values.AppendString(v, digits), nil
	}
	if !ok {
		return append(v, "null"...), nil
	}
	if scale < 0 {
		v = append(v, `{"scale":`...)
		v = strconv.AppendInt(v, int64(own), 10)
		v = append(v, `,"value":"`...)
		v = base64.StdEncoding.AppendEncode(v, twosComplement(unscaled))
		return append(v, `"}`...), nil
	}
	for ; own < scale; own++ {
		unscaled.Mul(unscaled, big.NewInt(10))
	}
	for ; own > scale; own-- {
		unscaled.Quo(unscaled, big.NewInt(10)) // PostgreSQL rounds to the column's scale: never taken
	}
	v = append(v, '"')
	v = base64.StdEncoding.AppendEncode(v, twosComplement(unscaled))
	return append(v, '"'), nil
}

// parseDecimal splits [-]digits[.digits] into its unscaled value and scale.
func parseDecimal(s string) (*big.Int, int, bool) {
	ip, fp, _ := strings.Cut(s, ".")
	n, ok := new(big.Int).SetString(ip+fp, 10)
	if !ok || strings.ContainsAny(ip+fp, "eE+") {
		return nil, 0, false
	}
	return n, len(fp), true
}

// twosComplement is Java's BigInteger.toByteArray: the shortest big-endian
// two's-complement bytes.
func twosComplement(n *big.Int) []byte {
	if n.Sign() >= 0 {
		b := n.Bytes()
		if len(b) == 0 || b[0]&0x80 != 0 {
			b = append([]byte{0}, b...)
		}
		return b
	}
	m := new(big.Int).Neg(n)
	m.Sub(m, big.NewInt(1))
	size := m.BitLen()/8 + 1
	x := new(big.Int).Lsh(big.NewInt(1), uint(8*size))
	x.Add(x, n)
	b := x.Bytes()
	for len(b) < size {
		b = append([]byte{0xff}, b...)
	}
	return b
}

// appendFloat formats a float as Java's Float.toString and Double.toString
// do, which is what Kafka Connect's JSON converter writes: "5.0", "1.1",
// "1.0E7".
func appendFloat(v []byte, raw json.RawMessage, bits int) []byte {
	f, err := strconv.ParseFloat(string(raw), bits)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return append(v, raw...) // "NaN", "Infinity": strings, as Jackson quotes them
	}
	a := math.Abs(f)
	if f == 0 || (a >= 1e-3 && a < 1e7) {
		s := strconv.FormatFloat(f, 'f', -1, bits)
		if !strings.Contains(s, ".") {
			s += ".0"
		}
		return append(v, s...)
	}
	s := strconv.FormatFloat(f, 'E', -1, bits) // 1.5E+07
	mant, exp, _ := strings.Cut(s, "E")
	if !strings.Contains(mant, ".") {
		mant += ".0"
	}
	exp = strings.TrimPrefix(exp, "+")
	neg := strings.HasPrefix(exp, "-")
	exp = strings.TrimLeft(strings.TrimPrefix(exp, "-"), "0")
	if neg {
		exp = "-" + exp
	}
	return append(v, mant+"E"+exp...)
}

// clockMicros parses "15:04:05[.ffffff]" (24:00:00 included).
func clockMicros(s string) (int64, bool) {
	if len(s) < 8 || s[2] != ':' || s[5] != ':' {
		return 0, false
	}
	h, e1 := strconv.Atoi(s[:2])
	m, e2 := strconv.Atoi(s[3:5])
	sec, e3 := strconv.Atoi(s[6:8])
	if e1 != nil || e2 != nil || e3 != nil {
		return 0, false
	}
	var us int64
	if len(s) > 8 {
		if s[8] != '.' || len(s) > 15 {
			return 0, false
		}
		f := s[9:] + strings.Repeat("0", 6-len(s[9:]))
		n, err := strconv.Atoi(f)
		if err != nil {
			return 0, false
		}
		us = int64(n)
	}
	return (int64(h)*3600+int64(m)*60+int64(sec))*1e6 + us, true
}

// durationMicros parses an ISO 8601 duration as PostgreSQL prints an
// interval with IntervalStyle=iso_8601 ("P1Y2M3DT4H5M6.5S", any part
// negative) into microseconds the way Debezium's MicroDuration counts them:
// a month is 365.25/12 days.
func durationMicros(s string) (int64, bool) {
	if !strings.HasPrefix(s, "P") {
		return 0, false
	}
	var years, months, days, hours, minutes float64
	var seconds float64
	inTime := false
	num := ""
	for _, r := range s[1:] {
		switch {
		case r == 'T':
			inTime = true
		case r == '-' || r == '.' || ('0' <= r && r <= '9'):
			num += string(r)
		default:
			n, err := strconv.ParseFloat(num, 64)
			if err != nil {
				return 0, false
			}
			num = ""
			switch {
			case r == 'Y' && !inTime:
				years = n
			case r == 'M' && !inTime:
				months = n
			case r == 'D' && !inTime:
				days = n
			case r == 'H' && inTime:
				hours = n
			case r == 'M' && inTime:
				minutes = n
			case r == 'S' && inTime:
				seconds = n
			default:
				return 0, false
			}
		}
	}
	if num != "" {
		return 0, false
	}
	// As MicroDuration.durationMicros: integer parts are ints in Java.
	numberOfDays := (years*12+months)*daysPerMonth + days
	numberOfSeconds := ((numberOfDays*24+hours)*60+minutes)*60 + seconds
	return int64(numberOfSeconds * 1e6), true
}

// padFraction gives an ISO 8601 time its column's number of fractional
// digits: p for timestamptz(p), 6 without a precision.
func padFraction(s string, typmod int32) string {
	p := 6
	if typmod >= 0 {
		p = int(typmod)
	}
	whole, frac, _ := strings.Cut(s, ".")
	if p == 0 {
		return whole
	}
	if len(frac) > p {
		frac = frac[:p]
	}
	return whole + "." + frac + strings.Repeat("0", p-len(frac))
}
