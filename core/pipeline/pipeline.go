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
	"github.com/pgtrail/pgtrail/core/rules"
	"github.com/pgtrail/pgtrail/core/stitch"
	"github.com/pgtrail/pgtrail/core/values"
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
	// Verbatim hands row images to the sinks as the source read them,
	// for sinks that republish the stream (`pgtrail capture`): the
	// pipeline that reads it makes them storable. Otherwise every value
	// jsonb cannot hold is put in its safe form (values.Storable) before
	// any sink sees it.
	Verbatim bool
	// MaxString is the longest string value kept, in bytes; a longer one
	// becomes a marker. 0: values.MaxJSONBString, jsonb's limit (tests
	// lower it).
	MaxString int
	// MaxContextBytes caps a context message; a larger one is a bad
	// context. 0: 64 KiB.
	MaxContextBytes int
	// Rules ignore and redact values right after stitching, before any
	// sink (and, with PassMessages, the context messages passed on). nil:
	// none, at no cost.
	Rules *rules.Set
	// DDL, when set, says whether a DDL row of schema.table is stored
	// (the source's table patterns); nil stores every one.
	DDL func(schema, table string) bool
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
	if o.MaxString <= 0 {
		o.MaxString = values.MaxJSONBString
	}
	if o.MaxContextBytes <= 0 {
		o.MaxContextBytes = 64 << 10
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
	p := &Pipeline{src: src, sinks: sinks, opts: opts, log: log, metrics: m}
	p.stitch = stitch.New(log, opts.MaxContextBytes, func(prefix string) { m.BadContext.WithLabelValues(prefix).Inc() }, p.rewritten)
	return p
}

// storable puts every value of c's images that jsonb cannot hold in its
// safe form, so that no sink fails on it for ever (the context is, once
// per message, by the stitcher).
func (p *Pipeline) storable(c *change.Change) {
	before, nb := values.Storable(c.Before, p.opts.MaxString)
	after, na := values.Storable(c.After, p.opts.MaxString)
	if !nb.Any() && !na.Any() {
		return
	}
	c.Before, c.After = before, after
	for r := range nb {
		nb[r] += na[r]
	}
	p.rewritten(nb)
	p.log.Warn("change holds values jsonb cannot hold; stored in their safe form",
		"table", c.Schema+"."+c.Table, "id", c.ID, "position", c.LSN, "rewritten", nb.String())
}

// rewritten counts values put in their safe form.
func (p *Pipeline) rewritten(n values.Rewrites) {
	for r, k := range n {
		if k > 0 {
			p.metrics.ValuesRewritten.WithLabelValues(values.Reason(r).String()).Add(float64(k))
		}
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
					if ev.Prefix == PrefixDDL && !p.opts.PassMessages {
						if c := ddlChange(ev); c != nil && (p.opts.DDL == nil || p.opts.DDL(c.Schema, c.Table)) {
							c.Context = p.stitch.Next(ev.XID)
							p.opts.Rules.Apply(c) // its context
							p.metrics.ChangesRead.Inc()
							add(c)
						}
						continue
					}
					p.stitch.Message(ev.XID, ev.Prefix, ev.Content)
					if p.opts.PassMessages {
						ev.Content = p.opts.Rules.Message(ev.Prefix, ev.Content)
						add(MessageItem(ev))
					}
				case Row:
					ctxJSON := p.stitch.Next(ev.XID)
					if ev.Skip {
						continue
					}
					ev.Change.Context = ctxJSON
					if !p.opts.Rules.Apply(ev.Change) {
						// Not stored; its transaction's Commit still
						// advances the position.
						p.metrics.ChangesIgnored.Inc()
						continue
					}
					if !p.opts.Verbatim {
						p.storable(ev.Change)
					}
					p.metrics.ChangesRead.Inc()
					p.metrics.Changes.WithLabelValues(ev.Change.Schema, ev.Change.Table, string(ev.Change.Operation)).Inc()
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
