// Package host loads the sinks named in the config and presents each to the
// pipeline. Sinks are written against plugins/sdk; the host is the only place
// that knows how a sink is reached.
package host

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/plugins/sdk"
)

// Builtins maps a built-in plugin name to its constructor.
type Builtins map[string]func() sdk.Sink

// Names lists the built-in plugins, sorted.
func (b Builtins) Names() []string {
	names := make([]string, 0, len(b))
	for n := range b {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Sink is one configured sink.
type Sink struct {
	name string
	impl sdk.Sink
}

// Load configures the sink of one config entry.
func Load(ctx context.Context, spec config.Sink, builtins Builtins) (*Sink, error) {
	mk, ok := builtins[spec.Plugin]
	if !ok {
		return nil, fmt.Errorf("sink %q: unknown plugin %q (built-in plugins: %v)", spec.Name, spec.Plugin, builtins.Names())
	}
	raw, err := json.Marshal(spec.Config)
	if err != nil {
		return nil, fmt.Errorf("sink %q: encode config: %w", spec.Name, err)
	}
	impl := mk()
	if err := impl.Configure(ctx, raw); err != nil {
		return nil, fmt.Errorf("sink %q: %w", spec.Name, err)
	}
	return &Sink{name: spec.Name, impl: impl}, nil
}

// Name is the sink's name from the config.
func (s *Sink) Name() string { return s.name }

// Describe returns the plugin's own description.
func (s *Sink) Describe() sdk.Description { return s.impl.Describe() }

func (s *Sink) wrap(op string, err error) error {
	if err != nil {
		return fmt.Errorf("sink %q: %s: %w", s.name, op, err)
	}
	return nil
}

// Setup creates what the sink needs.
func (s *Sink) Setup(ctx context.Context) error { return s.wrap("setup", s.impl.Setup(ctx)) }

// Teardown removes it.
func (s *Sink) Teardown(ctx context.Context) error { return s.wrap("teardown", s.impl.Teardown(ctx)) }

// Open connects.
func (s *Sink) Open(ctx context.Context) error { return s.wrap("open", s.impl.Open(ctx)) }

// Write hands over a batch and reports whether all so far are durable.
func (s *Sink) Write(ctx context.Context, batch []*change.Change) (bool, error) {
	durable, err := s.impl.Write(ctx, batch)
	return durable, s.wrap("write", err)
}

// Flush makes every batch handed over durable.
func (s *Sink) Flush(ctx context.Context) error { return s.wrap("flush", s.impl.Flush(ctx)) }

// FlushInterval is how long a buffered batch may wait for Flush.
func (s *Sink) FlushInterval() time.Duration { return s.impl.Describe().FlushInterval }

// Check reports whether the sink can write.
func (s *Sink) Check(ctx context.Context) error { return s.wrap("check", s.impl.Check(ctx)) }

// Close disconnects.
func (s *Sink) Close(ctx context.Context) error { return s.wrap("close", s.impl.Close(ctx)) }
