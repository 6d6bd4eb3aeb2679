package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/pgtrail/pgtrail/plugins/sdk"
	"github.com/pgtrail/pgtrail/sinks/postgres"
	"github.com/pgtrail/pgtrail/test/pgtest"
)

// The audit-triggers group measures what the Bemi packages' row trigger
// costs pgtrail's own writes: once their migration has run, every table
// carries it, the audit table and each new partition included, unless
// pgtrail takes it off (as it does). The postgres sink, in this process,
// writes the same changes into an audit table with the trigger and into one
// without, in alternating rounds; each variant reports its fastest.

const triggerBatch = 5000

// auditTriggers runs the group.
func (b *bench) auditTriggers(ctx context.Context) error {
	c, err := startServer(nil)
	if err != nil {
		return err
	}
	defer c.Stop()
	url, err := createDatabase(ctx, c, "triggers", "")
	if err != nil {
		return err
	}
	if err := execSQL(ctx, url, "CREATE SCHEMA pgtrail", pgtest.BemiORMMigrationEverySchema); err != nil {
		return err
	}
	n := 20 * triggerBatch
	if b.sizes.appSplit { // the full version
		n *= 4
	}
	names := map[bool]string{true: "audit-bemi-trigger", false: "audit-no-bemi-trigger"}
	best := map[bool]time.Duration{}
	for round := range 2 {
		for _, with := range []bool{true, false} {
			d, err := writeAudit(ctx, url, fmt.Sprintf("trail_%d_%t", round, with), with, n)
			if err != nil {
				b.emit(failed(names[with], err))
				return nil
			}
			if best[with] == 0 || d < best[with] {
				best[with] = d
			}
		}
	}
	with := throughput(names[true], int64(n), best[true])
	with.Note = "the postgres sink writing into an audit table that carries the Bemi packages' row trigger (_bemi_row_trigger_func, plpgsql, once per row)"
	b.emit(with)
	without := throughput(names[false], int64(n), best[false])
	without.Note = fmt.Sprintf("the same changes into an audit table without it, as pgtrail keeps its tables: %.2f× the changes/s of %s",
		*without.ChangesPerS / *with.ChangesPerS, names[true])
	b.emit(without)
	return nil
}

// writeAudit sets up an audit table, gives it the Bemi trigger or not, and
// returns how long the sink takes to write n changes into it, in batches.
func writeAudit(ctx context.Context, url, table string, with bool, n int) (time.Duration, error) {
	raw, _ := json.Marshal(map[string]any{"url": url, "table": table, "partitioning": map[string]any{"interval": "month", "premake": 1}})
	s := postgres.New()
	defer s.Close(ctx)
	if err := s.Configure(ctx, raw); err != nil {
		return 0, err
	}
	if err := s.Setup(ctx); err != nil {
		return 0, err
	}
	// A fresh sink's first batch goes through the staging table (whose
	// making takes the trigger off again); the measured ones are copied.
	if _, err := s.Write(ctx, triggerChanges(1)); err != nil {
		return 0, err
	}
	if with {
		if err := execSQL(ctx, url, "CALL _bemi_create_triggers()"); err != nil {
			return 0, err
		}
	}
	triggers := func() (int64, error) {
		return queryValue[int64](ctx, url, `SELECT count(*) FROM pg_trigger WHERE tgname LIKE '\_bemi%' AND tgrelid IN
			(SELECT relid FROM pg_partition_tree($1::regclass))`, "pgtrail."+table)
	}
	if got, err := triggers(); err != nil || (got > 0) != with {
		return 0, fmt.Errorf("%s has %d Bemi triggers (%v), want them %v", table, got, err, with)
	}
	batches := make([][]*sdk.Change, 0, n/triggerBatch)
	for range n / triggerBatch {
		batches = append(batches, triggerChanges(triggerBatch))
	}
	began := time.Now()
	for _, batch := range batches {
		if _, err := s.Write(ctx, batch); err != nil {
			return 0, err
		}
	}
	took := time.Since(began)
	if got, err := triggers(); err != nil || (got > 0) != with {
		return 0, fmt.Errorf("after the writes %s has %d Bemi triggers (%v), want them %v", table, got, err, with)
	}
	return took, nil
}

// triggerChanges makes n changes of an orders table, committed now.
func triggerChanges(n int) []*sdk.Change {
	now := time.Now()
	out := make([]*sdk.Change, n)
	for i := range out {
		out[i] = &sdk.Change{ID: uuid.New(), Database: "app", Schema: "public", Table: "orders", Operation: "UPDATE",
			PrimaryKey: fmt.Sprint(i), Context: json.RawMessage(fmt.Sprintf(`{"user_id":%d,"endpoint":"/orders/%d"}`, i%100, i)),
			Before:      json.RawMessage(fmt.Sprintf(`{"id":%d,"status":"new","amount":%d.50,"note":"order %d"}`, i, i, i)),
			After:       json.RawMessage(fmt.Sprintf(`{"id":%d,"status":"paid","amount":%d.50,"note":"order %d"}`, i, i, i)),
			CommittedAt: now, QueuedAt: now, TransactionID: uint64(i / 5), LSN: uint64(i), CommitLSN: uint64(i), Seq: uint32(i % 5)}
	}
	return out
}
