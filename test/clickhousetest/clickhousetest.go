// Package clickhousetest starts a private ClickHouse server from the installed
// Debian package (installing it when missing), with a copy of the package's
// config whose ports are free loopback ports and whose paths all lie in a
// temp dir, so tests run against a real server without touching a system one.
package clickhousetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pgtrail/pgtrail/test/testbed"
	"github.com/pgtrail/pgtrail/test/tlstest"
)

// The server's user and password: the package's default user, given a password.
const (
	User     = "default"
	Password = "pgtrail-test"
)

const (
	configDir      = "/etc/clickhouse-server"
	installTimeout = 10 * time.Minute
	startTimeout   = 60 * time.Second
	stopTimeout    = 15 * time.Second
)

// Server is a running clickhouse-server. Stop it to remove everything it wrote.
type Server struct {
	proc     testbed.Process // clickhouse-server; its Dir is the temp root: config, data, logs
	httpPort int
	tcpPort  int
	// HTTPS, with certificates of a private CA; clients must present one.
	httpsPort int
	certs     *tlstest.PKI
	version   string
}

var dbSeq atomic.Int64

// Binary returns the path of clickhouse-server, installing Debian's
// clickhouse-server and clickhouse-client packages first when it is missing.
func Binary() (string, error) {
	find := func() string {
		for _, p := range []string{"/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server"} {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
		return ""
	}
	if bin := find(); bin != "" {
		return bin, nil
	}
	// Test binaries of several packages may start at once: one installs.
	lock, err := os.Create(filepath.Join(os.TempDir(), "pgtrail-clickhouse-install.lock"))
	if err != nil {
		return "", fmt.Errorf("create install lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	if bin := find(); bin != "" {
		return bin, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), installTimeout)
	defer cancel()
	install := func() ([]byte, error) {
		cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=300",
			"clickhouse-server", "clickhouse-client")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return cmd.CombinedOutput()
	}
	out, err := install()
	if err != nil { // perhaps the package lists are stale or absent
		if upd, uerr := exec.CommandContext(ctx, "apt-get", "update", "-q").CombinedOutput(); uerr != nil {
			return "", fmt.Errorf("apt-get update: %w\n%s", uerr, upd)
		}
		out, err = install()
	}
	if err != nil {
		return "", fmt.Errorf("apt-get install clickhouse-server clickhouse-client: %w\n%s", err, out)
	}
	if bin := find(); bin != "" {
		return bin, nil
	}
	return "", errors.New("clickhouse-server installed, but no /usr/bin/clickhouse-server or /usr/sbin/clickhouse-server")
}

// Start writes a private config in a temp dir and starts the server on free
// loopback ports. It returns once the server answers queries over HTTP, or
// an error with the log tail.
func Start() (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "clickhousetest-")
	if err != nil {
		return nil, fmt.Errorf("create temp dir: %w", err)
	}
	s := &Server{proc: testbed.Process{Dir: dir}}
	if err := testbed.StartRetrying(s, "address already in use", func() error { return s.start(bin) }); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) logFile() string { return filepath.Join(s.proc.Dir, "log", "clickhouse-server.log") }
func (s *Server) errFile() string {
	return filepath.Join(s.proc.Dir, "log", "clickhouse-server.err.log")
}

// Ports the package's config may name; each one present gets a free port.
var portTag = regexp.MustCompile(`<(http_port|tcp_port|https_port|tcp_port_secure|interserver_http_port|interserver_https_port|mysql_port|postgresql_port|grpc_port|prometheus_port)>\d+</`)

// writeConfig copies the package's config.xml and users.xml into dir with
// every path moved under dir, free ports, loopback only, and a password for
// the default user.
func (s *Server) writeConfig() error {
	raw, err := os.ReadFile(filepath.Join(configDir, "config.xml"))
	if err != nil {
		return fmt.Errorf("read the package's config: %w", err)
	}
	cfg := string(raw)
	cfg = strings.ReplaceAll(cfg, "/var/lib/clickhouse/", filepath.Join(s.proc.Dir, "data")+"/")
	cfg = strings.ReplaceAll(cfg, "/var/log/clickhouse-server/", filepath.Join(s.proc.Dir, "log")+"/")
	var perr error
	cfg = portTag.ReplaceAllStringFunc(cfg, func(m string) string {
		tag := portTag.FindStringSubmatch(m)[1]
		port, err := testbed.FreePort()
		if err != nil {
			perr = err
		}
		switch tag {
		case "http_port":
			s.httpPort = port
		case "tcp_port":
			s.tcpPort = port
		}
		return fmt.Sprintf("<%s>%d</", tag, port)
	})
	if perr != nil {
		return perr
	}
	// Listen on loopback only (IPv4: IPv6 may be off), in UTC, quietly, and
	// on HTTPS too.
	root := regexp.MustCompile(`<(yandex|clickhouse)>`)
	loc := root.FindStringIndex(cfg)
	if loc == nil {
		return fmt.Errorf("%s/config.xml has no <yandex> or <clickhouse> root", configDir)
	}
	if s.httpsPort, err = testbed.FreePort(); err != nil {
		return err
	}
	cfg = cfg[:loc[1]] + fmt.Sprintf("\n    <listen_host>127.0.0.1</listen_host>\n    <timezone>UTC</timezone>\n    <https_port>%d</https_port>\n", s.httpsPort) + cfg[loc[1]:]
	if cfg, err = s.serveTLS(cfg); err != nil {
		return err
	}
	cfg = regexp.MustCompile(`(?s)<level>\w+</level>`).ReplaceAllString(cfg, "<level>warning</level>")
	if err := os.WriteFile(filepath.Join(s.proc.Dir, "config.xml"), []byte(cfg), 0o600); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	users, err := os.ReadFile(filepath.Join(configDir, "users.xml"))
	if err != nil {
		return fmt.Errorf("read the package's users: %w", err)
	}
	// The first <password></password> is the default user's.
	u := strings.Replace(string(users), "<password></password>", "<password>"+Password+"</password>", 1)
	if err := os.WriteFile(filepath.Join(s.proc.Dir, "users.xml"), []byte(u), 0o600); err != nil {
		return fmt.Errorf("write users: %w", err)
	}
	return nil
}

