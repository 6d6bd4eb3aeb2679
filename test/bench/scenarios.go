package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/test/pgtest"
)

// result is one scenario's figures, one JSON line. The keys every scenario
// shares are always present, null where a figure does not apply.
type result struct {
	Scenario     string   `json:"scenario"`
	Status       string   `json:"status"` // ok, skipped, failed
	Changes      *int64   `json:"changes"`
	Seconds      *float64 `json:"seconds"`
	ChangesPerS  *float64 `json:"changes_per_s"`
	RatioToLimit *float64 `json:"ratio_to_limit"`
	// RatioToInProcess is, for a sink behind the plugin boundary, the
	// throughput over that of the same sink in-process (issue: >= 0.9).
	RatioToInProcess *float64 `json:"ratio_to_in_process,omitempty"`
	// RatioToCapture is, for capture-rules, its throughput over capture's
	// (issue #16: >= 0.9).
	RatioToCapture *float64 `json:"ratio_to_capture,omitempty"`
	P50ms          *float64 `json:"p50_ms"`
	P99ms          *float64 `json:"p99_ms"`
	MaxMs          *float64 `json:"max_ms,omitempty"`
	PeakRSSMB      *float64 `json:"peak_rss_mb"`
	TPS            *float64 `json:"tps,omitempty"`
	TPSRatio       *float64 `json:"tps_ratio_to_no_audit,omitempty"`
	// At appRate, the same transactions at a steady rate below saturation:
	// their latency, and the CPU they cost the database server (backends,
	// walsender, audit writes) and pgtrail's processes, per transaction.
	TxnP50ms     *float64 `json:"txn_p50_ms,omitempty"`
	TxnP99ms     *float64 `json:"txn_p99_ms,omitempty"`
	ServerCPUus  *float64 `json:"server_cpu_us_per_txn,omitempty"`
	PgtrailCPUus *float64 `json:"pgtrail_cpu_us_per_txn,omitempty"`
	Note         string   `json:"note,omitempty"`
	Run          string   `json:"run"`
}

func num(v float64) *float64 { return &v }

func throughput(name string, n int64, d time.Duration) result {
	return result{Scenario: name, Status: "ok", Changes: &n, Seconds: num(d.Seconds()),
		ChangesPerS: num(float64(n) / d.Seconds())}
}

func skipped(name, why string) result { return result{Scenario: name, Status: "skipped", Note: why} }

func failed(name string, err error) result {
	return result{Scenario: name, Status: "failed", Note: firstLines(err.Error(), 6)}
}

// The backlog group: one database, one WAL backlog of identical
// transactions, and one slot per run of a reader made before the backlog, so
// that every run decodes exactly the same WAL. Runs go one after the other,
// in rounds of every reader, and the limit runs once more at the end; each
// scenario reports its fastest run, the one least disturbed by whatever else
// the machine was doing.

// reader is one consumer of the backlog.
type reader struct {
	name string
	once bool // run in the first round only (the slow broker paths)
	// available says why the reader cannot run with this pgtrail, or "".
	available func(b *bench, ctx context.Context) string
	// run reads the whole backlog from slot, which was made before it.
	run func(b *bench, ctx context.Context, bl *backlog, slot string) result
}

// backlog is the shared WAL backlog.
type backlog struct {
	cluster *pgtest.Cluster
	url     string
	changes int64
	endLSN  string
}

// readers are the scenarios of the backlog group, in the order they run.
// One whose available says why not is reported as skipped.
var readers = []reader{
	{name: "limit", run: (*bench).limit},
	// capture is native capture and stitching into the null sink, inside
	// the pgtrail process where sinks can run elsewhere.
	{name: "capture", run: func(b *bench, ctx context.Context, bl *backlog, slot string) result {
		return b.drain(ctx, "capture", bl, trail{slot: slot, sinkName: "null", plugin: "null", inProcess: b.plugins == ""})
	}},
	// capture-rules is capture with governance rules that touch every
	// change (core/rules): its ratio_to_capture is what they cost.
	{name: "capture-rules", run: func(b *bench, ctx context.Context, bl *backlog, slot string) result {
		return b.drain(ctx, "capture-rules", bl, trail{slot: slot, sinkName: "null", plugin: "null", inProcess: b.plugins == "", extra: benchRules})
	}},
	// capture-plugin is the same with the null sink behind the plugin
	// boundary: capture over it is what the boundary costs per change.
	{name: "capture-plugin", available: (*bench).pluginMode, run: func(b *bench, ctx context.Context, bl *backlog, slot string) result {
		return b.drain(ctx, "capture-plugin", bl, trail{slot: slot, sinkName: "null", plugin: "null"})
	}},
	// e2e runs the postgres sink the way this pgtrail runs a built-in sink
	// by default: behind the plugin boundary, where there is one.
	{name: "e2e", run: func(b *bench, ctx context.Context, bl *backlog, slot string) result {
		return b.drain(ctx, "e2e", bl, trail{slot: slot, sinkName: "audit", plugin: "postgres",
			sinkConfig: map[string]string{"url": bl.url}})
	}},
	// e2e-in-process is the same sink inside the pgtrail process: e2e over
	// it is what the plugin boundary costs.
	{name: "e2e-in-process", available: (*bench).pluginMode, run: func(b *bench, ctx context.Context, bl *backlog, slot string) result {
		return b.drain(ctx, "e2e-in-process", bl, trail{slot: slot, sinkName: "audit", plugin: "postgres",
			sinkConfig: map[string]string{"url": bl.url}, inProcess: true})
	}},
	// audit-ceiling is what e2e would reach were pgtrail free: the rows the
	// round's e2e run stored, copied by the bench into a fresh audit table
	// as the sink writes them, while pg_recvlogical decodes the backlog.
	{name: "audit-ceiling", run: (*bench).auditCeiling},
	{name: "broker-jetstream", once: true, available: brokerPath("jetstream"), run: brokerRun("jetstream")},
	{name: "broker-kafka", once: true, available: brokerPath("kafka"), run: brokerRun("kafka")},
}

