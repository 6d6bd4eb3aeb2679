package pglogrepl

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"time"

	repl "github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/pipeline"
	"github.com/pgtrail/pgtrail/core/values"
)

// relation is what pgtrail knows of a published table.
type relation struct {
	schema, table string
	store         bool // matched by the include and exclude patterns
	columns       []string
	names         [][]byte // `"column":` per column, ready to append
	oids          []uint32
	key           []int // columns of the primary key (or replica identity index)
}

// decoder turns pgoutput messages into pipeline events. It keeps the state
// of the one transaction being streamed.
type decoder struct {
	// held is how long capture held back the WAL being decoded, while it
	// decodes what came in during a coalescing hold; zero otherwise.
	held     time.Duration
	database string
	cfg      config.Postgres
	side     *pgx.Conn
	timeout  time.Duration // bounds each query on side
	own      map[tableName]bool
	log      *slog.Logger
	types    *Types
	rels     map[uint32]*relation
	rowMsg   rowMessage // reused for every insert, update and delete
	// maxValue caps a text value (LimitValues): a longer one becomes a
	// marker here, before it is ever escaped into an image. 0: no cap.
	maxValue int
	capped   func() // counts a value capped; may be nil

	inTxn      bool
	xid        uint64
	commitLSN  repl.LSN
	commitTime time.Time
	seq        uint32
	lastLSN    repl.LSN
	lastRel    uint32
	occurrence uint32
	clock      *clock // where commit times go, for the lag in seconds
}

func newDecoder(database string, cfg config.Postgres, side *pgx.Conn, timeout time.Duration, own map[tableName]bool, log *slog.Logger) *decoder {
	d := &decoder{database: database, cfg: cfg, side: side, timeout: timeout, own: own, log: log, rels: map[uint32]*relation{}}
	d.types = NewTypes(d.resolveType)
	return d
}

func (d *decoder) decode(ctx context.Context, xld repl.XLogData, emit func(pipeline.Event) error) error {
	if len(xld.WALData) > 0 && isRowMessage(xld.WALData[0]) {
		m, err := d.rowMsg.parse(xld.WALData)
		if err != nil {
			return fmt.Errorf("parse pgoutput message at %s: %w", xld.WALStart, err)
		}
		return d.row(ctx, xld.WALStart, m.relID, m.op, oldImage{m.old, m.oldKeyOnly}, m.new, emit)
	}
	msg, err := parseV2(xld.WALData)
	if err != nil {
		return fmt.Errorf("parse pgoutput message at %s: %w", xld.WALStart, err)
	}
	switch m := msg.(type) {
	case *repl.RelationMessageV2:
		return d.relation(ctx, &m.RelationMessage)
	case *repl.BeginMessage:
		d.inTxn, d.xid, d.commitLSN, d.commitTime, d.seq = true, uint64(m.Xid), m.FinalLSN, m.CommitTime, 0
		d.lastLSN, d.lastRel = 0, 0
		return emit(pipeline.Event{Kind: pipeline.Begin, XID: d.xid, Held: d.held})
	case *repl.CommitMessage:
		d.inTxn = false
		d.clock.mark(m.TransactionEndLSN, d.commitTime)
		return emit(pipeline.Event{Kind: pipeline.Commit, XID: d.xid, Position: m.TransactionEndLSN})
	case *repl.LogicalDecodingMessageV2:
		if m.Prefix == HeartbeatPrefix {
			return d.heartbeat(xld.WALStart, m.Transactional, m.Content, emit)
		}
		if !m.Transactional || !d.inTxn {
			return nil // context is transactional; anything else is not ours
		}
		// Change places the message in the stream, for sinks that republish
		// messages (pipeline.Options.PassMessages); its LSN is the message's,
		// the end of its WAL record.
		return emit(pipeline.Event{Kind: pipeline.Message, XID: d.xid, Prefix: m.Prefix, Content: bytes.Clone(m.Content), // the receive buffer is reused
			Change: &change.Change{Database: d.database, TransactionID: d.xid, CommittedAt: d.commitTime,
				LSN: uint64(xld.WALStart), CommitLSN: uint64(d.commitLSN), Seq: d.seq}})
	case *repl.TruncateMessageV2:
		for _, id := range m.RelationIDs {
			if err := d.row(ctx, xld.WALStart, id, change.Truncate, oldImage{}, nil, emit); err != nil {
				return err
			}
		}
	}
	return nil // type and origin messages carry nothing pgtrail stores
}

// parseV2 is repl.ParseV2, which panics on some malformed messages (a
// logical message's length past its end): an error instead. A truncate's
// relation count sizes an allocation before it is read (up to 16 GB, which
// would end the process): it is checked against the message's length first.
func parseV2(data []byte) (msg repl.Message, err error) {
	if len(data) >= 5 && data[0] == 'T' && uint64(len(data)) < 6+4*uint64(binary.BigEndian.Uint32(data[1:])) {
		return nil, fmt.Errorf("malformed message: truncate of %d relations in %d bytes", binary.BigEndian.Uint32(data[1:]), len(data))
	}
	defer func() {
		if p := recover(); p != nil {
			msg, err = nil, fmt.Errorf("malformed message: %v", p)
		}
	}()
	return repl.ParseV2(data, false)
}

