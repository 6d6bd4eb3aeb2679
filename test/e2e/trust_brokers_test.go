package e2e

// Faults on the broker path: `pgtrail capture` publishes a write load to the
// broker and `pgtrail run` stores it from there, while the broker is killed
// and restarted, or its network partitioned; then the audit table must equal
// the writers' own record.

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/pgtrail/pgtrail/test/faultproxy"
	"github.com/pgtrail/pgtrail/test/testbed"
)

// marker commits one more recorded insert, of row -k, and returns a wait
// that measures how long it takes from since until it is in the audit table.
func marker(t *testing.T, conn *pgx.Conn, k int) func(since time.Time) time.Duration {
	t.Helper()
	err := pgx.BeginFunc(context.Background(), conn, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue(`INSERT INTO items VALUES ($1, 0)`, -k)
		b.Queue(`INSERT INTO bookkeeping.truth VALUES ('CREATE', $1, 0)`, -k)
		return tx.SendBatch(context.Background(), b).Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	return func(since time.Time) time.Duration {
		t.Helper()
		waitFor(t, 60*time.Second, fmt.Sprintf("row %d in the audit table", -k), func() bool {
			return count(t, conn, `SELECT count(*) FROM pgtrail.changes WHERE "table" = 'items' AND primary_key = $1`, fmt.Sprint(-k)) > 0
		})
		return time.Since(since)
	}
}

// brokerPath starts `pgtrail capture` publishing the database's changes as
// publish says, then `pgtrail run` storing them from source (YAML under
// source:, written once capture made the stream or topic).
func brokerPath(t *testing.T, url, publish, source string) (*pgx.Conn, *proc) {
	t.Helper()
	conn := connect(t, url)
	exec1(t, conn, itemsSchema)
	startCapture(t, writeConfig(t, url, publish+"pipeline:\n  batch_size: 100\n", "    slot: capture\n"))
	return conn, start(t, writeBrokerConfig(t, url, source, ""))
}

var natsBuild struct {
	once sync.Once
	path string
	err  error
}

// natsServerBinary builds nats-server from the module pgtrail's tests use,
// once per test binary.
func natsServerBinary(t *testing.T) string {
	t.Helper()
	natsBuild.once.Do(func() {
		natsBuild.path = filepath.Join(filepath.Dir(binary), "nats-server")
		out, err := exec.Command("go", "build", "-o", natsBuild.path, "github.com/nats-io/nats-server/v2").CombinedOutput()
		if err != nil {
			natsBuild.err = fmt.Errorf("build nats-server: %v\n%s", err, out)
		}
	})
	if natsBuild.err != nil {
		t.Fatal(natsBuild.err)
	}
	return natsBuild.path
}

// natsServer is a nats-server process with JetStream on a file store, which
// a test can kill -9 and start again on the same store and port.
type natsServer struct {
	t    *testing.T
	bin  string
	conf string
	port int
	log  string
	proc testbed.Process
}

// startNATSServer starts a nats-server process on a free port. It pings its
// clients every second and drops one that misses two, so a partitioned
// client is dropped while the partition lasts, its deliveries with it.
func startNATSServer(t *testing.T) *natsServer {
	t.Helper()
	dir := t.TempDir()
	n := &natsServer{t: t, bin: natsServerBinary(t), port: freePort(t), conf: filepath.Join(dir, "nats.conf"), log: filepath.Join(dir, "nats.log")}
	conf := fmt.Sprintf("listen: 127.0.0.1:%d\nping_interval: \"1s\"\nping_max: 2\nlog_file: %q\njetstream {\n  store_dir: %q\n}\n",
		n.port, n.log, filepath.Join(dir, "store"))
	if err := os.WriteFile(n.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	n.start()
	t.Cleanup(func() {
		n.proc.Halt(syscall.SIGKILL, 0)
		if t.Failed() {
			t.Logf("nats-server log:\n%s", testbed.Tail(30, n.log))
		}
	})
	return n
}

func (n *natsServer) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

func (n *natsServer) start() {
	n.t.Helper()
	cmd := exec.Command(n.bin, "-c", n.conf)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := n.proc.Start(cmd); err != nil {
		n.t.Fatal(err)
	}
	err := n.proc.WaitReady("nats-server", 30*time.Second, 20*time.Millisecond, func() error {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", n.port))
		if err == nil {
			c.Close()
		}
		return err
	})
	if err != nil {
		n.t.Fatalf("%v\n%s", err, testbed.Tail(30, n.log))
	}
}

// kill ends the server with SIGKILL: nothing is flushed or closed.
func (n *natsServer) kill() { n.proc.Halt(syscall.SIGKILL, 0) }

// TestNATSServerKill9AndRestartOnItsStoreLoseAndDoubleNothing kills
// nats-server twice under a write load through capture and run, and starts
// it again on its file store: both ride it out, and the audit table equals
// the writers' record.
func TestNATSServerKill9AndRestartOnItsStoreLoseAndDoubleNothing(t *testing.T) {
	url := cluster.NewDatabase(t)
	ns := startNATSServer(t)
	conn, _ := brokerPath(t, url, fmt.Sprintf("publish:\n  type: jetstream\n  jetstream: {url: %q}\n", ns.url()),
		fmt.Sprintf("  type: jetstream\n  jetstream: {url: %q}", ns.url()))
	stop := itemsLoad(t, conn, url)
	for k := 1; k <= 2; k++ {
		time.Sleep(1500 * time.Millisecond)
		ns.kill()
		time.Sleep(time.Second)
		ns.start()
		restarted := time.Now()
		t.Logf("restart %d: the first change after it stored %s after nats-server was back", k, marker(t, conn, k)(restarted).Round(time.Millisecond))
	}
	stop()
	checkTrail(t, conn, "2 kills of nats-server")
}

// kfakeOn starts kfake on port, keeping its state in dir, so that it can be
// closed and started again where it was.
func kfakeOn(t *testing.T, dir string, port int, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.Ports(port), kfake.DataDir(dir),
		kfake.SeedTopics(1, "bemi")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestKafkaBrokerRestartLosesAndDoublesNothing restarts the (kfake) broker
// twice under a write load through capture and run, on its persisted state:
// both ride it out, and the audit table equals the writers' record.
func TestKafkaBrokerRestartLosesAndDoublesNothing(t *testing.T) {
	url := cluster.NewDatabase(t)
	dir, port := t.TempDir(), freePort(t)
	var mu sync.Mutex
	c := kfakeOn(t, dir, port)
	t.Cleanup(func() {
		mu.Lock()
		c.Close()
		mu.Unlock()
	})
	broker := fmt.Sprintf("127.0.0.1:%d", port)
	conn, _ := brokerPath(t, url, fmt.Sprintf("publish:\n  type: kafka\n  kafka: {brokers: [%q]}\n", broker),
		fmt.Sprintf("  type: kafka\n  kafka: {brokers: [%q]}", broker))
	stop := itemsLoad(t, conn, url)
	for k := 1; k <= 2; k++ {
		time.Sleep(2 * time.Second)
		mu.Lock()
		c.Close()
		time.Sleep(time.Second)
		c = kfakeOn(t, dir, port)
		mu.Unlock()
		restarted := time.Now()
		t.Logf("restart %d: the first change after it stored %s after the broker was back", k, marker(t, conn, k)(restarted).Round(time.Millisecond))
	}
	stop()
	checkTrail(t, conn, "2 broker restarts")
}

// checkTrail waits until the audit table holds every change the writers
// recorded and compares them.
func checkTrail(t *testing.T, conn *pgx.Conn, under string) {
	t.Helper()
	truth := count(t, conn, `SELECT count(*) FROM bookkeeping.truth`)
	t.Logf("%d changes written under %s", truth, under)
	waitForChanges(t, conn, truth, 120*time.Second)
	sameAsTruth(t, conn)
}

// TestPartitionBetweenRunAndNATSLosesAndDoublesNothing partitions the
// network between `pgtrail run` and nats-server (bytes stop, nothing
// closes) while capture keeps publishing, long enough for the server to
// drop the connection with deliveries in it, then heals it.
func TestPartitionBetweenRunAndNATSLosesAndDoublesNothing(t *testing.T) {
	url := cluster.NewDatabase(t)
	ns := startNATSServer(t)
	proxy, err := faultproxy.Start(fmt.Sprintf("127.0.0.1:%d", ns.port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	conn, p := brokerPath(t, url, fmt.Sprintf("publish:\n  type: jetstream\n  jetstream: {url: %q}\n", ns.url()),
		fmt.Sprintf("  type: jetstream\n  jetstream: {url: %q}", "nats://"+proxy.Addr()))
	partitionUnderLoad(t, conn, url, proxy, 6*time.Second, func() {})
	t.Logf("run restarted its pipeline %d times", strings.Count(p.out.String(), "restarting from the last confirmed position"))
}

// advertised is a listener that kfake advertises under another address: the
// proxy's, so that every client reaches the broker through it.
type advertised struct {
	net.Listener
	addr net.Addr
}

func (a advertised) Addr() net.Addr { return a.addr }

// TestPartitionBetweenPgtrailAndKafkaLosesAndDoublesNothing partitions the
// network between the (kfake) broker and its clients, capture and run, for
// longer than the group's session timeout, then heals it.
func TestPartitionBetweenPgtrailAndKafkaLosesAndDoublesNothing(t *testing.T) {
	url := cluster.NewDatabase(t)
	var proxy *faultproxy.Proxy
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "bemi"),
		kfake.ListenFn(func(network, address string) (net.Listener, error) {
			ln, err := net.Listen(network, address)
			if err != nil {
				return nil, err
			}
			if proxy, err = faultproxy.Start(ln.Addr().String()); err != nil {
				ln.Close()
				return nil, err
			}
			pa, _ := net.ResolveTCPAddr("tcp", proxy.Addr())
			return advertised{Listener: ln, addr: pa}, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	t.Cleanup(proxy.Close)
	broker := proxy.Addr()
	conn, _ := brokerPath(t, url, fmt.Sprintf("publish:\n  type: kafka\n  kafka: {brokers: [%q]}\n", broker),
		fmt.Sprintf("  type: kafka\n  kafka: {brokers: [%q]}", broker))
	partitionUnderLoad(t, conn, url, proxy, 12*time.Second, func() {})
}
