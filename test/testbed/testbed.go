// Package testbed is what the server test beds (test/pgtest, test/s3test,
// test/clickhousetest) share: a server process in a temp dir on a free port,
// started again when the port was taken meanwhile, stopped and removed once,
// its log's tail for failure messages, and one server per test binary; and
// Output, a process's or a logger's output that a test reads while it is
// written (the e2e and interop beds, the Kafka source).
package testbed

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// Process is a server process and the temp dir it works in.
type Process struct {
	Dir    string
	cmd    *exec.Cmd
	exited chan struct{}
	stop   sync.Once
}

// Start starts cmd and watches for its end.
func (p *Process) Start(cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	p.cmd, p.exited = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(p.exited) }()
	return nil
}

// WaitReady calls ready every interval until it succeeds, the process ends,
// or timeout passes; what names the server in the error.
func (p *Process) WaitReady(what string, timeout, interval time.Duration, ready func() error) error {
	deadline := time.After(timeout)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited during start-up: %s", what, p.cmd.ProcessState)
		case <-deadline:
			return fmt.Errorf("%s not ready after %s: %w", what, timeout, err)
		case <-time.After(interval):
		}
	}
}

// Halt sends sig to the process, kills it if it has not ended after grace,
// and waits for it; it reports whether sig was enough. Dir stays, for Start
// to start the server again.
func (p *Process) Halt(sig os.Signal, grace time.Duration) bool {
	if p.cmd == nil || p.cmd.Process == nil {
		return true
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
		return true
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return false
	}
}

// Stop halts the process and removes Dir. It is safe to call more than once.
func (p *Process) Stop(sig os.Signal, grace time.Duration) {
	p.stop.Do(func() {
		p.Halt(sig, grace)
		_ = os.RemoveAll(p.Dir)
	})
}

// Tail returns the last n lines of the first of files that is not empty.
func Tail(n int, files ...string) string {
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil || len(b) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		return strings.Join(lines[max(0, len(lines)-n):], "\n")
	}
	return "(no server log in " + strings.Join(files, ", ") + ")"
}

// Server is what Main runs for a test binary.
type Server interface {
	Stop()
	LogTail(n int) string
}

// Main is for TestMain: one server from start per test binary, handed to
// set before any test runs, its log's tail printed when a test failed, and
// stopped before exit. name prefixes its messages.
func Main[S Server](m *testing.M, name string, start func() (S, error), set func(S)) {
	s, err := start()
	if err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
	set(s)
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "%s: server log tail:\n%s\n", name, s.LogTail(30))
	}
	s.Stop()
	os.Exit(code)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartRetrying runs start, which starts s on a FreePort, again (up to three
// times) when the server's log says, in taken (any case), that the port was
// taken meanwhile; on failure it stops s and returns the error with the
// log's tail.
func StartRetrying(s Server, taken string, start func() error) error {
	for attempt := 0; ; attempt++ {
		err := start()
		if err == nil {
			return nil
		}
		tail := s.LogTail(30)
		if attempt < 3 && strings.Contains(strings.ToLower(tail), strings.ToLower(taken)) {
			continue
		}
		s.Stop()
		return fmt.Errorf("%w\nserver log:\n%s", err, tail)
	}
}