// relation records a table's shape. pgoutput sends it before the first change
// of the table on this connection and again after every ALTER TABLE.
func (d *decoder) relation(ctx context.Context, m *repl.RelationMessage) error {
	r := &relation{
		schema: m.Namespace, table: m.RelationName,
		store: m.Namespace != OwnSchema && d.cfg.Match(m.Namespace, m.RelationName),
	}
	for i, c := range m.Columns {
		r.columns = append(r.columns, c.Name)
		r.names = append(r.names, append(values.AppendString(nil, c.Name), ':'))
		r.oids = append(r.oids, c.DataType)
		// Replica identity columns are flagged; with REPLICA IDENTITY FULL
		// that is every column, so the primary key comes from the catalog.
		if c.Flags&1 != 0 && m.ReplicaIdentity != 'f' {
			r.key = append(r.key, i)
		}
	}
	if r.store {
		// pgtrail's own audit table may sit in a captured schema: its rows
		// are decoded like any other, but storing them would loop forever.
		qctx, cancel := context.WithTimeout(ctx, d.timeout)
		own, err := isAuditTable(qctx, d.side, d.own, m.RelationID, m.Namespace, m.RelationName)
		cancel()
		if err != nil {
			return err
		}
		r.store = !own
	}
	if m.ReplicaIdentity != 'f' && r.store && wantsFull(d.cfg) {
		d.fullOnFirstSight(ctx, m.RelationID, r)
	}
	if m.ReplicaIdentity == 'f' && r.store {
		key, err := d.primaryKey(ctx, m.RelationID, m.Columns)
		if err != nil {
			return err
		}
		r.key = key
	}
	d.rels[m.RelationID] = r
	return nil
}

