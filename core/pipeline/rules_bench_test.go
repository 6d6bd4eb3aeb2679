package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/rules"
)

// burst emits n changes of a users table, 10 per transaction, then ends.
type burst struct {
	n    int
	done chan struct{}
	last int
}

func (s *burst) Run(ctx context.Context, out chan<- []Event) error {
	for i := 0; i < s.n; i += 10 {
		evs := make([]Event, 0, 13)
		x := uint64(i)
		evs = append(evs, Event{Kind: Begin, XID: x},
			Event{Kind: Message, XID: x, Prefix: "pgtrail", Content: []byte(`{"user_id":42,"ip":"203.0.113.9","endpoint":"/users"}`)})
		for j := range 10 {
			evs = append(evs, Event{Kind: Row, XID: x, Change: &change.Change{Schema: "public", Table: "users", Operation: change.Update, PrimaryKey: fmt.Sprint(i + j),
				Before: json.RawMessage(fmt.Sprintf(`{"id":%d,"name":"Ann","email":"ann@example.com","ssn":"123-45-6789","password_hash":"x","balance":10,"updated_at":"2026-01-01T00:00:00Z"}`, i+j)),
				After:  json.RawMessage(fmt.Sprintf(`{"id":%d,"name":"Ann","email":"ann@example.com","ssn":"123-45-6789","password_hash":"x","balance":11,"updated_at":"2026-01-01T00:00:01Z"}`, i+j))}})
		}
		evs = append(evs, Event{Kind: Commit, XID: x, Position: i + 10})
		select {
		case out <- evs:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	<-ctx.Done()
	return ctx.Err()
}

func (s *burst) Confirm(pos any) {
	if pos.(int) >= s.n && s.last < s.n {
		s.last = pos.(int)
		close(s.done)
	}
}
func (s *burst) Close(context.Context) error { return nil }

type nop struct{}

func (nop) Name() string                                         { return "nop" }
func (nop) FlushInterval() time.Duration                         { return 0 }
func (nop) Flush(context.Context) error                          { return nil }
func (nop) Write(context.Context, []*change.Change) (int, error) { return 0, nil }

// throughput runs n changes through a pipeline with r and returns changes/s.
func throughput(b *testing.B, n int, r *rules.Set) float64 {
	src := &burst{n: n, done: make(chan struct{})}
	p := newPipeline(src, []Sink{nop{}}, Options{BatchSize: 5000, FlushInterval: time.Millisecond, Rules: r})
	ctx, cancel := context.WithCancel(context.Background())
	start := time.Now()
	errc := make(chan error, 1)
	go func() { errc <- p.Run(ctx) }()
	<-src.done
	took := time.Since(start)
	cancel()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	return float64(n) / took.Seconds()
}

// BenchmarkPipelineWithRules measures pipeline throughput with typical rules
// (an ignore pattern, hmac and drop of two columns of the captured table, a
// masked context key) as a ratio to the same pipeline without rules, in the
// same run: every change is redacted, the worst case.
func BenchmarkPipelineWithRules(b *testing.B) {
	r, err := rules.New(config.Rules{IgnoreColumns: []string{"public.*.updated_at"}, HMACKey: "k", Redact: []config.Redaction{
		{Columns: []string{"public.users.ssn"}, With: "hmac"}, {Columns: []string{"*.*.password*"}, With: "drop"},
		{Context: []string{"ip"}, With: "mask"}}})
	if err != nil {
		b.Fatal(err)
	}
	const n = 200_000
	var with, without float64
	for range b.N {
		without += throughput(b, n, nil)
		with += throughput(b, n, r)
	}
	b.ReportMetric(without/float64(b.N), "changes/s-without")
	b.ReportMetric(with/float64(b.N), "changes/s-with")
	b.ReportMetric(with/without, "ratio")
}