// slotName is the slot of one run of a reader.
func slotName(reader string, run int) string {
	return fmt.Sprintf("bench_%s_%d", strings.ReplaceAll(reader, "-", "_"), run)
}

// auditTable is the audit table, in schema pgtrail, of the run on slot.
func auditTable(slot string) string { return "changes_" + strings.TrimPrefix(slot, "bench_") }

func (b *bench) backlog(ctx context.Context) error {
	c, err := startServer(nil)
	if err != nil {
		return err
	}
	defer c.Stop()
	url, err := createDatabase(ctx, c, "backlog", "")
	if err != nil {
		return err
	}
	txns := b.sizes.backlogTxns
	if err := createWorkload(ctx, url, txns); err != nil {
		return err
	}
	type run struct {
		reader
		slot string
	}
	var can []reader
	for _, r := range readers {
		if !b.picks("backlog", r.name, r.name == "limit") {
			continue
		}
		if r.available != nil {
			if why := r.available(b, ctx); why != "" {
				b.emit(skipped(r.name, why))
				continue
			}
		}
		can = append(can, r)
	}
	var plan []run
	for round := 1; round <= b.sizes.backlogRounds; round++ {
		for _, r := range can {
			if round == 1 || !r.once {
				plan = append(plan, run{r, slotName(r.name, round)})
			}
		}
	}
	plan = append(plan, run{readers[0], slotName(readers[0].name, 0)}) // the limit (readers[0]), last
	// The publication and every run's slot exist before the first change of
	// the backlog (pgtrail setup makes the publication; the audit tables, in
	// a schema that is not published, are made by each run).
	setup := trail{url: url, slot: "bench_setup", sinkName: "audit", plugin: "postgres",
		sinkConfig: map[string]string{"url": url}}
	cfg, _, err := setup.write(b.tmp)
	if err != nil {
		return err
	}
	if err := runPgtrail(ctx, b.bin, cfg, "setup"); err != nil {
		return err
	}
	stmts := []string{"SELECT pg_drop_replication_slot('bench_setup')"}
	for _, r := range plan {
		stmts = append(stmts, "SELECT pg_create_logical_replication_slot('"+r.slot+"', 'pgoutput')")
	}
	if err := execSQL(ctx, url, append(stmts, "CHECKPOINT")...); err != nil {
		return err
	}

	t0 := time.Now()
	startLSN, err := queryValue[string](ctx, url, "SELECT pg_current_wal_lsn()::text")
	if err != nil {
		return err
	}
	if err := makeBacklog(ctx, url, txns, 2); err != nil {
		return err
	}
	bl := &backlog{cluster: c, url: url, changes: int64(txns) * changesPerTxn}
	if bl.endLSN, err = queryValue[string](ctx, url, "SELECT pg_current_wal_lsn()::text"); err != nil {
		return err
	}
	walMB, err := queryValue[float64](ctx, url, "SELECT ($1::pg_lsn - $2::pg_lsn) / 1048576.0", bl.endLSN, startLSN)
	if err != nil {
		return err
	}
	// A record past the end, so that pg_recvlogical --endpos stops at once.
	if err := execSQL(ctx, url, "SELECT pg_logical_emit_message(false, 'bench_end', '')", "CHECKPOINT"); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: backlog of %d transactions, %d changes, %.0f MB of WAL, made in %s\n",
		txns, bl.changes, walMB, time.Since(t0).Round(time.Millisecond))

	runs := map[string][]result{}
	var order []string
	for _, r := range plan {
		if ctx.Err() != nil {
			break // report what was measured
		}
		fmt.Fprintf(os.Stderr, "bench: %s (slot %s)\n", r.name, r.slot)
		if runs[r.name] == nil {
			order = append(order, r.name)
		}
		runs[r.name] = append(runs[r.name], r.run(b, ctx, bl, r.slot))
	}
	best := map[string]result{}
	for _, name := range order {
		best[name] = fastest(runs[name])
	}
	var limit float64
	if res := best["limit"]; res.Status == "ok" {
		limit = *res.ChangesPerS
		res.Note = fmt.Sprintf("pg_recvlogical, pgoutput proto 2 with messages, to /dev/null; backlog of %d transactions of %d changes, %.0f MB of WAL; %s",
			txns, changesPerTxn, walMB, res.Note)
		best["limit"] = res
	}
	for _, name := range order {
		res := best[name]
		if res.Status == "ok" && limit > 0 {
			res.RatioToLimit = num(*res.ChangesPerS / limit)
		}
		// The plugin boundary's cost: the same sink behind it over inside
		// the pgtrail process.
		if in, ok := best[inProcessTwin[name]]; ok && res.Status == "ok" && in.Status == "ok" {
			res.RatioToInProcess = num(*res.ChangesPerS / *in.ChangesPerS)
		}
		// What governance rules cost: capture with them over without.
		if c, ok := best["capture"]; ok && name == "capture-rules" && res.Status == "ok" && c.Status == "ok" {
			res.RatioToCapture = num(*res.ChangesPerS / *c.ChangesPerS)
		}
		// What pgtrail itself costs end to end: e2e over the server's own
		// cost of the trail.
		if c, ok := best["audit-ceiling"]; ok && strings.HasPrefix(name, "e2e") && res.Status == "ok" && c.Status == "ok" {
			res.Note += fmt.Sprintf("; %.2f × audit-ceiling", *res.ChangesPerS / *c.ChangesPerS)
		}
		b.emit(res)
	}
	return nil
}

