// Package change defines the canonical change record that flows through
// pgtrail, whatever the ingress and whatever the sink. It is the one package of
// core that the plugin SDK imports, so it depends on nothing of pgtrail.
package change

import (
	"crypto/sha1"
	"encoding/binary"
	"encoding/json"
	"strconv"
	"time"

	"github.com/google/uuid"
)

// Operation is what happened to a row.
type Operation string

const (
	Create   Operation = "CREATE"
	Update   Operation = "UPDATE"
	Delete   Operation = "DELETE"
	Truncate Operation = "TRUNCATE"
	// DDL is a schema change (source.postgres.ddl): After holds the command
	// tag, the objects and the statement.
	DDL Operation = "DDL"
)

// Change is one committed row change, stitched with its application context.
type Change struct {
	ID        uuid.UUID `json:"id"`
	Database  string    `json:"database"`
	Schema    string    `json:"schema"`
	Table     string    `json:"table"`
	Operation Operation `json:"operation"`
	// PrimaryKey is the row's key as text: the value itself for a one-column
	// key, a JSON array of the values for a composite key, empty when the table
	// has none.
	PrimaryKey string `json:"primary_key,omitempty"`
	// Before and After are JSON objects of column -> value; "{}" when absent.
	Before json.RawMessage `json:"before"`
	After  json.RawMessage `json:"after"`
	// Context is the JSON object stitched from the application; "{}" when none.
	Context json.RawMessage `json:"context"`
	// UnchangedToast names the columns whose value PostgreSQL did not send
	// (unchanged TOAST values with no before image to take them from); they are
	// left out of After.
	UnchangedToast []string `json:"unchanged_toast,omitempty"`

	TransactionID uint64    `json:"transaction_id"`
	CommittedAt   time.Time `json:"committed_at"`
	QueuedAt      time.Time `json:"queued_at"`

	// LSN is the WAL position of the row change itself. Several changes can
	// share one (multi-row inserts, TRUNCATE of several tables).
	LSN uint64 `json:"position"`
	// CommitLSN and Seq give the total order: commit order, then the change's
	// place in its transaction. Both are the same on every re-delivery.
	CommitLSN uint64 `json:"commit_position"`
	Seq       uint32 `json:"seq"`
}

// Empty is the JSON of an empty object, used for absent images and context.
var Empty = json.RawMessage("{}")

// namespace roots the deterministic change IDs.
var namespace = uuid.MustParse("6f1d3a0e-6b8e-4f57-9c1e-5e0c2b7a9d41")

// MakeID derives the change's identity from what every ingress can see of it
// and what never changes on re-delivery: the database, the change's LSN, its
// table, and its occurrence among the changes of that table at that LSN (the
// rows of one multi-row insert share an LSN). Read again, natively or through
// Debezium, a change gets the same ID, so sinks can write idempotently.
func MakeID(database string, lsn uint64, schema, table string, occurrence uint32) uuid.UUID {
	// uuid.NewSHA1(namespace, name), computed without its allocations (a
	// hasher and a digest per change): one per row change adds up.
	var stack [160]byte
	b := append(stack[:0], namespace[:]...)
	b = append(b, database...)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint64(b, lsn)
	b = append(b, schema...)
	b = append(b, 0)
	b = append(b, table...)
	b = append(b, 0)
	b = strconv.AppendUint(b, uint64(occurrence), 10)
	sum := sha1.Sum(b)
	var id uuid.UUID
	copy(id[:], sum[:])
	id[6] = id[6]&0x0f | 0x50 // version 5
	id[8] = id[8]&0x3f | 0x80 // RFC 4122 variant
	return id
}
