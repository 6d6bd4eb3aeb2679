package postgres

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/plugins/sdk"
)

// Archive receives the changes retention removes, before it removes them,
// and says which it holds.
type Archive interface {
	// Write hands over a batch; Flush makes everything handed over durable.
	Write(ctx context.Context, batch []*sdk.Change) error
	Flush(ctx context.Context) error
	// Stored returns the ids of the changes it holds of schema.table
	// committed on day (UTC).
	Stored(ctx context.Context, schema, table string, day time.Time) ([]uuid.UUID, error)
}

// archiveBatch changes are handed to the archive at a time.
const archiveBatch = 1000

// archiveAll archives every change of a detached partition, one table and
// day at a time.
func (p *pass) archiveAll(ctx context.Context, rel string) error {
	rows, err := p.conn.Query(ctx, `SELECT DISTINCT schema::text, "table"::text, date_trunc('day', committed_at, 'UTC') FROM `+rel)
	if err != nil {
		return fmt.Errorf("list the days of %s to archive: %w", rel, err)
	}
	type group struct {
		Schema, Table string
		Day           time.Time
	}
	groups, err := pgx.CollectRows(rows, pgx.RowToStructByPos[group])
	if err != nil {
		return fmt.Errorf("list the days of %s to archive: %w", rel, err)
	}
	for _, g := range groups {
		day := g.Day.UTC()
		if _, err := p.archive(ctx, rel, g.Schema, g.Table, day, day.AddDate(0, 0, 1)); err != nil {
			return err
		}
	}
	return nil
}

// archive makes sure that the archive holds every change of schema.table in
// rel committed on day and before before: it hands over those the archive
// lacks, in the order of their position, flushes, and reads back what the
// archive holds. It returns the ids held, to check deletes against.
//
// The audit table keeps no commit position, so an archived change is keyed
// (see the S3 sink's layout) by its own position and its place in its
// transaction: unique, and the same on every pass.
func (p *pass) archive(ctx context.Context, rel, schema, table string, day, before time.Time) (map[[16]byte]bool, error) {
	what := fmt.Sprintf("changes of %s.%s committed on %s", schema, table, day.Format(time.DateOnly))
	end := minTime(before, day.AddDate(0, 0, 1))
	held, err := p.held(ctx, schema, table, day)
	if err != nil {
		return nil, err
	}
	rows, err := p.conn.Query(ctx, `SELECT id, primary_key, before, after, context, database, schema, "table", operation,
			committed_at, queued_at, transaction_id, position, seq, unchanged_toast
		FROM `+rel+` WHERE schema = $1 AND "table" = $2 AND committed_at >= $3 AND committed_at < $4
		ORDER BY position, seq, id`, schema, table, day, end)
	if err != nil {
		return nil, fmt.Errorf("read %s from %s: %w", what, rel, err)
	}
	var batch []*sdk.Change
	var key string
	written := 0
	var r archivedRow
	_, err = pgx.ForEachRow(rows, r.targets(), func() error {
		if held[r.id] {
			return nil
		}
		// Changes that share a key go in one batch: the archive keeps a key
		// range whole.
		k := fmt.Sprint(r.position, r.seq)
		if len(batch) >= archiveBatch && k != key {
			if err := p.arch.Write(ctx, batch); err != nil {
				return err
			}
			batch = nil
		}
		key = k
		batch = append(batch, r.change())
		written++
		return nil
	})
	if err == nil && len(batch) > 0 {
		err = p.arch.Write(ctx, batch)
	}
	if err == nil {
		err = p.arch.Flush(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("archive %s from %s: %w", what, rel, err)
	}
	if written > 0 {
		if held, err = p.held(ctx, schema, table, day); err != nil {
			return nil, err
		}
	}
	rows, err = p.conn.Query(ctx, `SELECT id FROM `+rel+` WHERE schema = $1 AND "table" = $2 AND committed_at >= $3 AND committed_at < $4`,
		schema, table, day, end)
	if err != nil {
		return nil, fmt.Errorf("read %s from %s: %w", what, rel, err)
	}
	var id [16]byte
	var total, missing int
	if _, err := pgx.ForEachRow(rows, []any{&id}, func() error {
		total++
		if !held[id] {
			missing++
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read %s from %s: %w", what, rel, err)
	}
	if missing > 0 {
		return nil, fmt.Errorf("archive %s: %d of the %d are not in the archive after it took them; nothing of them is removed "+
			"(does the archive hold objects of that day written otherwise?)", what, missing, total)
	}
	p.log.Info("retention: archived", "changes", what, "rows", total, "written", written)
	return held, nil
}

// held reads the ids the archive holds of schema.table on day.
func (p *pass) held(ctx context.Context, schema, table string, day time.Time) (map[[16]byte]bool, error) {
	ids, err := p.arch.Stored(ctx, schema, table, day)
	if err != nil {
		return nil, fmt.Errorf("read what the archive holds of %s.%s on %s: %w", schema, table, day.Format(time.DateOnly), err)
	}
	held := make(map[[16]byte]bool, len(ids))
	for _, id := range ids {
		held[id] = true
	}
	return held, nil
}

// archivedRow is a row of the audit table as archive reads it.
type archivedRow struct {
	id                      uuid.UUID
	primaryKey              *string
	before, after, context  []byte
	database, schema, table string
	operation               string
	committedAt, queuedAt   time.Time
	transactionID, position int64
	seq                     int32
	unchangedToast          []string
}

func (r *archivedRow) targets() []any {
	return []any{&r.id, &r.primaryKey, &r.before, &r.after, &r.context, &r.database, &r.schema, &r.table, &r.operation,
		&r.committedAt, &r.queuedAt, &r.transactionID, &r.position, &r.seq, &r.unchangedToast}
}

// change copies the row into a change record, keyed by its own position.
func (r *archivedRow) change() *sdk.Change {
	c := &sdk.Change{ID: r.id, Database: r.database, Schema: r.schema, Table: r.table, Operation: change.Operation(r.operation),
		Before: slices.Clone(r.before), After: slices.Clone(r.after), Context: slices.Clone(r.context),
		UnchangedToast: slices.Clone(r.unchangedToast), TransactionID: uint64(r.transactionID),
		CommittedAt: r.committedAt, QueuedAt: r.queuedAt, LSN: uint64(r.position), CommitLSN: uint64(r.position), Seq: uint32(r.seq)}
	if r.primaryKey != nil {
		c.PrimaryKey = *r.primaryKey
	}
	return c
}
