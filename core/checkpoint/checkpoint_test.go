package checkpoint

import (
	"slices"
	"testing"
)

func TestPositionsAreConfirmedInOrderOnlyWhenEverySinkIsDone(t *testing.T) {
	var got []any
	w := New(func(pos any) { got = append(got, pos) })
	a := w.Add(1, 2)
	b := w.Add(nil, 2) // a batch inside a transaction: nothing to confirm
	c := w.Add(3, 2)
	w.Done(c)
	w.Done(c)
	w.Done(b)
	w.Done(b)
	if len(got) != 0 {
		t.Fatalf("confirmed %v before the first batch was durable", got)
	}
	w.Done(a)
	if len(got) != 0 {
		t.Fatalf("confirmed %v with one sink still writing", got)
	}
	w.Done(a)
	if !slices.Equal(got, []any{3}) {
		t.Fatalf("confirmed %v, want [3]", got)
	}
	if w.Pending() != 0 {
		t.Fatalf("pending %d, want 0", w.Pending())
	}
}

func TestPositionOnlyBatchIsConfirmedAfterEarlierBatches(t *testing.T) {
	var got []any
	w := New(func(pos any) { got = append(got, pos) })
	w.Add(5, 0)
	if !slices.Equal(got, []any{5}) {
		t.Fatalf("idle position not confirmed at once: %v", got)
	}
	a := w.Add(6, 1)
	w.Add(7, 0)
	if len(got) != 1 {
		t.Fatalf("idle position overtook a batch in flight: %v", got)
	}
	w.Done(a)
	if !slices.Equal(got, []any{5, 7}) {
		t.Fatalf("confirmed %v, want [5 7]", got)
	}
}
