package api

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pgtrail/pgtrail/web/trail"
)

// exportColumns are the CSV columns: the audit table's, then diff.
var exportColumns = []string{"id", "committed_at", "database", "schema", "table", "operation", "primary_key",
	"transaction_id", "position", "seq", "context", "before", "after", "diff", "unchanged_toast", "queued_at", "created_at"}

// export streams every change the filters select, newest first, page by
// page (each page a query of its own, within the statement timeout).
func (a *API) export(w http.ResponseWriter, r *http.Request) {
	l, err := parseListing(r.URL.Query(), filterParams, trail.MaxLimit)
	if err != nil {
		a.fail(w, err)
		return
	}
	format := r.URL.Query().Get("format")
	var write func(trail.Change) error
	var cw *csv.Writer
	switch format {
	case "ndjson", "":
		format = "ndjson"
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		write = func(c trail.Change) error { return enc.Encode(c) }
	case "csv":
		cw = csv.NewWriter(w)
		write = func(c trail.Change) error { return cw.Write(csvRecord(c)) }
	default:
		a.fail(w, bad("format: %q is not csv or ndjson", format))
		return
	}
	// The first page decides the status: an error before any row is still
	// a JSON error.
	page, err := a.o.Store.List(r.Context(), l.filter, trail.NewestFirst, l.cursor, trail.MaxLimit)
	if err != nil {
		a.fail(w, err)
		return
	}
	name := "pgtrail-changes-" + time.Now().UTC().Format("20060102T150405Z") + "." + format
	w.Header().Set("Content-Disposition", `attachment; filename="`+name+`"`)
	w.Header().Set("Cache-Control", "no-store")
	flush := func() {}
	if cw != nil {
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		_ = cw.Write(exportColumns)
		flush = cw.Flush
	} else {
		w.Header().Set("Content-Type", "application/x-ndjson")
	}
	for {
		for _, c := range page.Changes {
			if err := write(c); err != nil {
				return // the client went away
			}
		}
		flush()
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		if page.Next == nil {
			return
		}
		if page, err = a.o.Store.List(r.Context(), l.filter, trail.NewestFirst, page.Next, trail.MaxLimit); err != nil {
			// Headers are gone: end the stream short, as a broken download.
			a.o.Log.Error("export stopped", "err", err)
			panic(http.ErrAbortHandler)
		}
	}
}

func csvRecord(c trail.Change) []string {
	pk := ""
	if c.PrimaryKey != nil {
		pk = *c.PrimaryKey
	}
	d, _ := json.Marshal(c.Diff)
	ts := func(t time.Time) string { return t.Format(time.RFC3339Nano) }
	return []string{c.ID.String(), ts(c.CommittedAt), c.Database, c.Schema, c.Table, string(c.Operation), pk,
		strconv.FormatInt(c.TransactionID, 10), strconv.FormatInt(c.Position, 10), strconv.Itoa(int(c.Seq)),
		compact(c.Context), compact(c.Before), compact(c.After), string(d), strings.Join(c.UnchangedToast, ","),
		ts(c.QueuedAt), ts(c.CreatedAt)}
}

func compact(raw json.RawMessage) string {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return string(raw)
	}
	return b.String()
}
