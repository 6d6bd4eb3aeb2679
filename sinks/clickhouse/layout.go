package clickhouse

import (
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/pgtrail/pgtrail/plugins/sdk"
)

// layout is how the table stores timestamps, decided when the table is made
// and read back from its columns afterwards, so an old table keeps working
// after the server is upgraded.
type layout int

const (
	// modern: committed_at, queued_at and created_at are DateTime64(6, 'UTC')
	// (ClickHouse 20.1 and later), names and schema LowCardinality(String).
	modern layout = iota + 1
	// legacy, for servers without DateTime64 (Debian's 18.16): the three
	// timestamps are DateTime('UTC'), to the second, and committed_at_us and
	// queued_at_us hold the exact times as Unix microseconds (UInt64).
	legacy
)

// layoutFor picks the layout of a new table by the server's version.
func layoutFor(version string) layout {
	major, _ := strconv.Atoi(strings.SplitN(version, ".", 2)[0])
	if major >= 20 {
		return modern
	}
	return legacy
}

// layoutOf tells the layout of an existing table from its columns.
func layoutOf(cols map[string]string) (layout, error) {
	for _, c := range []string{"id", "primary_key", "before", "after", "context", "database", "schema", "table",
		"operation", "committed_at", "queued_at", "created_at", "transaction_id", "position", "seq", "unchanged_toast"} {
		if _, ok := cols[c]; !ok {
			return 0, errors.New("it has no column " + c + ": it was not made by pgtrail; choose another config.table")
		}
	}
	if _, ok := cols["committed_at_us"]; ok {
		return legacy, nil
	}
	if strings.HasPrefix(cols["committed_at"], "DateTime64") {
		return modern, nil
	}
	return 0, errors.New("committed_at is " + cols["committed_at"] + " and there is no committed_at_us: it was not made by pgtrail; choose another config.table")
}

// tableDDL is the table. ReplacingMergeTree keeps one row per sorting key
// within a partition; a change keeps its committed_at, hence its monthly
// partition, and its id, so a replayed change replaces its first copy.
const tableDDL = `CREATE TABLE IF NOT EXISTS {target} (
	"id" UUID,
	"primary_key" String,
	"before" String,
	"after" String,
	"context" String,
	"database" {name},
	"schema" {name},
	"table" {name},
	"operation" Enum8('CREATE' = 1, 'UPDATE' = 2, 'DELETE' = 3, 'TRUNCATE' = 4),
	"committed_at" {time},
	"queued_at" {time},
	"created_at" {time},{micros}
	"transaction_id" UInt64,
	"position" UInt64,
	"seq" UInt32,
	"unchanged_toast" Array(String)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM("committed_at")
ORDER BY ("schema", "table", "primary_key", "id")`

func createTable(target string, l layout) string {
	r := strings.NewReplacer("{target}", target, "{name}", "LowCardinality(String)", "{time}", "DateTime64(6, 'UTC')", "{micros}", "")
	if l == legacy {
		r = strings.NewReplacer("{target}", target, "{name}", "String", "{time}", "DateTime('UTC')",
			"{micros}", "\n\t\"committed_at_us\" UInt64,\n\t\"queued_at_us\" UInt64,")
	}
	return r.Replace(tableDDL)
}

// appendRow appends one change as a JSONEachRow line. The JSON columns are
// strings holding the JSON text; a change without a key has primary_key "".
func (l layout) appendRow(b []byte, c *sdk.Change, createdAt time.Time) []byte {
	b = append(b, `{"id":"`...)
	b = append(b, c.ID.String()...)
	b = append(b, `","primary_key":`...)
	b = sdk.AppendJSONString(b, c.PrimaryKey)
	b = append(b, `,"before":`...)
	b = sdk.AppendJSONString(b, jsonText(c.Before))
	b = append(b, `,"after":`...)
	b = sdk.AppendJSONString(b, jsonText(c.After))
	b = append(b, `,"context":`...)
	b = sdk.AppendJSONString(b, jsonText(c.Context))
	b = append(b, `,"database":`...)
	b = sdk.AppendJSONString(b, c.Database)
	b = append(b, `,"schema":`...)
	b = sdk.AppendJSONString(b, c.Schema)
	b = append(b, `,"table":`...)
	b = sdk.AppendJSONString(b, c.Table)
	b = append(b, `,"operation":`...)
	b = sdk.AppendJSONString(b, string(c.Operation))
	b = l.appendTime(b, "committed_at", c.CommittedAt, true)
	b = l.appendTime(b, "queued_at", c.QueuedAt, true)
	b = l.appendTime(b, "created_at", createdAt, false)
	b = append(b, `,"transaction_id":`...)
	b = strconv.AppendUint(b, c.TransactionID, 10)
	b = append(b, `,"position":`...)
	b = strconv.AppendUint(b, c.LSN, 10)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, uint64(c.Seq), 10)
	b = append(b, `,"unchanged_toast":[`...)
	for i, col := range c.UnchangedToast {
		if i > 0 {
			b = append(b, ',')
		}
		b = sdk.AppendJSONString(b, col)
	}
	return append(b, "]}\n"...)
}

// appendTime appends a timestamp as ClickHouse reads it in the column's
// time zone (UTC): "2006-01-02 15:04:05.999999", or to the second with the
// microseconds in <name>_us on the legacy layout.
func (l layout) appendTime(b []byte, name string, t time.Time, exact bool) []byte {
	t = t.UTC()
	b = append(b, `,"`...)
	b = append(b, name...)
	b = append(b, `":"`...)
	if l == modern {
		b = t.AppendFormat(b, "2006-01-02 15:04:05.000000")
		return append(b, '"')
	}
	b = t.AppendFormat(b, "2006-01-02 15:04:05")
	b = append(b, '"')
	if exact {
		b = append(b, `,"`...)
		b = append(b, name...)
		b = append(b, `_us":`...)
		b = strconv.AppendInt(b, t.UnixMicro(), 10)
	}
	return b
}

func jsonText(raw []byte) string {
	if len(raw) == 0 {
		return "{}"
	}
	return string(raw)
}
