// Package pgtest starts a private PostgreSQL cluster from the installed server
// binaries, so tests run against a real server without touching any system cluster.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/test/testbed"
)

const (
	password     = "postgres"
	startTimeout = 30 * time.Second
	stopTimeout  = 10 * time.Second
)

// Options configure a cluster. The zero value gives wal_level=logical.
type Options struct {
	WALLevel string // "logical" when empty
	// Settings are extra server settings. They override the defaults, except
	// listen_addresses, port and unix_socket_directories, which pgtest owns.
	Settings map[string]string
}

// Cluster is a running private server. Stop it to remove everything it wrote.
type Cluster struct {
	bin  string              // server binaries
	cred *syscall.Credential // nil: run the server as ourselves
	proc testbed.Process     // the postmaster; its Dir is the temp root: data dir, log, password file
	port int
	opts Options
}

var dbSeq atomic.Int64

// Start initialises a fresh cluster in a temp dir and starts it on a free loopback port.
// It returns once the server accepts connections, or an error with the log tail.
func Start(opts Options) (*Cluster, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	cred, err := credential()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("create temp dir: %w", err)
	}
	c := &Cluster{bin: bin, cred: cred, proc: testbed.Process{Dir: dir}, opts: opts}
	if err := c.initdb(); err != nil {
		c.Stop()
		return nil, err
	}
	// The postmaster has exited when it says so; the data dir is reusable.
	err = testbed.StartRetrying(c, "could not create any TCP/IP sockets", func() error {
		port, err := testbed.FreePort()
		if err != nil {
			return err
		}
		c.port = port
		return c.start()
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// binDir picks the newest installed major version, so the helper survives upgrades.
func binDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	best, bestVer := "", -1.0
	for _, d := range dirs {
		v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(d)), 64)
		if err == nil && v > bestVer {
			best, bestVer = d, v
		}
	}
	if best == "" {
		return "", errors.New("find postgres: no /usr/lib/postgresql/*/bin")
	}
	return best, nil
}

// credential returns the postgres OS user when running as root, because initdb and
// postgres refuse to run as root; nil means run as the current user.
func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("look up user postgres: %w", err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func (c *Cluster) dataDir() string { return filepath.Join(c.proc.Dir, "data") }
func (c *Cluster) logFile() string { return filepath.Join(c.proc.Dir, "server.log") }

func (c *Cluster) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(c.bin, name), args...)
	cmd.Dir = c.proc.Dir // the postgres user may not be able to enter our working dir
	// Pdeathsig kills the server if the test binary dies, so no orphan keeps the port.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred, Pdeathsig: syscall.SIGKILL}
	return cmd
}

// initdb's default pg_hba.conf for --auth=scram-sha-256 already allows local and
// 127.0.0.1 connections, replication included, with passwords.
func (c *Cluster) initdb() error {
	if c.cred != nil {
		if err := os.Chown(c.proc.Dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return fmt.Errorf("chown %s: %w", c.proc.Dir, err)
		}
	}
	// World-readable is fine: the password is fixed and the dir is private.
	pwfile := filepath.Join(c.proc.Dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(password+"\n"), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", pwfile, err)
	}
	cmd := c.command("initdb", "-D", c.dataDir(), "-U", "postgres", "--pwfile="+pwfile,
		"--auth=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb %s: %w\n%s", c.dataDir(), err, out)
	}
	return nil
}

// defaults trade durability for speed: tests kill pgtrail, never postgres.
var defaults = map[string]string{
	"wal_level": "logical", "max_replication_slots": "20", "max_wal_senders": "20",
	"max_connections": "200", "fsync": "off", "synchronous_commit": "off",
	"full_page_writes": "off", "shared_buffers": "128MB", "logging_collector": "off",
	"TimeZone": "UTC",
}

