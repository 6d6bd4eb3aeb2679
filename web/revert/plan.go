package revert

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/web/trail"
)

// Plan is the undoing of a set of changes.
type Plan struct {
	// Reverted are the changes undone, in the order their inverses run:
	// the reverse of the WAL's.
	Reverted []uuid.UUID
	// Steps are the inverse statements, in that order.
	Steps []Step
	// Unrevertable are the changes the trail cannot undo, with why.
	Unrevertable []Unrevertable
	// Conflicts are the rows whose state in the source differs from what
	// the reverted changes left.
	Conflicts []Conflict
	// checks are the rows' expected states, in the order they were first met.
	checks []*check
}

// Step is one inverse statement.
type Step struct {
	Change    uuid.UUID
	Operation change.Operation // of the change undone
	Table     string           // schema.table
	SQL       string
}

// Unrevertable is a change the trail cannot undo.
type Unrevertable struct {
	Change uuid.UUID `json:"change"`
	Reason string    `json:"reason"`
}

// Conflict is a row changed since the reverted changes: undoing them would
// overwrite that later change.
type Conflict struct {
	Change     uuid.UUID `json:"change"` // the last reverted change of the row
	Schema     string    `json:"schema"`
	Table      string    `json:"table"`
	PrimaryKey string    `json:"primary_key"`
	// Expected is the row as that change left it (null: no row), Actual
	// the row now (null: no row), as PostgreSQL's to_jsonb shows them.
	Expected json.RawMessage `json:"expected"`
	Actual   json.RawMessage `json:"actual"`
	// Columns are the columns whose values differ.
	Columns []string `json:"columns,omitempty"`
	Reason  string   `json:"reason"`
}

// check is what one row of the source should hold now: the state the last
// reverted change of it left.
type check struct {
	t        *table
	where    string // the row's key condition
	pk       string // primary_key of the trail, for reports
	change   uuid.UUID
	present  bool
	expected map[string]json.RawMessage // present: the columns the change left, as the trail has them
	compare  []string                   // present: one to_jsonb comparison per column, in column order
	cols     []string
}

// SQL is the plan as one script a person can read, copy and run: one
// transaction, pgtrail context naming the reverted changes, then the
// inverse statements.
func (p *Plan) SQL() string {
	if len(p.Steps) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("BEGIN;\n")
	b.WriteString(contextStatement(p.context(nil)) + ";\n")
	for _, s := range p.Steps {
		fmt.Fprintf(&b, "-- undo %s on %s (change %s)\n%s;\n", s.Operation, s.Table, s.Change, s.SQL)
	}
	b.WriteString("COMMIT;\n")
	return b.String()
}

// Plan works out how to undo changes (in any order) and reads the source
// for conflicts.
func (s *Source) Plan(ctx context.Context, changes []trail.Change) (*Plan, error) {
	var p *Plan
	err := s.readOnly(ctx, func(tx pgx.Tx) error {
		var err error
		if p, err = s.plan(ctx, tx, changes); err != nil {
			return err
		}
		p.Conflicts, err = conflicts(ctx, tx, p.checks, false)
		return err
	})
	return p, err
}

// plan builds the inverse statements and the rows' expected states.
func (s *Source) plan(ctx context.Context, tx pgx.Tx, changes []trail.Change) (*Plan, error) {
	changes = slices.Clone(changes)
	slices.SortFunc(changes, func(a, b trail.Change) int {
		return cmp.Or(a.CommittedAt.Compare(b.CommittedAt), cmp.Compare(a.Position, b.Position),
			cmp.Compare(a.Seq, b.Seq), bytes.Compare(a.ID[:], b.ID[:]))
	})
	p := &Plan{}
	tables := map[string]*table{}
	missing := map[string]bool{}
	types := map[uint32]*pgType{}
	rows := map[string]*check{}
	for _, c := range changes {
		name := c.Schema + "." + c.Table
		t := tables[name]
		if t == nil && !missing[name] && c.Database == s.database {
			var err error
			t, err = loadTable(ctx, tx, types, c.Schema, c.Table)
			switch {
			case errors.Is(err, errNoTable):
				missing[name] = true
			case err != nil:
				return nil, err
			default:
				tables[name] = t
			}
		}
		inv, err := s.inverse(c, t)
		if err != nil {
			p.Unrevertable = append(p.Unrevertable, Unrevertable{Change: c.ID, Reason: err.Error()})
			continue
		}
		p.Reverted = append(p.Reverted, c.ID)
		if inv.sql != "" {
			p.Steps = append(p.Steps, Step{Change: c.ID, Operation: c.Operation, Table: name, SQL: inv.sql})
		}
		for _, ck := range inv.leaves {
			if _, seen := rows[ck.where]; !seen {
				p.checks = append(p.checks, ck)
			}
			rows[ck.where] = ck
		}
	}
	// The rows' checks hold the last state each was left in.
	for i, ck := range p.checks {
		p.checks[i] = rows[ck.where]
	}
	slices.Reverse(p.Reverted)
	slices.Reverse(p.Steps)
	return p, nil
}

