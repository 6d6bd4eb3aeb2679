package postgres

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pgtrail/pgtrail/plugins/sdk"
	"github.com/pgtrail/pgtrail/sinks/s3"
	"github.com/pgtrail/pgtrail/test/s3test"
)

// s3Archive is the S3 sink as retention's archive, in this process.
type s3Archive struct{ *s3.Sink }

func (a s3Archive) Write(ctx context.Context, batch []*sdk.Change) error {
	_, err := a.Sink.Write(ctx, batch)
	return err
}

// archiveSink starts a test S3 server, stopped when the test ends, and
// returns an S3 sink on a bucket of it, with the given format.
func archiveSink(t *testing.T, format string) (s3Archive, *s3test.Server, string) {
	t.Helper()
	srv, err := s3test.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	bucket := srv.NewBucket(t)
	raw, _ := json.Marshal(map[string]any{"bucket": bucket, "prefix": "archive", "format": format, "endpoint": srv.URL(),
		"region": s3test.Region, "path_style": true, "access_key_id": s3test.AccessKey, "secret_access_key": s3test.SecretKey})
	sink := s3.New()
	if err := sink.Configure(context.Background(), raw); err != nil {
		t.Fatal(err)
	}
	if err := sink.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sink.Close(context.Background()) })
	return s3Archive{sink}, srv, bucket
}

// archived returns the ids the archive holds of the tables and days of changes.
func archived(t *testing.T, a s3Archive, changes []*sdk.Change) []uuid.UUID {
	t.Helper()
	seen := map[string]bool{}
	var ids []uuid.UUID
	for _, c := range changes {
		day := c.CommittedAt.UTC().Truncate(day)
		k := c.Schema + "." + c.Table + day.String()
		if seen[k] {
			continue
		}
		seen[k] = true
		got, err := a.Stored(context.Background(), c.Schema, c.Table, day)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, got...)
	}
	slices.SortFunc(ids, func(a, b uuid.UUID) int { return strings.Compare(a.String(), b.String()) })
	return ids
}

// TestRetentionArchivesEveryChangeBeforeItGoes: with an archive (the S3
// sink against a real S3 server), every change retention removes, from
// dropped partitions and by row deletes, is in the archive, once; the
// changes kept are not; a second pass archives nothing twice.
func TestRetentionArchivesEveryChangeBeforeItGoes(t *testing.T) {
	for _, format := range []string{"jsonl", "parquet"} {
		t.Run(format, func(t *testing.T) {
			ctx := context.Background()
			s, url := openSink(t, map[string]any{"partitioning": map[string]any{"interval": "week", "premake": 0}})
			conn := connect(t, url)
			arch, srv, bucket := archiveSink(t, format)
			now := time.Date(2026, 8, 20, 12, 0, 0, 0, time.UTC)
			var all []*sdk.Change
			for i := range 60 { // every 25 hours for two months
				at := now.Add(-time.Duration(i) * 25 * time.Hour)
				all = append(all, history(t, s, "public", "orders", at, at)...)
				all = append(all, history(t, s, "public", "sessions", at)...)
			}
			pol := rules(30*day, map[string]time.Duration{"public.sessions": 3 * day})
			keep := map[string]time.Duration{"public.orders": 30 * day, "public.sessions": 3 * day}
			var removed, kept []*sdk.Change
			for _, c := range all {
				if c.CommittedAt.Before(now.Add(-keep[c.Schema+"."+c.Table])) {
					removed = append(removed, c)
				} else {
					kept = append(kept, c)
				}
			}
			rep, err := s.Retain(ctx, now, pol, arch, false)
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Partitions) == 0 || rep.Deleted["public.sessions"] == 0 {
				t.Fatalf("the pass dropped no partition or deleted no row:\n%s", showReport(rep))
			}
			if got := storedIDs(t, conn, "pgtrail.changes"); !slices.Equal(got, sortedIDs(kept)) {
				t.Fatalf("the audit table keeps %d changes, want %d", len(got), len(kept))
			}
			if got := archived(t, arch, all); !slices.Equal(got, sortedIDs(removed)) {
				t.Fatalf("the archive holds %d changes, want the %d removed", len(got), len(removed))
			}
			objects := len(srv.Objects(t, bucket, "archive/"))
			// Later: what was removed is not archived again, what goes now is.
			later := now.Add(48 * time.Hour)
			if _, err := s.Retain(ctx, later, pol, arch, false); err != nil {
				t.Fatal(err)
			}
			removed = removed[:0]
			for _, c := range all {
				if c.CommittedAt.Before(later.Add(-keep[c.Schema+"."+c.Table])) {
					removed = append(removed, c)
				}
			}
			if got := archived(t, arch, all); !slices.Equal(got, sortedIDs(removed)) {
				t.Fatalf("after a second pass the archive holds %d changes, want the %d removed", len(got), len(removed))
			}
			if n := len(srv.Objects(t, bucket, "archive/")); n <= objects {
				t.Fatalf("the second pass wrote no object (%d, then %d)", objects, n)
			}
		})
	}
}

// lossy is an archive that reports success but keeps no change of one table.
type lossy struct {
	s3Archive
	table string
}

func (l lossy) Write(ctx context.Context, batch []*sdk.Change) error {
	var keep []*sdk.Change
	for _, c := range batch {
		if c.Table != l.table {
			keep = append(keep, c)
		}
	}
	if len(keep) == 0 {
		return nil
	}
	return l.s3Archive.Write(ctx, keep)
}

// TestRetentionRemovesNothingTheArchiveLacks: an archive that loses
// changes while saying it took them: retention fails, and every change it
// would have removed is still in the audit table, its partitions attached.
func TestRetentionRemovesNothingTheArchiveLacks(t *testing.T) {
	ctx := context.Background()
	s, url := openSink(t, map[string]any{"partitioning": map[string]any{"interval": "month", "premake": 0}})
	conn := connect(t, url)
	arch, _, _ := archiveSink(t, "jsonl")
	now := time.Date(2026, 8, 20, 12, 0, 0, 0, time.UTC)
	var all []*sdk.Change
	for m := 1; m <= 4; m++ {
		all = append(all, history(t, s, "public", "orders", now.AddDate(0, -m, 0))...)
		all = append(all, history(t, s, "public", "invoices", now.AddDate(0, -m, 0).Add(time.Hour))...)
	}
	before := partitionsOf(t, conn, "pgtrail.changes")
	for _, pol := range []Policy{rules(30*day, nil), rules(365*day, map[string]time.Duration{"public.invoices": 10 * day})} {
		_, err := s.Retain(ctx, now, pol, lossy{arch, "invoices"}, false)
		if err == nil || !strings.Contains(err.Error(), "are not in the archive after it took them; nothing of them is removed") {
			t.Fatalf("Retain with a lossy archive: %v", err)
		}
		if got := storedIDs(t, conn, "pgtrail.changes"); !slices.Equal(got, sortedIDs(all)) {
			t.Fatalf("the audit table lost %d changes", len(all)-len(got))
		}
		if got := partitionsOf(t, conn, "pgtrail.changes"); !slices.Equal(got, before) {
			t.Fatalf("partitions:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(before, "\n"))
		}
	}
}