// start starts the postmaster on c.port.
func (c *Cluster) start() error {
	opts := c.opts
	settings := maps.Clone(defaults)
	if opts.WALLevel != "" {
		settings["wal_level"] = opts.WALLevel
	}
	maps.Copy(settings, opts.Settings)
	// Where the server listens is not overridable, so URL and Port stay true.
	settings["listen_addresses"], settings["port"] = "127.0.0.1", strconv.Itoa(c.port)
	settings["unix_socket_directories"] = c.dataDir()
	args := []string{"-D", c.dataDir()}
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		args = append(args, "-c", k+"="+settings[k])
	}
	logf, err := os.Create(c.logFile())
	if err != nil {
		return fmt.Errorf("create %s: %w", c.logFile(), err)
	}
	defer logf.Close() // the server holds its own copy of the descriptor
	cmd := c.command("postgres", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := c.proc.Start(cmd); err != nil {
		return fmt.Errorf("start postgres %s: %w", c.dataDir(), err)
	}
	return c.waitReady()
}

// waitReady polls with real connections rather than sleeping, up to startTimeout.
func (c *Cluster) waitReady() error {
	return c.proc.WaitReady(fmt.Sprintf("postgres on port %d", c.port), startTimeout, 50*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, c.URL("postgres"))
		if err != nil {
			return err
		}
		return conn.Close(context.Background())
	})
}

// URL returns a connection URL for database as the superuser.
func (c *Cluster) URL(database string) string {
	return fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/%s?sslmode=disable", password, c.port, database)
}

// Port returns the server's TCP port on 127.0.0.1.
func (c *Cluster) Port() int { return c.port }

// PostmasterPID is the server's postmaster process, from postmaster.pid.
func (c *Cluster) PostmasterPID() (int, error) {
	b, err := os.ReadFile(filepath.Join(c.dataDir(), "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return 0, fmt.Errorf("postmaster.pid: %w", err)
	}
	return pid, nil
}

// NewDatabase creates an empty database with a unique name and returns its URL.
// It is dropped at cleanup, slots and connections included, so tests can share a cluster.
func (c *Cluster) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("pgtest_%d", dbSeq.Add(1))
	c.Exec(t, "postgres", "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	t.Cleanup(func() { c.dropDatabase(t, name) })
	return c.URL(name)
}

// dropDatabase frees the database's replication slots first: DROP ... WITH (FORCE)
// refuses while a logical slot exists, and a slot is busy until its walsender is gone.
func (c *Cluster) dropDatabase(t testing.TB, name string) {
	t.Helper()
	c.Exec(t, "postgres", `SELECT pg_terminate_backend(active_pid, 10000) FROM pg_replication_slots
		WHERE database = $1 AND active_pid IS NOT NULL`, name)
	c.Exec(t, "postgres", `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
		WHERE database = $1`, name)
	c.Exec(t, "postgres", "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
}

// Exec runs one statement on database (a name, or a URL from NewDatabase) and fails t on error.
func (c *Cluster) Exec(t testing.TB, database, sql string, args ...any) {
	t.Helper()
	url := database
	if !strings.Contains(database, "://") {
		url = c.URL(database)
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect to %s: %v", database, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("exec %q on %s: %v", sql, database, err)
	}
}

// Restart stops the server, cleanly (a fast shutdown) or, with crash, as a
// crash would (an immediate shutdown: no checkpoint, recovery at start), and
// starts it again on the same port.
func (c *Cluster) Restart(crash bool) error {
	sig := syscall.SIGINT
	if crash {
		sig = syscall.SIGQUIT
	}
	if !c.proc.Halt(sig, stopTimeout) {
		return fmt.Errorf("postgres did not stop within %s of %s (killed)\nserver log:\n%s", stopTimeout, sig, c.LogTail(30))
	}
	if err := c.start(); err != nil {
		return fmt.Errorf("%w\nserver log:\n%s", err, c.LogTail(30))
	}
	return nil
}

// Stop shuts the server down immediately (SIGQUIT), waits for it, and removes the
// temp dir. It is safe to call more than once.
func (c *Cluster) Stop() { c.proc.Stop(syscall.SIGQUIT, stopTimeout) }

// LogTail returns the last n lines of the server log, for failure messages.
func (c *Cluster) LogTail(n int) string { return testbed.Tail(n, c.logFile()) }

// Main is for TestMain: one cluster per test binary, stopped before exit.
// set receives the cluster before any test runs.
func Main(m *testing.M, opts Options, set func(*Cluster)) {
	testbed.Main(m, "pgtest", func() (*Cluster, error) { return Start(opts) }, set)
}
