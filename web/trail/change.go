package trail

import (
	"bytes"
	"encoding/json"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/core/change"
)

// Change is one row of the audit table, under its column names, with the
// columns it changed.
type Change struct {
	ID             uuid.UUID        `json:"id"`
	PrimaryKey     *string          `json:"primary_key"`
	Before         json.RawMessage  `json:"before"`
	After          json.RawMessage  `json:"after"`
	Context        json.RawMessage  `json:"context"`
	Database       string           `json:"database"`
	Schema         string           `json:"schema"`
	Table          string           `json:"table"`
	Operation      change.Operation `json:"operation"`
	CommittedAt    time.Time        `json:"committed_at"`
	QueuedAt       time.Time        `json:"queued_at"`
	CreatedAt      time.Time        `json:"created_at"`
	TransactionID  int64            `json:"transaction_id"`
	Position       int64            `json:"position"`
	Seq            int32            `json:"seq"`
	UnchangedToast []string         `json:"unchanged_toast"`
	// Diff is {column: [before, after]} of the columns the change changed.
	Diff Diff `json:"diff"`
}

// Diff maps each changed column to its value before and after.
type Diff map[string][2]json.RawMessage

// columns is the select list that scan reads, in its order.
const columns = `id, primary_key, before, after, context, database, schema, "table", operation,
	committed_at, queued_at, created_at, transaction_id, position, seq, unchanged_toast`

func scan(row pgx.CollectableRow) (Change, error) {
	var c Change
	var op string
	err := row.Scan(&c.ID, &c.PrimaryKey, &c.Before, &c.After, &c.Context, &c.Database, &c.Schema, &c.Table, &op,
		&c.CommittedAt, &c.QueuedAt, &c.CreatedAt, &c.TransactionID, &c.Position, &c.Seq, &c.UnchangedToast)
	if err != nil {
		return c, err
	}
	c.Operation = change.Operation(op)
	c.CommittedAt, c.QueuedAt, c.CreatedAt = c.CommittedAt.UTC(), c.QueuedAt.UTC(), c.CreatedAt.UTC()
	c.Diff = diff(c)
	return c, nil
}

// Image decodes a before or after image into its columns.
func Image(raw json.RawMessage) map[string]json.RawMessage {
	m := map[string]json.RawMessage{}
	_ = json.Unmarshal(raw, &m) // the sink stores objects; anything else reads as empty
	return m
}

var null = json.RawMessage("null")

// diff lists the columns the change changed. An insert changed every column
// from nothing, a delete every column to nothing. An update changed a column
// whose before and after differ; a column missing from the before image
// (captured without REPLICA IDENTITY FULL) is not listed, since what it held
// is not known.
func diff(c Change) Diff {
	d := Diff{}
	before, after := Image(c.Before), Image(c.After)
	switch c.Operation {
	case change.Create:
		for col, v := range after {
			d[col] = [2]json.RawMessage{null, v}
		}
	case change.Delete:
		for col, v := range before {
			d[col] = [2]json.RawMessage{v, null}
		}
	case change.Update:
		for col, a := range after {
			if b, ok := before[col]; ok && !bytes.Equal(b, a) {
				d[col] = [2]json.RawMessage{b, a}
			}
		}
	}
	return d
}
