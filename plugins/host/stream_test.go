package host

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	googleuuid "github.com/google/uuid"
	"github.com/hashicorp/go-plugin"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/plugins/sdk"
)

// flaky is a sink that records what it stores and fails the writes and
// flushes it is told to fail. A buffering flaky stores only on Flush.
type flaky struct {
	buffer bool
	failAt map[int]bool // fail the nth call of Write or Flush (from 1), once

	mu     sync.Mutex
	calls  int
	held   []*change.Change
	stored []*change.Change
}

func (f *flaky) fail() error {
	f.calls++
	if f.failAt[f.calls] {
		return fmt.Errorf("call %d fails", f.calls)
	}
	return nil
}

func (f *flaky) Describe() sdk.Description {
	if f.buffer {
		return sdk.Description{Name: "flaky", FlushInterval: time.Second}
	}
	return sdk.Description{Name: "flaky"}
}
func (f *flaky) Configure(context.Context, json.RawMessage) error { return nil }
func (f *flaky) Setup(context.Context) error                      { return nil }
func (f *flaky) Teardown(context.Context) error                   { return nil }
func (f *flaky) Open(context.Context) error                       { return nil }
func (f *flaky) Check(context.Context) error                      { return nil }
func (f *flaky) Close(context.Context) error                      { return nil }

func (f *flaky) Write(_ context.Context, batch []*sdk.Change) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	time.Sleep(time.Millisecond) // let batches queue up behind this one
	if err := f.fail(); err != nil {
		return false, err
	}
	if f.buffer {
		f.held = append(f.held, batch...)
		return false, nil
	}
	f.stored = append(f.stored, batch...)
	return true, nil
}

func (f *flaky) Flush(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail(); err != nil {
		return err
	}
	f.stored, f.held = append(f.stored, f.held...), nil
	return nil
}

// inTest is a plugin process that never exits: the gRPC server runs in the
// test, on a real connection.
type inTest struct{}

func (inTest) Exited() bool { return false }
func (inTest) Kill()        {}

// TestStreamedBatchesReachAFailingSinkInOrderAndOnce hands batches to a sink
// across the gRPC boundary, several in flight, while the sink fails now and
// then, and retries as the pipeline does. Every change must be stored once,
// in order, and Write must never report as durable what the sink has not.
func TestStreamedBatchesReachAFailingSinkInOrderAndOnce(t *testing.T) {
	for _, buffer := range []bool{false, true} {
		t.Run(fmt.Sprintf("buffering=%v", buffer), func(t *testing.T) {
			impl := &flaky{buffer: buffer, failAt: map[int]bool{3: true, 4: true, 9: true, 17: true, 30: true}}
			client, server := plugin.TestPluginGRPCConn(t, false, map[string]plugin.Plugin{sdk.PluginName: &sdk.GRPCPlugin{Impl: impl}})
			t.Cleanup(func() { client.Close(); server.Stop() })
			raw, err := client.Dispense(sdk.PluginName)
			if err != nil {
				t.Fatal(err)
			}
			s := &Sink{name: "flaky", opts: Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))},
				start: func(context.Context) (backend, error) { return &remote{client: inTest{}, rpc: raw.(*sdk.Client)}, nil }}
			ctx := context.Background()
			if err := s.restart(ctx); err != nil {
				t.Fatal(err)
			}

			var want []googleuuid.UUID
			durableWant := 0 // changes reported durable so far, at most what is stored
			handed, failures := 0, 0
			for i := range 25 {
				batch := make([]*change.Change, 3)
				for j := range batch {
					batch[j] = &change.Change{ID: change.MakeID("db", uint64(i), "s", "t", uint32(j))}
					want = append(want, batch[j].ID)
				}
				for attempt := 0; ; attempt++ {
					notDurable, err := s.Write(ctx, batch)
					if err == nil {
						handed++
						durableWant = 3 * (handed - notDurable)
						break
					}
					failures++
					if attempt > 10 {
						t.Fatalf("batch %d: %v", i, err)
					}
				}
				impl.mu.Lock()
				stored := len(impl.stored)
				impl.mu.Unlock()
				if durableWant > stored {
					t.Fatalf("after batch %d: %d changes reported durable, the sink stored %d", i, durableWant, stored)
				}
			}
			for attempt := 0; s.Flush(ctx) != nil; attempt++ {
				failures++
				if attempt > 10 {
					t.Fatal("flush keeps failing")
				}
			}
			if len(s.unsafe) != 0 {
				t.Fatalf("%d batches not durable after Flush", len(s.unsafe))
			}
			if failures < 4 {
				t.Fatalf("the pipeline saw %d failures; the sink failed 5 times", failures)
			}
			var got []googleuuid.UUID
			for _, c := range impl.stored {
				got = append(got, c.ID)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("stored %d changes, want %d in order, each once", len(got), len(want))
			}
		})
	}
}
