package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/test/pgtest"
	"github.com/pgtrail/pgtrail/test/testbed"
)

// serverSettings are the same for every scenario: production-like memory,
// WAL and checkpoint settings and synchronous commit, but fsync stays off
// (pgtest's default; the disk here is shared): commits write the WAL but do
// not wait for the disk, for the application and pgtrail alike.
var serverSettings = map[string]string{
	"shared_buffers":     "1GB",
	"synchronous_commit": "on",
	"full_page_writes":   "on",
	"max_wal_size":       "4GB",
	"checkpoint_timeout": "15min",
	"fsync":              "off",
}

// settingsSummary is serverSettings, and the app group's, for the report.
func settingsSummary() string {
	list := func(m map[string]string) string {
		var kv []string
		for _, k := range slices.Sorted(maps.Keys(m)) {
			kv = append(kv, k+"="+m[k])
		}
		return strings.Join(kv, ", ")
	}
	return list(serverSettings) + "; the app group also " + list(appSettings)
}

// startServer starts a private PostgreSQL for one group of scenarios, with
// serverSettings and then extra.
func startServer(extra map[string]string) (*pgtest.Cluster, error) {
	settings := maps.Clone(serverSettings)
	maps.Copy(settings, extra)
	return pgtest.Start(pgtest.Options{Settings: settings})
}

// createDatabase makes a database (a copy of template, if given) and returns
// its URL.
func createDatabase(ctx context.Context, c *pgtest.Cluster, name, template string) (string, error) {
	q := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize()
	if template != "" {
		q += " TEMPLATE " + pgx.Identifier{template}.Sanitize()
	}
	if err := execSQL(ctx, c.URL("postgres"), q); err != nil {
		return "", err
	}
	return c.URL(name), nil
}

// dropDatabase drops a database and its replication slots.
func dropDatabase(ctx context.Context, c *pgtest.Cluster, name string) error {
	lit := "'" + name + "'" // names are ours: letters, digits, _
	return execSQL(ctx, c.URL("postgres"),
		"SELECT pg_terminate_backend(active_pid, 10000) FROM pg_replication_slots WHERE database = "+lit+" AND active_pid IS NOT NULL",
		"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = "+lit,
		"DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
}

// execSQL runs statements on url one after the other, in the simple
// protocol (so that a procedure may commit and a string may hold several).
func execSQL(ctx context.Context, url string, stmts ...string) error {
	return withConn(ctx, url, func(conn *pgx.Conn) error {
		for _, q := range stmts {
			if _, err := conn.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol); err != nil {
				return fmt.Errorf("%.100s: %w", strings.TrimSpace(q), err)
			}
		}
		return nil
	})
}

// queryValue runs a query that returns one value.
func queryValue[T any](ctx context.Context, url, q string, args ...any) (T, error) {
	var v T
	err := withConn(ctx, url, func(conn *pgx.Conn) error { return conn.QueryRow(ctx, q, args...).Scan(&v) })
	return v, err
}

// withConn runs f on a connection of its own to url.
func withConn(ctx context.Context, url string, f func(*pgx.Conn) error) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return f(conn)
}

// watch is an io.Writer that keeps a process's output and notes when the
// first output holding a pattern arrived.
type watch struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	pattern string
	seen    time.Time
	ch      chan struct{}
}

func (w *watch) Write(p []byte) (int, error) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if w.seen.IsZero() && bytes.Contains(w.buf.Bytes(), []byte(w.pattern)) {
		w.seen = now
		close(w.ch)
	}
	return len(p), nil
}

