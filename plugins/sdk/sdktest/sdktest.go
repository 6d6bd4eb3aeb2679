// Package sdktest is the test kit every sink runs to prove the behaviour the
// pipeline relies on: idempotent replay, batches of any size, changes of every
// kind, and a clean shutdown and restart.
package sdktest

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/plugins/sdk"
)

// Harness describes the sink under test.
type Harness struct {
	// New returns a fresh, unconfigured sink.
	New func() sdk.Sink
	// Config is the sink's config block as JSON.
	Config json.RawMessage
	// Stored reads back, from the sink's storage, the ID of every change it
	// holds, once per stored copy (so a duplicate shows up twice). A sink
	// whose storage merges duplicates only at query time (ClickHouse's
	// ReplacingMergeTree) returns what a query with FINAL returns.
	Stored func(t testing.TB) []uuid.UUID
}

// Run runs the kit.
func Run(t *testing.T, h Harness) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	open := func(t *testing.T) sdk.Sink {
		t.Helper()
		s := h.New()
		if err := s.Configure(ctx, h.Config); err != nil {
			t.Fatalf("Configure: %v", err)
		}
		if err := s.Open(ctx); err != nil {
			t.Fatalf("Open: %v", err)
		}
		return s
	}

	t.Run("SetupIsIdempotent", func(t *testing.T) {
		s := h.New()
		if err := s.Configure(ctx, h.Config); err != nil {
			t.Fatalf("Configure: %v", err)
		}
		for i := 0; i < 2; i++ {
			if err := s.Setup(ctx); err != nil {
				t.Fatalf("Setup #%d: %v", i+1, err)
			}
		}
		if d := s.Describe(); d.Name == "" || d.Version == "" {
			t.Fatalf("Describe gives no name or version: %+v", d)
		}
		if err := s.Close(ctx); err != nil {
			t.Fatalf("Close: %v", err)
		}
	})

	batch := Changes(1000, time.Now())
	t.Run("WritesEveryKindOfChange", func(t *testing.T) {
		s := open(t)
		defer s.Close(ctx)
		if err := s.Check(ctx); err != nil {
			t.Fatalf("Check: %v", err)
		}
		if _, err := s.Write(ctx, nil); err != nil {
			t.Fatalf("Write of an empty batch: %v", err)
		}
		for _, part := range [][]*sdk.Change{batch[:1], batch[1:400], batch[400:]} {
			write(t, s, part)
		}
		if err := s.Flush(ctx); err != nil {
			t.Fatalf("Flush: %v", err)
		}
		expectOnce(t, h.Stored(t), batch)
	})

	t.Run("DurableMeansEveryBatchSoFarIsStored", func(t *testing.T) {
		// In-order acknowledgement: when Write says durable, every batch
		// handed over until then is in storage, not just the last one.
		s := open(t)
		defer s.Close(ctx)
		fresh := Changes(300, time.Now().AddDate(0, 0, -3))
		base := len(h.Stored(t))
		for i := 0; i < len(fresh); i += 50 {
			durable, err := s.Write(ctx, fresh[i:i+50])
			if err != nil {
				t.Fatalf("Write: %v", err)
			}
			if got := len(h.Stored(t)) - base; durable && got != i+50 {
				t.Fatalf("Write reported durable with %d of the %d changes handed over stored", got, i+50)
			}
		}
		if err := s.Flush(ctx); err != nil {
			t.Fatalf("Flush: %v", err)
		}
		if got := len(h.Stored(t)) - base; got != len(fresh) {
			t.Fatalf("after Flush %d of %d changes are stored", got, len(fresh))
		}
		batch = append(batch, fresh...)
	})

	t.Run("CloseIsCleanAndTheSinkOpensAgain", func(t *testing.T) {
		s := open(t)
		if err := s.Flush(ctx); err != nil {
			t.Fatalf("Flush with nothing buffered: %v", err)
		}
		if err := s.Close(ctx); err != nil {
			t.Fatalf("Close: %v", err)
		}
		s = open(t)
		if err := s.Check(ctx); err != nil {
			t.Fatalf("Check after reopening: %v", err)
		}
		if err := s.Close(ctx); err != nil {
			t.Fatalf("Close: %v", err)
		}
	})

	t.Run("ReplayAfterRestartStoresEachChangeOnce", func(t *testing.T) {
		s := open(t)
		// Batches cut differently from the first time, overlapping it, as
		// after a crash; then new changes.
		more := Changes(500, time.Now().AddDate(0, -2, 0)) // another month: another partition or prefix
		replay := append(slices.Clone(batch[300:]), more...)
		for _, part := range [][]*sdk.Change{batch[:700], replay} {
			write(t, s, part)
		}
		if err := s.Flush(ctx); err != nil {
			t.Fatalf("Flush: %v", err)
		}
		if err := s.Close(ctx); err != nil {
			t.Fatalf("Close: %v", err)
		}
		s = open(t)
		write(t, s, replay)
		if err := s.Flush(ctx); err != nil {
			t.Fatalf("Flush after reopen: %v", err)
		}
		if err := s.Close(ctx); err != nil {
			t.Fatalf("Close: %v", err)
		}
		expectOnce(t, h.Stored(t), append(slices.Clone(batch), more...))
	})
}

