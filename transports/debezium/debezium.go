// Package debezium decodes Debezium PostgreSQL change events, JSON with or
// without the schema envelope, into pgtrail's change records: the same
// identity, key and values that native capture gives the same row change.
//
// A Decoder reads one ordered stream (a JetStream consumer, a Kafka
// partition): identity needs the order, because several changes can share a
// WAL position and only their order tells them apart.
package debezium

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/values"
)

// DefaultPlaceholder is Debezium's default unavailable.value.placeholder, the
// value it writes for an unchanged TOAST column it could not read.
const DefaultPlaceholder = "__debezium_unavailable_value"

// Config says how the Debezium connector was configured, where it matters.
type Config struct {
	// Placeholder is the connector's unavailable.value.placeholder.
	Placeholder string
	// BinaryHandling is the connector's binary.handling.mode: bytes (the
	// default, base64 in JSON), base64, base64-url-safe or hex.
	BinaryHandling string
	// KeyColumns form the primary key of a row whose message has no key, when
	// the row has all of them: Debezium Server's NATS sink publishes values
	// only. The Bemi worker's rule is ["id"]. A Catalog's key wins.
	KeyColumns []string
	// Catalog, when set, gives each table's definition: the types of the
	// values of events without the schema envelope, the key native capture
	// stores, and the replica identity that says which columns an old image
	// really holds.
	Catalog Catalog
	// OccurrenceBase is added to the occurrence of every change. Changes that
	// share a WAL position are told apart by their order, which only one
	// stream sees whole: a source that spreads a table over several streams
	// (Kafka partitions) gives each its own range, so that no two changes get
	// one ID (the IDs then differ from native capture's).
	OccurrenceBase uint32
}

// Catalog reads a table's definition from the source database; a nil
// *Table when there is no such table. PostgresCatalog is the one pgtrail uses.
type Catalog interface {
	Table(ctx context.Context, schema, name string) (*Table, error)
}

// ConfigFrom maps the config file's source.debezium section. The catalog
// connects on first use (CheckCatalog tries it at start-up).
func ConfigFrom(c config.Debezium) Config {
	cfg := Config{Placeholder: c.UnavailableValuePlaceholder, BinaryHandling: c.BinaryHandlingMode, KeyColumns: c.KeyColumns}
	if c.Catalog != "" {
		cfg.Catalog = NewPostgresCatalog(c.Catalog)
	}
	return cfg
}

// Kind says what an Event carries.
type Kind uint8

const (
	// Row is one row change.
	Row Kind = iota + 1
	// Message is a transactional logical decoding message (context).
	Message
)

// Event is one decoded change or context message.
type Event struct {
	Kind    Kind
	XID     uint64 // the transaction; 0 when Debezium gave none
	Prefix  string // of a Message
	Content []byte // of a Message
	Change  *change.Change
}

// Reasons a message is malformed; they label pgtrail_dead_letters_total.
const (
	ReasonNotJSON   = "not_json"
	ReasonUnknownOp = "unknown_op"
	ReasonNoSource  = "no_source"
	ReasonBadValue  = "bad_value"
	// ReasonPanic is a message that made the decoder panic: a pgtrail bug
	// (report it with the message), but the stream goes on past it.
	ReasonPanic = "decoder_panic"
)

// Malformed is the error of a message that is not a Debezium event pgtrail
// can store. The stream goes on past it.
type Malformed struct {
	Reason string
	Err    error
}

func (m *Malformed) Error() string {
	return "malformed Debezium event (" + m.Reason + "): " + m.Err.Error()
}
func (m *Malformed) Unwrap() error { return m.Err }

