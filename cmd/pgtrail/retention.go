package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/metrics"
	"github.com/pgtrail/pgtrail/plugins/host"
	"github.com/pgtrail/pgtrail/plugins/sdk"
	"github.com/pgtrail/pgtrail/sinks/postgres"
	"github.com/pgtrail/pgtrail/sinks/s3"
	"github.com/pgtrail/pgtrail/transports/pglogrepl"
)

func (a *app) retentionCmd() *cobra.Command {
	var dry bool
	cmd := &cobra.Command{
		Use:   "retention",
		Short: "Remove the changes past the retention rules from the audit table, once (--dry-run: print what would go)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.retention(cmd.Context(), cmd.OutOrStdout(), dry)
		},
	}
	cmd.Flags().BoolVar(&dry, "dry-run", false, "print the partitions and rows that would be removed, and remove nothing")
	return cmd
}

// retention runs one pass over the audit table of every postgres sink and
// prints what it removed.
func (a *app) retention(ctx context.Context, w io.Writer, dry bool) error {
	r := a.cfg.Retention
	if !r.Enabled() {
		fmt.Fprintln(w, "no retention rule removes anything: set retention.default or retention.tables (everything is kept forever)")
		return nil
	}
	var arch *archive
	if r.Archive != "" && !dry {
		var err error
		if arch, err = a.openArchive(ctx, r.Archive); err != nil {
			return err
		}
		defer arch.close(ctx)
	}
	pol := policy(r)
	for _, spec := range a.cfg.Sinks {
		if spec.Plugin != "postgres" {
			continue
		}
		sink, err := auditSink(ctx, spec)
		if err != nil {
			return err
		}
		var aarch postgres.Archive
		if arch != nil {
			aarch = arch
		}
		sink.SetLogger(a.log.With("sink", spec.Name))
		rep, err := sink.Retain(ctx, time.Now(), pol, aarch, dry)
		_ = sink.Close(ctx)
		printReport(w, spec.Name, rep, dry)
		if err != nil {
			return fmt.Errorf("retention of sink %q: %w", spec.Name, err)
		}
	}
	return nil
}