func write(t *testing.T, s sdk.Sink, batch []*sdk.Change) {
	t.Helper()
	if _, err := s.Write(context.Background(), batch); err != nil {
		t.Fatalf("Write of %d changes: %v", len(batch), err)
	}
}

func expectOnce(t *testing.T, stored []uuid.UUID, want []*sdk.Change) {
	t.Helper()
	seen := map[uuid.UUID]int{}
	for _, id := range stored {
		seen[id]++
	}
	missing, doubled := 0, 0
	for _, c := range want {
		switch seen[c.ID] {
		case 0:
			missing++
		case 1:
		default:
			doubled++
		}
	}
	if missing > 0 || doubled > 0 || len(stored) != len(want) {
		t.Fatalf("sink holds %d changes, want %d: %d missing, %d stored more than once", len(stored), len(want), missing, doubled)
	}
}

// Changes makes n changes of every operation, with composite keys, nested
// JSON, unicode, context and unchanged TOAST columns, committed around at.
func Changes(n int, at time.Time) []*sdk.Change {
	ops := []change.Operation{change.Create, change.Update, change.Delete, change.Truncate}
	out := make([]*sdk.Change, n)
	base := uint64(at.UnixMicro()) // distinct positions per call
	for i := range out {
		lsn := base + uint64(i/3)*64 // three rows share each LSN, as in a multi-row insert
		op := ops[i%len(ops)]
		c := &sdk.Change{
			ID:       change.MakeID("app", lsn, "public", "orders", uint32(i%3)),
			Database: "app", Schema: "public", Table: "orders", Operation: op,
			PrimaryKey:    fmt.Sprintf(`[%d,"k\u00e9y"]`, i),
			Before:        change.Empty,
			After:         change.Empty,
			Context:       json.RawMessage(fmt.Sprintf(`{"user":%d,"path":"/o/\u2603","tags":["a","b"]}`, i%7)),
			TransactionID: uint64(1000 + i/10),
			CommittedAt:   at.Add(time.Duration(i/10) * time.Millisecond).UTC().Truncate(time.Microsecond),
			QueuedAt:      at.UTC().Truncate(time.Microsecond),
			LSN:           lsn,
			CommitLSN:     base + uint64(i/10)*64*4,
			Seq:           uint32(i % 10),
		}
		row := json.RawMessage(fmt.Sprintf(`{"id":%d,"note":"line\nbreak \"quoted\"","amount":"12345678901234567890.5","meta":{"n":[1,2,null]}}`, i))
		switch op {
		case change.Create:
			c.After = row
		case change.Update:
			c.Before, c.After = row, json.RawMessage(fmt.Sprintf(`{"id":%d}`, i))
			c.UnchangedToast = []string{"body"}
		case change.Delete:
			c.Before = row
		case change.Truncate:
			c.PrimaryKey = ""
		}
		out[i] = c
	}
	return out
}
