// Package pipeline moves changes from one source to every sink: it stitches
// context, cuts batches by size and time, fans each batch out to the sinks,
// and confirms source positions back in order once every sink has made them
// durable.
package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/checkpoint"
	"github.com/pgtrail/pgtrail/core/metrics"
	"github.com/pgtrail/pgtrail/core/retry"
	"github.com/pgtrail/pgtrail/core/stitch"
)

// Kind says what an Event carries.
type Kind uint8

const (
	// Begin opens transaction XID.
	Begin Kind = iota
	// Message is a transactional logical decoding message (Prefix, Content).
	Message
	// Row is one row change. Skip marks a change decoded only so that a
	// _bemi context cannot slide onto a later change; it is not stored.
	Row
	// Commit closes the transaction; Position may be confirmed once all its
	// rows are durable.
	Commit
	// Progress carries a Position with no transaction open: the source is
	// idle, and confirming it keeps an idle database from pinning WAL.
	Progress
)

// Event is what a source emits, in source order.
type Event struct {
	Kind     Kind
	XID      uint64
	Prefix   string
	Content  []byte
	Change   *change.Change
	Skip     bool
	Position any
	// Held is, on a Begin, how long the source held the transaction back
	// before decoding it (capture coalescing reads), at most a fraction of
	// flush_interval. The batch it opens is cut that much sooner, so holding
	// back adds no latency. Time spent waiting for the pipeline is not
	// counted: that is back-pressure, and batches then fill anyway.
	Held time.Duration
}

// Source reads changes. Run emits events in source order until ctx ends or
// the source fails, in chunks of what it has at hand (a transaction, a
// message): a channel operation for each event would cost more than
// decoding it. Confirm is told, in order, each position whose changes are
// durable; Close reports the last confirmed position upstream and releases
// the source.
type Source interface {
	Run(ctx context.Context, out chan<- []Event) error
	Confirm(pos any)
	Close(ctx context.Context) error
}

// Sink stores batches, in order. Write hands a batch over and returns how
// many of the batches handed over are not yet durable (the last ones): a sink
// may still be writing, or buffer (then FlushInterval > 0, and it is asked to
// Flush once a batch has waited that long). An error means the batch was not
// taken, and it is handed over again. Writing a change again must not store
// it twice.
type Sink interface {
	Name() string
	Write(ctx context.Context, batch []*change.Change) (notDurable int, err error)
	Flush(ctx context.Context) error
	FlushInterval() time.Duration
}

// Options bound batches and memory.
type Options struct {
	BatchSize     int           // changes per batch at most
	BatchBytes    int           // approximate bytes per batch at most
	FlushInterval time.Duration // the longest a change waits for its batch to fill
	MaxInFlight   int           // batches queued per sink before the source is held back
	DrainTimeout  time.Duration // how long shutdown waits for sinks to finish
	// PassMessages makes every logical decoding message an item of the
	// batches too, in source order among the row changes (see MessageItem),
	// for sinks that republish the stream, such as `pgtrail capture`.
	// Stitching is unchanged; ordinary sinks leave it off.
	PassMessages bool
}

// OpMessage is the Operation of a batch item that is a logical decoding
// message (with Options.PassMessages). Such an item has no Schema or Table;
// its After is {"prefix": "...", "content": "<base64>"}, and its LSN,
// TransactionID, CommittedAt and CommitLSN are the source's, when the source
// gives them in the event's Change.
const OpMessage change.Operation = "MESSAGE"

// MessageItem turns a Message event into a batch item.
func MessageItem(ev Event) *change.Change {
	c := &change.Change{}
	if ev.Change != nil {
		cp := *ev.Change
		c = &cp
	}
	c.Operation, c.TransactionID = OpMessage, ev.XID
	c.Before, c.Context = change.Empty, change.Empty
	after, _ := json.Marshal(struct {
		Prefix  string `json:"prefix"`
		Content []byte `json:"content"`
	}{ev.Prefix, ev.Content})
	c.After = after
	return c
}

