package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/google/uuid"

	"github.com/pgtrail/pgtrail/web/revert"
	"github.com/pgtrail/pgtrail/web/trail"
)

// MaxRevert is the most changes one revert undoes.
const MaxRevert = 10_000

// Selection names the changes a revert undoes: ids, one transaction, or a
// context.
type Selection struct {
	Changes     []uuid.UUID
	Database    string
	Transaction *int64
	Context     json.RawMessage
}

// ParseSelection reads change=ID[,ID], transaction=DB:XID or context={...}.
func ParseSelection(q url.Values) (Selection, error) {
	var s Selection
	var err error
	n := 0
	if v := q["change"]; len(v) > 0 {
		n++
		if s.Changes, err = parseIDs(v); err != nil {
			return s, err
		}
	}
	if v := q.Get("transaction"); v != "" {
		n++
		db, xid, err := parseTransaction(v)
		if err != nil {
			return s, err
		}
		s.Database, s.Transaction = db, &xid
	}
	if v := q.Get("context"); v != "" {
		n++
		if s.Context, err = parseContext(v); err != nil {
			return s, err
		}
	}
	if n != 1 {
		return s, bad("give exactly one of change=ID, transaction=DATABASE:TRANSACTION_ID, context={...}")
	}
	return s, nil
}

// Select reads the selected changes from the trail.
func Select(ctx context.Context, store *trail.Store, s Selection) ([]trail.Change, error) {
	f := trail.Filter{IDs: s.Changes, Database: s.Database, TransactionID: s.Transaction, Context: s.Context}
	changes, err := store.All(ctx, f, MaxRevert)
	if err != nil {
		return nil, err
	}
	if len(changes) == 0 {
		return nil, fmt.Errorf("no change of the trail is selected: %w", trail.ErrNotFound)
	}
	if len(s.Changes) > 0 && len(changes) < len(s.Changes) {
		return nil, fmt.Errorf("only %d of the %d changes named are in the trail: %w", len(changes), len(s.Changes), trail.ErrNotFound)
	}
	return changes, nil
}

// planJSON is a revert plan as the API returns it.
type planJSON struct {
	SQL          string                `json:"sql"`
	Conflicts    []revert.Conflict     `json:"conflicts"`
	Unrevertable []revert.Unrevertable `json:"unrevertable"`
	Reverted     []uuid.UUID           `json:"reverted"`
	ApplyEnabled bool                  `json:"apply_enabled"`
	Applied      bool                  `json:"applied"`
	Error        string                `json:"error,omitempty"`
	*revert.Result
}

func (a *API) planJSON(p *revert.Plan) planJSON {
	out := planJSON{SQL: p.SQL(), Conflicts: p.Conflicts, Unrevertable: p.Unrevertable, Reverted: p.Reverted,
		ApplyEnabled: a.o.Apply}
	if out.Conflicts == nil {
		out.Conflicts = []revert.Conflict{}
	}
	if out.Unrevertable == nil {
		out.Unrevertable = []revert.Unrevertable{}
	}
	if out.Reverted == nil {
		out.Reverted = []uuid.UUID{}
	}
	return out
}

// selected reads the selection of a revert request and its changes.
func (a *API) selected(w http.ResponseWriter, r *http.Request, q url.Values) ([]trail.Change, bool) {
	if a.o.Revert == nil {
		writeError(w, http.StatusServiceUnavailable, "revert is not available: "+a.o.RevertUnavailable)
		return nil, false
	}
	sel, err := ParseSelection(q)
	if err != nil {
		a.fail(w, err)
		return nil, false
	}
	changes, err := Select(r.Context(), a.o.Store, sel)
	if err != nil {
		a.fail(w, err)
		return nil, false
	}
	return changes, true
}

func (a *API) revertPreview(w http.ResponseWriter, r *http.Request) {
	if _, err := parseListing(r.URL.Query(), []string{"change", "transaction", "context"}, 1); err != nil {
		a.fail(w, err)
		return
	}
	changes, ok := a.selected(w, r, r.URL.Query())
	if !ok {
		return
	}
	p, err := a.o.Revert.Plan(r.Context(), changes)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, a.planJSON(p))
}

// applyRequest is the body of POST /api/v1/revert. The selection may be
// given in the body or in the query.
type applyRequest struct {
	Apply       bool            `json:"apply"`
	Force       bool            `json:"force"`
	Change      json.RawMessage `json:"change"` // an id or a list of ids
	Transaction string          `json:"transaction"`
	Context     json.RawMessage `json:"context"`
}

func (a *API) revertApply(w http.ResponseWriter, r *http.Request) {
	// A JSON body cannot be sent across origins without a preflight that
	// this server never grants, so a page elsewhere cannot make the
	// browser of someone on this machine apply a revert.
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		writeError(w, http.StatusUnsupportedMediaType, "send the body as Content-Type: application/json")
		return
	}
	var req applyRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		a.fail(w, bad("body: %v (e.g. {\"apply\": true, \"force\": false})", err))
		return
	}
	q, err := req.selection(r.URL.Query())
	if err != nil {
		a.fail(w, err)
		return
	}
	changes, ok := a.selected(w, r, q)
	if !ok {
		return
	}
	if !req.Apply {
		p, err := a.o.Revert.Plan(r.Context(), changes)
		if err != nil {
			a.fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, a.planJSON(p))
		return
	}
	if !a.o.Apply {
		writeError(w, http.StatusForbidden, "reverts are not applied from the API: set ui.revert.apply: true (or run `pgtrail revert --apply`)")
		return
	}
	by := map[string]string{"reverted_by": identity(r.Context()), "via": "pgtrail api"}
	p, res, err := a.o.Revert.Apply(r.Context(), changes, by, req.Force)
	switch {
	case errors.Is(err, revert.ErrConflicts):
		out := a.planJSON(p)
		out.Error = fmt.Sprintf("%d rows changed since the reverted changes: nothing applied (send \"force\": true to overwrite them)", len(p.Conflicts))
		writeJSON(w, http.StatusConflict, out)
	case errors.Is(err, revert.ErrUnrevertable):
		out := a.planJSON(p)
		out.Error = fmt.Sprintf("%d changes cannot be undone from the trail: nothing applied (see unrevertable)", len(p.Unrevertable))
		writeJSON(w, http.StatusUnprocessableEntity, out)
	case err != nil:
		a.fail(w, err)
	default:
		out := a.planJSON(p)
		out.Applied, out.Result = true, &res
		a.o.Log.Info("revert applied", "changes", len(p.Reverted), "statements", res.Statements, "by", identity(r.Context()))
		writeJSON(w, http.StatusOK, out)
	}
}

// selection merges the body's selection into the query's.
func (req applyRequest) selection(q url.Values) (url.Values, error) {
	q = cloneValues(q)
	if len(req.Change) > 0 {
		var one string
		var many []string
		if json.Unmarshal(req.Change, &one) == nil {
			many = []string{one}
		} else if json.Unmarshal(req.Change, &many) != nil {
			return nil, bad("body: change: give a change id or a list of them")
		}
		q["change"] = append(q["change"], many...)
	}
	if req.Transaction != "" {
		q.Set("transaction", req.Transaction)
	}
	if len(req.Context) > 0 && string(req.Context) != "null" {
		q.Set("context", string(req.Context))
	}
	return q, nil
}

func cloneValues(q url.Values) url.Values {
	out := url.Values{}
	for k, v := range q {
		out[k] = append([]string(nil), v...)
	}
	return out
}
