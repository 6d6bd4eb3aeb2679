// Package sdk is what a sink plugin author imports: plain Go types and one
// interface. The built-in sinks are written against it exactly as a third
// party would write theirs.
package sdk

import (
	"context"
	"encoding/json"
	"time"

	"github.com/pgtrail/pgtrail/core/change"
)

// Change is the canonical change record.
type Change = change.Change

// Description names a sink and its version.
type Description struct {
	Name    string
	Version string
	Summary string
	// FlushInterval is, for a sink that buffers (see Sink.Write), the longest
	// the host lets a buffered batch wait before it calls Flush. Zero for
	// sinks that write every batch through.
	FlushInterval time.Duration
}

// Sink stores changes somewhere.
//
// The host calls Configure once, then Open, then Write for each batch in
// source order, then Close. Setup and Teardown are called only by the
// `pgtrail setup` and `pgtrail teardown` commands (after Configure).
type Sink interface {
	Describe() Description
	// Configure receives the sink's `config` block from pgtrail.yaml as JSON.
	// Errors should name the bad key and say what to do.
	Configure(ctx context.Context, config json.RawMessage) error
	// Setup creates what the sink needs (tables, buckets). Idempotent.
	Setup(ctx context.Context) error
	// Teardown removes what Setup created, data included.
	Teardown(ctx context.Context) error
	// Open connects; the host calls it before the first Write.
	Open(ctx context.Context) error
	// Write hands over the next batch, in source order. It returns durable =
	// true when this batch and every batch before it are durable, as a sink
	// that writes through always does; a sink that buffers (many batches to
	// one S3 object) returns false until it writes, and the host calls Flush
	// when a batch has waited FlushInterval. A Write that fails must leave
	// the sink as if the batch had not been handed over: the host retries it.
	// After any failure or restart the same changes may come again (same ID)
	// and must not be stored twice. A Write that can never store a change
	// of the batch as it is (its data: the storage refuses a value) returns
	// Unstorable(err); the pipeline then hands the batch over in halves to
	// find that change, and stores it with its images replaced by markers.
	// Only Write's refusals count: a buffering sink checks its data there.
	Write(ctx context.Context, batch []*Change) (durable bool, err error)
	// Flush makes every batch handed over durable.
	Flush(ctx context.Context) error
	// Check reports whether the sink can write now (for health and status).
	Check(ctx context.Context) error
	Close(ctx context.Context) error
}

// Unstorable marks a Write error as caused by the data of a change, which
// the sink can never store as it is. Never for an outage (a connection, a
// full disk, a read-only database): what it refuses is replaced by markers.
func Unstorable(err error) error { return change.Unstorable(err) }

// AppendJSONString appends s as a JSON string, escaped as encoding/json
// escapes it (HTML escaping off), for sinks that write JSON by hand.
func AppendJSONString(dst []byte, s string) []byte { return change.AppendJSONString(dst, s) }
