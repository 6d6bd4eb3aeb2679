package pipeline

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/metrics"
)

// picky stores what it is handed, in order, except a batch holding a change
// whose images or context say "poison": that it refuses as unstorable, as
// PostgreSQL refuses a value jsonb cannot hold. Its first transient writes
// fail as an outage does.
type picky struct {
	mu        sync.Mutex
	transient int // writes left to fail as an outage
	writes    int
	stored    []*change.Change
}

func (s *picky) Name() string                 { return "picky" }
func (s *picky) FlushInterval() time.Duration { return 0 }
func (s *picky) Flush(context.Context) error  { return nil }
func (s *picky) Write(_ context.Context, batch []*change.Change) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	if s.transient > 0 {
		s.transient--
		return 0, errors.New("connection refused")
	}
	for _, c := range batch {
		for _, img := range [][]byte{c.Before, c.After, c.Context} {
			if bytes.Contains(img, []byte("poison")) {
				return 0, change.Unstorable(fmt.Errorf("value overflows numeric format (SQLSTATE 22003) at %s", c.ID))
			}
		}
	}
	s.stored = append(s.stored, batch...)
	return 0, nil
}

// oneTransaction emits a transaction of the given changes, each after its
// _bemi context message if it has one, then waits.
type oneTransaction struct {
	changes []*change.Change
	bemi    map[int]string
	mu      sync.Mutex
	last    any
}

func (s *oneTransaction) Run(ctx context.Context, out chan<- []Event) error {
	evs := []Event{{Kind: Begin, XID: 1}}
	for i, c := range s.changes {
		if ctx, ok := s.bemi[i]; ok {
			evs = append(evs, Event{Kind: Message, XID: 1, Prefix: "_bemi", Content: []byte(ctx)})
		}
		evs = append(evs, Event{Kind: Row, XID: 1, Change: c})
	}
	out <- append(evs, Event{Kind: Commit, XID: 1, Position: "end"})
	<-ctx.Done()
	return ctx.Err()
}
func (s *oneTransaction) Confirm(pos any)             { s.mu.Lock(); s.last = pos; s.mu.Unlock() }
func (s *oneTransaction) Close(context.Context) error { return nil }
func (s *oneTransaction) confirmed() any              { s.mu.Lock(); defer s.mu.Unlock(); return s.last }

// untilConfirmed runs a pipeline from src into s until src's transaction is
// confirmed, and returns its metrics.
func untilConfirmed(t *testing.T, src *oneTransaction, s Sink) *metrics.Metrics {
	t.Helper()
	m := metrics.New()
	p := New(src, []Sink{s}, Options{BatchSize: 1000, FlushInterval: time.Millisecond}, slog.New(slog.NewTextHandler(io.Discard, nil)), m)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitUntil(t, "the transaction to be confirmed", func() bool { return src.confirmed() == "end" })
	return m
}

func changes(n int, poison map[int]string) []*change.Change {
	cs := make([]*change.Change, n)
	for i := range cs {
		cs[i] = &change.Change{ID: change.MakeID("db", uint64(i), "public", "t", 0), Schema: "public", Table: "t",
			Before: change.Empty, After: json.RawMessage(fmt.Sprintf(`{"id":%d}`, i)), LSN: uint64(i)}
		switch poison[i] {
		case "after":
			cs[i].After = json.RawMessage(fmt.Sprintf(`{"id":%d,"v":"poison"}`, i))
		case "before":
			cs[i].Before = json.RawMessage(fmt.Sprintf(`{"id":%d,"v":"poison"}`, i))
		}
	}
	return cs
}

func marker(img string, err string) string {
	sum := sha256.Sum256([]byte(img))
	return fmt.Sprintf(`{"pgtrail_replaced":"unstorable","bytes":%d,"sha256":"%s","error":%q}`, len(img), hex.EncodeToString(sum[:]), err)
}

