package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"time"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/checkpoint"
	"github.com/pgtrail/pgtrail/core/retry"
	"github.com/pgtrail/pgtrail/core/values"
)

// refusalsToSplit is how many times in a row a sink must refuse a batch for
// its data (change.UnstorableError) before it is split, and a single change
// before it is stored in its safe form: a sink's word is taken only once it
// keeps saying the same.
const refusalsToSplit = 3

// part is a batch, or a piece of one split to find a change its sink
// refuses.
type part struct {
	changes []*change.Change
	orig    *change.Change // of a single change in a safe form: as read
	ticket  uint64
	last    bool // the batch's last piece: its ticket is done once it is durable
	refused int  // refusals in a row
	stage   int  // of a single change: 0 as read, 1 images replaced, 2 context too
}

// courier delivers one sink's batches: in order, retrying, splitting a batch
// the sink refuses, and releasing each batch as the sink makes it durable.
type courier struct {
	p       *Pipeline
	s       Sink
	name    string
	wm      *checkpoint.Watermark
	b       *retry.Backoff
	waiting []part // handed over, not yet durable, in order
	refusal error  // the sink's last refusal, in its own words
	timer   *time.Timer
	armed   bool
}

// deliver hands each batch to one sink, retrying until the sink takes it or
// the drain deadline passes, and releases batches as the sink reports them
// durable. Batches stay in order, so a failed batch holds back every later
// one and nothing is ever confirmed past a gap.
func (p *Pipeline) deliver(ctx context.Context, s Sink, queue <-chan batch, wm *checkpoint.Watermark) {
	c := &courier{p: p, s: s, name: s.Name(), wm: wm, b: retry.Default(), timer: time.NewTimer(time.Hour)}
	c.timer.Stop()
	defer c.timer.Stop()
	for {
		select {
		case bt, ok := <-queue:
			if !ok {
				c.flush(ctx)
				return
			}
			if ctx.Err() != nil {
				continue // drain deadline passed: these are read again after restart
			}
			c.hand(ctx, []part{{changes: bt.changes, ticket: bt.ticket, last: true}})
		case <-c.timer.C:
			c.armed = false
			if s.FlushInterval() == 0 && len(queue) > 0 {
				// A sink that writes through needs no flush, only time:
				// the next Write collects its acknowledgements, and
				// waiting for them now would leave it idle meanwhile.
				c.timer.Reset(time.Millisecond)
				c.armed = true
				continue
			}
			c.flush(ctx)
		}
	}
}

// hand hands the parts over in order until the sink took them all or ctx
// ends.
func (c *courier) hand(ctx context.Context, todo []part) {
	for len(todo) > 0 && ctx.Err() == nil {
		pt := todo[0]
		start := time.Now()
		notDurable, err := c.s.Write(ctx, pt.changes)
		if err == nil {
			c.p.metrics.BatchSeconds.WithLabelValues(c.name).Observe(time.Since(start).Seconds())
			c.p.metrics.SetHealth("sink "+c.name, nil)
			c.b.Reset()
			if pt.stage > 0 {
				c.stored(pt)
			}
			c.waiting = append(c.waiting, pt)
			todo = todo[1:]
			c.release(notDurable)
			continue
		}
		c.failed("write", len(pt.changes), err)
		var u *change.UnstorableError
		if !errors.As(err, &u) {
			todo[0].refused = 0 // a refusal counts only when it comes again and again
			if c.b.Wait(ctx) != nil {
				return
			}
			continue
		}
		c.refusal = u.Err
		todo = append(c.takeBack(u.Earlier), todo...)
		if !c.refused(ctx, &todo) {
			return
		}
	}
}

// refused handles a refusal of (*todo)[0]: split it, or store its one change
// in a safe form, once the sink refused it often enough; else wait, to hand
// it over again.
func (c *courier) refused(ctx context.Context, todo *[]part) bool {
	pt := &(*todo)[0]
	pt.refused++
	switch {
	case pt.refused < refusalsToSplit:
		return c.b.Wait(ctx) == nil
	case len(pt.changes) > 1:
		half := len(pt.changes) / 2
		a := part{changes: pt.changes[:half], ticket: pt.ticket}
		b := part{changes: pt.changes[half:], ticket: pt.ticket, last: pt.last}
		for _, h := range []*part{&a, &b} {
			if len(h.changes) > 1 {
				h.refused = refusalsToSplit - 1 // a piece of a refused batch: split at once
			}
		}
		*todo = append([]part{a, b}, (*todo)[1:]...)
		return true
	case pt.stage < 2:
		if pt.orig == nil {
			pt.orig = pt.changes[0]
		}
		pt.stage++
		pt.refused = 0
		pt.changes = []*change.Change{safeForm(pt.orig, pt.stage, c.refusal)}
		return true
	default:
		c.p.log.Error("sink refuses even the safe form of a change; retrying", "sink", c.name,
			"table", pt.changes[0].Schema+"."+pt.changes[0].Table, "id", pt.changes[0].ID)
		return c.b.Wait(ctx) == nil
	}
}

