// Package lease fences a pipeline by a lease: once the instance can no
// longer prove it holds the lease, its source confirms nothing more, its
// sinks write nothing more, and its source stops, so a standby may take over.
package lease

import (
	"context"
	"errors"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/pipeline"
)

// Held is a lease this instance holds.
type Held interface {
	// Valid tells whether the lease is still this instance's by its own
	// monotonic clock, with a margin before any standby may take it.
	Valid() bool
	// Context ends when the lease is lost (or released).
	Context() context.Context
}

// ErrFenced is why a fenced pipeline stopped.
var ErrFenced = errors.New("fenced: this instance can no longer prove it holds the lease, so it stopped confirming and writing; it stands by")

// Source fences src by h: Run stops with ErrFenced when the lease is lost,
// and Confirm is dropped once it is no longer valid.
func Source(src pipeline.Source, h Held) pipeline.Source { return &source{src, h} }

type source struct {
	pipeline.Source
	h Held
}

// Run ends the stream when the lease is lost. It returns an error rather
// than a cancellation: the pipeline then stops its sinks at once instead of
// draining into them.
func (s *source) Run(ctx context.Context, out chan<- []pipeline.Event) error {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.h.Context(), cancel)
	defer stop()
	err := s.Source.Run(lctx, out)
	if ctx.Err() == nil && (s.h.Context().Err() != nil || !s.h.Valid()) {
		return ErrFenced
	}
	return err
}

// Confirm passes on only while the lease is valid. Every position confirmed
// is durable in every sink whoever holds the lease, so a late one would do
// no harm either; dropping it keeps the rule simple: a fenced instance
// touches nothing.
func (s *source) Confirm(pos any) {
	if s.h.Valid() {
		s.Source.Confirm(pos)
	}
}

// Sink fences s by h: a write or flush fails once the lease is not valid.
func Sink(s pipeline.Sink, h Held) pipeline.Sink { return &sink{s, h} }

type sink struct {
	pipeline.Sink
	h Held
}

func (s *sink) Write(ctx context.Context, batch []*change.Change) (int, error) {
	if !s.h.Valid() {
		return len(batch), ErrFenced
	}
	return s.Sink.Write(ctx, batch)
}

func (s *sink) Flush(ctx context.Context) error {
	if !s.h.Valid() {
		return ErrFenced
	}
	return s.Sink.Flush(ctx)
}