// TestARefusedChangeIsFoundByBisectionAndStoredInItsSafeForm: a batch of
// 1000 changes, three of which the sink refuses for their data (one by its
// context). The pipeline splits the batch until it has each of them alone,
// stores them with their images (and, for the one whose context is at
// fault, its context) replaced by markers, and every other change as it is,
// once, in order; the transaction is confirmed once all of it is stored.
func TestARefusedChangeIsFoundByBisectionAndStoredInItsSafeForm(t *testing.T) {
	cs := changes(1000, map[int]string{17: "after", 500: "before", 999: "after"})
	bemi := map[int]string{640: `{"user":"poison"}`, 641: `{"user":"ann"}`}
	want := make([]change.Change, len(cs))
	for i, c := range cs {
		want[i] = *c
		want[i].Context = change.Empty
		if ctx, ok := bemi[i]; ok {
			want[i].Context = json.RawMessage(ctx)
		}
	}
	s := &picky{}
	m := untilConfirmed(t, &oneTransaction{changes: cs, bemi: bemi}, s)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.stored) != len(want) {
		t.Fatalf("stored %d changes, want %d", len(s.stored), len(want))
	}
	for i, got := range s.stored {
		w := want[i]
		errText := fmt.Sprintf("value overflows numeric format (SQLSTATE 22003) at %s", w.ID)
		switch i {
		case 17, 999:
			w.After = json.RawMessage(marker(string(w.After), errText))
		case 500: // both images: which one is at fault the sink does not say
			w.Before = json.RawMessage(marker(string(w.Before), errText))
			w.After = json.RawMessage(marker(string(w.After), errText))
		case 640:
			w.After = json.RawMessage(marker(string(w.After), errText))
			w.Context = json.RawMessage(marker(string(w.Context), errText))
		}
		if got.ID != w.ID || string(got.Before) != string(w.Before) || string(got.After) != string(w.After) || string(got.Context) != string(w.Context) {
			t.Fatalf("change %d stored as %s %s %s %s,\nwant %s %s %s %s", i, got.ID, got.Before, got.After, got.Context, w.ID, w.Before, w.After, w.Context)
		}
	}
	if n := count(m.UnstorableChanges.WithLabelValues("picky")); n != 4 {
		t.Fatalf("pgtrail_unstorable_changes_total = %v, want 4", n)
	}
}

// TestAnOutageNeverReplacesAChange: writes that fail for the sink's state,
// however many, are retried until they succeed; nothing is replaced.
func TestAnOutageNeverReplacesAChange(t *testing.T) {
	cs := changes(100, nil)
	s := &picky{transient: 4}
	m := untilConfirmed(t, &oneTransaction{changes: cs}, s)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.writes != 5 || len(s.stored) != 100 {
		t.Fatalf("%d writes stored %d changes, want 5 writes (4 failed) storing 100", s.writes, len(s.stored))
	}
	for i, c := range s.stored {
		if c != cs[i] || strings.Contains(string(c.After), "pgtrail_replaced") {
			t.Fatalf("change %d stored as %s, want it as read", i, c.After)
		}
	}
	if n := count(m.UnstorableChanges.WithLabelValues("picky")); n != 0 {
		t.Fatalf("pgtrail_unstorable_changes_total = %v, want 0", n)
	}
}

// count reads a counter.
func count(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// TestValuesJSONBCannotHoldReachNoSink: a row image with a number numeric
// cannot hold reaches the sinks in its safe form (and counted), unless the
// pipeline hands values over verbatim, for a sink that republishes them.
func TestValuesJSONBCannotHoldReachNoSink(t *testing.T) {
	for _, verbatim := range []bool{false, true} {
		after := `{"id":1,"n":1e1000000,"s":"` + strings.Repeat("x", 40) + `"}`
		c := &change.Change{Before: change.Empty, After: json.RawMessage(after)}
		src, s := &oneTransaction{changes: []*change.Change{c}}, &picky{}
		m := metrics.New()
		p := New(src, []Sink{s}, Options{FlushInterval: time.Millisecond, Verbatim: verbatim, MaxString: 39},
			slog.New(slog.NewTextHandler(io.Discard, nil)), m)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- p.Run(ctx) }()
		waitUntil(t, "the transaction to be confirmed", func() bool { return src.confirmed() == "end" })
		cancel()
		<-done
		sum := sha256.Sum256([]byte(strings.Repeat("x", 40)))
		want, counted := `{"id":1,"n":"1e1000000","s":{"pgtrail_replaced":"string_too_long","bytes":40,"sha256":"`+hex.EncodeToString(sum[:])+`"}}`, 1.0
		if verbatim {
			want, counted = after, 0
		}
		n := count(m.ValuesRewritten.WithLabelValues("number_out_of_range"))
		if got := string(s.stored[0].After); got != want || n != counted {
			t.Errorf("verbatim=%v: sink got %s (%v counted), want %s", verbatim, got, n, want)
		}
	}
}