func (w *watch) tail(n int) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	lines := strings.Split(strings.TrimRight(w.buf.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// proc is a child process whose output is watched for a pattern.
type proc struct {
	cmd  *exec.Cmd
	out  *watch
	done chan struct{}
	err  error
}

func startProc(pattern, name string, args ...string) (*proc, error) {
	p := &proc{out: &watch{pattern: pattern, ch: make(chan struct{})}, done: make(chan struct{})}
	p.cmd = exec.Command(name, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// waitSeen waits until the pattern appears, and returns when it did.
func (p *proc) waitSeen(timeout time.Duration) (time.Time, error) {
	select {
	case <-p.out.ch:
		p.out.mu.Lock()
		defer p.out.mu.Unlock()
		return p.out.seen, nil
	case <-p.done:
		return time.Time{}, fmt.Errorf("%s exited: %v\n%s", filepath.Base(p.cmd.Path), p.err, p.out.tail(20))
	case <-time.After(timeout):
		return time.Time{}, fmt.Errorf("%s: no %q after %s\n%s", filepath.Base(p.cmd.Path), p.out.pattern, timeout, p.out.tail(20))
	}
}

// stop sends SIGTERM, then SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// vmHWM is the peak resident set (VmHWM) of a process in MB.
func vmHWM(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			kb, _ := strconv.Atoi(strings.Fields(line)[1])
			return float64(kb) / 1024
		}
	}
	return 0
}

// cpuSeconds is the CPU time the process has used so far.
func (p *proc) cpuSeconds() float64 {
	own, _ := cpuTimes(p.cmd.Process.Pid)
	return own
}

// cpuTree is the CPU time, reaped children's included, of each process of
// a tree (a PostgreSQL server's postmaster and its backends, or pgtrail and
// its sink process) at one moment.
type cpuTree map[int]float64

func snapshotCPU(pid int) cpuTree {
	t := cpuTree{}
	addCPU(t, pid)
	return t
}

// addCPU adds pid and its descendants to t. A child reaped while they are
// read would be missed (gone when read, not yet in its parent's reaped time)
// or counted twice, so the parent's reaped time is read before and after its
// children, and they are read again until it stays put.
func addCPU(t cpuTree, pid int) {
	for try := 0; ; try++ {
		_, reaped := cpuTimes(pid)
		sub := cpuTree{}
		for _, c := range children(pid) {
			addCPU(sub, c)
		}
		own, after := cpuTimes(pid)
		if after == reaped || try == 10 {
			maps.Copy(t, sub)
			t[pid] = own + after
			return
		}
	}
}

// since is the CPU the tree has used since start. A process that exited
// meanwhile has its whole life's CPU in its parent's reaped time by now, so
// what start counted of it comes off: summing the tree at two moments would
// count it twice (a backend still exiting when a window starts would add its
// whole run to the window).
func (start cpuTree) since(pid int) float64 {
	now := snapshotCPU(pid)
	var d float64
	for p, v := range now {
		d += v - start[p]
	}
	for p, v := range start {
		if _, alive := now[p]; !alive {
			d -= v
		}
	}
	return d
}

// procStat is /proc/pid/stat split into fields after the command name
// (which is in parentheses and may hold spaces): [0] is the state, [1] the
// parent, [11] utime; nil if the process is gone.
func procStat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	return strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
}

// cpuTimes is a process's own user and system CPU seconds, and those of its
// children that have exited and been waited for; 0 if it is gone.
func cpuTimes(pid int) (own, reaped float64) {
	// utime, stime, cutime and cstime, in clock ticks (100 a second).
	f := procStat(pid)
	if len(f) < 15 {
		return 0, 0
	}
	var ticks [4]float64
	for i, v := range f[11:15] {
		ticks[i], _ = strconv.ParseFloat(v, 64)
	}
	return (ticks[0] + ticks[1]) / 100, (ticks[2] + ticks[3]) / 100
}

// children lists the direct children of pid (forked by any of its threads).
func children(pid int) []int {
	files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, field := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(field); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

// trail is the config of one pgtrail of the bench: native capture from a
// slot of the publication `bench`, one sink, metrics on a free port.
type trail struct {
	url, slot        string
	sinkName, plugin string
	sinkConfig       map[string]string
	inProcess        bool   // sinks[].in_process: the sink inside the pgtrail process
	extra            string // appended to the config (e.g. a rules: section)
}

// write writes the config file and returns its path and metrics port.
func (t trail) write(dir string) (path string, port int, err error) {
	if port, err = testbed.FreePort(); err != nil {
		return "", 0, err
	}
	var sc strings.Builder
	for _, k := range slices.Sorted(maps.Keys(t.sinkConfig)) {
		fmt.Fprintf(&sc, "\n      %s: %q", k, t.sinkConfig[k])
	}
	if sc.Len() == 0 {
		sc.WriteString(" {}")
	}
	if t.inProcess {
		sc.WriteString("\n    in_process: true")
	}
	cfg := fmt.Sprintf(`source:
  type: postgres
  postgres:
    url: %q
    slot: %s
    publication: bench
    tables: ["public.*"]
sinks:
  - name: %q
    plugin: %q
    config:%s
http:
  listen: "127.0.0.1:%d"
log:
  level: info
`, t.url, t.slot, t.sinkName, t.plugin, sc.String(), port) + t.extra
	path = filepath.Join(dir, t.slot+".yaml")
	return path, port, os.WriteFile(path, []byte(cfg), 0o600)
}

// runPgtrail runs a pgtrail command to completion.
func runPgtrail(ctx context.Context, bin, cfg string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, append(args, "--config", cfg)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pgtrail %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// pgtrail is a running `pgtrail run`.
type pgtrail struct {
	*proc
	metrics string // http://127.0.0.1:port
	sink    string
	started time.Time // when it started streaming
}

// startPgtrail starts `pgtrail run` and waits until it streams.
func startPgtrail(bin, cfg string, port int, sink string, profile bool) (*pgtrail, error) {
	args := []string{"run", "--config", cfg}
	if profile {
		args = append(args, "--pprof")
	}
	p, err := startProc("capturing", bin, args...)
	if err != nil {
		return nil, err
	}
	t, err := p.waitSeen(time.Minute)
	if err != nil {
		p.stop(5 * time.Second)
		return nil, err
	}
	return &pgtrail{proc: p, metrics: fmt.Sprintf("http://127.0.0.1:%d", port), sink: sink, started: t}, nil
}

// written reads from /metrics how many changes the sink has made durable.
func (p *pgtrail) written() (int64, error) {
	req, err := http.NewRequest(http.MethodGet, p.metrics+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept-Encoding", "identity") // gzip would cost pgtrail more than the scrape
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	want := `pgtrail_changes_written_total{sink="` + p.sink + `"} `
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), want); ok {
			f, err := strconv.ParseFloat(v, 64)
			return int64(f), err
		}
	}
	return 0, sc.Err()
}

// pollInterval bounds the error of the times waitWritten returns. Each poll
// costs pgtrail a scrape of its metrics (about half a millisecond of CPU).
const pollInterval = 50 * time.Millisecond

// stall is how long waitWritten waits without progress before it gives up.
const stall = 30 * time.Second

// waitWritten polls until the sink has made n changes durable and returns
// when it saw that. It gives up when nothing more was written for 30 seconds,
// with pgtrail's health (which names a failing pipeline or sink).
func (p *pgtrail) waitWritten(n int64, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	var last int64
	progress := time.Now()
	for {
		got, err := p.written()
		now := time.Now()
		if err == nil && got >= n {
			return now, nil
		}
		if got > last {
			last, progress = got, now
		}
		select {
		case <-p.done:
			return now, fmt.Errorf("pgtrail exited after %d of %d changes: %v\n%s", got, n, p.err, p.out.tail(20))
		default:
		}
		if now.After(deadline) || now.Sub(progress) > stall {
			return now, fmt.Errorf("pgtrail wrote %d of %d changes, none for %s (%v); health: %s\n%s",
				got, n, now.Sub(progress).Round(time.Second), err, p.health(), p.out.tail(10))
		}
		time.Sleep(pollInterval)
	}
}

// health is pgtrail's /healthz answer.
func (p *pgtrail) health() string {
	resp, err := http.Get(p.metrics + "/healthz")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 2000))
	return strings.TrimSpace(string(b))
}

// saveProfile fetches a pprof profile from pgtrail into dir.
func (p *pgtrail) saveProfile(dir, name, path string) error {
	resp, err := http.Get(p.metrics + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	f, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}
