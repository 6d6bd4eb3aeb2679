package trail

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/core/change"
)

// Record names one row of a source table by its primary key as the audit
// table holds it.
type Record struct {
	Database   string // "" for any
	Schema     string
	Table      string
	PrimaryKey string
}

func (r Record) filter() Filter {
	return Filter{Database: r.Database, Schema: r.Schema, Table: r.Table, PrimaryKey: &r.PrimaryKey}
}

// History returns one page of the record's changes, oldest first.
func (s *Store) History(ctx context.Context, r Record, cursor *Key, limit int) (Page, error) {
	return s.List(ctx, r.filter(), OldestFirst, cursor, limit)
}

// State is a record as it was at a moment.
type State struct {
	// Row is the record's columns then; nil when it did not exist.
	Row map[string]json.RawMessage
	// Change is the change the state is read from (nil when the trail has
	// no change of the record), and Image which of its images: "after"
	// (the last change at or before the moment) or "before" (the first
	// change after it, when the trail has none before).
	Change *Change
	Image  string
	// Unknown lists columns the row had whose value then the trail does not
	// hold (unchanged TOAST values, images without REPLICA IDENTITY FULL).
	Unknown []string
}

// walkBack is how many earlier changes AsOf reads at most to find the value
// of a column an update left unchanged and unsent.
const walkBack = 1000

// AsOf returns the record as it was at the moment at: the state its last
// change at or before then left, or, when the trail has none, the before
// image of its first change after then.
func (s *Store) AsOf(ctx context.Context, r Record, at time.Time) (State, error) {
	q := &query{}
	if r.Database != "" {
		q.add("database = ?", r.Database)
	}
	q.add("schema = ?", r.Schema)
	q.add(`"table" = ?`, r.Table)
	// A TRUNCATE of the table removed the row too.
	q.add("(primary_key = ? OR (primary_key IS NULL AND operation = 'TRUNCATE'))", r.PrimaryKey)
	q.add("committed_at <= ?", at)
	rows, err := s.pool.Query(ctx, "SELECT "+columns+" FROM "+s.target+" WHERE "+q.sql()+orderBy(NewestFirst)+
		fmt.Sprintf(" LIMIT %d", walkBack), q.args...)
	if err != nil {
		return State{}, s.wrap("read record history", err)
	}
	earlier, err := pgx.CollectRows(rows, scan)
	if err != nil {
		return State{}, s.wrap("read record history", err)
	}
	if len(earlier) > 0 {
		return stateAfter(earlier), nil
	}
	f := r.filter()
	f.Since = at
	page, err := s.List(ctx, f, OldestFirst, nil, 1)
	if err != nil {
		return State{}, err
	}
	if len(page.Changes) == 0 {
		return State{}, nil
	}
	next := page.Changes[0]
	st := State{Change: &next, Image: "before"}
	if next.Operation == change.Create {
		return st, nil
	}
	st.Row = Image(next.Before)
	for col := range Image(next.After) {
		if _, ok := st.Row[col]; !ok {
			st.Unknown = append(st.Unknown, col)
		}
	}
	slices.Sort(st.Unknown)
	return st, nil
}

// stateAfter is the state the newest of changes (newest first) left, with
// the values an update did not send taken from the changes before it.
func stateAfter(changes []Change) State {
	last := changes[0]
	st := State{Change: &last, Image: "after"}
	if last.Operation == change.Delete || last.Operation == change.Truncate {
		return st
	}
	st.Row = Image(last.After)
	missing := slices.Clone(last.UnchangedToast)
	for _, c := range changes[1:] {
		if len(missing) == 0 || c.Operation == change.Delete || c.Operation == change.Truncate {
			break
		}
		after, before := Image(c.After), Image(c.Before)
		missing = slices.DeleteFunc(missing, func(col string) bool {
			v, ok := after[col]
			if !ok && c.Operation == change.Update {
				v, ok = before[col] // unchanged by c, so as it was before c
			}
			if ok {
				st.Row[col] = v
			}
			return ok
		})
	}
	st.Unknown = missing
	return st
}
