// Package sourcetest runs a pipeline source in a test and reads what it
// emits, as the pipeline would, for the broker sources' tests.
package sourcetest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pgtrail/pgtrail/core/pipeline"
)

// Running is a source emitting into Out until its test ends.
type Running struct {
	Src  pipeline.Source
	Out  chan []pipeline.Event
	Done chan struct{} // closed once Run returned Err
	Err  error
}

// Run runs src into a channel of buffer chunks; at the test's end it stops
// src, waits for Run to return and closes src.
func Run(t testing.TB, src pipeline.Source, buffer int) *Running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &Running{Src: src, Out: make(chan []pipeline.Event, buffer), Done: make(chan struct{})}
	go func() {
		r.Err = src.Run(ctx, r.Out)
		close(r.Done)
	}()
	t.Cleanup(func() {
		cancel()
		<-r.Done
		_ = src.Close(context.Background())
	})
	return r
}

// Rows reads until n row changes came and returns their primary keys, comma
// separated. Run ending first, or 30 s passing, fails the test.
func (r *Running) Rows(t testing.TB, n int) string {
	t.Helper()
	var keys []string
	timeout := time.After(30 * time.Second)
	for len(keys) < n {
		select {
		case evs := <-r.Out:
			for _, ev := range evs {
				if ev.Kind == pipeline.Row {
					keys = append(keys, ev.Change.PrimaryKey)
				}
			}
		case <-r.Done:
			t.Fatalf("Run ended after rows %v: %v", keys, r.Err)
		case <-timeout:
			t.Fatalf("%d rows after 30s, want %d: %v", len(keys), n, keys)
		}
	}
	return strings.Join(keys, ",")
}

// NoRows checks that no row change comes for d.
func (r *Running) NoRows(t testing.TB, d time.Duration) {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case evs := <-r.Out:
			for _, ev := range evs {
				if ev.Kind == pipeline.Row {
					t.Fatalf("row %s read, want none", ev.Change.PrimaryKey)
				}
			}
		case <-timeout:
			return
		}
	}
}

// WaitFor polls cond until it holds, failing the test after 30 s.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
