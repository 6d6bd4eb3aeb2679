package pglogrepl

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/metrics"
	"github.com/pgtrail/pgtrail/core/pipeline"
	"github.com/pgtrail/pgtrail/test/faultproxy"
	"github.com/pgtrail/pgtrail/test/pgtest"
)

// startCluster starts a private server for one test.
func startCluster(t *testing.T) *pgtest.Cluster {
	t.Helper()
	c, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop) // registered first: runs after the database's clean-up
	return c
}

// through returns url reaching its server through a fault proxy.
func through(t *testing.T, c *pgtest.Cluster, url string) (*faultproxy.Proxy, string) {
	t.Helper()
	p, err := faultproxy.Start(fmt.Sprintf("127.0.0.1:%d", c.Port()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p, strings.Replace(url, fmt.Sprintf(":%d/", c.Port()), fmt.Sprintf(":%d/", p.Port()), 1)
}

func testConfig(url string) config.Postgres {
	return config.Postgres{URL: url, Slot: "pgtrail", Publication: "pgtrail", Tables: []string{"public.*"},
		StatusInterval: config.Duration(200 * time.Millisecond)}
}

// TestStalledStreamEndsCaptureWithinReceiveTimeout partitions the network
// under the replication connection alone: no byte moves, nothing is closed,
// and the server never times out (wal_sender_timeout 0), so only capture's
// own bound can end the wait. Run ends with the stall named, within the
// bound and a status interval or two, while the partition lasts; an idle
// database before it, as long, is no stall.
func TestStalledStreamEndsCaptureWithinReceiveTimeout(t *testing.T) {
	c := startCluster(t)
	url := c.NewDatabase(t)
	c.Exec(t, url, `CREATE TABLE t (id int PRIMARY KEY)`)
	proxy, viaProxy := through(t, c, url)
	cfg := testConfig(viaProxy + "&wal_sender_timeout=0")
	cfg.ReceiveTimeout = config.Duration(time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	if err := Setup(ctx, cfg, log); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, cfg, nil, log, metrics.New())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	// The side connection goes around the proxy: the stream alone stalls.
	_ = s.side.Close(ctx)
	if s.side, err = connect(ctx, url); err != nil {
		t.Fatal(err)
	}
	s.dec.side = s.side

	out := make(chan []pipeline.Event, 64)
	rows := make(chan struct{}, 64)
	go func() {
		// Everything is durable at once, as with an instant sink: then the
		// server has nothing left to ask about when the database is idle.
		for evs := range out {
			for _, ev := range evs {
				switch ev.Kind {
				case pipeline.Row:
					rows <- struct{}{}
				case pipeline.Commit, pipeline.Progress:
					s.Confirm(ev.Position)
				}
			}
		}
	}()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, out) }()
	c.Exec(t, url, `INSERT INTO t VALUES (1)`)
	select {
	case <-rows: // streaming
	case err := <-done:
		t.Fatalf("Run ended before streaming: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("no row streamed within 20s")
	}

	// An idle but healthy server answers every status update: silence
	// longer than the bound, with nothing to stream, is no stall.
	select {
	case err := <-done:
		t.Fatalf("Run ended while the database was idle: %v", err)
	case <-time.After(2500 * time.Millisecond):
	}

	proxy.Partition()
	began := time.Now()
	defer proxy.Heal()
	select {
	case err := <-done:
		took := time.Since(began)
		if err == nil || !strings.Contains(err.Error(), "the connection is stalled") {
			t.Fatalf("Run ended after %s with %v, want the stall named", took, err)
		}
		// Silence is counted from the last message; the check runs once
		// a status interval.
		if took < 800*time.Millisecond || took > 2*time.Second {
			t.Fatalf("stall detected after %s, want about the 1s receive_timeout", took)
		}
		t.Logf("stall detected %s into the partition: %v", took.Round(time.Millisecond), err)
	case <-time.After(10 * time.Second):
		t.Fatal("Run still waiting 10s into the partition: a stalled stream hangs capture")
	}
}

// TestReceiveTimeoutFollowsTheServersWalSenderTimeout: without
// receive_timeout, capture waits as long as the server would for capture,
// but at least two status intervals (it asks for a message once each).
func TestReceiveTimeoutFollowsTheServersWalSenderTimeout(t *testing.T) {
	c := startCluster(t)
	url := c.NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		walSenderTimeout string
		cfg              time.Duration
		want             time.Duration
	}{
		{"3s", 0, 3 * time.Second},
		{"0", 0, time.Minute}, // the server never gives up: PostgreSQL's default
		{"100ms", 0, 400 * time.Millisecond},
		{"3s", 5 * time.Second, 5 * time.Second}, // configured
	} {
		cfg := testConfig(url + "&wal_sender_timeout=" + tc.walSenderTimeout)
		cfg.ReceiveTimeout = config.Duration(tc.cfg)
		conn, err := connect(ctx, cfg.URL)
		if err != nil {
			t.Fatal(err)
		}
		got, err := receiveTimeout(ctx, conn, cfg)
		conn.Close(ctx)
		if err != nil || got != tc.want {
			t.Errorf("wal_sender_timeout %s, receive_timeout %s: got %s, %v; want %s", tc.walSenderTimeout, tc.cfg, got, err, tc.want)
		}
	}
}
