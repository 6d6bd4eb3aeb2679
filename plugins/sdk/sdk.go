// Package sdk is what a sink plugin author imports: plain Go types and one
// interface. The built-in sinks are written against it exactly as a third
// party would write theirs.
package sdk

import (
	"context"
	"encoding/json"

	"github.com/pgtrail/pgtrail/core/change"
)

// Change is the canonical change record.
type Change = change.Change

// Description names a sink and its version.
type Description struct {
	Name    string
	Version string
	Summary string
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
	// Write makes a batch durable. Returning nil promises that every change in
	// it survives a crash; the same changes may be written again after any
	// failure (by ID), and must then not be stored twice.
	Write(ctx context.Context, batch []*Change) error
	// Check reports whether the sink can write now (for health and status).
	Check(ctx context.Context) error
	Close(ctx context.Context) error
}
