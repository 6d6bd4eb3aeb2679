package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/redact"
	"github.com/pgtrail/pgtrail/plugins/host"
	"github.com/pgtrail/pgtrail/plugins/sdk"
	"github.com/pgtrail/pgtrail/sinks/postgres"
	"github.com/pgtrail/pgtrail/transports/pglogrepl"
)

func (a *app) pluginsCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:         "plugins",
		Short:       "List the sink plugins: built-in, named in the config, and found in --dir",
		Annotations: map[string]string{"config": "optional"},
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tVERSION\tKIND\tSUMMARY")
			for _, name := range builtins.Names() {
				d := builtins[name]().Describe()
				fmt.Fprintf(w, "%s\t%s\tbuilt-in\t%s\n", name, d.Version, d.Summary)
			}
			// External plugins by path, run as their sink would run them
			// (its sha256 and env), else with neither.
			paths := map[string]config.Sink{}
			for _, s := range a.cfg.Sinks {
				if _, ok := builtins[s.Plugin]; !ok {
					paths[s.Plugin] = s
				}
			}
			if dir != "" {
				entries, err := os.ReadDir(dir)
				if err != nil {
					return fmt.Errorf("read plugin dir %s: %w", dir, err)
				}
				for _, e := range entries {
					path := filepath.Join(dir, e.Name())
					if _, named := paths[path]; !named {
						if info, err := e.Info(); err == nil && !e.IsDir() && info.Mode()&0o111 != 0 {
							paths[path] = config.Sink{Name: path, Plugin: path}
						}
					}
				}
			}
			// Plugins are started only to ask their version: keep their
			// start and exit out of the listing.
			a.log = newLogger(config.Log{Level: "error"}, os.Stderr)
			for _, path := range slices.Sorted(maps.Keys(paths)) {
				// Asking the plugin itself is the only way to know its version.
				d, err := host.Describe(ctx, paths[path], a.hostOptions(nil))
				if err != nil {
					fmt.Fprintf(w, "%s\t-\texternal\t%s\n", path, strings.ReplaceAll(redact.Error(err), "\n", " "))
					continue
				}
				fmt.Fprintf(w, "%s (%s)\t%s\texternal\t%s\n", d.Name, path, d.Version, d.Summary)
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVar(&dir, "dir", os.Getenv("PGTRAIL_PLUGIN_DIR"), "a directory of plugin binaries to list (default $PGTRAIL_PLUGIN_DIR)")
	return cmd
}

// serveSinkCmd serves a built-in sink as a plugin: the host re-executes this
// binary with it, so that built-in sinks run behind the same process boundary
// as third-party ones.
func serveSinkCmd() *cobra.Command {
	return &cobra.Command{
		Use:         serveSink + " NAME",
		Hidden:      true,
		Args:        cobra.ExactArgs(1),
		Annotations: map[string]string{"config": "none"},
		RunE: func(_ *cobra.Command, args []string) error {
			mk, ok := builtins[args[0]]
			if !ok {
				return fmt.Errorf("no built-in sink %q", args[0])
			}
			sdk.Serve(mk())
			return nil
		},
	}
}

const serveSink = "serve-sink"

// hostOptions say how the host reaches sinks: built-ins by re-executing this
// binary.
func (a *app) hostOptions(health func(string, error)) host.Options {
	self, err := os.Executable()
	if err != nil {
		self = os.Args[0]
	}
	opts := host.Options{Builtins: builtins, BuiltinEnv: builtinEnv, Self: []string{self, serveSink}, Log: a.log, Health: health}
	if a.m != nil {
		opts.Restarted = func(sink string) { a.m.PluginRestarts.WithLabelValues(sink).Inc() }
	}
	return opts
}

// loadSinks starts and configures every sink of the config. On an error the
// sinks already started are stopped.
func (a *app) loadSinks(ctx context.Context, health func(string, error)) ([]*host.Sink, error) {
	var sinks []*host.Sink
	for _, spec := range a.cfg.Sinks {
		if a.m != nil { // every sink's series exist from the start, for alerts and dashboards
			a.m.PluginRestarts.WithLabelValues(spec.Name)
			a.m.WriteErrors.WithLabelValues(spec.Name)
		}
		s, err := host.Load(ctx, spec, a.hostOptions(health))
		if err != nil {
			closeSinks(ctx, sinks)
			return nil, err
		}
		sinks = append(sinks, s)
	}
	return sinks, nil
}

func closeSinks(ctx context.Context, sinks []*host.Sink) {
	for _, s := range sinks {
		_ = s.Close(context.WithoutCancel(ctx))
	}
}

// auditTables lists the tables that the config's postgres sinks write, so
// that native capture never stores pgtrail's own writes. Only built-in
// sinks are known; a third-party sink must write outside the captured
// schemas.
func (a *app) auditTables() ([]pglogrepl.AuditTable, error) {
	var out []pglogrepl.AuditTable
	for _, spec := range a.cfg.Sinks {
		if spec.Plugin != "postgres" {
			continue
		}
		raw, err := json.Marshal(spec.Config)
		if err != nil {
			return nil, fmt.Errorf("sink %q: encode config: %w", spec.Name, err)
		}
		cfg, err := postgres.ParseConfig(raw)
		if err != nil {
			return nil, fmt.Errorf("sink %q: %w", spec.Name, err)
		}
		out = append(out, pglogrepl.AuditTable{URL: cfg.URL, Schema: cfg.Schema, Table: cfg.Table})
	}
	return out, nil
}
