//go:build interop

package interop

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/pgtrail/pgtrail/test/testbed"
)

// libDir is where Maven copies the bed's jars; a marker holds the hash of the
// pom that resolved them, so a changed pom resolves again.
func libDir() string {
	if d := os.Getenv("PGTRAIL_INTEROP_CACHE"); d != "" {
		return filepath.Join(d, "lib")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "pgtrail-interop", "lib")
}

// resolveJars runs `mvn dependency:copy-dependencies` for pom.xml unless the
// cache already holds what this pom resolves to.
func resolveJars() (string, error) {
	dir := libDir()
	pom, err := os.ReadFile("pom.xml")
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(pom)
	marker := filepath.Join(dir, ".pom-sha256")
	if got, err := os.ReadFile(marker); err == nil && string(got) == hex.EncodeToString(sum[:]) {
		return dir, nil
	}
	_ = os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "mvn", "-B", "-q", "-f", "pom.xml", "dependency:copy-dependencies",
		"-DoutputDirectory="+dir, "-DincludeScope=runtime")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("mvn dependency:copy-dependencies: %w\n%s", err, out)
	}
	return dir, os.WriteFile(marker, []byte(hex.EncodeToString(sum[:])), 0o644)
}

// proc is a child process that dies with the test binary.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *testbed.Output
	done chan struct{}
}

func startProc(name string, dir string, bin string, args ...string) (*proc, error) {
	p := &proc{name: name, out: &testbed.Output{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Dir = dir
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func waitPort(port int, p *proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p.exited() {
			return fmt.Errorf("%s exited:\n%s", p.name, tail(p.out.String(), 30))
		}
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s not listening on %d after %s:\n%s", p.name, port, timeout, tail(p.out.String(), 30))
}

const log4j = `rootLogger.level=WARN
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=%d{HH:mm:ss.SSS} %p %c{1} %m%n
logger.dbz.name=io.debezium.connector.postgresql
logger.dbz.level=INFO
`

// java runs a main class from the cached jars with a modest heap.
type java struct {
	bin, lib, dir string
}

func (j java) start(name, mainClass string, args ...string) (*proc, error) {
	full := append([]string{"-Xms64m", "-Xmx512m", "-XX:+UseSerialGC",
		"-Dlog4j2.configurationFile=" + filepath.Join(j.dir, "log4j2.properties"),
		"-cp", filepath.Join(j.lib, "*"), mainClass}, args...)
	return startProc(name, j.dir, j.bin, full...)
}

// kafka is an Apache Kafka broker in KRaft mode (broker and controller in
// one process).
type kafka struct {
	addr  string
	port  int
	props string // server.properties: fixed ports and log.dirs, so a restart is the same broker
	j     java
	p     *proc
}

// startKafka formats a new broker's storage under dir and starts it.
func startKafka(j java, dir string) (*kafka, error) {
	port, err := testbed.FreePort()
	if err != nil {
		return nil, err
	}
	cport, err := testbed.FreePort()
	if err != nil {
		return nil, err
	}
	props := fmt.Sprintf(`process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:%[2]d
listeners=PLAINTEXT://127.0.0.1:%[1]d,CONTROLLER://127.0.0.1:%[2]d
advertised.listeners=PLAINTEXT://127.0.0.1:%[1]d
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=%[3]s
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
num.partitions=1
auto.create.topics.enable=true
`, port, cport, filepath.Join(dir, "kafka-data"))
	path := filepath.Join(dir, "server.properties")
	if err := os.WriteFile(path, []byte(props), 0o644); err != nil {
		return nil, err
	}
	id := uuid.New()
	clusterID := base64.RawURLEncoding.EncodeToString(id[:])
	format, err := j.start("kafka-storage format", "kafka.tools.StorageTool", "format", "-t", clusterID, "-c", path)
	if err != nil {
		return nil, err
	}
	<-format.done
	if format.cmd.ProcessState.ExitCode() != 0 {
		return nil, fmt.Errorf("kafka-storage format: %s", format.out.String())
	}
	k := &kafka{addr: fmt.Sprintf("127.0.0.1:%d", port), port: port, props: path, j: j}
	return k, k.start()
}

// start runs the broker on its properties and storage and waits until it
// listens.
func (k *kafka) start() error {
	p, err := k.j.start("kafka", "kafka.Kafka", k.props)
	if err != nil {
		return err
	}
	if err := waitPort(k.port, p, 90*time.Second); err != nil {
		p.stop(5 * time.Second)
		return err
	}
	k.p = p
	return nil
}

// record is one Kafka record.
type record struct {
	key, value []byte
}

// readTopic returns the records of a one-partition topic from its start up to
// and including the first logical message with prefix marker and content
// until, waiting at most timeout for it.
func readTopic(t *testing.T, broker, topic, until string, timeout time.Duration) []record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []record
	needle := []byte(`"message":{"prefix":"` + marker + `","content":"` + base64.StdEncoding.EncodeToString([]byte(until)) + `"}`)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		found := false
		fs.EachRecord(func(r *kgo.Record) {
			if found {
				return
			}
			out = append(out, record{key: r.Key, value: r.Value})
			found = bytes.Contains(r.Value, needle)
		})
		if found {
			return out
		}
	}
	t.Fatalf("topic %s: no marker %q after %s (%d records read)", topic, until, timeout, len(out))
	return nil
}

// marker is the prefix of the logical messages that separate scenarios.
const marker = "interop_marker"
