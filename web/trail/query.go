package trail

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/core/change"
)

// Filter selects changes; zero fields select everything.
type Filter struct {
	Database      string
	Schema, Table string
	Operations    []change.Operation
	PrimaryKey    *string
	TransactionID *int64
	Since, Until  time.Time       // committed_at in [Since, Until)
	Context       json.RawMessage // a JSON object the change's context contains
	// Q is text searched for in the before and after values, case
	// insensitive. A page examines at most SearchScan changes (see Page.Bounded).
	Q string
	// IDs selects these changes only.
	IDs []uuid.UUID
}

// SearchScan is how many changes one page of a text search examines at most,
// so a search never reads the whole table unasked; the next page goes on
// from where it stopped.
const SearchScan = 50_000

// MaxLimit is the most changes one page holds.
const MaxLimit = 1000

// Key is a change's place in the audit table's order: commit time, then WAL
// position and place in its transaction, then id (unique, and the table's
// identity with committed_at).
type Key struct {
	CommittedAt time.Time
	Position    int64
	Seq         int32
	ID          uuid.UUID
}

// KeyOf returns the place of c.
func KeyOf(c Change) Key { return Key{c.CommittedAt, c.Position, c.Seq, c.ID} }

// Cursor is the opaque text of a key, for next_cursor.
func (k Key) Cursor() string {
	b, _ := json.Marshal([]any{k.CommittedAt.UnixMicro(), k.Position, k.Seq, k.ID})
	return base64.RawURLEncoding.EncodeToString(b)
}

// ParseCursor reads a cursor made by Key.Cursor.
func ParseCursor(s string) (Key, error) {
	bad := errors.New("not a cursor from next_cursor (pass it back unchanged)")
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return Key{}, bad
	}
	var parts []json.RawMessage
	if json.Unmarshal(b, &parts) != nil || len(parts) != 4 {
		return Key{}, bad
	}
	var micros int64
	var k Key
	if json.Unmarshal(parts[0], &micros) != nil || json.Unmarshal(parts[1], &k.Position) != nil ||
		json.Unmarshal(parts[2], &k.Seq) != nil || json.Unmarshal(parts[3], &k.ID) != nil {
		return Key{}, bad
	}
	k.CommittedAt = time.UnixMicro(micros).UTC()
	return k, nil
}

// Order is the direction of a listing.
type Order bool

const (
	NewestFirst Order = false
	OldestFirst Order = true
)

// Page is one page of a listing.
type Page struct {
	Changes []Change
	// Next is where the next page starts; nil on the last page.
	Next *Key
	// Bounded is set when a text search stopped at SearchScan changes
	// before the page was full: Next goes on from there.
	Bounded bool
}

// query builds the WHERE clause of a listing.
type query struct {
	where []string
	args  []any
}

func (q *query) add(cond string, args ...any) {
	for _, a := range args {
		q.args = append(q.args, a)
		cond = strings.Replace(cond, "?", "$"+strconv.Itoa(len(q.args)), 1)
	}
	q.where = append(q.where, cond)
}

func (q *query) sql() string {
	if len(q.where) == 0 {
		return "true"
	}
	return strings.Join(q.where, " AND ")
}

func (f Filter) query() *query {
	q := &query{}
	if f.Database != "" {
		q.add("database = ?", f.Database)
	}
	if f.Schema != "" {
		q.add("schema = ?", f.Schema)
	}
	if f.Table != "" {
		q.add(`"table" = ?`, f.Table)
	}
	if len(f.Operations) > 0 {
		ops := make([]string, len(f.Operations))
		for i, o := range f.Operations {
			ops[i] = string(o)
		}
		q.add("operation = ANY(?)", ops)
	}
	if f.PrimaryKey != nil {
		q.add("primary_key = ?", *f.PrimaryKey)
	}
	if f.TransactionID != nil {
		q.add("transaction_id = ?", *f.TransactionID)
	}
	if !f.Since.IsZero() {
		q.add("committed_at >= ?", f.Since)
	}
	if !f.Until.IsZero() {
		q.add("committed_at < ?", f.Until)
	}
	if len(f.Context) > 0 {
		q.add("context @> ?::jsonb", string(f.Context))
	}
	if len(f.IDs) > 0 {
		ids := make([]string, len(f.IDs))
		for i, id := range f.IDs {
			ids[i] = id.String()
		}
		q.add("id = ANY(?::uuid[])", ids)
	}
	return q
}

