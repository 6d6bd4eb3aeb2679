package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/plugins/host"
	"github.com/pgtrail/pgtrail/plugins/sdk"
	"github.com/pgtrail/pgtrail/plugins/sdk/sdktest"
)

// children lists the processes whose parent is pid.
func children(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// The command name may hold spaces; the fields after its ")" do not.
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) && fields[0] != "Z" {
			out = append(out, child)
		}
	}
	return out
}

func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z"
}

// jsonlIDs reads the example plugin's file: the ID of every line.
func jsonlIDs(t *testing.T, path string) []uuid.UUID {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ids []uuid.UUID
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var c struct {
			ID uuid.UUID `json:"id"`
		}
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		ids = append(ids, c.ID)
	}
	return ids
}

// TestKilledSinkPluginsAreRestartedAndNothingIsLostOrDoubled runs two sinks,
// the built-in audit table and the example third-party JSON Lines plugin,
// each in its own process, kills them with SIGKILL again and again during a
// write load, and checks that both hold every change exactly once.
func TestKilledSinkPluginsAreRestartedAndNothingIsLostOrDoubled(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE orders (id int PRIMARY KEY, n int)`)
	lines := filepath.Join(t.TempDir(), "changes.jsonl")
	// The JSON Lines sink buffers for 300ms: a kill loses what it holds, and
	// the host must re-deliver it.
	sinks := fmt.Sprintf("sinks:\n  - name: audit\n    plugin: postgres\n    config: {url: %q}\n  - name: lines\n    plugin: %q\n    config: {path: %q, flush_interval: 300ms}\npipeline:\n  batch_size: 100\n", url, jsonlPlugin, lines)
	_, _, p := setupAndStart(t, url, sinks, "")

	var writes atomic.Int64
	stop := writeLoad(t, url, 1, func(conn *pgx.Conn, _, i int) error {
		for _, q := range []string{`INSERT INTO orders VALUES ($1, 0)`, `UPDATE orders SET n = 1 WHERE id = $1`} {
			if _, err := conn.Exec(context.Background(), q, i); err != nil {
				return err
			}
		}
		writes.Add(2)
		return nil
	})

	kills := 0
	for round := 0; round < 6; round++ {
		time.Sleep(time.Duration(200+rand.IntN(400)) * time.Millisecond)
		plugins := children(p.cmd.Process.Pid)
		if len(plugins) != 2 {
			t.Fatalf("round %d: pgtrail has %d child processes, want its 2 sink plugins", round, len(plugins))
		}
		// Alternate: the audit table's process, then the JSON Lines one,
		// which holds buffered batches that must be re-delivered.
		victim := plugins[0]
		for _, pid := range plugins {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if strings.Contains(string(cmdline), "jsonl") == (round%2 == 1) {
				victim = pid
			}
		}
		if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		kills++
		// The host notices at its next write and starts a new process.
		waitFor(t, 30*time.Second, "the killed plugin to be replaced", func() bool {
			now := children(p.cmd.Process.Pid)
			return len(now) == 2 && !alive(victim)
		})
	}
	stop()
	if t.Failed() {
		return
	}
	written := int(writes.Load())
	waitForChanges(t, conn, written, 60*time.Second)
	if n := count(t, conn, `SELECT count(*) FROM (SELECT DISTINCT primary_key, operation FROM pgtrail.changes) d`); n != written {
		t.Fatalf("audit table holds %d distinct (key, operation), want %d", n, written)
	}
	if err := p.stop(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	rows, err := conn.Query(context.Background(), `SELECT id FROM pgtrail.changes`)
	if err != nil {
		t.Fatal(err)
	}
	audit, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		t.Fatal(err)
	}
	inFile := map[uuid.UUID]int{}
	for _, id := range jsonlIDs(t, lines) {
		inFile[id]++
	}
	for _, id := range audit {
		if inFile[id] != 1 {
			t.Fatalf("change %s is in the JSON Lines file %d times, want once", id, inFile[id])
		}
	}
	if len(inFile) != len(audit) {
		t.Fatalf("JSON Lines file holds %d changes, the audit table %d", len(inFile), len(audit))
	}
	for _, want := range []string{"sink plugin process lost", "re-delivered batches not yet durable"} {
		if !strings.Contains(p.out.String(), want) {
			t.Fatalf("%q not logged after %d kills", want, kills)
		}
	}
	t.Logf("%d changes, %d plugin kills: each change once in both sinks", written, kills)
}

func TestNoSinkPluginOutlivesPgtrail(t *testing.T) {
	url := cluster.NewDatabase(t)
	exec1(t, connect(t, url), `CREATE TABLE t (id int PRIMARY KEY)`)
	lines := filepath.Join(t.TempDir(), "changes.jsonl")
	cfg := writeConfig(t, url, fmt.Sprintf("sinks:\n  - name: audit\n    plugin: postgres\n    config: {url: %q}\n  - name: lines\n    plugin: %q\n    config: {path: %q}\n", url, jsonlPlugin, lines), "")
	for _, stop := range []string{"SIGTERM", "SIGKILL"} {
		p := start(t, cfg)
		plugins := children(p.cmd.Process.Pid)
		if len(plugins) != 2 {
			t.Fatalf("%d plugin processes, want 2", len(plugins))
		}
		if stop == "SIGTERM" {
			if err := p.stop(); err != nil {
				t.Fatalf("SIGTERM: %v", err)
			}
		} else {
			p.kill()
		}
		waitFor(t, 10*time.Second, "the plugins to exit after "+stop, func() bool {
			for _, pid := range plugins {
				if alive(pid) {
					return false
				}
			}
			return true
		})
	}
}

func TestBadPluginsGetAClearMessage(t *testing.T) {
	url := cluster.NewDatabase(t)
	for _, c := range []struct{ name, plugin, want string }{
		{"another protocol version", wrongVersionPlugin, `sink "odd": plugin ` + wrongVersionPlugin + " speaks another sink protocol version than this pgtrail (2): rebuild the plugin"},
		{"not a plugin", "/bin/true", `sink "odd": /bin/true is not a pgtrail sink plugin: it did not answer the plugin handshake`},
		{"no such file", "/nonexistent/sink", `sink "odd": cannot run plugin /nonexistent/sink`},
		{"unknown built-in", "postgress", `sink "odd": unknown plugin "postgress": built-in plugins are [`},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := writeConfig(t, url, fmt.Sprintf("sinks:\n  - name: odd\n    plugin: %q\n", c.plugin), "")
			out, err := pgtrail(t, cfg, "run")
			if err == nil || !strings.Contains(out, c.want) {
				t.Fatalf("err=%v; output does not say %q:\n%s", err, c.want, out)
			}
		})
	}
}

func TestPluginsCommandListsBuiltinAndExternalPluginsWithVersions(t *testing.T) {
	dir := t.TempDir()
	if err := os.Symlink(jsonlPlugin, filepath.Join(dir, "pgtrail-sink-jsonl")); err != nil {
		t.Fatal(err)
	}
	out, err := pgtrail(t, writeConfig(t, "postgres://x@127.0.0.1/x", "", ""), "plugins", "--dir", dir)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"postgres", "built-in", "jsonl (" + filepath.Join(dir, "pgtrail-sink-jsonl") + ")", "1.0.0", "external"} {
		if !strings.Contains(out, want) {
			t.Errorf("plugins output lacks %q:\n%s", want, out)
		}
	}
}

// hosted adapts a sink reached through plugins/host to sdk.Sink, so that the
// SDK's test kit runs across the process boundary.
type hosted struct {
	spec config.Sink
	*host.Sink
}

func (h *hosted) Configure(ctx context.Context, raw json.RawMessage) error {
	if err := json.Unmarshal(raw, &h.spec.Config); err != nil {
		return err
	}
	s, err := host.Load(ctx, h.spec, host.Options{Self: []string{binary, "serve-sink"}, Builtins: host.Builtins{"postgres": nil}})
	h.Sink = s
	return err
}

func (h *hosted) Write(ctx context.Context, batch []*sdk.Change) (bool, error) {
	notDurable, err := h.Sink.Write(ctx, batch)
	return notDurable == 0, err
}

func (h *hosted) Close(ctx context.Context) error {
	if h.Sink == nil {
		return nil
	}
	return h.Sink.Close(ctx)
}

func TestPostgresSinkPassesTheSDKTestKitThroughThePluginBoundary(t *testing.T) {
	url := cluster.NewDatabase(t)
	cfg, _ := json.Marshal(map[string]string{"url": url, "schema": "kit", "table": "changes"})
	sdktest.Run(t, sdktest.Harness{
		New:    func() sdk.Sink { return &hosted{spec: config.Sink{Name: "kit", Plugin: "postgres"}} },
		Config: cfg,
		Stored: func(t testing.TB) []uuid.UUID {
			rows, err := connect(t, url).Query(context.Background(), "SELECT id FROM kit.changes")
			if err != nil {
				t.Fatal(err)
			}
			ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
			if err != nil {
				t.Fatal(err)
			}
			return ids
		},
	})
}