func (d *decoder) primaryKey(ctx context.Context, relid uint32, cols []*repl.RelationMessageColumn) ([]int, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	rows, err := d.side.Query(ctx, `SELECT a.attname FROM pg_index i
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
		WHERE i.indrelid = $1 AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)`, relid)
	if err != nil {
		return nil, fmt.Errorf("look up primary key of relation %d: %w", relid, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("look up primary key of relation %d: %w", relid, err)
	}
	var key []int
	for _, n := range names {
		for i, c := range cols {
			if c.Name == n {
				key = append(key, i)
			}
		}
	}
	return key, nil
}

func (d *decoder) resolveType(ctx context.Context, oid uint32) (TypeInfo, error) {
	var info TypeInfo
	var typtype, category string
	var base, elem uint32
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	err := d.side.QueryRow(ctx, "SELECT typtype::text, typcategory::text, typbasetype, typelem FROM pg_type WHERE oid = $1", oid).
		Scan(&typtype, &category, &base, &elem)
	if err != nil {
		return info, fmt.Errorf("look up type %d: %w", oid, err)
	}
	info.Kind = typtype[0]
	info.Base = base
	if category == "A" && elem != 0 {
		info.IsArray, info.Base = true, elem
	}
	return info, nil
}

// oldImage is the old tuple of an update or delete: the whole row with
// REPLICA IDENTITY FULL, or only the key, whose other columns are sent as
// NULLs that must not be stored as if they were values.
type oldImage struct {
	tuple   *repl.TupleData
	keyOnly bool
}

// row emits one row change. Changes of tables that are not stored are still
// emitted (as Skip) so that the stitcher sees every row of the transaction.
func (d *decoder) row(ctx context.Context, lsn repl.LSN, relID uint32, op change.Operation,
	old oldImage, newT *repl.TupleData, emit func(pipeline.Event) error) error {
	r, ok := d.rels[relID]
	if !ok {
		return fmt.Errorf("row change at %s for unknown relation %d: the stream is out of step; restart pgtrail", lsn, relID)
	}
	if lsn == d.lastLSN && relID == d.lastRel {
		d.occurrence++
	} else {
		d.lastLSN, d.lastRel, d.occurrence = lsn, relID, 0
	}
	if !r.store {
		return emit(pipeline.Event{Kind: pipeline.Row, XID: d.xid, Skip: true})
	}
	// seq counts stored changes only, as a Debezium connector that sends
	// just these tables does, so both ingresses give the same numbers.
	seq := d.seq
	d.seq++
	c := &change.Change{
		ID:       change.MakeID(d.database, uint64(lsn), r.schema, r.table, d.occurrence),
		Database: d.database, Schema: r.schema, Table: r.table, Operation: op,
		Before: change.Empty, After: change.Empty,
		TransactionID: d.xid, CommittedAt: d.commitTime, QueuedAt: time.Now(),
		LSN: uint64(lsn), CommitLSN: uint64(d.commitLSN), Seq: seq,
	}
	var err error
	oldT := old.tuple
	if oldT != nil {
		if c.Before, _, err = d.image(ctx, r, oldT, nil, old.keyOnly); err != nil {
			return err
		}
	}
	if newT != nil {
		full := oldT
		if old.keyOnly {
			full = nil
		}
		if c.After, c.UnchangedToast, err = d.image(ctx, r, newT, full, false); err != nil {
			return err
		}
	}
	keyT := newT
	if keyT == nil {
		keyT = oldT
	}
	if keyT != nil {
		if c.PrimaryKey, err = d.key(ctx, r, keyT); err != nil {
			return err
		}
	}
	return emit(pipeline.Event{Kind: pipeline.Row, XID: d.xid, Change: c})
}

// image renders a tuple as a JSON object. A column PostgreSQL did not send
// (an unchanged TOAST value) is taken from the old tuple when it has it
// (REPLICA IDENTITY FULL); otherwise it is left out and named in toast.
func (d *decoder) image(ctx context.Context, r *relation, t, old *repl.TupleData, keyOnly bool) (json.RawMessage, []string, error) {
	// Room for the names and values as sent, plus some for quoting and
	// escaping, so that the buffer rarely grows.
	size := 2
	for i, col := range t.Columns {
		if i >= len(r.names) {
			break
		}
		n := len(col.Data)
		if d.over(r, i, col) {
			n = markerSize
		}
		size += len(r.names[i]) + n + 8
	}
	buf := make([]byte, 0, size+size/8)
	buf = append(buf, '{')
	var toast []string
	first := true
	for i, col := range t.Columns {
		if i >= len(r.names) {
			break
		}
		if keyOnly && !slices.Contains(r.key, i) {
			continue
		}
		if col.DataType == repl.TupleDataTypeToast {
			if old != nil && i < len(old.Columns) && old.Columns[i].DataType == repl.TupleDataTypeText {
				col = old.Columns[i]
			} else {
				toast = append(toast, r.columns[i])
				continue
			}
		}
		if !first {
			buf = append(buf, ',')
		}
		first = false
		buf = append(buf, r.names[i]...)
		var err error
		if buf, err = d.value(ctx, buf, r, i, col); err != nil {
			return nil, nil, err
		}
	}
	buf = append(buf, '}')
	return buf, toast, nil
}

func (d *decoder) value(ctx context.Context, buf []byte, r *relation, i int, col *repl.TupleDataColumn) ([]byte, error) {
	switch col.DataType {
	case repl.TupleDataTypeNull:
		return append(buf, "null"...), nil
	case repl.TupleDataTypeText:
		if d.over(r, i, col) {
			return d.tooLong(buf, r, i, col.Data), nil
		}
		out, err := d.types.Append(ctx, buf, r.oids[i], col.Data)
		if err != nil {
			return nil, fmt.Errorf("decode %s.%s column %d (type %d): %w", r.schema, r.table, i+1, r.oids[i], err)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("decode %s.%s column %d: unexpected tuple data kind %q", r.schema, r.table, i+1, col.DataType)
	}
}

// markerSize is room in an image for a marker.
const markerSize = 144

// over says whether column i holds a text value longer than the cap.
// Only string types are capped here, whose JSON string stands for exactly
// their text; any other value is capped after decoding, by the pipeline
// (values.Storable), with the same marker.
func (d *decoder) over(r *relation, i int, col *repl.TupleDataColumn) bool {
	if d.maxValue <= 0 || len(col.Data) <= d.maxValue || col.DataType != repl.TupleDataTypeText {
		return false
	}
	k, ok := builtinKind(r.oids[i])
	return ok && k == kindString
}

// tooLong appends the marker that stands for text, as values.Storable
// makes for a string over its limit, and counts it.
func (d *decoder) tooLong(buf []byte, r *relation, i int, text []byte) []byte {
	h := sha256.New()
	h.Write(text)
	if d.capped != nil {
		d.capped()
	}
	d.log.Warn("value longer than pipeline.max_value_bytes; stored as a marker with its size and SHA-256",
		"table", r.schema+"."+r.table, "column", r.columns[i], "bytes", len(text), "max_value_bytes", d.maxValue)
	return append(buf, values.Marker(values.StringTooLong.String(), len(text), h, "")...)
}

// key renders the primary key: the value's text for a one-column key, a JSON
// array of the values for a composite key.
func (d *decoder) key(ctx context.Context, r *relation, t *repl.TupleData) (string, error) {
	if len(r.key) == 0 {
		return "", nil
	}
	if len(r.key) == 1 {
		i := r.key[0]
		if i < len(t.Columns) && t.Columns[i].DataType == repl.TupleDataTypeText {
			return string(t.Columns[i].Data), nil
		}
		return "", nil
	}
	buf := []byte{'['}
	for n, i := range r.key {
		if n > 0 {
			buf = append(buf, ',')
		}
		if i >= len(t.Columns) {
			buf = append(buf, "null"...)
			continue
		}
		var err error
		if buf, err = d.value(ctx, buf, r, i, t.Columns[i]); err != nil {
			return "", err
		}
	}
	return string(append(buf, ']')), nil
}