// benchRules redact and ignore columns of every change of the workload.
const benchRules = `rules:
  ignore_columns: ["public.orders.shipped_at"]
  redact:
    - {columns: ["public.orders.note"], with: hmac}
    - {columns: ["public.orders.customer_id"], with: mask}
    - {columns: ["public.orders.attributes"], with: drop}
    - {context: ["user*"], with: mask}
  hmac_key: bench
`

// inProcessTwin names, for a scenario with its sink behind the plugin
// boundary, the same scenario with the sink in-process.
var inProcessTwin = map[string]string{"e2e": "e2e-in-process", "capture-plugin": "capture"}

// fastest is the run with the most changes per second, its note naming
// every run's rate; or the last failure when no run succeeded.
func fastest(runs []result) result {
	best := runs[len(runs)-1]
	var each []string
	for _, r := range runs {
		if r.Status != "ok" {
			each = append(each, "failed")
			continue
		}
		each = append(each, strconv.FormatFloat(*r.ChangesPerS, 'f', 0, 64))
		if best.Status != "ok" || *r.ChangesPerS > *best.ChangesPerS {
			best = r
		}
	}
	if len(runs) > 1 && best.Status == "ok" {
		best.Note = strings.TrimPrefix(fmt.Sprintf("%s; fastest of %d runs (%s changes/s)", best.Note, len(runs), strings.Join(each, ", ")), "; ")
	}
	return best
}

// limit drains the backlog with pg_recvlogical and pgoutput to /dev/null:
// how fast this server decodes the WAL at all. The time runs from when it
// starts streaming to when it exits at the end position.
func (b *bench) limit(ctx context.Context, bl *backlog, slot string) result {
	name := "limit"
	p, started, err := startRecvlogical(bl, slot)
	if err != nil {
		return failed(name, err)
	}
	if err := p.waitDecoded(ctx, bl); err != nil {
		return failed(name, err)
	}
	res := throughput(name, bl.changes, time.Since(started))
	res.Note = fmt.Sprintf("pg_recvlogical used %.1f CPU seconds", p.exitedCPU())
	return res
}

// startRecvlogical starts pg_recvlogical on slot, to decode the backlog to
// /dev/null, and returns once it streams.
func startRecvlogical(bl *backlog, slot string) (*proc, time.Time, error) {
	p, err := startProc("starting log streaming", pgBin("pg_recvlogical"), "-d", bl.url,
		"-S", slot, "--start", "-f", "/dev/null", "-F", "0", "-v", "--endpos", bl.endLSN,
		"-o", "proto_version=2", "-o", "publication_names=bench", "-o", "messages=true")
	if err != nil {
		return nil, time.Time{}, err
	}
	started, err := p.waitSeen(time.Minute)
	if err != nil {
		p.stop(time.Second)
		return nil, time.Time{}, err
	}
	return p, started, nil
}

// waitDecoded waits for pg_recvlogical to exit at the backlog's end.
func (p *proc) waitDecoded(ctx context.Context, bl *backlog) error {
	select {
	case <-p.done:
	case <-ctx.Done():
		p.stop(time.Second)
		return ctx.Err()
	case <-time.After(15 * time.Minute):
		p.stop(time.Second)
		return fmt.Errorf("pg_recvlogical did not reach %s in 15 minutes", bl.endLSN)
	}
	if p.err != nil {
		return fmt.Errorf("pg_recvlogical: %v\n%s", p.err, p.out.tail(10))
	}
	return nil
}

// exitedCPU is the CPU time the process used, once it has exited.
func (p *proc) exitedCPU() float64 {
	st := p.cmd.ProcessState
	return (st.UserTime() + st.SystemTime()).Seconds()
}