func malformed(reason, format string, args ...any) error {
	return &Malformed{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// Decoder decodes the messages of one ordered stream. It is not safe for
// concurrent use.
type Decoder struct {
	cfg          Config
	placeholders map[string]bool // every JSON form Debezium gives the placeholder
	schemas      map[string]*rowSchemas
	schemaBytes  int                         // the length of the schemas' keys
	tables       map[[2]string]*catalogTable // schema, table

	txn
}

// txn is the state of the transaction being read, as native capture counts
// it: what a message that fails must leave as it was.
type txn struct {
	inTxn      bool
	xid        uint64
	firstLSN   uint64 // of the transaction's first event, when no sequence says better
	seq        uint32
	lastLSN    uint64
	lastSchema string
	lastTable  string
	occurrence uint32

	// held is a delete that may be the first half of a primary key change.
	held *heldDelete
}

type heldDelete struct {
	ev    Event
	lsn   uint64
	seq   uint32
	after string // the table, for matching the create that follows
}

// NewDecoder returns a Decoder for a new stream.
func NewDecoder(cfg Config) *Decoder {
	if cfg.Placeholder == "" {
		cfg.Placeholder = DefaultPlaceholder
	}
	if cfg.BinaryHandling == "" {
		cfg.BinaryHandling = "bytes"
	}
	return &Decoder{cfg: cfg, placeholders: placeholderForms(cfg.Placeholder), schemas: map[string]*rowSchemas{},
		tables: map[[2]string]*catalogTable{}}
}

// placeholderForms lists the JSON of every value Debezium writes for an
// unavailable value, by column type (UnchangedToastedPlaceholder): the string,
// its bytes in each binary handling mode, text, bytea, integer and uuid
// arrays, and hstore as a map or as JSON text.
func placeholderForms(p string) map[string]bool {
	forms := map[string]bool{}
	add := func(v any) {
		b, _ := json.Marshal(v)
		forms[string(b)] = true
	}
	b := []byte(p)
	strs := []string{p, base64.StdEncoding.EncodeToString(b), base64.URLEncoding.EncodeToString(b), hex.EncodeToString(b)}
	for _, s := range strs {
		add(s)
		add([]string{s})
	}
	ints := make([]int, len(b))
	for i, c := range b {
		ints[i] = int(int8(c))
	}
	add(ints)
	add(map[string]string{p: p})
	hs, _ := json.Marshal(map[string]string{p: p})
	add(string(hs))
	sum := md5.Sum(b) // Java's UUID.nameUUIDFromBytes
	sum[6] = sum[6]&0x0f | 0x30
	sum[8] = sum[8]&0x3f | 0x80
	add([]string{uuid.UUID(sum).String()})
	return forms
}

// isPlaceholder reports whether a column's raw JSON value is the placeholder.
func (d *Decoder) isPlaceholder(raw json.RawMessage) bool {
	if len(raw) == 0 {
		return false
	}
	switch raw[0] {
	case '"':
		return d.placeholders[string(raw)]
	case '[', '{':
		var buf bytes.Buffer
		if json.Compact(&buf, raw) != nil {
			return false
		}
		return d.placeholders[buf.String()]
	}
	return false
}

// payload is a Debezium change event's value.
type payload struct {
	Op      *string         `json:"op"`
	Before  json.RawMessage `json:"before"`
	After   json.RawMessage `json:"after"`
	Source  *source         `json:"source"`
	Message *struct {
		Prefix  string          `json:"prefix"`
		Content json.RawMessage `json:"content"`
	} `json:"message"`
	TsMs   json.RawMessage `json:"ts_ms"`
	Status string          `json:"status"` // transaction metadata events
}

// decodePayload is json.Unmarshal(body, &p) for a body already checked, but
// the row images, most of the payload, are only split off, not decoded
// twice. Keys match as encoding/json matches them, case-insensitively.
func decodePayload(body json.RawMessage) (payload, error) {
	var p payload
	fields, err := columns(body)
	if err != nil {
		return p, err
	}
	for _, f := range fields {
		var err error
		switch {
		case strings.EqualFold(f.name, "before"):
			p.Before = f.raw
		case strings.EqualFold(f.name, "after"):
			p.After = f.raw
		case strings.EqualFold(f.name, "ts_ms"):
			p.TsMs = f.raw
		case strings.EqualFold(f.name, "op"):
			err = json.Unmarshal(f.raw, &p.Op)
		case strings.EqualFold(f.name, "source"):
			err = json.Unmarshal(f.raw, &p.Source)
		case strings.EqualFold(f.name, "message"):
			err = json.Unmarshal(f.raw, &p.Message)
		case strings.EqualFold(f.name, "status"):
			err = json.Unmarshal(f.raw, &p.Status)
		}
		if err != nil {
			return p, fmt.Errorf("%s: %w", f.name, err)
		}
	}
	return p, nil
}

type source struct {
	DB       string  `json:"db"`
	Schema   string  `json:"schema"`
	Table    string  `json:"table"`
	TxID     *uint64 `json:"txId"`
	LSN      *uint64 `json:"lsn"`
	TsMs     *int64  `json:"ts_ms"`
	TsUs     *int64  `json:"ts_us"`
	TsNs     *int64  `json:"ts_ns"`
	Sequence *string `json:"sequence"`
}

// Decode decodes one message of the stream: its key and value as the broker
// holds them (nil for none). It returns the events the message completes:
// none for a tombstone, a heartbeat, a transaction metadata event or a
// non-transactional message. A delete is held back until the next message
// (or Flush) shows whether it is the first half of a primary key change,
// which Debezium splits into a delete and a create and native capture sees
// as one update. A malformed message returns a *Malformed error and leaves
// the stream's state as it was; so does any other error (the catalog could
// not be read, or lacks the event's table or column), after which the
// message must be read again, not skipped. A panic while decoding is such a
// *Malformed error too (ReasonPanic), so that one message cannot stop the
// stream for good.
func (d *Decoder) Decode(key, value []byte) (evs []Event, err error) {
	saved := d.txn
	defer func() {
		if p := recover(); p != nil {
			d.txn = saved
			evs, err = nil, &Malformed{Reason: ReasonPanic,
				Err: fmt.Errorf("the decoder panicked at %s: %v (a pgtrail bug: please report it with this message)", panicSite(), p)}
		}
	}()
	return d.decode(key, value)
}

// panicSite names the function and line that panicked, from inside the
// deferred function that recovered: the first caller of panic outside the
// runtime.
func panicSite() string {
	pc := make([]uintptr, 32)
	frames := runtime.CallersFrames(pc[:runtime.Callers(3, pc)])
	for {
		f, more := frames.Next()
		if !strings.HasPrefix(f.Function, "runtime.") {
			return fmt.Sprintf("%s (%s:%d)", f.Function, filepath.Base(f.File), f.Line)
		}
		if !more {
			return "an unknown place"
		}
	}
}

func (d *Decoder) decode(key, value []byte) ([]Event, error) {
	value = bytes.TrimSpace(value)
	if len(value) == 0 || string(value) == "null" {
		return nil, nil // tombstone
	}
	sch, body, err := envelope(value)
	if err != nil {
		return nil, malformed(ReasonNotJSON, "%v", err)
	}
	var rs *rowSchemas
	if sch != nil {
		if rs, err = d.rowSchemas(sch); err != nil {
			return nil, malformed(ReasonNotJSON, "schema: %v", err)
		}
	}
	if string(bytes.TrimSpace(body)) == "null" {
		return nil, nil // tombstone with schema
	}
	p, err := decodePayload(body)
	if err != nil {
		return nil, malformed(ReasonNotJSON, "%v", err)
	}
	if p.Op == nil {
		if p.Source == nil && (p.TsMs != nil || p.Status != "") {
			return nil, nil // heartbeat or transaction metadata
		}
		return nil, malformed(ReasonUnknownOp, "no op")
	}
	op := *p.Op
	if !strings.Contains("curdtm", op) || len(op) != 1 {
		return nil, malformed(ReasonUnknownOp, "op %q", op)
	}
	if p.Source == nil {
		return nil, malformed(ReasonNoSource, "op %q without a source block", op)
	}
	src := p.Source
	if src.LSN == nil && op != "m" {
		return nil, malformed(ReasonNoSource, "source without lsn")
	}
	if op == "m" {
		return d.message(&p)
	}
	if src.Schema == "" || src.Table == "" {
		return nil, malformed(ReasonNoSource, "source without schema or table")
	}
	for _, f := range [...][2]string{{"db", src.DB}, {"schema", src.Schema}, {"table", src.Table}} {
		if strings.IndexByte(f[1], 0) >= 0 {
			return nil, malformed(ReasonNoSource, "source.%s %q holds a NUL character, which no PostgreSQL name can hold", f[0], f[1])
		}
	}
	r, err := d.row(op, &p, rs, key)
	if err != nil {
		return nil, err
	}
	return d.sequence(r), nil
}

// Flush returns the held delete, if any: call it when the stream is idle.
func (d *Decoder) Flush() []Event {
	if d.held == nil {
		return nil
	}
	ev := d.held.ev
	d.held = nil
	return []Event{ev}
}

func (d *Decoder) message(p *payload) ([]Event, error) {
	if p.Message == nil {
		return nil, malformed(ReasonUnknownOp, "op \"m\" without a message block")
	}
	if p.Source.TxID == nil {
		return nil, nil // non-transactional: never context
	}
	content, err := d.binary(p.Message.Content)
	if err != nil {
		return nil, malformed(ReasonBadValue, "message content: %v", err)
	}
	var out []Event
	out = append(out, d.Flush()...)
	d.enter(*p.Source.TxID, lsnOf(p.Source))
	return append(out, Event{Kind: Message, XID: d.xid, Prefix: p.Message.Prefix, Content: content}), nil
}

func lsnOf(s *source) uint64 {
	if s.LSN == nil {
		return 0
	}
	return *s.LSN
}

// binary decodes a bytes value written by the connector's binary handling mode.
func (d *Decoder) binary(raw json.RawMessage) ([]byte, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, err
	}
	switch d.cfg.BinaryHandling {
	case "hex":
		return hex.DecodeString(s)
	case "base64-url-safe":
		return base64.URLEncoding.DecodeString(s)
	default:
		return base64.StdEncoding.DecodeString(s)
	}
}

// enter moves to transaction xid; a new transaction restarts the counting of
// places and occurrences, as native capture's Begin does.
func (d *Decoder) enter(xid, lsn uint64) {
	if d.inTxn && xid == d.xid {
		return
	}
	d.txn = txn{inTxn: true, xid: xid, firstLSN: lsn, held: d.held}
}

// decoded is a row change before it is placed in the stream.
type decoded struct {
	c       *change.Change
	xid     uint64
	lsn     uint64
	seqHint *uint64 // source.sequence's last commit LSN
}

// sequence places a decoded row in its transaction (place, occurrence, ID)
// and pairs a primary key change's delete and create into one update.
func (d *Decoder) sequence(r decoded) []Event {
	c := r.c
	var out []Event
	if h := d.held; h != nil {
		if c.Operation == change.Create && r.xid == h.ev.XID && r.lsn == h.lsn && h.after == c.Schema+"."+c.Table {
			// Second half of a primary key change: one update, where the
			// delete stood.
			u := h.ev.Change
			u.Operation, u.After, u.UnchangedToast, u.PrimaryKey = change.Update, c.After, c.UnchangedToast, c.PrimaryKey
			d.held = nil
			return []Event{h.ev}
		}
		out = append(out, d.Flush()...)
	}
	d.enter(r.xid, r.lsn)
	if r.lsn == d.lastLSN && c.Schema == d.lastSchema && c.Table == d.lastTable {
		d.occurrence++
	} else {
		d.lastLSN, d.lastSchema, d.lastTable, d.occurrence = r.lsn, c.Schema, c.Table, 0
	}
	c.ID = change.MakeID(c.Database, r.lsn, c.Schema, c.Table, d.cfg.OccurrenceBase+d.occurrence)
	c.LSN, c.Seq = r.lsn, d.seq
	c.CommitLSN = d.firstLSN
	if r.seqHint != nil {
		c.CommitLSN = *r.seqHint
	}
	d.seq++
	ev := Event{Kind: Row, XID: r.xid, Change: c}
	if c.Operation == change.Delete {
		d.held = &heldDelete{ev: ev, lsn: r.lsn, seq: c.Seq, after: c.Schema + "." + c.Table}
		return out
	}
	return append(out, ev)
}

// commitTime is the transaction's commit time: source.ts_us (Debezium
// 2.6+), ts_ns or ts_ms, the time of the commit in the WAL. It is in the
// audit table's key, so it must be the same each time the change is read:
// the envelope's ts_ms, when the connector processed the event, differs when
// the connector streams the change again (after its own restart), and the
// time pgtrail reads it differs on every delivery. An event without a
// source time is malformed.
func commitTime(s *source) (time.Time, error) {
	var t time.Time
	var field string
	var n int64
	switch {
	case s.TsUs != nil:
		field, n, t = "ts_us", *s.TsUs, time.UnixMicro(*s.TsUs)
	case s.TsNs != nil:
		field, n, t = "ts_ns", *s.TsNs, time.UnixMicro(*s.TsNs/1000)
	case s.TsMs != nil:
		field, n, t = "ts_ms", *s.TsMs, time.UnixMilli(*s.TsMs)
	default:
		return t, malformed(ReasonNoSource, "source without ts_ms, ts_us or ts_ns: no commit time, which must come from the event for a replay to be stored once")
	}
	if !values.InTimestampRange(t) {
		return t, malformed(ReasonNoSource, "source.%s %d: a commit time outside PostgreSQL's range (%s)", field, n, values.TimestampRange)
	}
	return t.UTC(), nil
}

// lastCommit reads source.sequence, ["<last commit LSN>", "<LSN>"]: the end
// of the transaction Debezium read before this one.
func lastCommit(s *source) *uint64 {
	if s.Sequence == nil {
		return nil
	}
	var seq []*string
	if json.Unmarshal([]byte(*s.Sequence), &seq) != nil || len(seq) == 0 || seq[0] == nil {
		return nil
	}
	v, err := strconv.ParseUint(*seq[0], 10, 64)
	if err != nil {
		return nil
	}
	return &v
}

var errNotObject = errors.New("not a JSON object")
