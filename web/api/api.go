// Package api serves the activity log's JSON API, version 1, over the audit
// table (web/trail) and reverts (web/revert), with bearer-token auth.
//
//	GET  /api/v1/changes                       filters, newest first, keyset pages
//	GET  /api/v1/changes/{id}
//	GET  /api/v1/history/{schema}.{table}/{primary_key}
//	GET  /api/v1/as-of/{schema}.{table}/{primary_key}?at=RFC3339
//	GET  /api/v1/transactions/{database}/{transaction_id}
//	GET  /api/v1/revert?change=ID | transaction=DB:XID | context={...}
//	POST /api/v1/revert  {"apply": true, "force": false}
//	GET  /api/v1/export?format=csv|ndjson      filters as /changes, streamed
//	GET  /api/v1/info
package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/pgtrail/pgtrail/web/revert"
	"github.com/pgtrail/pgtrail/web/trail"
)

// Options configure the API.
type Options struct {
	Store *trail.Store
	// Revert is the source database; nil when none is configured
	// (RevertUnavailable says why).
	Revert            *revert.Source
	RevertUnavailable string
	// Apply lets POST /api/v1/revert write to the source database.
	Apply bool
	// Tokens are the accepted bearer tokens. With none, the listener must
	// be loopback (Loopback): then requests need no token, but must name a
	// loopback host (no DNS rebinding).
	Tokens   []string
	Loopback bool
	Version  string
	Log      *slog.Logger
}

// API serves /api/v1/.
type API struct {
	o      Options
	tokens [][sha256.Size]byte
	mux    *http.ServeMux
}

// New returns the API's handler for the paths under /api/.
func New(o Options) *API {
	a := &API{o: o, mux: http.NewServeMux()}
	for _, t := range o.Tokens {
		a.tokens = append(a.tokens, sha256.Sum256([]byte(t)))
	}
	a.mux.HandleFunc("GET /api/v1/info", a.info)
	a.mux.HandleFunc("GET /api/v1/changes", a.changes)
	a.mux.HandleFunc("GET /api/v1/changes/{id}", a.change)
	a.mux.HandleFunc("GET /api/v1/history/{table}/{pk...}", a.history)
	a.mux.HandleFunc("GET /api/v1/as-of/{table}/{pk...}", a.asOf)
	a.mux.HandleFunc("GET /api/v1/transactions/{database}/{xid}", a.transaction)
	a.mux.HandleFunc("GET /api/v1/revert", a.revertPreview)
	a.mux.HandleFunc("POST /api/v1/revert", a.revertApply)
	a.mux.HandleFunc("GET /api/v1/export", a.export)
	a.mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such API path: %s %s (see /api/v1/info and the README)", r.Method, r.URL.Path))
	})
	return a
}

// ServeHTTP authenticates and logs each request.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &recorder{ResponseWriter: w, status: http.StatusOK}
	who, err := a.authenticate(r)
	if err != nil {
		rec.Header().Set("WWW-Authenticate", `Bearer realm="pgtrail"`)
		writeError(rec, http.StatusUnauthorized, err.Error())
	} else {
		a.mux.ServeHTTP(rec, r.WithContext(withIdentity(r.Context(), who)))
	}
	// Never the headers: they carry the token.
	a.o.Log.Debug("api request", "method", r.Method, "path", r.URL.Path, "status", rec.status,
		"ms", time.Since(start).Milliseconds(), "by", who)
}

// authenticate checks the bearer token and returns who the caller is: a
// token's fingerprint (never the token), or the loopback peer.
func (a *API) authenticate(r *http.Request) (string, error) {
	if len(a.tokens) == 0 {
		if !a.o.Loopback {
			return "", errors.New("this listener is not loopback and no ui.tokens are set: every request is refused")
		}
		if !loopbackHost(r.Host) {
			return "", fmt.Errorf("host %q is not a loopback name: open the UI at 127.0.0.1 or localhost", r.Host)
		}
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		return "loopback:" + host, nil
	}
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if h == "" || !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", errors.New("a bearer token is required: send Authorization: Bearer <one of ui.tokens>")
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	for _, t := range a.tokens {
		if subtle.ConstantTimeCompare(sum[:], t[:]) == 1 {
			return "token:" + hex.EncodeToString(sum[:4]), nil
		}
	}
	return "", errors.New("the bearer token is not one of ui.tokens")
}

func loopbackHost(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	return err == nil && ip.IsLoopback()
}

type recorder struct {
	http.ResponseWriter
	status int
}

func (r *recorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// Flush lets streamed exports reach the client as they go.
func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// badRequest is an error in what the caller sent.
type badRequest struct{ msg string }

func (e badRequest) Error() string { return e.msg }

func bad(format string, args ...any) error { return badRequest{fmt.Sprintf(format, args...)} }

// fail writes err with the status its kind calls for.
func (a *API) fail(w http.ResponseWriter, err error) {
	var br badRequest
	switch {
	case errors.As(err, &br):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, trail.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, trail.ErrTimeout):
		writeError(w, http.StatusGatewayTimeout, err.Error())
	default:
		a.o.Log.Error("api", "err", err)
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

func (a *API) info(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"version": a.o.Version, "api": "v1",
		"revert": a.o.Revert != nil, "revert_apply": a.o.Revert != nil && a.o.Apply,
		"revert_unavailable": a.o.RevertUnavailable, "identity": identity(r.Context()),
	})
}
