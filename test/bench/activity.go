package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/pgtrail/pgtrail/test/testbed"
)

// The activity group measures the read side on a large trail: the first
// page of /api/v1/changes and a record's history, served by `pgtrail serve`
// from an audit table of activityRows changes (issue: p99 under 200 ms);
// and the WAL an update costs with and without REPLICA IDENTITY FULL.

const (
	activityRows     = 2_000_000
	activityRecords  = 200_000 // 10 changes each, over 50 tables
	activityRequests = 300     // per measured request kind
	identityUpdates  = 20_000
)

func (b *bench) activity(ctx context.Context) error {
	c, err := startServer(nil)
	if err != nil {
		return err
	}
	defer c.Stop()
	dbURL, err := createDatabase(ctx, c, "activity", "")
	if err != nil {
		return err
	}
	if err := b.identityWAL(ctx, dbURL); err != nil {
		b.emit(failed("replica-identity-wal", err))
	}
	t := trail{url: dbURL, slot: "bench_activity", sinkName: "audit", plugin: "postgres", sinkConfig: map[string]string{"url": dbURL}}
	cfg, _, err := t.write(b.tmp)
	if err != nil {
		return err
	}
	if err := runPgtrail(ctx, b.bin, cfg, "setup"); err != nil {
		return err
	}
	t0 := time.Now()
	if err := fillTrail(ctx, dbURL); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: activity trail of %d changes made in %s\n", activityRows, time.Since(t0).Round(time.Second))

	port, err := testbed.FreePort()
	if err != nil {
		return err
	}
	serveCfg := filepath.Join(b.tmp, "serve.yaml")
	yaml := fmt.Sprintf("ui:\n  url: %q\nhttp:\n  listen: \"127.0.0.1:%d\"\nlog:\n  level: info\n", dbURL, port)
	if err := os.WriteFile(serveCfg, []byte(yaml), 0o600); err != nil {
		return err
	}
	p, err := startProc("serving /metrics", b.bin, "serve", "--config", serveCfg)
	if err != nil {
		return err
	}
	defer p.stop(5 * time.Second)
	if _, err := p.waitSeen(time.Minute); err != nil {
		return err
	}
	base := fmt.Sprintf("http://127.0.0.1:%d/api/v1", port)
	note := fmt.Sprintf("pgtrail serve, trail of %d changes (%d records, 50 tables, 60 days), %d sequential requests; target p99 < 200 ms",
		activityRows, activityRecords, activityRequests)
	for _, s := range []struct {
		name string
		path func(i int) string
	}{
		{"activity-first-page", func(int) string { return "/changes" }},
		{"activity-history", func(i int) string {
			rec := (i * 7919) % activityRecords // spread over the records
			return fmt.Sprintf("/history/public.t%d/%d", rec%50, rec)
		}},
		{"activity-first-page-by-table", func(i int) string { return fmt.Sprintf("/changes?table=t%d", i%50) }},
		{"activity-first-page-by-user", func(i int) string {
			return "/changes?context=" + url.QueryEscape(fmt.Sprintf(`{"user_id":%d}`, i%1000))
		}},
	} {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r, err := measure(ctx, base, s.path)
		if err != nil {
			b.emit(failed(s.name, err))
			continue
		}
		rows := int64(activityRows) // the trail read, for the table's changes column
		r.Scenario, r.Note, r.Changes = s.name, note, &rows
		b.emit(r)
	}
	return nil
}

// fillTrail writes activityRows changes into the audit table as the sink
// would have: 10 changes per record (an insert, then updates), context with
// a user and a request, committed over the last 60 days, with the sink's
// indexes but the GIN ones on before and after (no measured query reads
// them).
func fillTrail(ctx context.Context, url string) error {
	now := time.Now().UTC()
	var stmts []string
	for m := now.AddDate(0, -3, 0); !m.After(now); m = m.AddDate(0, 1, 0) {
		start := time.Date(m.Year(), m.Month(), 1, 0, 0, 0, 0, time.UTC)
		stmts = append(stmts, fmt.Sprintf(`CREATE TABLE IF NOT EXISTS pgtrail.changes_p%04d%02d PARTITION OF pgtrail.changes
			FOR VALUES FROM ('%s') TO ('%s')`, start.Year(), int(start.Month()), start.Format(time.RFC3339), start.AddDate(0, 1, 0).Format(time.RFC3339)))
	}
	stmts = append(stmts,
		// Indexes built after the load, as sorts: inserting into them row by
		// row would take the bench minutes more.
		`DROP INDEX pgtrail.changes_context_idx, pgtrail.changes_before_idx, pgtrail.changes_after_idx,
			pgtrail.changes_history_idx, pgtrail.changes_transaction_idx`,
		`SET maintenance_work_mem = '512MB'`,
		fmt.Sprintf(`INSERT INTO pgtrail.changes (id, primary_key, before, after, context, database, schema, "table", operation,
			committed_at, queued_at, created_at, transaction_id, position, seq)
		SELECT gen_random_uuid(), (i %% %[2]d)::text,
			CASE WHEN i <= %[2]d THEN '{}'::jsonb ELSE jsonb_build_object('id', i %% %[2]d, 'status', 'open', 'qty', i %% 7,
				'note', 'a note of some forty characters or so....', 'meta', jsonb_build_object('k', i %% 13)) END,
			jsonb_build_object('id', i %% %[2]d, 'status', 'paid', 'qty', i %% 7 + 1,
				'note', 'a note of some forty characters or so....', 'meta', jsonb_build_object('k', i %% 13)),
			jsonb_build_object('user_id', i %% 1000, 'request', 'r' || (i / 3)),
			'app', 'public', 't' || (i %% %[2]d %% 50), CASE WHEN i <= %[2]d THEN 'CREATE' ELSE 'UPDATE' END,
			t, t, t, i / 3, i * 100, i %% 3
		FROM generate_series(1, %[1]d) i,
			LATERAL (SELECT now() - interval '60 days' + (interval '60 days' * i / %[1]d) AS t) x`, activityRows, activityRecords),
		`CREATE INDEX changes_history_idx ON pgtrail.changes ("table", primary_key, committed_at)`,
		`CREATE INDEX changes_transaction_idx ON pgtrail.changes (transaction_id)`,
		`CREATE INDEX changes_context_idx ON pgtrail.changes USING gin (context jsonb_path_ops)`,
		`VACUUM ANALYZE pgtrail.changes`)
	fillCtx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	return execSQL(fillCtx, url, stmts...)
}

