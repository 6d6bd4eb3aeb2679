package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/pgtrail/pgtrail/test/testbed"
)

// The broker paths: native capture publishes Debezium events to a broker
// (`pgtrail capture`), and `pgtrail run` reads them from there into the
// audit table. The broker runs in the bench process: a nats-server with
// JetStream, or kfake for Kafka, as the test beds run them.

// brokerPath says why the broker path of kind cannot run with this pgtrail:
// it needs `pgtrail capture` and the source type kind.
func brokerPath(kind string) func(*bench, context.Context) string {
	return func(b *bench, ctx context.Context) string {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, b.bin, "capture", "--help").CombinedOutput(); err != nil {
			return "skipped: not built yet (this pgtrail has no capture command: " + firstLines(string(out), 1) + ")"
		}
		cfg, _, err := brokerRunConfig(b.tmp, kind, "probe", "postgres://127.0.0.1:1/probe", "127.0.0.1:1")
		if err != nil {
			return err.Error()
		}
		out, _ := exec.CommandContext(ctx, b.bin, "setup", "--config", cfg).CombinedOutput()
		if strings.Contains(string(out), "not supported") || strings.Contains(string(out), "source.type") {
			return fmt.Sprintf("skipped: not built yet (source.type %s: %s)", kind, firstLines(string(out), 1))
		}
		return ""
	}
}

// startBroker starts a broker of kind with the subject or topic bemi.
func startBroker(kind, dir string) (addr string, stop func(), err error) {
	switch kind {
	case "jetstream":
		ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
			StoreDir: filepath.Join(dir, "nats"), NoLog: true, NoSigs: true})
		if err != nil {
			return "", nil, err
		}
		go ns.Start()
		if !ns.ReadyForConnections(10 * time.Second) {
			ns.Shutdown()
			return "", nil, fmt.Errorf("nats-server not ready after 10s")
		}
		return ns.ClientURL(), ns.Shutdown, nil
	case "kafka":
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "bemi"), kfake.AllowAutoTopicCreation())
		if err != nil {
			return "", nil, err
		}
		return c.ListenAddrs()[0], c.Close, nil
	}
	return "", nil, fmt.Errorf("no broker %q", kind)
}

// brokerCaptureConfig is `pgtrail capture` from slot to the broker.
func brokerCaptureConfig(dir, kind, slot, url, addr string) (string, int, error) {
	return writeConfig(dir, slot+"_capture", fmt.Sprintf(`source:
  type: postgres
  postgres:
    url: %q
    slot: %s
    publication: bench
    tables: ["public.*"]
publish:
  type: %s
%s`, url, slot, kind, brokerBlock(kind, addr)))
}

// brokerRunConfig is `pgtrail run` from the broker into the audit table
// pgtrail.changes_<kind>. Debezium Server's NATS sink publishes values
// without keys, so the key column is named.
func brokerRunConfig(dir, kind, slot, url, addr string) (string, int, error) {
	return writeConfig(dir, slot+"_run", fmt.Sprintf(`source:
  type: %s
%s  debezium:
    key_columns: [id]
sinks:
  - name: audit
    plugin: postgres
    config:
      url: %q
      table: changes_%s
`, kind, brokerBlock(kind, addr), url, kind))
}

func brokerBlock(kind, addr string) string {
	if kind == "kafka" {
		return fmt.Sprintf("  kafka:\n    brokers: [%q]\n", addr)
	}
	return fmt.Sprintf("  jetstream:\n    url: %q\n", addr)
}

// writeConfig adds metrics on a free port and the log level to a config.
func writeConfig(dir, name, cfg string) (string, int, error) {
	port, err := testbed.FreePort()
	if err != nil {
		return "", 0, err
	}
	cfg += fmt.Sprintf("http:\n  listen: \"127.0.0.1:%d\"\nlog:\n  level: info\n", port)
	path := filepath.Join(dir, name+".yaml")
	return path, port, os.WriteFile(path, []byte(cfg), 0o600)
}

// brokerRun drains the backlog through the broker: the time runs from when
// capture starts streaming to when run has stored the whole backlog.
func brokerRun(kind string) func(*bench, context.Context, *backlog, string) result {
	name := "broker-" + kind
	return func(b *bench, ctx context.Context, bl *backlog, slot string) result {
		addr, stop, err := startBroker(kind, b.tmp)
		if err != nil {
			return failed(name, err)
		}
		defer stop()
		capCfg, _, err := brokerCaptureConfig(b.tmp, kind, slot, bl.url, addr)
		if err != nil {
			return failed(name, err)
		}
		capture, err := startProc("capturing", b.bin, "capture", "--config", capCfg)
		if err != nil {
			return failed(name, err)
		}
		defer capture.stop(30 * time.Second)
		started, err := capture.waitSeen(time.Minute)
		if err != nil {
			return failed(name, err)
		}
		runCfg, port, err := brokerRunConfig(b.tmp, kind, slot, bl.url, addr)
		if err != nil {
			return failed(name, err)
		}
		if err := runPgtrail(ctx, b.bin, runCfg, "setup"); err != nil {
			return failed(name, err)
		}
		p, err := startPgtrail(b.bin, runCfg, port, "audit", b.profile != "")
		if err != nil {
			return failed(name, err)
		}
		defer p.stop(30 * time.Second)
		stopProfile := b.startCPUProfile(p, name) // of `pgtrail run`
		done, err := p.waitWritten(bl.changes, 15*time.Minute)
		stopProfile()
		if err != nil {
			return failed(name, err)
		}
		b.saveProfiles(p, name)
		res := throughput(name, bl.changes, done.Sub(started))
		capRSS := vmHWM(capture.cmd.Process.Pid)
		runRSS, runNote := p.rss()
		res.PeakRSSMB = num(capRSS + *runRSS)
		res.Note = fmt.Sprintf("pgtrail capture -> %s (in the bench process) -> pgtrail run -> audit table; peak RSS: capture %.0f MB, run: %s",
			kind, capRSS, strings.TrimPrefix(runNote, "peak RSS: "))
		stored, err := queryValue[int64](ctx, bl.url, "SELECT count(DISTINCT id) FROM pgtrail.changes_"+kind)
		if err != nil || stored != bl.changes {
			return failed(name, fmt.Errorf("audit table holds %d distinct changes, want %d (%v)", stored, bl.changes, err))
		}
		return res
	}
}