// takeBack removes the last n parts handed over: the sink gave them back.
func (c *courier) takeBack(n int) []part {
	n = min(n, len(c.waiting))
	back := append([]part(nil), c.waiting[len(c.waiting)-n:]...)
	c.waiting = c.waiting[:len(c.waiting)-n]
	return back
}

// failed counts and reports a failed write or flush.
func (c *courier) failed(op string, changes int, err error) {
	c.p.metrics.WriteErrors.WithLabelValues(c.name).Inc()
	c.p.metrics.SetHealth("sink "+c.name, err)
	c.p.log.Error("sink "+op+" failed; retrying", "sink", c.name, "changes", changes, "err", err)
}

// stored reports a change the sink took only in its safe form.
func (c *courier) stored(pt part) {
	ch := pt.orig
	c.p.metrics.UnstorableChanges.WithLabelValues(c.name).Inc()
	what := "its images"
	if pt.stage > 1 {
		what = "its images and context"
	}
	c.p.log.Warn("sink cannot store a change as it is: stored with "+what+" replaced by markers", "sink", c.name,
		"table", ch.Schema+"."+ch.Table, "id", ch.ID, "position", ch.LSN, "err", c.refusal)
}

// release releases the parts the sink has made durable: all but the last
// notDurable handed over.
func (c *courier) release(notDurable int) {
	n := max(0, len(c.waiting)-notDurable) // a sink never counts more than it was handed; if one did, release nothing
	for _, w := range c.waiting[:n] {
		c.p.metrics.ChangesWritten.WithLabelValues(c.name).Add(float64(len(w.changes)))
		if w.last {
			c.wm.Done(w.ticket) // every earlier part of its batch went before it
		}
	}
	c.waiting = append(c.waiting[:0], c.waiting[n:]...)
	if len(c.waiting) == 0 && c.armed {
		c.timer.Stop()
		c.armed = false
	} else if len(c.waiting) > 0 && !c.armed {
		c.timer.Reset(max(c.s.FlushInterval(), time.Millisecond))
		c.armed = true
	}
}

// flush asks the sink to make what it holds durable, retrying until it
// does or ctx ends. Parts it gives back are handed over again.
func (c *courier) flush(ctx context.Context) {
	for len(c.waiting) > 0 && ctx.Err() == nil {
		err := c.s.Flush(ctx)
		if err == nil {
			c.p.metrics.SetHealth("sink "+c.name, nil)
			c.b.Reset()
			c.release(0)
			return
		}
		c.failed("flush", 0, err)
		var u *change.UnstorableError
		if errors.As(err, &u) && u.Earlier > 0 {
			c.refusal = u.Err
			todo := c.takeBack(u.Earlier)
			if !c.refused(ctx, &todo) {
				return
			}
			c.hand(ctx, todo)
			continue
		}
		if c.b.Wait(ctx) != nil {
			return
		}
	}
}

// safeForm is a copy of ch that any sink can store: its images (stage 1),
// and its context too (stage 2), replaced by markers of their size and
// SHA-256, with the sink's error. An empty object stays: it is no fault.
func safeForm(ch *change.Change, stage int, err error) *change.Change {
	cp := *ch
	msg := ""
	if err != nil {
		msg = err.Error()
		if len(msg) > 500 {
			msg = msg[:500]
		}
	}
	mark := func(img json.RawMessage) json.RawMessage {
		if len(img) == 0 || string(img) == "{}" {
			return img
		}
		h := sha256.New()
		h.Write(img)
		return values.Marker("unstorable", len(img), h, msg)
	}
	cp.Before, cp.After = mark(ch.Before), mark(ch.After)
	if stage > 1 {
		cp.Context = mark(ch.Context)
	}
	return &cp
}
