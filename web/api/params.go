package api

import (
	"context"
	"encoding/json"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/web/trail"
)

type identityKey struct{}

func withIdentity(ctx context.Context, who string) context.Context {
	return context.WithValue(ctx, identityKey{}, who)
}

// identity is who made the request (see authenticate).
func identity(ctx context.Context) string {
	s, _ := ctx.Value(identityKey{}).(string)
	return s
}

// filterParams are the query parameters of /changes and /export.
var filterParams = []string{"database", "schema", "table", "operation", "primary_key", "transaction_id",
	"since", "until", "context", "q", "limit", "cursor", "format"}

const defaultLimit = 50

// listing is a parsed /changes request.
type listing struct {
	filter trail.Filter
	cursor *trail.Key
	limit  int
}

// parseListing reads the filters; allowed lists the parameters the
// endpoint takes. Each error names its parameter.
func parseListing(q url.Values, allowed []string, limit int) (listing, error) {
	l := listing{limit: limit}
	for k := range q {
		if !slices.Contains(allowed, k) {
			return l, bad("unknown parameter %q (known: %s)", k, strings.Join(allowed, ", "))
		}
	}
	f := &l.filter
	f.Database, f.Schema, f.Table, f.Q = q.Get("database"), q.Get("schema"), q.Get("table"), q.Get("q")
	if s, t, ok := strings.Cut(f.Table, "."); ok && f.Schema == "" {
		f.Schema, f.Table = s, t // table=public.orders
	}
	if v := q.Get("operation"); v != "" {
		for _, op := range strings.Split(v, ",") {
			o := change.Operation(strings.ToUpper(strings.TrimSpace(op)))
			if !slices.Contains([]change.Operation{change.Create, change.Update, change.Delete, change.Truncate, change.DDL}, o) {
				return l, bad("operation: %q is not one of CREATE, UPDATE, DELETE, TRUNCATE, DDL (several: operation=UPDATE,DELETE)", op)
			}
			f.Operations = append(f.Operations, o)
		}
	}
	if q.Has("primary_key") {
		pk := q.Get("primary_key")
		f.PrimaryKey = &pk
	}
	if v := q.Get("transaction_id"); v != "" {
		x, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return l, bad("transaction_id: %q is not a whole number", v)
		}
		f.TransactionID = &x
	}
	var err error
	if f.Since, err = parseTime(q, "since"); err != nil {
		return l, err
	}
	if f.Until, err = parseTime(q, "until"); err != nil {
		return l, err
	}
	if f.Context, err = parseContext(q.Get("context")); err != nil {
		return l, err
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > trail.MaxLimit {
			return l, bad("limit: %q is not a number from 1 to %d", v, trail.MaxLimit)
		}
		l.limit = n
	}
	if v := q.Get("cursor"); v != "" {
		k, err := trail.ParseCursor(v)
		if err != nil {
			return l, bad("cursor: %v", err)
		}
		l.cursor = &k
	}
	return l, nil
}

func parseTime(q url.Values, name string) (time.Time, error) {
	v := q.Get(name)
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return t, bad("%s: %q is not an RFC 3339 time (e.g. 2026-11-25T10:00:00Z)", name, v)
	}
	return t, nil
}

// parseContext reads a context filter: a JSON object, matched by containment.
func parseContext(v string) (json.RawMessage, error) {
	if v == "" {
		return nil, nil
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(v), &m); err != nil || m == nil {
		return nil, bad(`context: %q is not a JSON object (e.g. {"user_id":42})`, v)
	}
	return json.RawMessage(v), nil
}

// parseTable reads "{schema}.{table}" from a path.
func parseTable(s string) (schema, table string, err error) {
	schema, table, ok := strings.Cut(s, ".")
	if !ok || schema == "" || table == "" {
		return "", "", bad("%q is not schema.table (e.g. public.orders)", s)
	}
	return schema, table, nil
}

// parseIDs reads change ids, comma separated or repeated.
func parseIDs(values []string) ([]uuid.UUID, error) {
	var ids []uuid.UUID
	for _, v := range values {
		for _, s := range strings.Split(v, ",") {
			id, err := uuid.Parse(strings.TrimSpace(s))
			if err != nil {
				return nil, bad("change: %q is not a change id (a UUID)", s)
			}
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// parseTransaction reads DATABASE:XID.
func parseTransaction(v string) (string, int64, error) {
	i := strings.LastIndexByte(v, ':')
	if i <= 0 {
		return "", 0, bad("transaction: %q is not DATABASE:TRANSACTION_ID (e.g. app:7421)", v)
	}
	x, err := strconv.ParseInt(v[i+1:], 10, 64)
	if err != nil {
		return "", 0, bad("transaction: %q is not DATABASE:TRANSACTION_ID (e.g. app:7421)", v)
	}
	return v[:i], x, nil
}
