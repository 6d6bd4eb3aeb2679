package revert

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/web/trail"
)

// contextPrefix is the logical decoding message prefix whose JSON object
// pgtrail attaches, as context, to every change that follows it in its
// transaction (design §4; transports/appcontext writes the same for
// applications).
const contextPrefix = "pgtrail"

// contextStatement sets the transaction's pgtrail context.
func contextStatement(ctx map[string]any) string {
	b, _ := json.Marshal(ctx)
	return "SELECT pg_logical_emit_message(true, " + quote(contextPrefix) + ", " + quote(string(b)) + ")"
}

// context is the pgtrail context of the revert: the changes it reverts and
// who asked.
func (p *Plan) context(by map[string]string) map[string]any {
	ids := make([]string, len(p.Reverted))
	for i, id := range p.Reverted {
		ids[i] = id.String()
	}
	m := map[string]any{}
	for k, v := range by {
		m[k] = v
	}
	m["reverted"] = ids
	return m
}

// ErrUnrevertable is returned by Apply when some change cannot be undone.
var ErrUnrevertable = errors.New("some changes cannot be undone from the trail")

// ErrConflicts is returned by Apply when rows changed since and force is off.
var ErrConflicts = errors.New("rows changed since the reverted changes")

// Result is what Apply did.
type Result struct {
	Statements int   `json:"statements"`
	Rows       int64 `json:"rows"` // rows the statements touched
}

// Apply undoes changes in the source database in one transaction, which
// carries pgtrail context {"reverted": [ids...]} plus by (who asked), so the
// revert is audited. The rows are locked and checked again inside it: with
// conflicts it applies nothing unless force. It applies nothing either when
// some change cannot be undone. The plan returned is the one checked.
func (s *Source) Apply(ctx context.Context, changes []trail.Change, by map[string]string, force bool) (*Plan, Result, error) {
	var p *Plan
	var res Result
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '5s'"); err != nil {
			return fmt.Errorf("set lock_timeout: %w", err)
		}
		var err error
		if p, err = s.plan(ctx, tx, changes); err != nil {
			return err
		}
		if len(p.Unrevertable) > 0 {
			return ErrUnrevertable
		}
		if p.Conflicts, err = conflicts(ctx, tx, p.checks, true); err != nil {
			return err
		}
		if len(p.Conflicts) > 0 && !force {
			return ErrConflicts
		}
		if len(p.Steps) == 0 {
			return nil
		}
		if _, err := tx.Exec(ctx, contextStatement(p.context(by))); err != nil {
			return fmt.Errorf("set the revert's pgtrail context: %w", err)
		}
		for _, st := range p.Steps {
			tag, err := tx.Exec(ctx, st.SQL)
			if err != nil {
				return fmt.Errorf("undo change %s: %s: %w", st.Change, st.SQL, err)
			}
			if tag.RowsAffected() != 1 && !force {
				return fmt.Errorf("undo change %s touched %d rows, not 1: %s (nothing applied)", st.Change, tag.RowsAffected(), st.SQL)
			}
			res.Statements++
			res.Rows += tag.RowsAffected()
		}
		return nil
	})
	if err != nil {
		return p, Result{}, err
	}
	return p, res, nil
}
