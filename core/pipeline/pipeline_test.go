package pipeline

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/metrics"
)

// source emits n one-row transactions with positions 1..n, then waits.
type source struct {
	n         int
	emitted   atomic.Int64
	mu        sync.Mutex
	confirmed []any
	closed    bool
}

func (s *source) Run(ctx context.Context, out chan<- []Event) error {
	for i := 1; i <= s.n; i++ {
		select {
		case out <- []Event{
			{Kind: Begin, XID: uint64(i)},
			{Kind: Row, XID: uint64(i), Change: &change.Change{LSN: uint64(i)}},
			{Kind: Commit, XID: uint64(i), Position: i},
		}:
		case <-ctx.Done():
			return ctx.Err()
		}
		s.emitted.Add(1)
	}
	<-ctx.Done()
	return ctx.Err()
}

func (s *source) Confirm(pos any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.confirmed = append(s.confirmed, pos)
}

func (s *source) Close(context.Context) error { s.closed = true; return nil }

func (s *source) last() any {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.confirmed) == 0 {
		return nil
	}
	return s.confirmed[len(s.confirmed)-1]
}

// sink records what it was given. A buffered sink reports nothing durable
// until Flush; gate, when set, holds every Write until it is closed.
type sink struct {
	name      string
	buffered  bool
	gate      chan struct{}
	mu        sync.Mutex
	rows      int
	flushes   int
	unflushed int // batches written since the last flush, when buffered
}

func (s *sink) Name() string { return s.name }
func (s *sink) FlushInterval() time.Duration {
	if s.buffered {
		return 20 * time.Millisecond
	}
	return 0
}

