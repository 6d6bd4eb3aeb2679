// Package discard is the `null` sink: it accepts every batch and stores
// nothing. It is for benchmarks and tests, to measure or exercise capture and
// stitching without the cost of a real destination; never configure it where
// an audit trail is wanted, since the source position moves on as if every
// change were stored.
//
// In YAML the plugin name must be quoted (`plugin: "null"`): a bare null is
// YAML's empty value.
package discard

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/pgtrail/pgtrail/plugins/sdk"
)

// Version is the sink's version, reported by `pgtrail plugins`.
const Version = "0.1.0"

// Sink discards what it is given.
type Sink struct{}

// New returns a sink.
func New() *Sink { return &Sink{} }

// Describe names the sink.
func (*Sink) Describe() sdk.Description {
	return sdk.Description{Name: "null", Version: Version, Summary: "discards every change (for benchmarks and tests)"}
}

// Configure accepts an empty config block only.
func (*Sink) Configure(_ context.Context, raw json.RawMessage) error {
	var cfg map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &cfg); err != nil {
			return fmt.Errorf("config: %w", err)
		}
	}
	for key := range cfg {
		return fmt.Errorf("config.%s: unknown key (the null sink takes no config)", key)
	}
	return nil
}

// Setup has nothing to create.
func (*Sink) Setup(context.Context) error { return nil }

// Teardown has nothing to remove.
func (*Sink) Teardown(context.Context) error { return nil }

// Open has nothing to connect to.
func (*Sink) Open(context.Context) error { return nil }

// Write drops the batch and reports it durable.
func (*Sink) Write(context.Context, []*sdk.Change) (bool, error) { return true, nil }

// Flush has nothing to flush.
func (*Sink) Flush(context.Context) error { return nil }

// Check is always healthy.
func (*Sink) Check(context.Context) error { return nil }

// Close has nothing to release.
func (*Sink) Close(context.Context) error { return nil }
