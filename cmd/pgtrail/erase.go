package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pgtrail/pgtrail/core/rules"
	"github.com/pgtrail/pgtrail/sinks/postgres"
)

func (a *app) eraseCmd() *cobra.Command {
	var (
		e            postgres.Erasure
		table, where string
	)
	cmd := &cobra.Command{
		Use:   "erase",
		Short: "Erase one row's history (and, with --where-context, matching context values) from the audit table, keeping the changes themselves",
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ok bool
			if e.Schema, e.Table, ok = strings.Cut(table, "."); !ok || e.Schema == "" || e.Table == "" {
				return fmt.Errorf("--table: %q is not schema.table (e.g. public.users)", table)
			}
			if where != "" {
				if err := json.Unmarshal([]byte(where), &e.Context); err != nil || len(e.Context) == 0 {
					return fmt.Errorf("--where-context: %q is not a non-empty JSON object (e.g. '{\"user_id\": 42}')", where)
				}
			}
			return a.erase(cmd.Context(), cmd.OutOrStdout(), e)
		},
	}
	cmd.Flags().StringVar(&table, "table", "", "the row's table, schema.table (required)")
	cmd.Flags().StringVar(&e.PrimaryKey, "primary-key", "", "the row's primary key as stored in primary_key (required)")
	cmd.Flags().StringVar(&where, "where-context", "", "a JSON object: also erase these context values wherever the context holds them all")
	cmd.Flags().StringVar(&e.By, "by", "", "who asked for the erasure, recorded in the erasure log")
	cmd.Flags().IntVar(&e.BatchSize, "batch-size", 1000, "audit rows rewritten per transaction")
	cmd.Flags().BoolVar(&e.DryRun, "dry-run", false, "count the rows that would be rewritten, and change nothing")
	_ = cmd.MarkFlagRequired("table")
	_ = cmd.MarkFlagRequired("primary-key")
	return cmd
}

// erase runs the erasure on the audit table of every postgres sink; other
// sinks are named, as they are not rewritten.
func (a *app) erase(ctx context.Context, w io.Writer, e postgres.Erasure) error {
	if key := a.cfg.Rules.HMACKey; key != "" {
		e.DigestKey = []byte(key)
		e.Pseudonym = func(v []byte) string { return rules.Pseudonym([]byte(key), v) }
	}
	done := 0
	for _, spec := range a.cfg.Sinks {
		if spec.Plugin != "postgres" {
			fmt.Fprintf(w, "sink %s (%s): not erased: only the postgres audit table is rewritten (see Governance in the README)\n", spec.Name, spec.Plugin)
			continue
		}
		sink, err := auditSink(ctx, spec)
		if err != nil {
			return err
		}
		sink.SetLogger(a.log.With("sink", spec.Name))
		rep, err := sink.Erase(ctx, e)
		_ = sink.Close(ctx)
		if err != nil {
			return fmt.Errorf("erase in sink %q: %w (run it again to complete it)", spec.Name, err)
		}
		done++
		switch {
		case e.DryRun:
			fmt.Fprintf(w, "sink %s: would rewrite %d rows\n", spec.Name, rep.Rows)
		case rep.Resumed:
			fmt.Fprintf(w, "sink %s: erasure %d completed: %d more rows rewritten\n", spec.Name, rep.ID, rep.Rows)
		default:
			fmt.Fprintf(w, "sink %s: erasure %d: %d rows rewritten\n", spec.Name, rep.ID, rep.Rows)
		}
	}
	if done == 0 {
		return fmt.Errorf("erase: no sink has plugin: postgres; erasure rewrites the postgres audit table only")
	}
	return nil
}
