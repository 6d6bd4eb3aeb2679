package lease

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/pipeline"
)

// held is a lease that tests end by hand.
type held struct {
	ctx    context.Context
	cancel context.CancelFunc
	valid  atomic.Bool
}

func newHeld() *held {
	h := &held{}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	h.valid.Store(true)
	return h
}

func (h *held) Valid() bool              { return h.valid.Load() }
func (h *held) Context() context.Context { return h.ctx }
func (h *held) lose()                    { h.valid.Store(false); h.cancel() }

// stream runs until its context ends and records what it is told.
type stream struct{ confirmed []any }

func (s *stream) Run(ctx context.Context, _ chan<- []pipeline.Event) error {
	<-ctx.Done()
	return ctx.Err()
}
func (s *stream) Confirm(pos any)             { s.confirmed = append(s.confirmed, pos) }
func (s *stream) Close(context.Context) error { return nil }

type store struct{ writes int }

func (s *store) Name() string { return "store" }
func (s *store) Write(_ context.Context, b []*change.Change) (int, error) {
	s.writes += len(b)
	return 0, nil
}
func (s *store) Flush(context.Context) error  { return nil }
func (s *store) FlushInterval() time.Duration { return 0 }

func TestLostLeaseStopsTheSourceWithErrFencedAndConfirmsNothingMore(t *testing.T) {
	h, inner := newHeld(), &stream{}
	src := Source(inner, h)
	src.Confirm(1)
	done := make(chan error, 1)
	go func() { done <- src.Run(context.Background(), make(chan []pipeline.Event)) }()
	h.lose()
	select {
	case err := <-done:
		if !errors.Is(err, ErrFenced) {
			t.Fatalf("Run returned %v, want ErrFenced", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run went on after the lease was lost")
	}
	src.Confirm(2)
	if len(inner.confirmed) != 1 || inner.confirmed[0] != 1 {
		t.Fatalf("confirmed %v, want [1]: nothing after the lease was lost", inner.confirmed)
	}
}

func TestSourceStoppedByItsOwnerIsNotFenced(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	src := Source(&stream{}, newHeld())
	cancel()
	if err := src.Run(ctx, make(chan []pipeline.Event)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
}

func TestSinkRefusesWritesOnceTheLeaseIsNotValid(t *testing.T) {
	h, inner := newHeld(), &store{}
	s := Sink(inner, h)
	batch := []*change.Change{{}, {}}
	if _, err := s.Write(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	h.valid.Store(false) // by the clock, before the lease's context ends
	n, err := s.Write(context.Background(), batch)
	if !errors.Is(err, ErrFenced) || n != 2 {
		t.Fatalf("Write after the lease = %d, %v; want 2, ErrFenced", n, err)
	}
	if err := s.Flush(context.Background()); !errors.Is(err, ErrFenced) {
		t.Fatalf("Flush after the lease = %v, want ErrFenced", err)
	}
	if inner.writes != 2 {
		t.Fatalf("the sink got %d changes, want the 2 written while the lease held", inner.writes)
	}
}