// drain runs one pgtrail from its slot until its sink has the whole backlog.
// The time runs from when it starts streaming.
func (b *bench) drain(ctx context.Context, name string, bl *backlog, t trail) result {
	t.url = bl.url
	if t.plugin == "postgres" {
		// An audit table of its own: one that holds the backlog already would
		// take it as a replay and store nothing.
		t.sinkConfig["table"] = auditTable(t.slot)
	}
	cfg, port, err := t.write(b.tmp)
	if err != nil {
		return failed(name, err)
	}
	p, err := startPgtrail(b.bin, cfg, port, t.sinkName, b.profile != "")
	if err != nil {
		return failed(name, err)
	}
	defer p.stop(30 * time.Second)
	stopProfile := b.startCPUProfile(p, name)
	done, err := p.waitWritten(bl.changes, 15*time.Minute)
	stopProfile()
	if err != nil {
		return failed(name, err)
	}
	res := throughput(name, bl.changes, done.Sub(p.started))
	res.PeakRSSMB, res.Note = p.rss()
	res.Note = fmt.Sprintf("pgtrail used %.1f CPU seconds (its sink process not counted); %s", p.cpuSeconds(), res.Note)
	b.saveProfiles(p, name)
	if t.plugin == "postgres" {
		stored, err := queryValue[int64](ctx, bl.url, "SELECT count(DISTINCT id) FROM pgtrail."+t.sinkConfig["table"])
		if err != nil || stored != bl.changes {
			return failed(name, fmt.Errorf("audit table holds %d distinct changes, want %d (%v)", stored, bl.changes, err))
		}
		res.Note += "; audit table checked: every change stored"
	}
	return res
}

// rss is the peak RSS of pgtrail and, where the sink runs in a plugin
// process, of that process too, with a note that tells them apart.
func (p *pgtrail) rss() (*float64, string) {
	own := vmHWM(p.cmd.Process.Pid)
	total, note := own, ""
	for _, c := range children(p.cmd.Process.Pid) {
		mb := vmHWM(c)
		total += mb
		note = fmt.Sprintf("peak RSS: pgtrail %.0f MB + sink plugin process %.0f MB", own, mb)
	}
	if note == "" {
		note = "peak RSS: pgtrail, sink in-process"
	}
	return num(total), note
}

// startCPUProfile profiles pgtrail for up to 10 seconds from now, when asked
// to; wait waits for the profile.
func (b *bench) startCPUProfile(p *pgtrail, name string) (wait func()) {
	if b.profile == "" {
		return func() {}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := p.saveProfile(b.profile, name+".cpu.pprof", "/debug/pprof/profile?seconds=10"); err != nil {
			fmt.Fprintf(os.Stderr, "bench: CPU profile of %s: %v\n", name, err)
		}
	}()
	return wg.Wait
}

func (b *bench) saveProfiles(p *pgtrail, name string) {
	if b.profile == "" {
		return
	}
	for _, kind := range []string{"allocs", "heap"} {
		if err := p.saveProfile(b.profile, name+"."+kind+".pprof", "/debug/pprof/"+kind); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %s profile of %s: %v\n", kind, name, err)
		}
	}
}

// pluginMode says why the plugin scenarios cannot run with this pgtrail.
func (b *bench) pluginMode(context.Context) string { return b.plugins }

// probePlugins says why this pgtrail has no plugin mode, or "": one without a
// plugin boundary knows no sinks[].in_process (and runs every sink in its
// own process, so e2e measures the sink in-process).
func (b *bench) probePlugins(ctx context.Context) string {
	t := trail{url: "postgres://127.0.0.1:1/probe", slot: "probe_in_process", sinkName: "audit", plugin: "postgres",
		sinkConfig: map[string]string{"url": "postgres://127.0.0.1:1/probe"}, inProcess: true}
	cfg, _, err := t.write(b.tmp)
	if err != nil {
		return err.Error()
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, b.bin, "setup", "--config", cfg).CombinedOutput()
	if strings.Contains(string(out), "in_process") {
		return "skipped: this pgtrail has no plugin mode (sinks[].in_process is unknown), so e2e measures the sink in-process"
	}
	return ""
}

// The latency group: a paced writer at fixed rates with pgtrail storing into
// the audit table; commit-to-visible per transaction.
func (b *bench) latency(ctx context.Context) error {
	c, err := startServer(nil)
	if err != nil {
		return err
	}
	defer c.Stop()
	url, err := createDatabase(ctx, c, "latency", "")
	if err != nil {
		return err
	}
	var txns int
	for _, r := range b.sizes.latencyRates {
		txns += int(float64(r)*b.sizes.latencyFor.Seconds())/changesPerTxn + 1
	}
	if err := createWorkload(ctx, url, txns); err != nil {
		return err
	}
	t := trail{url: url, slot: "bench_latency", sinkName: "audit", plugin: "postgres", sinkConfig: map[string]string{"url": url}}
	p, err := b.setupAndStart(ctx, t, b.profile != "")
	if err != nil {
		return err
	}
	defer p.stop(30 * time.Second)
	var first, written int64
	for _, rate := range b.sizes.latencyRates {
		res, n, err := b.latencyAt(ctx, p, url, rate, first, written, preloadFor(txns))
		if err != nil {
			return err
		}
		first += n
		written += n * changesPerTxn
		b.emit(res)
	}
	return nil
}

// latencyPoll is how often the poller looks at the audit table.
const latencyPoll = 5 * time.Millisecond

