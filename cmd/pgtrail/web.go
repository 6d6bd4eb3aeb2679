package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"os"
	"os/user"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/metrics"
	"github.com/pgtrail/pgtrail/web/api"
	"github.com/pgtrail/pgtrail/web/revert"
	"github.com/pgtrail/pgtrail/web/trail"
	"github.com/pgtrail/pgtrail/web/ui"
)

// uiCommands are the config annotations of the read side's commands: they
// load the file with config.LoadUI, serving or not.
var uiCommands = map[string]bool{"ui-serve": true, "ui-read": false}

func (a *app) serveCmd() *cobra.Command {
	return &cobra.Command{
		Use:         "serve",
		Short:       "Serve the activity log (JSON API and web UI) over the audit table, read-only, until SIGINT or SIGTERM",
		Annotations: map[string]string{"config": "ui-serve"},
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			m := metrics.New()
			if err := a.mountWeb(ctx, m); err != nil {
				return err
			}
			if err := m.Start(ctx, a.cfg.HTTP.Listen, a.log); err != nil {
				return err
			}
			<-ctx.Done()
			return nil
		},
	}
}

// mountWeb serves the API and the UI beside /metrics when the config has a
// ui: section (always for `pgtrail serve`). The connections close when ctx ends.
func (a *app) mountWeb(ctx context.Context, m *metrics.Metrics) error {
	if !a.cfg.UI.Enabled {
		return nil
	}
	store, err := a.openTrail(ctx)
	if err != nil {
		return err
	}
	o := api.Options{Store: store, Apply: a.cfg.UI.Revert.Apply, Tokens: a.cfg.UI.Tokens,
		Loopback: config.Loopback(a.cfg.HTTP.Listen), Version: version, Log: a.log}
	src, err := a.openRevert(ctx)
	if err != nil {
		// Reading the trail does not need the source: serve without revert.
		o.RevertUnavailable = err.Error()
		a.log.Warn("revert is unavailable", "err", err)
	}
	o.Revert = src
	m.Mount("/api/", api.New(o))
	m.Mount("/", ui.Handler())
	go func() {
		<-ctx.Done()
		store.Close()
		if src != nil {
			src.Close()
		}
	}()
	a.log.Info("serving the activity log", "url", "http://"+a.cfg.HTTP.Listen+"/", "tokens", len(a.cfg.UI.Tokens) > 0,
		"revert_apply", src != nil && o.Apply)
	return nil
}

func (a *app) openTrail(ctx context.Context) (*trail.Store, error) {
	u := a.cfg.UI
	return trail.Open(ctx, trail.Options{URL: u.URL, Schema: u.Schema, Table: u.Table,
		StatementTimeout: time.Duration(u.StatementTimeout), MaxConns: 8})
}

func (a *app) openRevert(ctx context.Context) (*revert.Source, error) {
	if a.cfg.UI.Revert.URL == "" {
		return nil, errors.New("no source database: set ui.revert.url (or source.postgres.url)")
	}
	return revert.Open(ctx, a.cfg.UI.Revert.URL, time.Duration(a.cfg.UI.StatementTimeout))
}

func (a *app) historyCmd() *cobra.Command {
	var asOf, database string
	var asJSON bool
	cmd := &cobra.Command{
		Use:         "history SCHEMA.TABLE PRIMARY_KEY",
		Short:       "Print a record's changes, oldest first, or with --as-of the record as it was then",
		Args:        cobra.ExactArgs(2),
		Annotations: map[string]string{"config": "ui-read"},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			schema, table, ok := strings.Cut(args[0], ".")
			if !ok || schema == "" || table == "" {
				return fmt.Errorf("%q is not SCHEMA.TABLE (e.g. public.orders)", args[0])
			}
			rec := trail.Record{Database: database, Schema: schema, Table: table, PrimaryKey: args[1]}
			store, err := a.openTrail(ctx)
			if err != nil {
				return err
			}
			defer store.Close()
			out := cmd.OutOrStdout()
			if asOf != "" {
				at, err := time.Parse(time.RFC3339Nano, asOf)
				if err != nil {
					return fmt.Errorf("--as-of: %q is not an RFC 3339 time (e.g. 2026-11-25T10:00:00Z)", asOf)
				}
				st, err := store.AsOf(ctx, rec, at)
				if err != nil {
					return err
				}
				return printState(out, st)
			}
			return printHistory(ctx, out, store, rec, asJSON)
		},
	}
	cmd.Flags().StringVar(&asOf, "as-of", "", "print the record as it was at this RFC 3339 time")
	cmd.Flags().StringVar(&database, "database", "", "the source database (when the trail holds several)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print each change as a JSON line, as the API returns it")
	return cmd
}

func printHistory(ctx context.Context, out io.Writer, store *trail.Store, rec trail.Record, asJSON bool) error {
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false)
	n := 0
	var cursor *trail.Key
	for {
		page, err := store.History(ctx, rec, cursor, trail.MaxLimit)
		if err != nil {
			return err
		}
		for _, c := range page.Changes {
			n++
			if asJSON {
				if err := enc.Encode(c); err != nil {
					return err
				}
				continue
			}
			printChange(out, c)
		}
		if page.Next == nil {
			break
		}
		cursor = page.Next
	}
	if n == 0 {
		return fmt.Errorf("%s.%s %s has no change in the trail", rec.Schema, rec.Table, rec.PrimaryKey)
	}
	return nil
}