// inverse is one change's inverse statement and the states it left rows in.
type inverse struct {
	sql    string
	leaves []*check
}

// inverse works out how to undo c in table t (nil: not in the source).
func (s *Source) inverse(c trail.Change, t *table) (inverse, error) {
	switch {
	case c.Database != s.database:
		return inverse{}, fmt.Errorf("the change is in database %q, but the revert database is %q (set ui.revert.url to it)", c.Database, s.database)
	case c.Operation == change.Truncate:
		return inverse{}, errors.New("a TRUNCATE removed every row of the table, and the trail does not hold them")
	case c.Operation == change.DDL:
		return inverse{}, errors.New("a schema change (DDL) is not undone from the trail: write its inverse migration")
	case t == nil:
		return inverse{}, fmt.Errorf("table %s.%s is not in the source database", c.Schema, c.Table)
	case len(t.key) == 0:
		return inverse{}, fmt.Errorf("table %s.%s has no primary key (nor replica identity index) to find the row by", c.Schema, c.Table)
	}
	before, after := trail.Image(c.Before), trail.Image(c.After)
	for _, img := range []map[string]json.RawMessage{before, after} {
		for col := range img {
			if t.columns[col] == nil {
				return inverse{}, fmt.Errorf("column %q is no longer in %s.%s", col, c.Schema, c.Table)
			}
		}
	}
	pk := ""
	if c.PrimaryKey != nil {
		pk = *c.PrimaryKey
	}
	switch c.Operation {
	case change.Create:
		where, err := t.where(after)
		if err != nil {
			return inverse{}, err
		}
		leaves, err := t.present(where, pk, c, after)
		return inverse{sql: "DELETE FROM " + t.quoted + " WHERE " + where, leaves: leaves}, err
	case change.Update:
		return t.undoUpdate(c, pk, before, after)
	case change.Delete:
		return t.undoDelete(c, pk, before)
	}
	return inverse{}, fmt.Errorf("unknown operation %q", c.Operation)
}

func (t *table) undoUpdate(c trail.Change, pk string, before, after map[string]json.RawMessage) (inverse, error) {
	var lacking []string
	for col := range after {
		if _, ok := before[col]; !ok {
			lacking = append(lacking, col)
		}
	}
	for _, col := range c.UnchangedToast {
		if _, ok := before[col]; !ok {
			lacking = append(lacking, col)
		}
	}
	if len(lacking) > 0 {
		slices.Sort(lacking)
		return inverse{}, fmt.Errorf("the before image lacks %s: %s.%s was captured without REPLICA IDENTITY FULL, "+
			"so what the update replaced is not in the trail", strings.Join(lacking, ", "), c.Schema, c.Table)
	}
	where, err := t.where(after)
	if err != nil {
		return inverse{}, err
	}
	var sets []string
	for _, col := range slices.Sorted(maps.Keys(after)) {
		if bytes.Equal(before[col], after[col]) || t.columns[col].generated {
			continue
		}
		lit, err := literal(before[col], t.columns[col])
		if err != nil {
			return inverse{}, err
		}
		sets = append(sets, pgx.Identifier{col}.Sanitize()+" = "+lit)
	}
	leaves, err := t.present(where, pk, c, after)
	if err != nil {
		return inverse{}, err
	}
	// A key the update changed: the old key is free now, until the revert
	// takes it back.
	if old, err := t.where(before); err == nil && old != where {
		leaves = append(leaves, &check{t: t, where: old, pk: pk, change: c.ID})
	}
	inv := inverse{leaves: leaves}
	if len(sets) > 0 {
		inv.sql = "UPDATE " + t.quoted + " SET " + strings.Join(sets, ", ") + " WHERE " + where
	}
	return inv, nil
}