// latencyAt runs the paced writer at one rate. Commit-to-visible is measured
// per transaction by a poller that notes, every latencyPoll, the newest
// committed_at (the source's commit time) visible in the audit table: a
// transaction is visible at the first poll that sees its commit time. Both
// times are this machine's clock; the figure over-estimates by up to the poll
// interval plus the poll's own query time. As a cross-check, created_at -
// committed_at per change (both from the server's clock) under-estimates it
// by the sink's write of the batch, since created_at is when that began.
func (b *bench) latencyAt(ctx context.Context, p *pgtrail, url string, rate int, first, written, preload int64) (result, int64, error) {
	name := fmt.Sprintf("latency-%d", rate)
	since, err := queryValue[time.Time](ctx, url, "SELECT clock_timestamp()")
	if err != nil {
		return result{}, 0, err
	}
	type poll struct{ at, newest time.Time }
	var polls []poll
	pctx, stopPoll := context.WithCancel(ctx)
	defer stopPoll()
	pollErr := make(chan error, 1)
	go func() {
		conn, err := pgx.Connect(pctx, url)
		if err != nil {
			pollErr <- err
			return
		}
		defer conn.Close(context.Background())
		for pctx.Err() == nil {
			var newest *time.Time
			if err := conn.QueryRow(pctx, "SELECT max(committed_at) FROM pgtrail.changes").Scan(&newest); err != nil {
				if pctx.Err() == nil {
					pollErr <- err
					return
				}
				break
			}
			if newest != nil {
				polls = append(polls, poll{time.Now(), *newest})
			}
			time.Sleep(latencyPoll)
		}
		pollErr <- nil
	}()
	stopProfile := b.startCPUProfile(p, name)
	n, late, err := pacedWriter(ctx, url, rate, 4, b.sizes.latencyFor, first, preload)
	if err == nil {
		_, err = p.waitWritten(written+n*changesPerTxn, 5*time.Minute)
	}
	time.Sleep(2 * latencyPoll)
	stopPoll()
	stopProfile()
	if err != nil {
		return result{}, 0, err
	}
	if err := <-pollErr; err != nil {
		return result{}, 0, fmt.Errorf("poll the audit table: %w", err)
	}

	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return result{}, 0, err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "SELECT DISTINCT committed_at FROM pgtrail.changes WHERE committed_at >= $1 ORDER BY 1", since)
	if err != nil {
		return result{}, 0, err
	}
	commits, err := pgx.CollectRows(rows, pgx.RowTo[time.Time])
	if err != nil {
		return result{}, 0, err
	}
	var ms []float64
	for _, c := range commits {
		i := sort.Search(len(polls), func(i int) bool { return !polls[i].newest.Before(c) })
		if i < len(polls) {
			ms = append(ms, float64(polls[i].at.Sub(c))/float64(time.Millisecond))
		}
	}
	if len(ms) == 0 {
		return result{}, 0, fmt.Errorf("%s: the poller saw no transaction of the run", name)
	}
	slices.Sort(ms)
	var s50, s99, smax float64
	err = conn.QueryRow(ctx, `SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms)
		FROM (SELECT extract(epoch FROM created_at - committed_at) * 1000 AS ms FROM pgtrail.changes WHERE committed_at >= $1) x`, since).Scan(&s50, &s99, &smax)
	if err != nil {
		return result{}, 0, err
	}
	d := b.sizes.latencyFor
	res := throughput(name, n*changesPerTxn, d)
	res.P50ms, res.P99ms, res.MaxMs = num(percentile(ms, 0.5)), num(percentile(ms, 0.99)), num(ms[len(ms)-1])
	var rssNote string
	res.PeakRSSMB, rssNote = p.rss()
	res.Note = fmt.Sprintf("paced writer, 4 connections, %d transactions of %d changes in %s (at worst %s behind schedule); "+
		"commit-to-visible of %d transactions by a %s poller (over-estimates by up to the poll interval); "+
		"server-side created_at - committed_at per change (under-estimates by the sink's write): p50 %.1f, p99 %.1f, max %.1f ms; %s",
		n, changesPerTxn, d, late.Round(time.Millisecond), len(ms), latencyPoll, s50, s99, smax, rssNote)
	return res, n, nil
}

