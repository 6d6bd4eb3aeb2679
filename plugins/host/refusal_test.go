package host

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/metrics"
	"github.com/pgtrail/pgtrail/core/pipeline"
	"github.com/pgtrail/pgtrail/plugins/sdk"
)

// refuser is a plugin's sink that refuses, as unstorable, a batch holding a
// change whose image says "poison", and stores every other batch.
type refuser struct {
	flaky
}

func (r *refuser) Write(_ context.Context, batch []*sdk.Change) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	time.Sleep(time.Millisecond) // let batches queue up behind this one
	for _, c := range batch {
		if bytes.Contains(c.After, []byte("poison")) {
			return false, sdk.Unstorable(fmt.Errorf("value overflows numeric format (SQLSTATE 22003)"))
		}
	}
	r.stored = append(r.stored, batch...)
	return true, nil
}

// transactions emits n one-change transactions, positions 1..n.
type transactions struct {
	changes []*change.Change
	mu      sync.Mutex
	last    int
}

func (s *transactions) Run(ctx context.Context, out chan<- []pipeline.Event) error {
	for i, c := range s.changes {
		select {
		case out <- []pipeline.Event{{Kind: pipeline.Begin, XID: uint64(i + 1)}, {Kind: pipeline.Row, XID: uint64(i + 1), Change: c},
			{Kind: pipeline.Commit, XID: uint64(i + 1), Position: i + 1}}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	<-ctx.Done()
	return ctx.Err()
}
func (s *transactions) Confirm(pos any)             { s.mu.Lock(); s.last = pos.(int); s.mu.Unlock() }
func (s *transactions) Close(context.Context) error { return nil }

// TestARefusalCrossesThePluginBoundaryAndOnlyItsChangeIsReplaced runs the
// pipeline into a sink behind the gRPC boundary, batches in flight, which
// refuses a few changes for their data. The refusal comes back for an
// earlier batch than the one being handed over; the host gives back that
// batch and those after it, and the pipeline splits them until it has the
// change alone. Every change is stored once, in order: the refused ones
// with their image replaced by a marker, every other one as it was.
func TestARefusalCrossesThePluginBoundaryAndOnlyItsChangeIsReplaced(t *testing.T) {
	impl := &refuser{}
	client, server := plugin.TestPluginGRPCConn(t, false, map[string]plugin.Plugin{sdk.PluginName: &sdk.GRPCPlugin{Impl: impl}})
	t.Cleanup(func() { client.Close(); server.Stop() })
	raw, err := client.Dispense(sdk.PluginName)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s := &Sink{name: "refuser", opts: Options{Log: log},
		start: func(context.Context) (backend, error) { return &remote{client: inTest{}, rpc: raw.(*sdk.Client)}, nil }}
	ctx := context.Background()
	if err := s.restart(ctx); err != nil {
		t.Fatal(err)
	}

	poison := map[int]bool{40: true, 41: true, 300: true, 799: true}
	cs := make([]*change.Change, 800)
	for i := range cs {
		after := fmt.Sprintf(`{"id":%d}`, i)
		if poison[i] {
			after = fmt.Sprintf(`{"id":%d,"n":"poison"}`, i)
		}
		cs[i] = &change.Change{ID: change.MakeID("db", uint64(i), "public", "t", 0), Schema: "public", Table: "t",
			Before: change.Empty, After: json.RawMessage(after), Context: change.Empty}
	}
	src := &transactions{changes: cs}
	// Batches of about 10 (a flush interval the source outruns).
	p := pipeline.New(src, []pipeline.Sink{s}, pipeline.Options{BatchSize: 10, FlushInterval: time.Millisecond, MaxInFlight: 4}, log, metrics.New())
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- p.Run(rctx) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		src.mu.Lock()
		last := src.last
		src.mu.Unlock()
		impl.mu.Lock()
		stored := len(impl.stored)
		impl.mu.Unlock()
		if last > stored {
			t.Fatalf("position %d confirmed with %d changes stored", last, stored)
		}
		if last == len(cs) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("confirmed up to %d of %d after 60s", last, len(cs))
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done

	if len(impl.stored) != len(cs) {
		t.Fatalf("stored %d changes, want %d", len(impl.stored), len(cs))
	}
	for i, got := range impl.stored {
		if got.ID != cs[i].ID {
			t.Fatalf("change %d stored is %s, want %s: not in order, or not once", i, got.ID, cs[i].ID)
		}
		replaced := bytes.HasPrefix(got.After, []byte(`{"pgtrail_replaced":"unstorable","bytes":`)) &&
			bytes.HasSuffix(got.After, []byte(`,"error":"value overflows numeric format (SQLSTATE 22003)"}`))
		if poison[i] != replaced || !poison[i] && string(got.After) != string(cs[i].After) {
			t.Fatalf("change %d (poison %v) stored with after = %s", i, poison[i], got.After)
		}
	}
}

// fake is a backend in this process that buffers what it takes (nothing is
// durable) and refuses, as the sink would, a batch holding "poison".
type fake struct {
	inProcess
	refuse bool
	exited bool
}

func (f *fake) Send(_ context.Context, seq uint64, batch []*change.Change, flush bool) error {
	if seq <= f.last || flush {
		return nil
	}
	for _, c := range batch {
		if f.refuse && bytes.Contains(c.After, []byte("poison")) {
			return &sdk.UnstorableBatch{Seq: seq, Err: change.Unstorable(fmt.Errorf("refused"))}
		}
	}
	f.last = seq
	return nil
}
func (f *fake) Exited() bool { return f.exited }

// TestARefusalOfABatchDeliveredAgainAfterARestartIsGivenBack: a sink
// process took a batch with a change its successor refuses, and died. The
// host starts a new one and delivers again what was not durable; the
// refusal is given back to the pipeline (the refused batch and those after
// it), instead of killing the new process and starting another, for ever.
func TestARefusalOfABatchDeliveredAgainAfterARestartIsGivenBack(t *testing.T) {
	backends := []*fake{{inProcess: inProcess{impl: &flaky{}}}, {inProcess: inProcess{impl: &flaky{}}, refuse: true}}
	s := &Sink{name: "fake", opts: Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))},
		start: func(context.Context) (backend, error) {
			b := backends[0]
			backends = backends[1:]
			return b, nil
		}}
	ctx := context.Background()
	if err := s.restart(ctx); err != nil {
		t.Fatal(err)
	}
	batch := func(after string) []*change.Change {
		return []*change.Change{{After: json.RawMessage(after)}}
	}
	for _, after := range []string{`{"ok":1}`, `{"v":"poison"}`, `{"ok":2}`} {
		if _, err := s.Write(ctx, batch(after)); err != nil {
			t.Fatal(err)
		}
	}
	s.b.(*fake).exited = true // the process died; watch would see it
	s.b.Kill()
	s.b = nil
	_, err := s.Write(ctx, batch(`{"ok":3}`))
	var u *change.UnstorableError
	if !errors.As(err, &u) || u.Earlier != 2 {
		t.Fatalf("write after a restart that delivers a refused batch again: %v, want a refusal giving back 2 earlier batches", err)
	}
	if len(s.unsafe) != 1 || string(s.unsafe[0].batch[0].After) != `{"ok":1}` {
		t.Fatalf("host still holds %d batches, want the one before the refused one", len(s.unsafe))
	}
}
