// Command bench measures pgtrail against the limit of the machine and against
// what users run today, in one invocation, so that the ratios it reports hold
// on a noisy machine. Each group of scenarios runs on its own private
// PostgreSQL (test/pgtest) with the same settings, on the same realistic
// table.
//
//	go run ./test/bench            # the short version (make bench), under 5 minutes
//	go run ./test/bench -full      # the full version (make bench FULL=1)
//
// It prints a table, and one JSON line per scenario on stdout and into
// bench-results.jsonl. The README's Performance section explains the figures.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// sizes are what the short and the full version run.
type sizes struct {
	backlogTxns   int           // the WAL backlog, in transactions of changesPerTxn changes
	backlogRounds int           // runs of each reader of the backlog
	latencyRates  []int         // paced write rates, changes per second
	latencyFor    time.Duration // at each rate
	bigTxn        int           // changes in the one big transaction
	appDuration   time.Duration // each pgbench run
	appRateFor    time.Duration // each pgbench run at appRate
	appRounds     int           // pgbench rounds, variants interleaved
	appClients    int
	appSplit      bool // run the app variants that split pgtrail's cost
}

var (
	short = sizes{backlogTxns: 30_000, backlogRounds: 1, latencyRates: []int{2000, 10000}, latencyFor: 10 * time.Second,
		bigTxn: 1_000_000, appDuration: 10 * time.Second, appRateFor: 5 * time.Second, appRounds: 1, appClients: 4}
	full = sizes{backlogTxns: 200_000, backlogRounds: 2, latencyRates: []int{2000, 10000}, latencyFor: 60 * time.Second,
		bigTxn: 1_000_000, appDuration: 30 * time.Second, appRateFor: 15 * time.Second, appRounds: 3, appClients: 4, appSplit: true}
)

// bench is one invocation.
type bench struct {
	bin     string
	sizes   sizes
	profile string // directory for pprof profiles of pgtrail, or ""
	plugins string // why this pgtrail has no plugin mode, or ""
	tmp     string
	emit    func(result)
	only    *regexp.Regexp // -only
}

// wants says whether -only selects a group, or one of the scenarios of the
// backlog or app group (which selects its group too).
func (b *bench) wants(group string) bool {
	var names []string
	switch group {
	case "backlog":
		for _, r := range readers {
			names = append(names, r.name)
		}
	case "app":
		for _, v := range appVariants {
			names = append(names, v.name)
		}
	}
	return b.only.MatchString(group) || slices.ContainsFunc(names, b.only.MatchString)
}

// picks says whether -only selects one scenario of a group: the group's
// name or its own. The baseline of a group (the limit, no audit) always runs.
func (b *bench) picks(group, scenario string, baseline bool) bool {
	return baseline || b.only.MatchString(group) || b.only.MatchString(scenario)
}

// names says whether -only was given and selects this scenario.
func (b *bench) names(scenario string) bool {
	return b.only.String() != "" && b.only.MatchString(scenario)
}

func main() {
	fullRun := flag.Bool("full", false, "the full version: a larger backlog, longer runs, 3 interleaved pgbench rounds")
	bin := flag.String("bin", "", "the pgtrail binary (default: build ./cmd/pgtrail)")
	out := flag.String("out", "bench-results.jsonl", "results file, one JSON line per scenario (replaced)")
	only := flag.String("only", "", "run only the groups, or the backlog and app groups' scenarios, whose name matches this regexp: backlog, latency, big-txn, app, activity, audit-triggers; limit, capture, capture-rules, capture-plugin, e2e, e2e-in-process, audit-ceiling (needs e2e), broker-jetstream, broker-kafka; app-pgtrail-context etc. (the limit and app-no-audit always run with their group)")
	profile := flag.String("profile", "", "save CPU, allocation and heap profiles of pgtrail in this directory")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *fullRun, *bin, *out, *only, *profile); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, fullRun bool, bin, out, only, profile string) error {
	onlyRE, err := regexp.Compile(only)
	if err != nil {
		return fmt.Errorf("-only: %w", err)
	}
	tmp, err := os.MkdirTemp("", "pgtrail-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if bin == "" {
		bin = filepath.Join(tmp, "pgtrail")
		build := exec.Command("go", "build", "-o", bin, "./cmd/pgtrail")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("build pgtrail: %w", err)
		}
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return err
	}
	if profile != "" {
		if err := os.MkdirAll(profile, 0o755); err != nil {
			return err
		}
	}
	b := &bench{bin: bin, sizes: short, profile: profile, tmp: tmp, only: onlyRE}
	if fullRun {
		b.sizes = full
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()

	b.plugins = b.probePlugins(ctx)
	m := describeMachine(ctx, bin, fullRun)
	fmt.Println(m)
	var results []result
	b.emit = func(r result) {
		r.Run = m.run
		line, _ := json.Marshal(r)
		fmt.Println(string(line))
		fmt.Fprintln(f, string(line))
		results = append(results, r)
	}
	start := time.Now()
	for _, g := range []struct {
		name string
		run  func(context.Context) error
	}{
		{"backlog", b.backlog},
		{"latency", b.latency},
		{"big-txn", b.bigTxn},
		{"app", b.app},
		{"activity", b.activity},
		{"audit-triggers", b.auditTriggers},
	} {
		if !b.wants(g.name) || ctx.Err() != nil {
			continue
		}
		fmt.Fprintf(os.Stderr, "bench: %s scenarios (%s elapsed)\n", g.name, time.Since(start).Round(time.Second))
		if err := g.run(ctx); err != nil {
			b.emit(failed(g.name, err))
		}
	}
	fmt.Printf("\n%s\n\n%s", m, table(results))
	fmt.Fprintf(os.Stderr, "bench: done in %s; results in %s\n", time.Since(start).Round(time.Second), out)
	return ctx.Err()
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	return strings.Join(lines[:min(n, len(lines))], " | ")
}

// machine is where the figures come from.
type machine struct {
	run, cpu, postgres, pgtrail string
	cores                       int
	memoryGiB                   float64
}

func describeMachine(ctx context.Context, bin string, fullRun bool) machine {
	m := machine{cores: runtime.NumCPU(), cpu: "unknown CPU"}
	kind := "short"
	if fullRun {
		kind = "full"
	}
	m.run = time.Now().UTC().Format(time.RFC3339) + " " + kind
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb float64
		fmt.Sscanf(strings.TrimPrefix(strings.SplitN(string(b), "\n", 2)[0], "MemTotal:"), "%f", &kb)
		m.memoryGiB = kb / (1 << 20)
	}
	if out, err := exec.CommandContext(ctx, pgBin("postgres"), "--version").Output(); err == nil {
		m.postgres = strings.TrimSpace(string(out))
	}
	if out, err := exec.CommandContext(ctx, bin, "version").Output(); err == nil {
		m.pgtrail = strings.TrimSpace(string(out))
	}
	return m
}

func (m machine) String() string {
	return fmt.Sprintf("machine: %d cores (%s), %.0f GiB memory; %s; %s; %s; run %s\nserver settings (every scenario): %s",
		m.cores, m.cpu, m.memoryGiB, m.postgres, m.pgtrail, runtime.Version(), m.run, settingsSummary())
}

// pgBin is the path of a PostgreSQL program of the newest installed
// version: the one test/pgtest runs the server from.
func pgBin(name string) string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	best, bestVer := "", -1.0
	for _, d := range dirs {
		v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(d)), 64)
		if err == nil && v > bestVer {
			best, bestVer = d, v
		}
	}
	return filepath.Join(best, name)
}