func (o *Options) defaults() {
	if o.BatchSize <= 0 {
		o.BatchSize = 5000
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = 8 << 20
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = 50 * time.Millisecond
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 2
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 30 * time.Second
	}
}

// Pipeline connects one source to its sinks.
type Pipeline struct {
	src     Source
	sinks   []Sink
	opts    Options
	log     *slog.Logger
	metrics *metrics.Metrics
	stitch  *stitch.Stitcher
}

// New returns a pipeline; Run starts it.
func New(src Source, sinks []Sink, opts Options, log *slog.Logger, m *metrics.Metrics) *Pipeline {
	opts.defaults()
	return &Pipeline{
		src: src, sinks: sinks, opts: opts, log: log, metrics: m,
		stitch: stitch.New(log, func(prefix string) { m.BadContext.WithLabelValues(prefix).Inc() }),
	}
}

type batch struct {
	changes []*change.Change
	ticket  uint64
}

// Run moves changes until ctx ends or the source fails. Either way it drains
// what was already read into the sinks, confirms what they made durable, and
// closes the source. It returns the source's error, or nil after ctx ended.
func (p *Pipeline) Run(ctx context.Context) error {
	// Writes outlive ctx so that shutdown drains, but only for DrainTimeout.
	wctx, cancelWrites := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWrites()
	stopDrain := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(p.opts.DrainTimeout, cancelWrites)
		<-wctx.Done()
		t.Stop()
	})
	defer stopDrain()

	events := make(chan []Event, 16) // up to 16 chunks of at most a few hundred events
	srcErr := make(chan error, 1)
	go func() {
		err := p.src.Run(ctx, events)
		if err != nil && ctx.Err() == nil {
			// The source failed: what is not durable yet is read again
			// when the pipeline restarts. Sinks stop at once rather than
			// retry: one that cannot write (its database is the source's,
			// shutting down) would hold the restart, and the source's
			// connection, for ever.
			cancelWrites()
		}
		srcErr <- err
		close(events)
	}()

	wm := checkpoint.New(p.src.Confirm)
	queues := make([]chan batch, len(p.sinks))
	var wg sync.WaitGroup
	for i, s := range p.sinks {
		queues[i] = make(chan batch, p.opts.MaxInFlight)
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.deliver(wctx, s, queues[i], wm)
		}()
	}

	p.assemble(events, queues, wm)
	for _, q := range queues {
		close(q)
	}
	wg.Wait()
	err := <-srcErr
	if cerr := p.src.Close(wctx); cerr != nil && err == nil && ctx.Err() == nil {
		err = cerr
	}
	if n := wm.Pending(); n > 0 {
		p.log.Warn("stopped with batches not yet durable in every sink; they will be read again", "batches", n)
	}
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	return err
}

// assemble stitches events into batches and hands them to every sink.
func (p *Pipeline) assemble(events <-chan []Event, queues []chan batch, wm *checkpoint.Watermark) {
	var (
		cur   []*change.Change
		size  int
		pos   any
		timer = time.NewTimer(time.Hour)
		// held is the open transaction's Event.Held until its first
		// change is added.
		held time.Duration
	)
	timer.Stop()
	defer timer.Stop()

	cut := func() {
		timer.Stop()
		if len(cur) == 0 {
			if pos != nil {
				wm.Add(pos, 0)
				pos = nil
			}
			return
		}
		b := batch{changes: cur, ticket: wm.Add(pos, len(queues))}
		for _, q := range queues {
			q <- b // blocks while a sink is behind: back-pressure on the source
		}
		cur, size, pos = make([]*change.Change, 0, len(cur)), 0, nil
	}
	add := func(c *change.Change) {
		if len(cur) == 0 {
			timer.Reset(max(p.opts.FlushInterval-held, 0))
		}
		held = 0 // the rest of a large transaction waits in full
		cur = append(cur, c)
		size += len(c.Before) + len(c.After) + len(c.Context) + 256
		if len(cur) >= p.opts.BatchSize || size >= p.opts.BatchBytes {
			cut()
		}
	}

	for {
		select {
		case evs, ok := <-events:
			if !ok {
				cut()
				return
			}
			for _, ev := range evs {
				switch ev.Kind {
				case Begin:
					p.stitch.Begin(ev.XID)
					held = ev.Held
				case Message:
					p.stitch.Message(ev.XID, ev.Prefix, ev.Content)
					if p.opts.PassMessages {
						add(MessageItem(ev))
					}
				case Row:
					ctxJSON := p.stitch.Next(ev.XID)
					if ev.Skip {
						continue
					}
					ev.Change.Context = ctxJSON
					p.metrics.ChangesRead.Inc()
					add(ev.Change)
				case Commit, Progress:
					pos = ev.Position
					if len(cur) == 0 {
						cut()
					}
				}
			}
		case <-timer.C:
			cut()
		}
	}
}