func (t *table) undoDelete(c trail.Change, pk string, before map[string]json.RawMessage) (inverse, error) {
	var cols, vals, lacking []string
	identity := false
	for _, col := range t.order() {
		cd := t.columns[col]
		if cd.generated {
			continue
		}
		v, ok := before[col]
		if !ok {
			lacking = append(lacking, col)
			continue
		}
		lit, err := literal(v, cd)
		if err != nil {
			return inverse{}, err
		}
		cols = append(cols, pgx.Identifier{col}.Sanitize())
		vals = append(vals, lit)
		identity = identity || cd.always
	}
	if len(lacking) > 0 && len(before) > len(t.key) {
		// A whole old row: the columns came later, and what they would hold is not known.
		return inverse{}, fmt.Errorf("%s.%s has columns added since the delete (%s): what the row would hold in them is not in the trail",
			c.Schema, c.Table, strings.Join(lacking, ", "))
	}
	if len(lacking) > 0 {
		return inverse{}, fmt.Errorf("the before image lacks %s: %s.%s was captured without REPLICA IDENTITY FULL, "+
			"so the deleted row is not in the trail", strings.Join(lacking, ", "), c.Schema, c.Table)
	}
	where, err := t.where(before)
	if err != nil {
		return inverse{}, err
	}
	sql := "INSERT INTO " + t.quoted + " (" + strings.Join(cols, ", ") + ")"
	if identity {
		sql += " OVERRIDING SYSTEM VALUE"
	}
	sql += " VALUES (" + strings.Join(vals, ", ") + ")"
	return inverse{sql: sql, leaves: []*check{{t: t, where: where, pk: pk, change: c.ID}}}, nil
}

// order lists the table's columns in a stable order (by name).
func (t *table) order() []string { return slices.Sorted(maps.Keys(t.columns)) }

// where is the condition that finds the row an image is of, by its key.
func (t *table) where(img map[string]json.RawMessage) (string, error) {
	conds := make([]string, len(t.key))
	for i, col := range t.key {
		v, ok := img[col]
		if !ok {
			return "", fmt.Errorf("the image lacks key column %q of %s.%s", col, t.schema, t.name)
		}
		lit, err := literal(v, t.columns[col])
		if err != nil {
			return "", err
		}
		if lit == "NULL" {
			return "", fmt.Errorf("key column %q of %s.%s is null", col, t.schema, t.name)
		}
		conds[i] = pgx.Identifier{col}.Sanitize() + " = " + lit
	}
	return strings.Join(conds, " AND "), nil
}

// present is the check that the row is as img has it.
func (t *table) present(where, pk string, c trail.Change, img map[string]json.RawMessage) ([]*check, error) {
	ck := &check{t: t, where: where, pk: pk, change: c.ID, present: true, expected: img}
	for _, col := range slices.Sorted(maps.Keys(img)) {
		cd := t.columns[col]
		lit, err := literal(img[col], cd)
		if err != nil {
			return nil, err
		}
		if lit == "NULL" {
			lit = "NULL::" + cd.typ
		}
		id := pgx.Identifier{col}.Sanitize()
		ck.compare = append(ck.compare, fmt.Sprintf("CASE WHEN to_jsonb(t.%s) IS DISTINCT FROM to_jsonb(%s) THEN %s END", id, lit, quote(col)))
		ck.cols = append(ck.cols, col)
	}
	return []*check{ck}, nil
}

// conflicts reads every checked row and reports those not in their
// expected state; lock locks them (FOR UPDATE) until the transaction ends.
func conflicts(ctx context.Context, tx pgx.Tx, checks []*check, lock bool) ([]Conflict, error) {
	if len(checks) == 0 {
		return nil, nil
	}
	batch := &pgx.Batch{}
	for _, ck := range checks {
		diff := "'{}'::text[]"
		if len(ck.compare) > 0 {
			diff = "array_remove(ARRAY[" + strings.Join(ck.compare, ", ") + "]::text[], NULL)"
		}
		q := "SELECT to_jsonb(t.*), " + diff + " FROM " + ck.t.quoted + " t WHERE " + ck.where
		if lock {
			q += " FOR UPDATE"
		}
		batch.Queue(q)
	}
	res := tx.SendBatch(ctx, batch)
	defer res.Close()
	var out []Conflict
	for _, ck := range checks {
		var actual json.RawMessage
		var differ []string
		err := res.QueryRow().Scan(&actual, &differ)
		found := err == nil
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("read %s where %s: %w", ck.t.quoted, ck.where, err)
		}
		cf := Conflict{Change: ck.change, Schema: ck.t.schema, Table: ck.t.name, PrimaryKey: ck.pk, Actual: actual}
		if ck.present {
			cf.Expected, _ = json.Marshal(ck.expected)
		}
		switch {
		case ck.present && !found:
			cf.Reason = "the row is no longer there: it was deleted, or its key changed, since"
		case !ck.present && found:
			cf.Reason = "a row with this key exists now: it was inserted again since"
		case ck.present && len(differ) > 0:
			cf.Columns = differ
			cf.Reason = "the row changed since: " + strings.Join(differ, ", ")
		default:
			continue
		}
		if cf.Actual == nil {
			cf.Actual = json.RawMessage("null")
		}
		if cf.Expected == nil {
			cf.Expected = json.RawMessage("null")
		}
		out = append(out, cf)
	}
	return out, res.Close()
}