// after adds the keyset condition: strictly past k in the listing's order.
// The committed_at bound alone is what the primary key index can use.
func (q *query) after(k *Key, o Order) {
	if k == nil {
		return
	}
	if o == OldestFirst {
		q.add("committed_at >= ?", k.CommittedAt)
		q.add("(committed_at, position, seq, id) > (?, ?, ?, ?::uuid)", k.CommittedAt, k.Position, k.Seq, k.ID.String())
		return
	}
	q.add("committed_at <= ?", k.CommittedAt)
	q.add("(committed_at, position, seq, id) < (?, ?, ?, ?::uuid)", k.CommittedAt, k.Position, k.Seq, k.ID.String())
}

func orderBy(o Order) string {
	if o == OldestFirst {
		return " ORDER BY committed_at, position, seq, id"
	}
	return " ORDER BY committed_at DESC, position DESC, seq DESC, id DESC"
}

// likePattern escapes s for ILIKE and matches it anywhere.
func likePattern(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return "%" + r.Replace(s) + "%"
}

// List returns one page of the changes f selects, in order o, starting past
// cursor (nil: from the start).
func (s *Store) List(ctx context.Context, f Filter, o Order, cursor *Key, limit int) (Page, error) {
	if limit < 1 || limit > MaxLimit {
		return Page{}, fmt.Errorf("limit %d: give 1 to %d", limit, MaxLimit)
	}
	q := f.query()
	q.after(cursor, o)
	sql := "SELECT " + columns + " FROM " + s.target + " WHERE " + q.sql() + orderBy(o)
	if f.Q != "" {
		// Examine at most SearchScan changes in order, then search those.
		q.args = append(q.args, SearchScan, likePattern(f.Q))
		n := len(q.args)
		sql = fmt.Sprintf("SELECT * FROM (%s LIMIT $%d) s WHERE before::text ILIKE $%d OR after::text ILIKE $%d%s",
			sql, n-1, n, n, orderBy(o))
	}
	sql += " LIMIT " + strconv.Itoa(limit+1)
	rows, err := s.pool.Query(ctx, sql, q.args...)
	if err != nil {
		return Page{}, s.wrap("list changes", err)
	}
	changes, err := pgx.CollectRows(rows, scan)
	if err != nil {
		return Page{}, s.wrap("list changes", err)
	}
	page := Page{Changes: changes}
	if len(changes) > limit {
		page.Changes = changes[:limit]
		k := KeyOf(changes[limit-1])
		page.Next = &k
		return page, nil
	}
	if f.Q != "" {
		return s.searchEnd(ctx, f, o, cursor, page)
	}
	return page, nil
}

// searchEnd finds out whether a text search that did not fill its page
// stopped at SearchScan changes, and if so where the next page goes on.
func (s *Store) searchEnd(ctx context.Context, f Filter, o Order, cursor *Key, page Page) (Page, error) {
	f.Q = ""
	q := f.query()
	q.after(cursor, o)
	sql := "SELECT committed_at, position, seq, id FROM " + s.target + " WHERE " + q.sql() + orderBy(o) +
		fmt.Sprintf(" OFFSET %d LIMIT 1", SearchScan-1)
	var k Key
	err := s.pool.QueryRow(ctx, sql, q.args...).Scan(&k.CommittedAt, &k.Position, &k.Seq, &k.ID)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return page, nil // the search reached the end
	case err != nil:
		return Page{}, s.wrap("search changes", err)
	}
	k.CommittedAt = k.CommittedAt.UTC()
	page.Next, page.Bounded = &k, true
	return page, nil
}

// ErrNotFound is returned for a change that is not in the audit table.
var ErrNotFound = errors.New("not found")

// Get returns one change by id.
func (s *Store) Get(ctx context.Context, id uuid.UUID) (Change, error) {
	page, err := s.List(ctx, Filter{IDs: []uuid.UUID{id}}, OldestFirst, nil, 1)
	if err != nil {
		return Change{}, err
	}
	if len(page.Changes) == 0 {
		return Change{}, fmt.Errorf("change %s: %w", id, ErrNotFound)
	}
	return page.Changes[0], nil
}

// All returns every change f selects, oldest first, up to max; more than
// max is an error (for reverts, which must see all of what they undo).
func (s *Store) All(ctx context.Context, f Filter, max int) ([]Change, error) {
	var all []Change
	var cursor *Key
	for {
		page, err := s.List(ctx, f, OldestFirst, cursor, MaxLimit)
		if err != nil {
			return nil, err
		}
		all = append(all, page.Changes...)
		if len(all) > max {
			return nil, fmt.Errorf("more than %d changes selected: narrow the selection", max)
		}
		if page.Next == nil {
			return all, nil
		}
		cursor = page.Next
	}
}