// deliver hands each batch to one sink, retrying until the sink takes it or
// the drain deadline passes, and releases batches as the sink reports them
// durable. Batches stay in order, so a failed batch holds back every later
// one and nothing is ever confirmed past a gap.
func (p *Pipeline) deliver(ctx context.Context, s Sink, queue <-chan batch, wm *checkpoint.Watermark) {
	name := s.Name()
	b := retry.Default()
	var waiting []batch // handed over, not yet durable
	flushTimer := time.NewTimer(time.Hour)
	flushTimer.Stop()
	defer flushTimer.Stop()

	attempt := func(op string, size int, f func(context.Context) error) bool {
		err := retry.Do(ctx, b, f, func(err error, attempt int) {
			p.metrics.WriteErrors.WithLabelValues(name).Inc()
			p.metrics.SetHealth("sink "+name, err)
			p.log.Error("sink "+op+" failed; retrying", "sink", name, "attempt", attempt, "changes", size, "err", err)
		})
		if err == nil {
			p.metrics.SetHealth("sink "+name, nil)
		}
		return err == nil
	}
	armed := false
	release := func(notDurable int) {
		n := max(0, len(waiting)-notDurable) // a sink never counts more than it was handed; if one did, release nothing
		for _, w := range waiting[:n] {
			p.metrics.ChangesWritten.WithLabelValues(name).Add(float64(len(w.changes)))
			wm.Done(w.ticket)
		}
		waiting = append(waiting[:0], waiting[n:]...)
		if len(waiting) == 0 && armed {
			flushTimer.Stop()
			armed = false
		} else if len(waiting) > 0 && !armed {
			flushTimer.Reset(max(s.FlushInterval(), time.Millisecond))
			armed = true
		}
	}
	flush := func() {
		if len(waiting) > 0 && ctx.Err() == nil && attempt("flush", 0, s.Flush) {
			release(0)
		}
	}

	for {
		select {
		case bt, ok := <-queue:
			if !ok {
				flush()
				return
			}
			if ctx.Err() != nil {
				continue // drain deadline passed: these are read again after restart
			}
			var notDurable int
			ok = attempt("write", len(bt.changes), func(ctx context.Context) error {
				start := time.Now()
				n, err := s.Write(ctx, bt.changes)
				if err == nil {
					notDurable = n
					p.metrics.BatchSeconds.WithLabelValues(name).Observe(time.Since(start).Seconds())
				}
				return err
			})
			if !ok {
				continue
			}
			waiting = append(waiting, bt)
			release(notDurable)
		case <-flushTimer.C:
			armed = false
			if s.FlushInterval() == 0 && len(queue) > 0 {
				// A sink that writes through needs no flush, only time:
				// the next Write collects its acknowledgements, and
				// waiting for them now would leave it idle meanwhile.
				flushTimer.Reset(time.Millisecond)
				armed = true
				continue
			}
			flush()
		}
	}
}
