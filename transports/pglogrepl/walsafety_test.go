package pglogrepl

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"

	repl "github.com/jackc/pglogrepl"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/metrics"
	"github.com/pgtrail/pgtrail/core/pipeline"
	"github.com/pgtrail/pgtrail/test/pgtest"
	"github.com/pgtrail/pgtrail/test/testbed"
)

// capture runs a Source whose every event is durable at once, as with an
// instant sink, and returns the events it emitted and Run's end.
func capture(t *testing.T, ctx context.Context, s *Source) (<-chan pipeline.Event, <-chan error) {
	t.Helper()
	out := make(chan []pipeline.Event, 64)
	seen := make(chan pipeline.Event, 1024)
	go func() {
		for evs := range out {
			for _, ev := range evs {
				if ev.Kind == pipeline.Commit || ev.Kind == pipeline.Progress {
					s.Confirm(ev.Position)
				}
				select {
				case seen <- ev:
				default:
				}
			}
		}
	}()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, out) }()
	return seen, done
}

func slotLSN(t *testing.T, ctx context.Context, s *Source, sql string) repl.LSN {
	t.Helper()
	conn, err := connect(ctx, s.cfg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var text string
	if err := conn.QueryRow(ctx, sql, s.cfg.Slot).Scan(&text); err != nil {
		t.Fatal(err)
	}
	lsn, err := repl.ParseLSN(text)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// TestHeartbeatKeepsLagSecondsAndTheSlotCurrentOnAnIdleDatabase: one
// change, then an idle database. The lag in seconds stays near the
// heartbeat interval instead of growing with the idle time (without
// heartbeats it reads 3s and more), the slot's confirmed position passes
// the heartbeats' WAL, and no heartbeat reaches the pipeline as a message
// or change.
func TestHeartbeatKeepsLagSecondsAndTheSlotCurrentOnAnIdleDatabase(t *testing.T) {
	c := startCluster(t)
	url := c.NewDatabase(t)
	c.Exec(t, url, `CREATE TABLE t (id int PRIMARY KEY)`)
	cfg := testConfig(url)
	cfg.Heartbeat = config.Duration(300 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	if err := Setup(ctx, cfg, log); err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	s, err := Open(ctx, cfg, nil, log, m)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	if v := value(m.LagSeconds); !math.IsNaN(v) {
		t.Fatalf("lag before anything was durable: got %v, want NaN (unknown)", v)
	}
	seen, done := capture(t, ctx, s)
	c.Exec(t, url, `INSERT INTO t VALUES (1)`)
	time.Sleep(3 * time.Second) // idle
	lag := value(m.LagSeconds)
	if math.IsNaN(lag) || lag > 1.5 {
		t.Fatalf("lag after 3s idle with 300ms heartbeats: got %v s, want at most 1.5s (heartbeat plus a status interval)", lag)
	}
	if n := value(m.Heartbeats); n < 3 {
		t.Fatalf("heartbeats sent in 3s at 300ms: got %v, want at least 3", n)
	}
	// The heartbeats' WAL is confirmed: the slot moves while nothing changes.
	wal := slotLSN(t, ctx, s, `SELECT pg_current_wal_lsn()::text WHERE $1 <> ''`)
	deadline := time.Now().Add(10 * time.Second)
	for slotLSN(t, ctx, s, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`) < wal {
		if time.Now().After(deadline) {
			t.Fatalf("slot's confirmed position still before %s 10s later", wal)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	<-done
	for len(seen) > 0 {
		if ev := <-seen; ev.Kind == pipeline.Message || ev.Kind == pipeline.Row && ev.Change.Table != "t" {
			t.Fatalf("a heartbeat reached the pipeline: %+v", ev)
		}
	}
}

// TestRetainedWALPastTheThresholdWarnsInTheLogAndStatus: with a threshold
// of one byte, the WAL any slot holds is too much: capture logs the
// warning once, and Status names it with the key to change.
func TestRetainedWALPastTheThresholdWarnsInTheLogAndStatus(t *testing.T) {
	c := startCluster(t)
	url := c.NewDatabase(t)
	c.Exec(t, url, `CREATE TABLE t (id int PRIMARY KEY, pad text)`)
	cfg := testConfig(url)
	cfg.MaxRetainedWAL = 1
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := Setup(ctx, cfg, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	c.Exec(t, url, `INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 1000) g`)
	var logs testbed.Output
	m := metrics.New()
	s, err := Open(ctx, cfg, nil, slog.New(slog.NewTextHandler(&logs, nil)), m)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	_, done := capture(t, ctx, s)
	time.Sleep(time.Second) // five status intervals
	cancel()
	<-done
	if n := strings.Count(logs.String(), "more than source.postgres.max_retained_wal (1)"); n != 1 {
		t.Fatalf("warnings logged in five status intervals: got %d, want 1 (on the change of state only); log:\n%s", n, logs.String())
	}
	if v := value(m.RetainedBytes); v < 100_000 {
		t.Fatalf("pgtrail_slot_retained_wal_bytes: got %v, want at least the 100 KB inserted", v)
	}
	if v := value(m.Status.WithLabelValues("reserved")); v != 1 {
		t.Fatalf("pgtrail_slot_wal_status{status=reserved}: got %v, want 1", v)
	}
	if v := value(m.SafeBytes); !math.IsNaN(v) {
		t.Fatalf("pgtrail_slot_safe_wal_bytes with max_slot_wal_keep_size -1: got %v, want NaN", v)
	}

	st, err := Status(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	w := st.Warnings(cfg.MaxRetainedWAL)
	if len(w) != 1 || !strings.Contains(w[0], "more than source.postgres.max_retained_wal (1)") {
		t.Fatalf("status warnings: got %q, want the retained WAL named", w)
	}
	if w := st.Warnings(config.Size(st.RetainedBytes)); len(w) != 0 {
		t.Fatalf("status warnings at a threshold of exactly the retained WAL: got %q, want none", w)
	}
}

// TestInvalidatedSlotIsAClearErrorAndNeverReplaced: a slot that falls
// behind more than max_slot_wal_keep_size while nobody reads it is
// invalidated at a checkpoint. Run on the source opened before fails with
// ErrSlotLost, so does the next Open, both saying what was lost and how to
// recover; setup and the start-up preparation refuse it and leave it as it is.
func TestInvalidatedSlotIsAClearErrorAndNeverReplaced(t *testing.T) {
	c, err := pgtest.Start(pgtest.Options{Settings: pgtest.SmallSlotWAL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	url := c.NewDatabase(t)
	cfg := testConfig(url)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	if err := Setup(ctx, cfg, log); err != nil {
		t.Fatal(err)
	}
	early, err := Open(ctx, cfg, nil, log, metrics.New())
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close(context.Background())
	before, err := Status(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}

	c.OutgrowSlots(t, url) // while the slot is not read
	st, err := Status(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if st.WALStatus != "lost" {
		t.Fatalf("wal_status after %d bytes of WAL past a 1MB max_slot_wal_keep_size and a checkpoint: got %q, want lost", st.RetainedBytes, st.WALStatus)
	}
	lost := st.Lost()
	if !errors.Is(lost, ErrSlotLost) {
		t.Fatalf("Status of the lost slot: got %v, want ErrSlotLost", lost)
	}

	runErr := early.Run(ctx, make(chan []pipeline.Event, 64))
	if !errors.Is(runErr, ErrSlotLost) || !strings.Contains(runErr.Error(), "pgtrail teardown") ||
		!strings.Contains(runErr.Error(), before.ConfirmedLSN) {
		t.Fatalf("Run on the lost slot: got %v, want ErrSlotLost naming the confirmed position %s and the recovery", runErr, before.ConfirmedLSN)
	}

	if err := Prepare(ctx, cfg, log); !errors.Is(err, ErrSlotLost) {
		t.Fatalf("start-up preparation on the lost slot: got %v, want ErrSlotLost", err)
	}
	if err := Setup(ctx, cfg, log); !errors.Is(err, ErrSlotLost) {
		t.Fatalf("setup on the lost slot: got %v, want ErrSlotLost (teardown first)", err)
	}
	_, err = Open(ctx, cfg, nil, log, metrics.New())
	for _, want := range []string{"replication slot invalidated", "wal_status lost", before.ConfirmedLSN, "are gone from the trail",
		"`pgtrail teardown` then `pgtrail setup`", "that gap stays missing"} {
		if !errors.Is(err, ErrSlotLost) || !strings.Contains(err.Error(), want) {
			t.Fatalf("Open on the lost slot: got %v, want ErrSlotLost saying %q", err, want)
		}
	}
	after, err := Status(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if after.WALStatus != "lost" || after.ConfirmedLSN != before.ConfirmedLSN {
		t.Fatalf("slot after start-up: got %+v, want the same lost slot (never replaced on its own)", after)
	}
}

// value reads a gauge or counter.
func value(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	if m.Gauge != nil {
		return m.GetGauge().GetValue()
	}
	return m.GetCounter().GetValue()
}
