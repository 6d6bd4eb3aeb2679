package s3_test

import (
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pgtrail/pgtrail/plugins/sdk"
)

// TestStoredReadsTheIDsOfOneTableAndDay: what retention checks before it
// removes changes it archived: exactly the ids of that table's day, in
// either format, objects of other days, tables and names aside.
func TestStoredReadsTheIDsOfOneTableAndDay(t *testing.T) {
	bucket := server.NewBucket(t)
	at := time.Date(2024, 1, 2, 23, 59, 59, 0, time.UTC)
	for _, format := range []string{"jsonl", "parquet"} {
		s := open(t, config(t, bucket, map[string]any{"format": format, "prefix": "archive/" + format}))
		day := []*sdk.Change{orderChange(0x1000, 0, at), orderChange(0x1000, 1, at), orderChange(0x3000, 0, at.Add(-time.Hour))}
		next := orderChange(0x2000, 0, at.Add(time.Second)) // 2024-01-03
		other := orderChange(0x1000, 2, at)
		other.Table = "invoices"
		if _, err := s.Write(ctx, append(slices.Clone(day), next, other)); err != nil {
			t.Fatal(err)
		}
		if err := s.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		server.Put(t, bucket, "archive/"+format+"/public.orders/dt=2024-01-02/notes.txt", []byte("not an object of the sink"))
		got, err := s.Stored(ctx, "public", "orders", time.Date(2024, 1, 2, 0, 0, 0, 0, time.UTC))
		if err != nil {
			t.Fatal(err)
		}
		want := []uuid.UUID{day[0].ID, day[1].ID, day[2].ID}
		slices.SortFunc(got, func(a, b uuid.UUID) int { return slices.Compare(a[:], b[:]) })
		slices.SortFunc(want, func(a, b uuid.UUID) int { return slices.Compare(a[:], b[:]) })
		if !slices.Equal(got, want) {
			t.Fatalf("%s: Stored = %v, want %v", format, got, want)
		}
		if got, err := s.Stored(ctx, "public", "orders", time.Date(2023, 1, 2, 0, 0, 0, 0, time.UTC)); err != nil || len(got) != 0 {
			t.Fatalf("%s: a day without objects: %v, %v", format, got, err)
		}
	}
}
