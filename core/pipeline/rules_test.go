package pipeline

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/rules"
)

// keeper keeps every change it is given.
type keeper struct {
	mu      sync.Mutex
	changes []*change.Change
}

func (k *keeper) Name() string                 { return "keeper" }
func (k *keeper) FlushInterval() time.Duration { return 0 }
func (k *keeper) Flush(context.Context) error  { return nil }
func (k *keeper) Write(_ context.Context, batch []*change.Change) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.changes = append(k.changes, batch...)
	return 0, nil
}

// Rules apply after stitching and before any sink: a redacted value, in a
// row or in the context (and in the context message passed on, for
// capture), reaches no sink; an update of ignored columns only is not
// stored and its transaction's position is still confirmed.
func TestRulesApplyBeforeAnySinkAndIgnoredUpdatesStillConfirm(t *testing.T) {
	r, err := rules.New(config.Rules{IgnoreColumns: []string{"public.users.updated_at"}, Redact: []config.Redaction{
		{Columns: []string{"public.users.ssn"}, With: "mask"}, {Context: []string{"ip"}, With: "drop"}}})
	if err != nil {
		t.Fatal(err)
	}
	src := &source{n: 0}
	evs := []Event{
		{Kind: Begin, XID: 1},
		{Kind: Message, XID: 1, Prefix: "pgtrail", Content: []byte(`{"ip":"203.0.113.9","user":"ann"}`)},
		{Kind: Row, XID: 1, Change: &change.Change{Schema: "public", Table: "users", Operation: change.Create,
			Before: change.Empty, After: json.RawMessage(`{"id":1,"ssn":"123-45-6789"}`)}},
		{Kind: Row, XID: 1, Change: &change.Change{Schema: "public", Table: "users", Operation: change.Update,
			Before: json.RawMessage(`{"id":1,"ssn":"123-45-6789","updated_at":"t1"}`), After: json.RawMessage(`{"id":1,"ssn":"123-45-6789","updated_at":"t2"}`)}},
		{Kind: Commit, XID: 1, Position: 7},
	}
	k := &keeper{}
	p := newPipeline(&oneShot{source: src, events: evs}, []Sink{k}, Options{FlushInterval: time.Millisecond, PassMessages: true, Rules: r})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx) }()
	waitUntil(t, "position 7 to be confirmed", func() bool { return src.last() == 7 })
	cancel()
	<-done
	if n := count(p.metrics.ChangesIgnored); n != 1 {
		t.Errorf("pgtrail_changes_ignored_total = %v, want 1", n)
	}
	if len(k.changes) != 2 {
		t.Fatalf("sink got %d items, want the message and the insert (the update of updated_at only is not stored)", len(k.changes))
	}
	for _, c := range k.changes {
		all := string(c.Before) + string(c.After) + string(c.Context) + c.PrimaryKey
		if strings.Contains(all, "123-45-6789") || strings.Contains(all, "203.0.113.9") || strings.Contains(all, "MjAzLjAuMTEzLjk") {
			t.Fatalf("a redacted value reached the sink: %s", all)
		}
	}
	ins := k.changes[1]
	if string(ins.After) != `{"id":1,"ssn":"*******6789"}` || string(ins.Context) != `{"user":"ann"}` {
		t.Fatalf("insert stored as after %s context %s", ins.After, ins.Context)
	}
	if want := `{"prefix":"pgtrail","content":"` + b64(`{"user":"ann"}`) + `"}`; string(k.changes[0].After) != want {
		t.Fatalf("message passed as %s, want %s", k.changes[0].After, want)
	}
}

// oneShot emits events once, then waits; it confirms into source.
type oneShot struct {
	*source
	events []Event
}

func (o *oneShot) Run(ctx context.Context, out chan<- []Event) error {
	out <- o.events
	<-ctx.Done()
	return ctx.Err()
}

func b64(s string) string { b, _ := json.Marshal([]byte(s)); return strings.Trim(string(b), `"`) }