// measure requests base+path(i) activityRequests times, one at a time, and
// returns the latencies' p50 and p99 (after a few warm-up requests).
func measure(ctx context.Context, base string, path func(int) string) (result, error) {
	client := &http.Client{Timeout: 30 * time.Second}
	get := func(p string) (time.Duration, error) {
		req, err := http.NewRequestWithContext(ctx, "GET", base+p, nil)
		if err != nil {
			return 0, err
		}
		t0 := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		var page struct {
			Changes []json.RawMessage `json:"changes"`
			Error   string            `json:"error"`
		}
		err = json.NewDecoder(resp.Body).Decode(&page)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		d := time.Since(t0)
		if err != nil || resp.StatusCode != http.StatusOK || len(page.Changes) == 0 {
			return 0, fmt.Errorf("GET %s: %d %v %s (%d changes)", p, resp.StatusCode, err, page.Error, len(page.Changes))
		}
		return d, nil
	}
	for i := range 10 {
		if _, err := get(path(activityRequests + i)); err != nil {
			return result{}, err
		}
	}
	lat := make([]float64, 0, activityRequests)
	for i := range activityRequests {
		d, err := get(path(i))
		if err != nil {
			return result{}, err
		}
		lat = append(lat, float64(d.Microseconds())/1000)
	}
	slices.Sort(lat)
	pct := func(p float64) *float64 { return num(lat[int(p*float64(len(lat)-1))]) }
	return result{Status: "ok", P50ms: pct(0.50), P99ms: pct(0.99), MaxMs: num(lat[len(lat)-1])}, nil
}

// identityWAL measures the WAL of identityUpdates single-row updates of a
// table without and with REPLICA IDENTITY FULL (a row of ten columns, one
// of them changed; each run after a checkpoint, so full-page images weigh
// the same).
func (b *bench) identityWAL(ctx context.Context, url string) error {
	if err := execSQL(ctx, url, `CREATE TABLE ident (id int PRIMARY KEY, a int, b text, c text, d numeric, e timestamptz,
			f boolean, g jsonb, h text, i int)`,
		fmt.Sprintf(`INSERT INTO ident SELECT i, i, 'some text of a row', md5(i::text), i * 1.5, now(), true,
			'{"k": "v", "n": 1}', repeat('z', 60), i FROM generate_series(1, %d) i`, identityUpdates)); err != nil {
		return err
	}
	walPerUpdate := func(identity string) (float64, error) {
		if err := execSQL(ctx, url, "ALTER TABLE ident REPLICA IDENTITY "+identity, "CHECKPOINT"); err != nil {
			return 0, err
		}
		before, err := queryValue[int64](ctx, url, "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint")
		if err != nil {
			return 0, err
		}
		if err := execSQL(ctx, url, fmt.Sprintf(`DO $$ BEGIN FOR r IN 1..%d LOOP UPDATE ident SET a = a + 1 WHERE id = r; END LOOP; END $$`, identityUpdates)); err != nil {
			return 0, err
		}
		after, err := queryValue[int64](ctx, url, "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint")
		return float64(after-before) / identityUpdates, err
	}
	def, err := walPerUpdate("DEFAULT")
	if err != nil {
		return err
	}
	full, err := walPerUpdate("FULL")
	if err != nil {
		return err
	}
	n := int64(identityUpdates)
	b.emit(result{Scenario: "replica-identity-wal", Status: "ok", Changes: &n, RatioToLimit: num(full / def),
		Note: fmt.Sprintf("WAL per single-row update of a 10-column row (~200 bytes): %.0f bytes with the default replica identity, %.0f with FULL (x%.2f; ratio_to_limit holds it)", def, full, full/def)})
	return nil
}
