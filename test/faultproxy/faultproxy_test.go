package faultproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// echo serves lines back until the client closes.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

func start(t *testing.T) *Proxy {
	t.Helper()
	p, err := Start(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func dial(t *testing.T, p *Proxy) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, bufio.NewReader(c)
}

// roundTrip writes a line and reads it back within wait; it reports whether
// the echo came back, and fails the test if something other came back.
func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader, line string, wait time.Duration) bool {
	t.Helper()
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		t.Fatalf("write: %v", err)
	}
	return readLine(t, c, r, line, wait)
}

func readLine(t *testing.T, c net.Conn, r *bufio.Reader, want string, wait time.Duration) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(wait))
	got, err := r.ReadString('\n')
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if got != want+"\n" {
		t.Fatalf("read %q, want %q", got, want)
	}
	return true
}

func TestPartitionStopsBytesWithoutClosingAndHealResumesTheSameConnection(t *testing.T) {
	p := start(t)
	c, r := dial(t, p)
	if !roundTrip(t, c, r, "before", 5*time.Second) {
		t.Fatal("no echo through a healthy proxy")
	}
	p.Partition()
	if roundTrip(t, c, r, "during", 300*time.Millisecond) {
		t.Fatal("bytes moved through a partition")
	}
	p.Heal()
	// The line written during the partition arrives now, on the same connection.
	if !readLine(t, c, r, "during", 5*time.Second) {
		t.Fatal("the held line did not arrive after Heal")
	}
	if !roundTrip(t, c, r, "after", 5*time.Second) {
		t.Fatal("no echo after Heal")
	}
}

func TestConnectionMadeDuringPartitionHangsUntilHeal(t *testing.T) {
	p := start(t)
	p.Partition()
	c, r := dial(t, p) // accepted by the kernel, as behind a silent link
	if roundTrip(t, c, r, "held", 300*time.Millisecond) {
		t.Fatal("a connection made during the partition carried bytes")
	}
	p.Heal()
	if !readLine(t, c, r, "held", 5*time.Second) {
		t.Fatal("the held connection did not carry on after Heal")
	}
}

func TestCutClosesOpenConnectionsAndNewOnesWork(t *testing.T) {
	p := start(t)
	c, r := dial(t, p)
	if !roundTrip(t, c, r, "one", 5*time.Second) {
		t.Fatal("no echo")
	}
	p.Cut()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.ReadString('\n'); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after Cut: %v, want the connection closed", err)
	}
	c2, r2 := dial(t, p)
	if !roundTrip(t, c2, r2, "two", 5*time.Second) {
		t.Fatal("no echo on a new connection after Cut")
	}
}

func TestCloseEndsHeldConnections(t *testing.T) {
	p, err := Start(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	p.Partition()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return while a connection was held by a partition")
	}
	if n := p.Conns(); n != 0 {
		t.Fatalf("%d connections still open after Close", n)
	}
}

func TestPeersCloseDoesNotCrossAPartition(t *testing.T) {
	p := start(t)
	c, r := dial(t, p)
	if !roundTrip(t, c, r, "before", 5*time.Second) {
		t.Fatal("no echo")
	}
	p.Partition()
	_ = c.(*net.TCPConn).CloseWrite() // the echo server sees EOF only after Heal, then closes
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := r.ReadString('\n'); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read during the partition: %v, want silence", err)
	}
	p.Heal()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.ReadString('\n'); !errors.Is(err, io.EOF) {
		t.Fatalf("read after Heal: %v, want EOF", err)
	}
}