// printChange writes one change for a person: when, what, who, and the
// columns it changed.
func printChange(out io.Writer, c trail.Change) {
	fmt.Fprintf(out, "%s  %-8s %s.%s  change %s  transaction %s:%d\n", c.CommittedAt.Format(time.RFC3339Nano),
		c.Operation, c.Schema, c.Table, c.ID, c.Database, c.TransactionID)
	if string(c.Context) != "{}" {
		fmt.Fprintf(out, "    context  %s\n", compactJSON(c.Context))
	}
	for _, col := range slices.Sorted(maps.Keys(c.Diff)) {
		d := c.Diff[col]
		fmt.Fprintf(out, "    %s: %s -> %s\n", col, compactJSON(d[0]), compactJSON(d[1]))
	}
	if len(c.UnchangedToast) > 0 {
		fmt.Fprintf(out, "    (unchanged, not sent: %s)\n", strings.Join(c.UnchangedToast, ", "))
	}
}

func printState(out io.Writer, st trail.State) error {
	if st.Change == nil {
		fmt.Fprintln(out, "null")
		return errors.New("the trail holds no change of this record")
	}
	b, err := json.MarshalIndent(st.Row, "", "  ")
	if err != nil {
		return err
	}
	fmt.Fprintln(out, string(b))
	fmt.Fprintf(os.Stderr, "from the %s image of change %s (%s, %s)\n", st.Image, st.Change.ID, st.Change.Operation,
		st.Change.CommittedAt.Format(time.RFC3339Nano))
	if len(st.Unknown) > 0 {
		fmt.Fprintf(os.Stderr, "not in the trail: %s\n", strings.Join(st.Unknown, ", "))
	}
	return nil
}

func (a *app) revertCmd() *cobra.Command {
	var changeIDs []string
	var transaction, contextJSON string
	var apply, force bool
	cmd := &cobra.Command{
		Use:   "revert (--change ID | --transaction DATABASE:XID | --context JSON)",
		Short: "Print the SQL that undoes changes, and the rows changed since; with --apply, apply it in one audited transaction",
		Long: "revert prints SQL that undoes the selected changes (their inverses in reverse WAL order, keyed by primary key,\n" +
			"values cast to their column types) to stdout, and on stderr every row changed since (a conflict) and every\n" +
			"change the trail cannot undo. --apply applies it to ui.revert.url in one transaction whose pgtrail context\n" +
			"names the reverted changes; it refuses with conflicts unless --force.",
		Args:        cobra.NoArgs,
		Annotations: map[string]string{"config": "ui-read"},
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			q := url.Values{}
			if len(changeIDs) > 0 {
				q["change"] = changeIDs
			}
			if transaction != "" {
				q.Set("transaction", transaction)
			}
			if contextJSON != "" {
				q.Set("context", contextJSON)
			}
			sel, err := api.ParseSelection(q)
			if err != nil {
				return fmt.Errorf("%w (as flags: --change, --transaction, --context)", err)
			}
			store, err := a.openTrail(ctx)
			if err != nil {
				return err
			}
			defer store.Close()
			src, err := a.openRevert(ctx)
			if err != nil {
				return err
			}
			defer src.Close()
			changes, err := api.Select(ctx, store, sel)
			if err != nil {
				return err
			}
			if !apply {
				p, err := src.Plan(ctx, changes)
				if err != nil {
					return err
				}
				return reportPlan(cmd.OutOrStdout(), p, false)
			}
			p, res, err := src.Apply(ctx, changes, map[string]string{"reverted_by": "cli:" + osUser(), "via": "pgtrail revert"}, force)
			if p != nil {
				_ = reportPlan(cmd.OutOrStdout(), p, true)
			}
			switch {
			case errors.Is(err, revert.ErrConflicts):
				return fmt.Errorf("%d rows changed since the reverted changes: nothing applied (--force overwrites them)", len(p.Conflicts))
			case errors.Is(err, revert.ErrUnrevertable):
				return fmt.Errorf("%d changes cannot be undone from the trail: nothing applied", len(p.Unrevertable))
			case err != nil:
				return err
			}
			fmt.Fprintf(os.Stderr, "applied: %d changes undone by %d statements (%d rows)\n", len(p.Reverted), res.Statements, res.Rows)
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&changeIDs, "change", nil, "change id(s) to undo")
	cmd.Flags().StringVar(&transaction, "transaction", "", "undo every change of this transaction: DATABASE:XID")
	cmd.Flags().StringVar(&contextJSON, "context", "", `undo every change whose context contains this JSON object, e.g. '{"request_id":"r-17"}'`)
	cmd.Flags().BoolVar(&apply, "apply", false, "apply the SQL to ui.revert.url (source.postgres.url by default) in one transaction")
	cmd.Flags().BoolVar(&force, "force", false, "with --apply: apply even over rows changed since")
	return cmd
}

// reportPlan prints the SQL (unless applied) to out, and conflicts and what
// cannot be undone to stderr.
func reportPlan(out io.Writer, p *revert.Plan, applied bool) error {
	if !applied {
		fmt.Fprint(out, p.SQL())
	}
	for _, u := range p.Unrevertable {
		fmt.Fprintf(os.Stderr, "cannot undo change %s: %s\n", u.Change, u.Reason)
	}
	for _, c := range p.Conflicts {
		fmt.Fprintf(os.Stderr, "conflict: %s.%s %s: %s\n    left by change %s: %s\n    now: %s\n", c.Schema, c.Table, c.PrimaryKey,
			c.Reason, c.Change, c.Expected, c.Actual)
	}
	if !applied && len(p.Unrevertable) > 0 {
		return fmt.Errorf("%d changes cannot be undone from the trail", len(p.Unrevertable))
	}
	return nil
}

func osUser() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

func compactJSON(raw json.RawMessage) string {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return string(raw)
	}
	return b.String()
}