// retainEvery runs a retention pass at start and every retention.interval
// until ctx ends; a failed pass is logged and the next one tries again.
//
// Retention and partition upkeep belong to the active instance only (design
// §11): with a postgres source, `pgtrail run` starts this loop while it holds
// the slot's lease (leased), and ctx ends with the lease.
func (a *app) retainEvery(ctx context.Context, m *metrics.Metrics) {
	t := time.NewTicker(a.cfg.Retention.Every())
	defer t.Stop()
	for {
		if err := a.retention(ctx, io.Discard, false); err != nil && ctx.Err() == nil {
			m.RetentionErrors.Inc()
			a.log.Error("retention pass failed; the next one tries again", "in", a.cfg.Retention.Every(), "err", err)
		} else if err == nil {
			m.RetentionLastSuccess.SetToCurrentTime()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// policy turns the retention rules into the sink's terms.
func policy(r config.Retention) postgres.Policy {
	return postgres.Policy{
		Keep: func(schema, table string) time.Duration { return time.Duration(r.Keep(schema, table)) },
		Periods: func(table string) []time.Duration {
			var out []time.Duration
			for _, p := range r.Periods(table) {
				out = append(out, time.Duration(p))
			}
			return out
		},
		Default: time.Duration(r.Default),
	}
}

// auditSink configures a postgres sink in this process, to work on its
// audit table directly (retention, migration).
func auditSink(ctx context.Context, spec config.Sink) (*postgres.Sink, error) {
	raw, err := json.Marshal(spec.Config)
	if err != nil {
		return nil, fmt.Errorf("sink %q: encode config: %w", spec.Name, err)
	}
	s := postgres.New()
	if err := s.Configure(ctx, raw); err != nil {
		return nil, fmt.Errorf("sink %q: %w", spec.Name, err)
	}
	return s, nil
}

func printReport(w io.Writer, sink string, rep postgres.Report, dry bool) {
	drop, del := "dropped", "deleted"
	if dry {
		drop, del = "would drop", "would delete"
	}
	for _, p := range rep.Partitions {
		fmt.Fprintf(w, "sink %s: %s partition %s (%s to %s): %d rows (%s)\n", sink, drop, p.Name,
			p.From.Format(time.RFC3339), p.To.Format(time.RFC3339), sum(p.Rows), byTable(p.Rows))
	}
	for _, t := range slices.Sorted(maps.Keys(rep.Deleted)) {
		fmt.Fprintf(w, "sink %s: %s %d rows of %s\n", sink, del, rep.Deleted[t], t)
	}
	if len(rep.Partitions) == 0 && len(rep.Deleted) == 0 {
		fmt.Fprintf(w, "sink %s: nothing to remove\n", sink)
	}
}

func sum(rows map[string]int64) int64 {
	var n int64
	for _, v := range rows {
		n += v
	}
	return n
}

// byTable lists row counts as "public.orders 10, public.sessions 3".
func byTable(rows map[string]int64) string {
	var parts []string
	for _, t := range slices.Sorted(maps.Keys(rows)) {
		parts = append(parts, fmt.Sprintf("%s %d", t, rows[t]))
	}
	return strings.Join(parts, ", ")
}

// archive is retention's archive: the named S3 sink, which changes are
// written through exactly as `pgtrail run` writes them (its plugin process,
// its config), and read back by the same sink's code in this process: the
// sink interface has no way to ask a sink what it holds.
type archive struct {
	sink *host.Sink
	read *s3.Sink
}

func (a *app) openArchive(ctx context.Context, name string) (*archive, error) {
	i := slices.IndexFunc(a.cfg.Sinks, func(s config.Sink) bool { return s.Name == name })
	if i < 0 {
		return nil, fmt.Errorf("retention.archive: no sink is named %q", name)
	}
	spec := a.cfg.Sinks[i]
	raw, err := json.Marshal(spec.Config)
	if err != nil {
		return nil, fmt.Errorf("sink %q: encode config: %w", name, err)
	}
	read := s3.New()
	if err := read.Configure(ctx, raw); err != nil {
		return nil, fmt.Errorf("sink %q: %w", name, err)
	}
	sink, err := host.Load(ctx, spec, a.hostOptions(nil))
	if err != nil {
		return nil, err
	}
	if err := sink.Open(ctx); err != nil {
		_ = sink.Close(ctx)
		return nil, err
	}
	return &archive{sink: sink, read: read}, nil
}

func (r *archive) Write(ctx context.Context, batch []*sdk.Change) error {
	_, err := r.sink.Write(ctx, batch)
	return err
}

func (r *archive) Flush(ctx context.Context) error { return r.sink.Flush(ctx) }

func (r *archive) Stored(ctx context.Context, schema, table string, day time.Time) ([]uuid.UUID, error) {
	return r.read.Stored(ctx, schema, table, day)
}

func (r *archive) close(ctx context.Context) {
	_ = r.sink.Close(context.WithoutCancel(ctx))
	_ = r.read.Close(ctx)
}

// migrate moves a Bemi changes table into the audit table of the postgres
// sink (the one named, when there are several) and prints the outcome.
func (a *app) migrate(ctx context.Context, w io.Writer, from, name string) error {
	var specs []config.Sink
	for _, s := range a.cfg.Sinks {
		if s.Plugin == "postgres" && (name == "" || s.Name == name) {
			specs = append(specs, s)
		}
	}
	switch {
	case len(specs) == 0 && name != "":
		return fmt.Errorf("--sink %q: no postgres sink has that name", name)
	case len(specs) == 0:
		return errors.New("--migrate-from moves a Bemi table into a postgres sink's audit table, and no sink has plugin: postgres")
	case len(specs) > 1:
		return fmt.Errorf("--migrate-from: there are %d postgres sinks: name the one to migrate into with --sink", len(specs))
	}
	sink, err := auditSink(ctx, specs[0])
	if err != nil {
		return err
	}
	defer sink.Close(ctx)
	sink.SetLogger(a.log.With("sink", specs[0].Name))
	rep, err := sink.Migrate(ctx, from)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "migrated %s into sink %s: %d rows there, %d copied now, in %s\n", rep.Source, specs[0].Name, rep.Rows, rep.Copied, rep.Elapsed.Round(time.Millisecond))
	if rep.Skipped > 0 {
		fmt.Fprintf(w, "left out %d rows of other operations (Bemi's MESSAGE rows: context, not row changes)\n", rep.Skipped)
	}
	fmt.Fprintf(w, "%s is left as it was: compare, then drop it when you no longer need it\n", rep.Source)
	return nil
}

// dropSourceTriggers takes the Bemi trigger off pgtrail's own tables in the
// source database (pgtrail.slots), where the Bemi packages' migration put
// it if it covers every schema.
func (a *app) dropSourceTriggers(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, a.cfg.Source.Postgres.URL)
	if err != nil {
		return fmt.Errorf("connect to source database: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	dropped, err := postgres.DropBemiTriggersInSchema(ctx, conn, pglogrepl.OwnSchema)
	for _, d := range dropped {
		a.log.Info("removed the Bemi row trigger from pgtrail's own table", "trigger", d)
	}
	return err
}
