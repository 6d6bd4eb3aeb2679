package s3

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/pgtrail/pgtrail/plugins/sdk"
)

// Both formats carry the audit table's columns (design §5), plus seq and
// unchanged_toast as the PostgreSQL sink stores them, and commit_position: the
// stream-order key that object names are made of (see layout.go).

// encoder turns a run of changes into an object body.
type encoder interface {
	ext() string
	contentType() string
	encode(run []*sdk.Change, createdAt time.Time) ([]byte, error)
}

func encoderFor(format string) encoder {
	if format == "parquet" {
		return parquetEncoder{}
	}
	return jsonlEncoder{}
}

// jsonlEncoder writes gzip-compressed JSON lines: one object per change, the
// JSON columns as JSON values, timestamps as ISO 8601 strings in UTC.
type jsonlEncoder struct{}

func (jsonlEncoder) ext() string         { return "jsonl.gz" }
func (jsonlEncoder) contentType() string { return "application/x-ndjson" }

func (jsonlEncoder) encode(run []*sdk.Change, createdAt time.Time) ([]byte, error) {
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	var line []byte
	for _, c := range run {
		line = appendLine(line[:0], c, createdAt)
		if _, err := zw.Write(line); err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	return out.Bytes(), nil
}

func appendLine(b []byte, c *sdk.Change, createdAt time.Time) []byte {
	b = append(b, `{"id":`...)
	b = sdk.AppendJSONString(b, c.ID.String())
	b = append(b, `,"primary_key":`...)
	if c.PrimaryKey == "" {
		b = append(b, "null"...)
	} else {
		b = sdk.AppendJSONString(b, c.PrimaryKey)
	}
	b = append(b, `,"before":`...)
	b = appendJSON(b, c.Before)
	b = append(b, `,"after":`...)
	b = appendJSON(b, c.After)
	b = append(b, `,"context":`...)
	b = appendJSON(b, c.Context)
	b = append(b, `,"database":`...)
	b = sdk.AppendJSONString(b, c.Database)
	b = append(b, `,"schema":`...)
	b = sdk.AppendJSONString(b, c.Schema)
	b = append(b, `,"table":`...)
	b = sdk.AppendJSONString(b, c.Table)
	b = append(b, `,"operation":`...)
	b = sdk.AppendJSONString(b, string(c.Operation))
	b = append(b, `,"committed_at":`...)
	b = appendUTC(b, c.CommittedAt)
	b = append(b, `,"queued_at":`...)
	b = appendUTC(b, c.QueuedAt)
	b = append(b, `,"created_at":`...)
	b = appendUTC(b, createdAt)
	b = append(b, `,"transaction_id":`...)
	b = strconv.AppendUint(b, c.TransactionID, 10)
	b = append(b, `,"position":`...)
	b = strconv.AppendUint(b, c.LSN, 10)
	b = append(b, `,"commit_position":`...)
	b = strconv.AppendUint(b, c.CommitLSN, 10)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, uint64(c.Seq), 10)
	b = append(b, `,"unchanged_toast":`...)
	if len(c.UnchangedToast) == 0 {
		b = append(b, "null"...)
	} else {
		for i, col := range c.UnchangedToast {
			b = append(b, "[,"[min(i, 1)])
			b = sdk.AppendJSONString(b, col)
		}
		b = append(b, ']')
	}
	return append(b, "}\n"...)
}

// appendUTC appends t as an ISO 8601 JSON string in UTC, microseconds kept
// and trailing zeros trimmed, as the change record's timestamps are.
func appendUTC(b []byte, t time.Time) []byte {
	return t.UTC().AppendFormat(b, `"2006-01-02T15:04:05.999999Z"`)
}

// appendJSON appends raw JSON on one line ({} when absent). JSON that does not
// parse is kept as a string rather than break the line it is on.
func appendJSON(b []byte, raw json.RawMessage) []byte {
	if len(raw) == 0 {
		return append(b, "{}"...)
	}
	buf := bytes.NewBuffer(b)
	if err := json.Compact(buf, raw); err != nil {
		return sdk.AppendJSONString(b, string(raw))
	}
	return buf.Bytes()
}

// parquetEncoder writes one Parquet file (zstd) per object; the JSON columns
// are strings with the JSON logical type, timestamps are UTC microseconds.
type parquetEncoder struct{}

func (parquetEncoder) ext() string         { return "parquet" }
func (parquetEncoder) contentType() string { return "application/vnd.apache.parquet" }

// Row is one change as a Parquet row: the audit table's columns.
type Row struct {
	ID             string    `parquet:"id"`
	PrimaryKey     *string   `parquet:"primary_key,optional"`
	Before         string    `parquet:"before,json"`
	After          string    `parquet:"after,json"`
	Context        string    `parquet:"context,json"`
	Database       string    `parquet:"database,dict"`
	Schema         string    `parquet:"schema,dict"`
	Table          string    `parquet:"table,dict"`
	Operation      string    `parquet:"operation,dict"`
	CommittedAt    time.Time `parquet:"committed_at,timestamp(microsecond)"`
	QueuedAt       time.Time `parquet:"queued_at,timestamp(microsecond)"`
	CreatedAt      time.Time `parquet:"created_at,timestamp(microsecond)"`
	TransactionID  int64     `parquet:"transaction_id"`
	Position       int64     `parquet:"position"`
	CommitPosition int64     `parquet:"commit_position"`
	Seq            int32     `parquet:"seq"`
	UnchangedToast []string  `parquet:"unchanged_toast,list"`
}

func (parquetEncoder) encode(run []*sdk.Change, createdAt time.Time) ([]byte, error) {
	rows := make([]Row, len(run))
	for i, c := range run {
		r := Row{
			ID: c.ID.String(), Before: jsonText(c.Before), After: jsonText(c.After), Context: jsonText(c.Context),
			Database: c.Database, Schema: c.Schema, Table: c.Table, Operation: string(c.Operation),
			CommittedAt: c.CommittedAt.UTC(), QueuedAt: c.QueuedAt.UTC(), CreatedAt: createdAt,
			TransactionID: int64(c.TransactionID), Position: int64(c.LSN), CommitPosition: int64(c.CommitLSN),
			Seq: int32(c.Seq), UnchangedToast: c.UnchangedToast,
		}
		if c.PrimaryKey != "" {
			r.PrimaryKey = &c.PrimaryKey
		}
		rows[i] = r
	}
	var out bytes.Buffer
	w := parquet.NewGenericWriter[Row](&out, parquet.Compression(&parquet.Zstd))
	if _, err := w.Write(rows); err != nil {
		return nil, fmt.Errorf("parquet: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("parquet: %w", err)
	}
	return out.Bytes(), nil
}

func jsonText(raw json.RawMessage) string {
	if len(raw) == 0 {
		return "{}"
	}
	return string(raw)
}
