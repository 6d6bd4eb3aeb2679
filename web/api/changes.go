package api

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/pgtrail/pgtrail/web/trail"
)

// pageJSON is a page of changes as the API returns it.
type pageJSON struct {
	Changes    []trail.Change `json:"changes"`
	NextCursor *string        `json:"next_cursor"`
	// SearchBounded: the text search examined trail.SearchScan changes
	// without filling the page; next_cursor goes on from there.
	SearchBounded bool `json:"search_bounded,omitempty"`
}

func toJSON(p trail.Page) pageJSON {
	out := pageJSON{Changes: p.Changes, SearchBounded: p.Bounded}
	if out.Changes == nil {
		out.Changes = []trail.Change{}
	}
	if p.Next != nil {
		c := p.Next.Cursor()
		out.NextCursor = &c
	}
	return out
}

func (a *API) changes(w http.ResponseWriter, r *http.Request) {
	l, err := parseListing(r.URL.Query(), filterParams[:len(filterParams)-1], defaultLimit)
	if err != nil {
		a.fail(w, err)
		return
	}
	page, err := a.o.Store.List(r.Context(), l.filter, trail.NewestFirst, l.cursor, l.limit)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, toJSON(page))
}

func (a *API) change(w http.ResponseWriter, r *http.Request) {
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		a.fail(w, bad("%q is not a change id (a UUID)", r.PathValue("id")))
		return
	}
	c, err := a.o.Store.Get(r.Context(), id)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, c)
}

// record reads {schema}.{table}/{primary_key} and ?database.
func record(r *http.Request) (trail.Record, error) {
	schema, table, err := parseTable(r.PathValue("table"))
	if err != nil {
		return trail.Record{}, err
	}
	pk := r.PathValue("pk")
	if pk == "" {
		return trail.Record{}, bad("the primary key is missing: /%s/{primary_key}", r.PathValue("table"))
	}
	return trail.Record{Database: r.URL.Query().Get("database"), Schema: schema, Table: table, PrimaryKey: pk}, nil
}

func (a *API) history(w http.ResponseWriter, r *http.Request) {
	rec, err := record(r)
	if err != nil {
		a.fail(w, err)
		return
	}
	l, err := parseListing(r.URL.Query(), []string{"database", "limit", "cursor"}, trail.MaxLimit)
	if err != nil {
		a.fail(w, err)
		return
	}
	page, err := a.o.Store.History(r.Context(), rec, l.cursor, l.limit)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, toJSON(page))
}

func (a *API) asOf(w http.ResponseWriter, r *http.Request) {
	rec, err := record(r)
	if err != nil {
		a.fail(w, err)
		return
	}
	q := r.URL.Query()
	if _, err := parseListing(q, []string{"database", "at"}, 1); err != nil {
		a.fail(w, err)
		return
	}
	if q.Get("at") == "" {
		a.fail(w, bad("at: required, an RFC 3339 time (e.g. 2026-11-25T10:00:00Z)"))
		return
	}
	at, err := parseTime(q, "at")
	if err != nil {
		a.fail(w, err)
		return
	}
	st, err := a.o.Store.AsOf(r.Context(), rec, at)
	if err != nil {
		a.fail(w, err)
		return
	}
	type changeRef struct {
		ID          uuid.UUID `json:"id"`
		Operation   string    `json:"operation"`
		CommittedAt time.Time `json:"committed_at"`
	}
	out := struct {
		Row     any        `json:"row"`
		Change  *changeRef `json:"change"`
		Image   string     `json:"image,omitempty"`
		Unknown []string   `json:"unknown_columns,omitempty"`
	}{Image: st.Image, Unknown: st.Unknown}
	if st.Row != nil {
		out.Row = st.Row
	}
	if st.Change != nil {
		out.Change = &changeRef{st.Change.ID, string(st.Change.Operation), st.Change.CommittedAt}
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) transaction(w http.ResponseWriter, r *http.Request) {
	xid, err := strconv.ParseInt(r.PathValue("xid"), 10, 64)
	if err != nil {
		a.fail(w, bad("%q is not a transaction id (a whole number)", r.PathValue("xid")))
		return
	}
	l, err := parseListing(r.URL.Query(), []string{"limit", "cursor"}, trail.MaxLimit)
	if err != nil {
		a.fail(w, err)
		return
	}
	f := trail.Filter{Database: r.PathValue("database"), TransactionID: &xid}
	page, err := a.o.Store.List(r.Context(), f, trail.OldestFirst, l.cursor, l.limit)
	if err != nil {
		a.fail(w, err)
		return
	}
	if len(page.Changes) == 0 && l.cursor == nil {
		a.fail(w, fmt.Errorf("transaction %s:%d has no change in the trail: %w", r.PathValue("database"), xid, trail.ErrNotFound))
		return
	}
	writeJSON(w, http.StatusOK, toJSON(page))
}