// percentile is the nearest-rank percentile of sorted values.
func percentile(sorted []float64, q float64) float64 {
	i := int(q*float64(len(sorted)) + 0.5)
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

// The big-transaction group: one transaction of a million inserts, which
// pgtrail stores in batches while its memory stays bounded.
func (b *bench) bigTxn(ctx context.Context) error {
	name := "big-txn"
	c, err := startServer(nil)
	if err != nil {
		return err
	}
	defer c.Stop()
	url, err := createDatabase(ctx, c, "big", "")
	if err != nil {
		return err
	}
	if err := createWorkload(ctx, url, 0); err != nil {
		return err
	}
	t := trail{url: url, slot: "bench_big", sinkName: "audit", plugin: "postgres", sinkConfig: map[string]string{"url": url}}
	p, err := b.setupAndStart(ctx, t, b.profile != "")
	if err != nil {
		return err
	}
	defer p.stop(30 * time.Second)
	idle, _ := p.rss()
	n := int64(b.sizes.bigTxn)
	t0 := time.Now()
	if err := execSQL(ctx, url, fmt.Sprintf("SELECT bench_insert(1, %d)", n)); err != nil {
		return err
	}
	committed := time.Now()
	stopProfile := b.startCPUProfile(p, name)
	stored, err := p.waitWritten(n, 15*time.Minute)
	stopProfile()
	if err != nil {
		return err
	}
	res := throughput(name, n, stored.Sub(committed))
	var rssNote string
	res.PeakRSSMB, rssNote = p.rss()
	b.saveProfiles(p, name)
	got, err := queryValue[int64](ctx, url, "SELECT count(*) FROM pgtrail.changes")
	if err != nil || got != n {
		return fmt.Errorf("audit table holds %d changes, want %d (%v)", got, n, err)
	}
	res.Note = fmt.Sprintf("one INSERT of %d rows (%.1f s to run and commit); seconds: from its commit until all are stored; %s (%.0f MB before the transaction)",
		n, committed.Sub(t0).Seconds(), rssNote, *idle)
	b.emit(res)
	return nil
}

// The app group: what each way of auditing costs the application, as pgbench
// TPS of the same transaction from the same clients for the same time.

type appVariant struct {
	name    string
	install string // SQL run first
	prelude string // the transaction's first statement
	comment string // appended to every statement
	pgtrail bool
	sink    string // pgtrail's sink plugin: postgres when empty
	// recvlogical runs pg_recvlogical on a slot instead of pgtrail: what
	// logical decoding costs whatever reads it.
	recvlogical bool
	// split marks the variants that only split pgtrail's cost into its
	// parts: the short version leaves them out, to stay within its time.
	split    bool
	describe string
}

var appVariants = []appVariant{
	{name: "app-no-audit", describe: "no audit"},
	{name: "app-pgtrail-bemi", install: pgtest.BemiMigration, comment: " /*Bemi " + appContext + " Bemi*/", pgtrail: true,
		describe: "pgtrail running; Bemi trigger, statements with /*Bemi ... Bemi*/ comments"},
	{name: "app-pgtrail-context", prelude: "SELECT pgtrail.set_context('" + appContext + "')", pgtrail: true,
		describe: "pgtrail running; pgtrail.set_context once per transaction"},
	// Where pgtrail's cost comes from: decoding and capture alone (the null
	// sink), and the server's decoding alone (pg_recvlogical).
	{name: "app-pgtrail-null-sink", prelude: "SELECT pgtrail.set_context('" + appContext + "')", pgtrail: true, sink: "null", split: true,
		describe: "pgtrail running with the null sink (no audit table writes); pgtrail.set_context once per transaction"},
	{name: "app-pg-recvlogical", prelude: "SELECT pg_logical_emit_message(true, 'pgtrail', '" + appContext + "')", recvlogical: true, split: true,
		describe: "pg_recvlogical (pgoutput, to /dev/null) reading a slot: the server's logical decoding alone"},
	{name: "app-trigger-audit", install: triggerAudit, prelude: "SET LOCAL app.context = '" + appContext + "'",
		describe: "AFTER trigger writing one JSONB row per change (context from SET LOCAL)"},
	{name: "app-trigger-audit-gin", install: triggerAuditGIN, prelude: "SET LOCAL app.context = '" + appContext + "'",
		describe: "the same trigger, its table with the GIN (jsonb_path_ops) indexes on context and rows that pgtrail's audit table has"},
}

type appRun struct {
	tps, catchup float64
	rss          float64
	txns         int64
	steady       steadyRun
}

// appRate is the steady rate, in transactions per second, at which the app
// group also measures each variant: below what any of them sustains here,
// as a production database mostly runs.
const appRate = 1000

// steadyRun is one variant at appRate.
type steadyRun struct {
	p50, p99           float64 // transaction latency, ms
	server, pgtrailCPU float64 // CPU µs per transaction
}

// appSettings turn autovacuum off for the app group: each saturation run
// takes the orders table past its vacuum threshold, and the worker would
// then start when its nap ends, in whichever variant's measured window that
// is. Every variant leaves the same dead rows behind, and each runs on a
// fresh copy of a vacuumed template.
var appSettings = map[string]string{"autovacuum": "off"}

func (b *bench) app(ctx context.Context) error {
	c, err := startServer(appSettings)
	if err != nil {
		return err
	}
	defer c.Stop()
	tpl, err := createDatabase(ctx, c, "app_template", "")
	if err != nil {
		return err
	}
	if err := createWorkload(ctx, tpl, 50_000); err != nil { // 100,000 orders
		return err
	}
	var variants []appVariant
	for _, v := range appVariants {
		switch {
		case !b.picks("app", v.name, v.name == "app-no-audit"):
		case v.split && !b.sizes.appSplit && !b.names(v.name):
			b.emit(skipped(v.name, "splits pgtrail's cost into its parts: runs in the full version (FULL=1), or when -only names it"))
		default:
			variants = append(variants, v)
		}
	}
	runs := map[string][]appRun{}
	for round := 0; round < b.sizes.appRounds; round++ {
		// Rotate the order each round, so that drift on a shared machine
		// spreads over every variant.
		for i := range variants {
			v := variants[(i+round)%len(variants)]
			fmt.Fprintf(os.Stderr, "bench: %s, round %d\n", v.name, round+1)
			r, err := b.appOnce(ctx, c, v, round)
			if err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
			runs[v.name] = append(runs[v.name], r)
		}
	}
	base := median(runs["app-no-audit"], func(r appRun) float64 { return r.tps })
	d := b.sizes.appDuration
	for _, v := range variants {
		rs := runs[v.name]
		tps := median(rs, func(r appRun) float64 { return r.tps })
		res := throughput(v.name, int64(tps*d.Seconds())*appChangesPerTxn, d)
		res.TPS, res.TPSRatio = num(tps), num(tps/base)
		var each []string
		for _, r := range rs {
			each = append(each, strconv.FormatFloat(r.tps, 'f', 0, 64))
		}
		res.Note = fmt.Sprintf("%s; pgbench -c %d -j 2 for %s, %d changes per transaction; TPS of each round: %s",
			v.describe, b.sizes.appClients, d, appChangesPerTxn, strings.Join(each, ", "))
		res.TxnP50ms = num(median(rs, func(r appRun) float64 { return r.steady.p50 }))
		res.TxnP99ms = num(median(rs, func(r appRun) float64 { return r.steady.p99 }))
		res.ServerCPUus = num(median(rs, func(r appRun) float64 { return r.steady.server }))
		res.Note += fmt.Sprintf("; then %d TPS for %s: transaction latency and CPU per transaction", appRate, b.sizes.appRateFor)
		if v.pgtrail {
			res.PgtrailCPUus = num(median(rs, func(r appRun) float64 { return r.steady.pgtrailCPU }))
			res.PeakRSSMB = num(median(rs, func(r appRun) float64 { return r.rss }))
			res.Note += fmt.Sprintf("; pgtrail had stored every change %.1f s after pgbench ended (median)",
				median(rs, func(r appRun) float64 { return r.catchup }))
		}
		b.emit(res)
	}
	return nil
}

func median[T any](xs []T, f func(T) float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	v := make([]float64, len(xs))
	for i, x := range xs {
		v[i] = f(x)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

var (
	tpsLine  = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(without initial connection time\)`)
	txnsLine = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
)

// appOnce runs pgbench once on a fresh copy of the template database.
func (b *bench) appOnce(ctx context.Context, c *pgtest.Cluster, v appVariant, round int) (appRun, error) {
	var r appRun
	db := fmt.Sprintf("%s_%d", strings.ReplaceAll(v.name, "-", "_"), round)
	url, err := createDatabase(ctx, c, db, "app_template")
	if err != nil {
		return r, err
	}
	defer dropDatabase(context.WithoutCancel(ctx), c, db)
	if v.install != "" {
		if err := execSQL(ctx, url, v.install); err != nil {
			return r, err
		}
	}
	var p *pgtrail
	if v.pgtrail {
		t := trail{url: url, slot: "bench_app", sinkName: "audit", plugin: "postgres", sinkConfig: map[string]string{"url": url}}
		if v.sink != "" {
			t.plugin, t.sinkConfig = v.sink, nil
		}
		var err error
		if p, err = b.setupAndStart(ctx, t, b.profile != "" && round == 0); err != nil {
			return r, err
		}
		defer p.stop(30 * time.Second)
	}
	if v.recvlogical {
		if err := execSQL(ctx, url, "CREATE PUBLICATION bench FOR TABLES IN SCHEMA public",
			"SELECT pg_create_logical_replication_slot('bench_app', 'pgoutput')"); err != nil {
			return r, err
		}
		rl, err := startProc("starting log streaming", pgBin("pg_recvlogical"), "-d", url, "-S", "bench_app", "--start",
			"-f", "/dev/null", "-v", "-o", "proto_version=2", "-o", "publication_names=bench", "-o", "messages=true")
		if err != nil {
			return r, err
		}
		defer rl.stop(time.Second)
		if _, err := rl.waitSeen(time.Minute); err != nil {
			return r, err
		}
	}
	if err := execSQL(ctx, url, "VACUUM ANALYZE", "CHECKPOINT"); err != nil {
		return r, err
	}
	script := filepath.Join(b.tmp, db+".sql")
	if err := os.WriteFile(script, []byte(pgbenchScript(v.prelude, v.comment)), 0o644); err != nil {
		return r, err
	}
	stopProfile := func() {}
	if p != nil && round == 0 {
		stopProfile = b.startCPUProfile(p, v.name)
	}
	out, txns, err := b.pgbench(ctx, url, script, b.sizes.appDuration)
	ended := time.Now()
	stopProfile()
	if err != nil {
		return r, err
	}
	tps := tpsLine.FindSubmatch(out)
	if tps == nil {
		return r, fmt.Errorf("pgbench printed no tps:\n%s", out)
	}
	r.tps, _ = strconv.ParseFloat(string(tps[1]), 64)
	r.txns = txns
	if p != nil {
		stored, err := p.waitWritten(r.txns*appChangesPerTxn, 10*time.Minute)
		if err != nil {
			return r, err
		}
		r.catchup = stored.Sub(ended).Seconds()
		rss, _ := p.rss()
		r.rss = *rss
	}
	r.steady, err = b.steady(ctx, c, url, script, p, r.txns)
	return r, err
}

// steady runs the variant's transaction at appRate and measures what each
// costs: its latency (pgbench's per-transaction log), the database server's
// CPU (the postmaster's whole tree, with the backends of pgbench's
// connections, which exit at its end) and pgtrail's, counted until pgtrail
// has stored every change, so that its work and the audit table's writes
// are in. before is how many transactions pgtrail has seen already.
func (b *bench) steady(ctx context.Context, c *pgtest.Cluster, url, script string, p *pgtrail, before int64) (steadyRun, error) {
	var r steadyRun
	postmaster, err := c.PostmasterPID()
	if err != nil {
		return r, err
	}
	logs, err := os.MkdirTemp(b.tmp, "pgbench-log-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(logs)
	server0 := snapshotCPU(postmaster)
	var pgtrail0 cpuTree
	if p != nil {
		pgtrail0 = snapshotCPU(p.cmd.Process.Pid)
	}
	_, n, err := b.pgbench(ctx, url, script, b.sizes.appRateFor,
		"-R", strconv.Itoa(appRate), "-l", "--log-prefix", filepath.Join(logs, "txn"))
	if err != nil {
		return r, err
	}
	if p != nil {
		if _, err := p.waitWritten((before+n)*appChangesPerTxn, 10*time.Minute); err != nil {
			return r, err
		}
	} else {
		time.Sleep(200 * time.Millisecond) // the backends of pgbench's connections exit
	}
	r.server = server0.since(postmaster) * 1e6 / float64(n)
	if p != nil {
		r.pgtrailCPU = pgtrail0.since(p.cmd.Process.Pid) * 1e6 / float64(n)
	}
	lat, err := txnLatencies(logs)
	if err != nil {
		return r, err
	}
	r.p50, r.p99 = percentile(lat, 0.50), percentile(lat, 0.99)
	return r, nil
}

// pgbench runs script from the app group's clients for d, with extra
// options, and returns its output and how many transactions it committed.
func (b *bench) pgbench(ctx context.Context, url, script string, d time.Duration, extra ...string) ([]byte, int64, error) {
	args := append([]string{"-n", "-c", strconv.Itoa(b.sizes.appClients), "-j", "2",
		"-T", strconv.Itoa(int(d.Seconds())), "-f", script}, extra...)
	out, err := exec.CommandContext(ctx, pgBin("pgbench"), append(args, url)...).CombinedOutput()
	if err != nil {
		return out, 0, fmt.Errorf("pgbench %s: %w\n%s", strings.Join(extra, " "), err, out)
	}
	txns := txnsLine.FindSubmatch(out)
	if txns == nil {
		return out, 0, fmt.Errorf("pgbench printed no transaction count:\n%s", out)
	}
	n, _ := strconv.ParseInt(string(txns[1]), 10, 64)
	return out, n, nil
}

// txnLatencies reads pgbench's per-transaction logs (-l) in dir: the third
// field of each line is the transaction's time in µs. Sorted, in ms.
func txnLatencies(dir string) ([]float64, error) {
	files, _ := filepath.Glob(filepath.Join(dir, "txn.*"))
	var lat []float64
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			fields := strings.Fields(line)
			if len(fields) < 3 {
				continue
			}
			us, err := strconv.ParseFloat(fields[2], 64)
			if err != nil {
				return nil, fmt.Errorf("pgbench log %s: %q: %w", f, line, err)
			}
			lat = append(lat, us/1000)
		}
	}
	if len(lat) == 0 {
		return nil, fmt.Errorf("pgbench wrote no per-transaction log in %s", dir)
	}
	slices.Sort(lat)
	return lat, nil
}

// setupAndStart writes t's config, runs `pgtrail setup` and starts `pgtrail
// run` with it, profiled when asked.
func (b *bench) setupAndStart(ctx context.Context, t trail, profile bool) (*pgtrail, error) {
	cfg, port, err := t.write(b.tmp)
	if err != nil {
		return nil, err
	}
	if err := runPgtrail(ctx, b.bin, cfg, "setup"); err != nil {
		return nil, err
	}
	return startPgtrail(b.bin, cfg, port, t.sinkName, profile)
}

// table renders the results as a Markdown table, for the terminal and the
// README.
func table(rs []result) string {
	var sb strings.Builder
	sb.WriteString("| scenario | changes | seconds | changes/s | × limit | × in-process | p50 ms | p99 ms | max ms | peak RSS MB | TPS | TPS × no audit |\n")
	sb.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	f := func(v *float64, prec int) string {
		if v == nil {
			return ""
		}
		return strconv.FormatFloat(*v, 'f', prec, 64)
	}
	for _, r := range rs {
		if r.Status != "ok" {
			fmt.Fprintf(&sb, "| %s | %s |||||||||||\n", r.Scenario, r.Note)
			continue
		}
		fmt.Fprintf(&sb, "| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Scenario, *r.Changes,
			f(r.Seconds, 2), f(r.ChangesPerS, 0), f(r.RatioToLimit, 2), f(r.RatioToInProcess, 2), f(r.P50ms, 1), f(r.P99ms, 1), f(r.MaxMs, 1),
			f(r.PeakRSSMB, 0), f(r.TPS, 0), f(r.TPSRatio, 2))
	}
	var steady []result
	for _, r := range rs {
		if r.Status == "ok" && r.ServerCPUus != nil {
			steady = append(steady, r)
		}
	}
	if len(steady) > 0 {
		fmt.Fprintf(&sb, "\nThe app group at a steady %d TPS:\n\n", appRate)
		sb.WriteString("| scenario | txn p50 ms | txn p99 ms | server CPU µs/txn | pgtrail CPU µs/txn |\n|---|--:|--:|--:|--:|\n")
		for _, r := range steady {
			fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s |\n", r.Scenario, f(r.TxnP50ms, 2), f(r.TxnP99ms, 2), f(r.ServerCPUus, 0), f(r.PgtrailCPUus, 0))
		}
	}
	return sb.String()
}