func (s *sink) Write(ctx context.Context, batch []*change.Change) (int, error) {
	if s.gate != nil {
		select {
		case <-s.gate:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rows += len(batch)
	if s.buffered {
		s.unflushed++
	}
	return s.unflushed, nil
}

func (s *sink) Flush(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.flushes++
	s.unflushed = 0
	return nil
}

func newPipeline(src Source, sinks []Sink, opts Options) *Pipeline {
	return New(src, sinks, opts, slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.New())
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestEveryPositionIsConfirmedOnceEverySinkMadeItDurable(t *testing.T) {
	src := &source{n: 10000}
	direct, buffered := &sink{name: "direct"}, &sink{name: "buffered", buffered: true}
	p := newPipeline(src, []Sink{direct, buffered}, Options{BatchSize: 100, FlushInterval: 5 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx) }()
	waitUntil(t, "the last position to be confirmed", func() bool { return src.last() == 10000 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if direct.rows != 10000 || buffered.rows != 10000 {
		t.Fatalf("sinks got %d and %d rows, want 10000 each", direct.rows, buffered.rows)
	}
	if buffered.flushes == 0 {
		t.Fatal("the buffering sink was never flushed")
	}
	prev := 0
	for _, pos := range src.confirmed {
		if pos.(int) <= prev {
			t.Fatalf("positions confirmed out of order: %v after %d", pos, prev)
		}
		prev = pos.(int)
	}
	if !src.closed {
		t.Fatal("source not closed")
	}
}

func TestSlowSinkHoldsTheSourceBackInsteadOfGrowingMemory(t *testing.T) {
	src := &source{n: 1_000_000}
	slow := &sink{name: "slow", gate: make(chan struct{})}
	opts := Options{BatchSize: 100, MaxInFlight: 2, FlushInterval: time.Millisecond}
	p := newPipeline(src, []Sink{slow}, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx) }()
	time.Sleep(300 * time.Millisecond)
	// Held: the events channel (4096 events = 1365 transactions), the batch
	// being written, MaxInFlight queued batches and the one being cut.
	bound := int64(4096/3 + (opts.MaxInFlight+2)*opts.BatchSize + 1)
	if n := src.emitted.Load(); n > bound {
		t.Fatalf("source emitted %d transactions past a stalled sink, want at most %d", n, bound)
	}
	if src.last() != nil {
		t.Fatalf("confirmed %v while the sink had written nothing", src.last())
	}
	close(slow.gate)
	waitUntil(t, "everything to be confirmed once the sink moves", func() bool { return src.last() == 1_000_000 })
	cancel()
	<-done
}

func TestShutdownDrainsWhatWasReadAndConfirmsIt(t *testing.T) {
	src := &source{n: 5000}
	s := &sink{name: "s"}
	// A long flush interval: only the drain can cut the last batch.
	p := newPipeline(src, []Sink{s}, Options{BatchSize: 1_000_000, FlushInterval: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx) }()
	waitUntil(t, "the source to emit everything", func() bool { return src.emitted.Load() == 5000 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if s.rows != 5000 || src.last() != 5000 {
		t.Fatalf("after drain: %d rows written, last confirmed %v; want 5000 and 5000", s.rows, src.last())
	}
}

// scripted emits its chunks one by one, each when the test sends on next.
type scripted struct {
	next chan []Event
}

func (s *scripted) Run(ctx context.Context, out chan<- []Event) error {
	for {
		select {
		case evs := <-s.next:
			out <- evs
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
func (s *scripted) Confirm(any)                 {}
func (s *scripted) Close(context.Context) error { return nil }

// timed records when each batch is written.
type timed struct{ writes chan time.Time }

func (s *timed) Name() string                 { return "timed" }
func (s *timed) FlushInterval() time.Duration { return 0 }
func (s *timed) Flush(context.Context) error  { return nil }
func (s *timed) Write(_ context.Context, batch []*change.Change) (int, error) {
	s.writes <- time.Now()
	return 0, nil
}

// A transaction the source held back (capture coalescing reads) has its
// batch cut the hold sooner; the rest of a large transaction, and a
// transaction not held, wait in full.
func TestFlushIntervalCountsTheSourcesHold(t *testing.T) {
	const flush = 400 * time.Millisecond
	src, s := &scripted{next: make(chan []Event)}, &timed{writes: make(chan time.Time, 8)}
	p := newPipeline(src, []Sink{s}, Options{BatchSize: 1000, FlushInterval: flush})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx) }()
	defer func() { cancel(); <-done }()
	row := func(xid uint64) Event { return Event{Kind: Row, XID: xid, Change: &change.Change{}} }
	waited := func(what string, events []Event) time.Duration {
		t.Helper()
		sent := time.Now()
		src.next <- events
		select {
		case at := <-s.writes:
			return at.Sub(sent)
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no batch written", what)
			return 0
		}
	}

	held := flush - 20*time.Millisecond
	if w := waited("held transaction", []Event{{Kind: Begin, XID: 1, Held: held}, row(1), {Kind: Commit, XID: 1, Position: 1}}); w > flush/2 {
		t.Errorf("a transaction held %s waited %s more, want about 20ms", held, w)
	}
	if w := waited("transaction not held", []Event{{Kind: Begin, XID: 2}, row(2), {Kind: Commit, XID: 2, Position: 2}}); w < flush*3/4 {
		t.Errorf("a transaction not held waited %s, want the whole %s", w, flush)
	}
	waited("start of a large transaction", []Event{{Kind: Begin, XID: 3, Held: held}, row(3)})
	if w := waited("rest of a large transaction", []Event{row(3), {Kind: Commit, XID: 3, Position: 3}}); w < flush*3/4 {
		t.Errorf("the rest of a held transaction waited %s, want the whole %s", w, flush)
	}
}

// failing emits one transaction and fails once it is handed over.
type failing struct{ scripted }

func (s *failing) Run(ctx context.Context, out chan<- []Event) error {
	out <- []Event{
		{Kind: Begin, XID: 1},
		{Kind: Row, XID: 1, Change: &change.Change{LSN: 1}},
		{Kind: Commit, XID: 1, Position: 1},
	}
	return errors.New("connection lost")
}

// stuck fails every write, as a sink whose database is going down does.
type stuck struct{ writes atomic.Int64 }

func (s *stuck) Name() string                 { return "stuck" }
func (s *stuck) FlushInterval() time.Duration { return 0 }
func (s *stuck) Flush(context.Context) error  { return nil }
func (s *stuck) Write(context.Context, []*change.Change) (int, error) {
	s.writes.Add(1)
	return 0, errors.New("the database system is shutting down")
}

// When the source fails, a sink that cannot write does not hold the
// pipeline: Run returns the source's error and nothing is confirmed.
func TestSourceFailureEndsRunWhileASinkRetries(t *testing.T) {
	s := &stuck{}
	p := newPipeline(&failing{}, []Sink{s}, Options{FlushInterval: time.Millisecond})
	done := make(chan error)
	go func() { done <- p.Run(context.Background()) }()
	select {
	case err := <-done:
		if err == nil || err.Error() != "connection lost" {
			t.Fatalf("Run: %v, want the source's error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("Run still retrying the sink (%d writes) after the source failed", s.writes.Load())
	}
}