func (s *Server) start(bin string) error {
	if err := s.writeConfig(); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(s.proc.Dir, "log"), 0o700); err != nil {
		return err
	}
	out, err := os.Create(filepath.Join(s.proc.Dir, "log", "stdout.log"))
	if err != nil {
		return err
	}
	defer out.Close() // the server holds its own copy
	cmd := exec.Command(bin, "--config-file="+filepath.Join(s.proc.Dir, "config.xml"))
	cmd.Dir = s.proc.Dir
	cmd.Stdout, cmd.Stderr = out, out
	// Pdeathsig kills the server if the test binary dies, so no orphan keeps the ports.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.proc.Start(cmd); err != nil {
		return fmt.Errorf("start clickhouse-server: %w", err)
	}
	return s.waitReady()
}

// waitReady polls with real queries rather than sleeping.
func (s *Server) waitReady() error {
	what := fmt.Sprintf("clickhouse-server on port %d", s.httpPort)
	return s.proc.WaitReady(what, startTimeout, 100*time.Millisecond, func() error {
		v, err := s.query("SELECT version()")
		s.version = strings.TrimSpace(v)
		return err
	})
}

// URL is the HTTP interface, http://127.0.0.1:PORT, without credentials.
func (s *Server) URL() string { return fmt.Sprintf("http://127.0.0.1:%d", s.httpPort) }

// HTTPSURL is the HTTPS interface, https://127.0.0.1:PORT. Its certificate
// is signed by the CA of Certs, and it refuses a client without a client
// certificate of that CA.
func (s *Server) HTTPSURL() string { return fmt.Sprintf("https://127.0.0.1:%d", s.httpsPort) }

// Certs are the PEM files of the CA, the server's certificate and a client
// certificate for the HTTPS interface.
func (s *Server) Certs() *tlstest.PKI { return s.certs }

// HTTPPort and TCPPort are the server's ports on 127.0.0.1.
func (s *Server) HTTPPort() int { return s.httpPort }
func (s *Server) TCPPort() int  { return s.tcpPort }

// Version is what SELECT version() answered at start.
func (s *Server) Version() string { return s.version }

var client = &http.Client{Timeout: 30 * time.Second}

// query runs one statement as the default user and returns its output.
func (s *Server) query(sql string) (string, error) {
	req, err := http.NewRequest(http.MethodPost, s.URL()+"/", strings.NewReader(sql))
	if err != nil {
		return "", err
	}
	req.SetBasicAuth(User, Password)
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return string(body), nil
}

// Query runs one statement and returns its output (TabSeparated unless the
// statement says FORMAT), failing t on error.
func (s *Server) Query(t testing.TB, sql string) string {
	t.Helper()
	out, err := s.query(sql)
	if err != nil {
		t.Fatalf("clickhouse %q: %v", sql, err)
	}
	return out
}

// NewDatabase names a database that does not exist yet (the sink's Setup
// makes it); it is dropped at cleanup.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("pgtrail_test_%d", dbSeq.Add(1))
	t.Cleanup(func() {
		// Tidiness only (the server is private to this run and killed at
		// its end): ClickHouse 18 can take longer than a request may to
		// drop tables it is still merging, which says nothing of the test.
		if _, err := s.query("DROP DATABASE IF EXISTS " + name); err != nil {
			t.Logf("clickhouse: drop %s at cleanup: %v", name, err)
		}
	})
	return name
}

// URLWithUser is the HTTP interface with credentials in the URL.
func (s *Server) URLWithUser() string {
	u := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", s.httpPort), User: url.UserPassword(User, Password)}
	return u.String()
}

// Stop kills the server at once (its data is thrown away, so a clean
// shutdown, seconds long, buys nothing), waits for it, and removes the temp
// dir. It is safe to call more than once.
func (s *Server) Stop() { s.proc.Stop(syscall.SIGKILL, stopTimeout) }

// LogTail returns the last n lines of the server's error log (or its
// output, when it wrote no log), for failure messages.
func (s *Server) LogTail(n int) string {
	return testbed.Tail(n, s.errFile(), filepath.Join(s.proc.Dir, "log", "stdout.log"), s.logFile())
}

// Main is for TestMain: one server per test binary, stopped before exit.
// set receives the server before any test runs.
func Main(m *testing.M, set func(*Server)) {
	testbed.Main(m, "clickhousetest", Start, set)
}
