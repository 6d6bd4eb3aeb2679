// Package stitch joins each row change with the application context that
// caused it, from the logical decoding messages that the application (or the
// Bemi ORM packages' trigger) wrote into the same transaction.
package stitch

import (
	"bytes"
	"encoding/json"
	"log/slog"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/values"
)

// Message prefixes pgtrail understands.
const (
	// PrefixBemi carries the context of exactly the next row change of the
	// transaction: the Bemi packages' trigger emits one before each row.
	PrefixBemi = "_bemi"
	// PrefixPgtrail sets the context of every following change of the
	// transaction until another one replaces it.
	PrefixPgtrail = "pgtrail"
)

// Stitcher holds the context state of the transaction being read. Ingress
// delivers transactions one at a time, in commit order, so one state suffices.
type Stitcher struct {
	xid     uint64
	txn     json.RawMessage // pgtrail context, until replaced
	pending json.RawMessage // _bemi context for the next row change
	// MaxBytes caps a context payload: a larger one is a bad context.
	MaxBytes int
	// OnBadContext is called for a context payload that is not a JSON
	// object, or is larger than MaxBytes.
	OnBadContext func(prefix string, payload []byte)
	// OnRewrite is told of the values jsonb cannot hold in a context
	// payload, which is kept with them in their safe form.
	OnRewrite func(prefix string, n values.Rewrites)
}

// New returns a Stitcher that caps context payloads at maxBytes, and logs
// and reports bad payloads to bad and rewritten values to rewritten.
func New(log *slog.Logger, maxBytes int, bad func(prefix string), rewritten func(values.Rewrites)) *Stitcher {
	return &Stitcher{
		MaxBytes: maxBytes,
		OnBadContext: func(prefix string, payload []byte) {
			if maxBytes > 0 && len(payload) > maxBytes {
				log.Warn("context larger than pipeline.max_context_bytes; change stored with empty context",
					"prefix", prefix, "bytes", len(payload), "max_context_bytes", maxBytes)
			} else {
				if len(payload) > 200 {
					payload = payload[:200]
				}
				log.Warn("context is not a JSON object; change stored with empty context",
					"prefix", prefix, "payload", string(payload))
			}
			if bad != nil {
				bad(prefix)
			}
		},
		OnRewrite: func(prefix string, n values.Rewrites) {
			log.Warn("context holds values jsonb cannot hold; stored in their safe form", "prefix", prefix, "rewritten", n.String())
			if rewritten != nil {
				rewritten(n)
			}
		},
	}
}

// Begin starts a transaction: context never crosses transactions.
func (s *Stitcher) Begin(xid uint64) {
	s.xid, s.txn, s.pending = xid, nil, nil
}

// Message takes a transactional logical decoding message. Unknown prefixes
// (heartbeats among them) are ignored.
func (s *Stitcher) Message(xid uint64, prefix string, content []byte) {
	if xid != s.xid {
		s.Begin(xid)
	}
	switch prefix {
	case PrefixBemi:
		s.pending = s.object(prefix, content)
	case PrefixPgtrail:
		s.txn = s.object(prefix, content)
	}
}

// Next returns the context of the next row change of transaction xid and
// consumes a pending _bemi context. It must be called for every row change of
// the transaction that was decoded, including those of tables that are not
// stored, so that a _bemi message never attaches to a later change.
func (s *Stitcher) Next(xid uint64) json.RawMessage {
	if xid != s.xid {
		s.Begin(xid)
	}
	if p := s.pending; p != nil {
		s.pending = nil
		return p
	}
	if s.txn != nil {
		return s.txn
	}
	return change.Empty
}

// object returns content when it is a JSON object, with any value jsonb
// cannot hold in its safe form, and an empty object (after reporting it)
// otherwise: a bad payload must never stop the pipeline.
func (s *Stitcher) object(prefix string, content []byte) json.RawMessage {
	trimmed := bytes.TrimSpace(content)
	if (s.MaxBytes <= 0 || len(content) <= s.MaxBytes) && len(trimmed) > 0 && trimmed[0] == '{' && json.Valid(trimmed) {
		out, n := values.Storable(trimmed, values.MaxJSONBString)
		if !n.Any() {
			return json.RawMessage(bytes.Clone(out)) // the source's buffer may be reused
		}
		if s.OnRewrite != nil {
			s.OnRewrite(prefix, n)
		}
		return out
	}
	if s.OnBadContext != nil {
		s.OnBadContext(prefix, content)
	}
	return change.Empty
}
