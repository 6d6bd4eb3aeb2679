package pglogrepl

import (
	"encoding/binary"
	"errors"
	"fmt"

	repl "github.com/jackc/pglogrepl"

	"github.com/pgtrail/pgtrail/core/change"
)

// rowMessage is a pgoutput insert, update or delete, parsed without copying
// and into storage reused from one message to the next: its values point
// into the receive buffer, valid until the next message is read, and
// decoding a row copies whatever it keeps. (repl.ParseV2 allocates every
// column and every value of every row, a fifth of what capture allocated.)
type rowMessage struct {
	op         change.Operation
	relID      uint32
	old, new   *repl.TupleData // nil when the message has none
	oldKeyOnly bool            // old holds only the replica identity columns

	tuples  [2]repl.TupleData
	columns [2][]repl.TupleDataColumn
}

func isRowMessage(b byte) bool { return b == 'I' || b == 'U' || b == 'D' }

var errShort = errors.New("message too short")

// parse parses a message of protocol version 2 outside a streamed
// transaction, laid out as
//
//	'I' relid 'N' tuple | 'U' relid ['K'|'O' tuple] 'N' tuple | 'D' relid ('K'|'O') tuple
func (m *rowMessage) parse(src []byte) (*rowMessage, error) {
	if len(src) < 6 {
		return nil, errShort
	}
	switch src[0] {
	case 'I':
		m.op = change.Create
	case 'U':
		m.op = change.Update
	default:
		m.op = change.Delete
	}
	m.relID = binary.BigEndian.Uint32(src[1:])
	m.old, m.new, m.oldKeyOnly = nil, nil, false
	off := 5
	if kind := src[off]; kind == 'K' || kind == 'O' {
		if src[0] == 'I' {
			return nil, fmt.Errorf("insert with an old tuple (%q)", kind)
		}
		n, err := m.tuple(0, src[off+1:])
		if err != nil {
			return nil, err
		}
		m.old, m.oldKeyOnly = &m.tuples[0], kind == 'K'
		off += 1 + n
	} else if src[0] == 'D' {
		return nil, fmt.Errorf("delete without an old tuple (%q)", kind)
	}
	if src[0] == 'D' {
		return m, nil
	}
	if off >= len(src) || src[off] != 'N' {
		return nil, errors.New("no new tuple")
	}
	if _, err := m.tuple(1, src[off+1:]); err != nil {
		return nil, err
	}
	m.new = &m.tuples[1]
	return m, nil
}

// tuple parses TupleData into tuples[i] and returns its length.
func (m *rowMessage) tuple(i int, src []byte) (int, error) {
	if len(src) < 2 {
		return 0, errShort
	}
	n := int(binary.BigEndian.Uint16(src))
	if cap(m.columns[i]) < n {
		m.columns[i] = make([]repl.TupleDataColumn, n)
	}
	cols := m.columns[i][:n]
	t := &m.tuples[i]
	t.ColumnNum, t.Columns = uint16(n), t.Columns[:0]
	off := 2
	for j := range cols {
		if off >= len(src) {
			return 0, errShort
		}
		c := &cols[j]
		*c = repl.TupleDataColumn{DataType: src[off]}
		off++
		switch c.DataType {
		case repl.TupleDataTypeText, repl.TupleDataTypeBinary:
			if off+4 > len(src) {
				return 0, errShort
			}
			c.Length = binary.BigEndian.Uint32(src[off:])
			off += 4
			if uint64(off)+uint64(c.Length) > uint64(len(src)) {
				return 0, errShort
			}
			c.Data = src[off : off+int(c.Length) : off+int(c.Length)]
			off += int(c.Length)
		case repl.TupleDataTypeNull, repl.TupleDataTypeToast:
		default:
			return 0, fmt.Errorf("column %d: unknown tuple data kind %q", j+1, c.DataType)
		}
		t.Columns = append(t.Columns, c)
	}
	return off, nil
}
