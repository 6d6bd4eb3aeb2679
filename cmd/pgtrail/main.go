// Command pgtrail captures every committed row change of a PostgreSQL
// database, stitches it with its application context and stores it in sinks.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/lease"
	"github.com/pgtrail/pgtrail/core/metrics"
	"github.com/pgtrail/pgtrail/core/redact"
	"github.com/pgtrail/pgtrail/plugins/host"
	"github.com/pgtrail/pgtrail/plugins/sdk"
	"github.com/pgtrail/pgtrail/sinks/clickhouse"
	"github.com/pgtrail/pgtrail/sinks/discard"
	"github.com/pgtrail/pgtrail/sinks/postgres"
	"github.com/pgtrail/pgtrail/sinks/s3"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// builtins are the sinks compiled into this binary.
var builtins = host.Builtins{
	"postgres": func() sdk.Sink { return postgres.New() },
	"null":     func() sdk.Sink { return discard.New() },

	"s3":         func() sdk.Sink { return s3.New() },
	"clickhouse": func() sdk.Sink { return clickhouse.New() },
}

// proxyEnv are the HTTP proxy variables that Go's HTTP client reads.
var proxyEnv = []string{"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"}

// libpqEnv are the variables pgx reads for what a URL leaves out (pgconn's
// ParseConfig), as libpq does.
var libpqEnv = []string{"PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGPASSFILE", "PGAPPNAME",
	"PGCONNECT_TIMEOUT", "PGSSLMODE", "PGSSLKEY", "PGSSLCERT", "PGSSLCERTMODE", "PGSSLSNI", "PGSSLROOTCERT",
	"PGSSLPASSWORD", "PGSSLNEGOTIATION", "PGTARGETSESSIONATTRS", "PGSERVICE", "PGSERVICEFILE", "PGTZ", "PGOPTIONS",
	"PGMINPROTOCOLVERSION", "PGMAXPROTOCOLVERSION", "PGCHANNELBINDING", "PGREQUIREAUTH"}

// builtinEnv names the environment variables a built-in sink's process gets
// beyond those of every plugin: libpq's for the audit table, the AWS chain's
// for S3 (keys, profile, web identity, container credentials), and proxies.
var builtinEnv = map[string][]string{
	"postgres":   libpqEnv,
	"s3":         append([]string{"AWS_*"}, proxyEnv...),
	"clickhouse": proxyEnv,
}

// memoryLimit is the soft heap limit when GOMEMLIMIT is not set: batches are
// short-lived, so without it the heap grows to twice what is live between
// collections.
const memoryLimit = 64 << 20

func main() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := root().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "pgtrail:", redact.Error(err))
		os.Exit(1)
	}
}

// app holds what every command needs.
type app struct {
	configPath string
	cfg        *config.Config
	log        *slog.Logger
	pprof      bool // run --pprof: serve net/http/pprof on http.listen
	m          *metrics.Metrics
	// held is the slot's lease while this instance is the active one; the
	// pipeline it runs is fenced by it (nil: no lease, broker ingress).
	held lease.Held
}

// metrics returns the process's one set of metrics, made on first use (on
// the main goroutine, before run starts any other).
func (a *app) metrics() *metrics.Metrics {
	if a.m == nil {
		a.m = metrics.New()
	}
	return a.m
}

func root() *cobra.Command {
	a := &app{}
	cmd := &cobra.Command{
		Use:           "pgtrail",
		Short:         "Audit trail for PostgreSQL: every row change, with who and why",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Annotations["config"] == "none" {
				return nil
			}
			load := config.Load
			if read, ok := uiCommands[cmd.Annotations["config"]]; ok {
				load = func(path string, explicit bool) (*config.Config, error) { return config.LoadUI(path, explicit, read) }
			}
			cfg, err := load(a.configPath, cmd.Flags().Changed("config"))
			if err != nil && cmd.Annotations["config"] == "optional" {
				cfg, err = &config.Config{Log: config.Log{Level: "info", Format: "text"}}, nil
			}
			if err != nil {
				return err
			}
			a.cfg = cfg
			a.log = newLogger(cfg.Log, os.Stderr)
			return nil
		},
	}
	cmd.PersistentFlags().StringVar(&a.configPath, "config", config.DefaultPath, "config file (without one, DATABASE_URL alone is enough)")
	cmd.AddCommand(a.setupCmd(), a.runCmd(), a.statusCmd(), a.teardownCmd(), a.pluginsCmd(), versionCmd(), serveSinkCmd())
	cmd.AddCommand(a.captureCmd())
	cmd.AddCommand(a.serveCmd(), a.historyCmd(), a.revertCmd())
	cmd.AddCommand(a.retentionCmd())
	cmd.AddCommand(a.eraseCmd())
	return cmd
}

// newLogger is the process logger, writing to w; every value it writes has
// its credentials masked.
func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: redact.Attr}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:         "version",
		Short:       "Print the version",
		Annotations: map[string]string{"config": "none"},
		Run:         func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), "pgtrail", version) },
	}
}
