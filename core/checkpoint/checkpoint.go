// Package checkpoint releases source positions in order: a position is
// confirmed only when the batch that carries it, and every batch before it,
// has been made durable by every sink.
package checkpoint

import "sync"

// Watermark tracks batches in the order they were cut.
type Watermark struct {
	mu      sync.Mutex
	base    uint64  // ticket of pending[0]
	pending []entry // batches not yet released, in order
	confirm func(pos any)
}

type entry struct {
	remaining int // sinks that have not yet made the batch durable
	pos       any // source position to confirm once released; nil for none
}

// New returns a Watermark that calls confirm, in order and never
// concurrently, with each position as it becomes safe to confirm.
func New(confirm func(pos any)) *Watermark {
	return &Watermark{confirm: confirm}
}

// Add registers the next batch: parts is how many sinks must finish it (zero
// for a batch that only carries a position), pos what it lets the source
// confirm. It returns the ticket to pass to Done.
func (w *Watermark) Add(pos any, parts int) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	ticket := w.base + uint64(len(w.pending))
	w.pending = append(w.pending, entry{remaining: parts, pos: pos})
	w.release()
	return ticket
}

// Done records that one sink made the batch with this ticket durable.
func (w *Watermark) Done(ticket uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending[ticket-w.base].remaining--
	w.release()
}

// Pending is how many batches are not yet released.
func (w *Watermark) Pending() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.pending)
}

// release pops finished batches from the front and confirms the last
// position among them.
func (w *Watermark) release() {
	var last any
	n := 0
	for n < len(w.pending) && w.pending[n].remaining <= 0 {
		if p := w.pending[n].pos; p != nil {
			last = p
		}
		n++
	}
	if n == 0 {
		return
	}
	w.pending = w.pending[n:]
	w.base += uint64(n)
	if last != nil {
		w.confirm(last)
	}
}
