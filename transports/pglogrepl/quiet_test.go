package pglogrepl

import (
	"net"
	"testing"
	"time"
)

func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// The kernel behaviour capture relies on: while hushed, bytes that arrive do
// not wake a reader; speak wakes it at once; and a read of bytes already
// there is never held back.
func TestQuietHoldsWakeUpsNotReads(t *testing.T) {
	client, server := tcpPair(t)
	q := newQuiet(client)
	if q.raw == nil {
		t.Fatal("a TCP connection must support the low-water mark")
	}
	got := make(chan string, 1)
	read := func() {
		buf := make([]byte, 64)
		n, err := client.Read(buf)
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		got <- string(buf[:n])
	}
	expect := func(want, otherwise string) {
		t.Helper()
		select {
		case s := <-got:
			if s != want {
				t.Fatalf("read %q, want %q", s, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatal(otherwise)
		}
	}

	q.hush()
	go read()
	time.Sleep(50 * time.Millisecond) // the reader waits for the poller
	if _, err := server.Write([]byte("begin")); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		t.Fatalf("a hushed connection woke its reader with %q", s)
	case <-time.After(100 * time.Millisecond):
	}
	q.speak()
	expect("begin", "speak did not wake the reader")

	// speak tells how many bytes wait.
	if _, err := server.Write([]byte("commit")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	q.hush()
	if n := q.speak(); n != len("commit") {
		t.Fatalf("speak says %d bytes wait, want %d", n, len("commit"))
	}

	// Bytes already waiting are read at once, hushed or not.
	q.hush()
	defer q.speak()
	go read()
	expect("commit", "a read of waiting bytes was held back")
}

func TestQuietIsANoOpWithoutASocket(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	q := newQuiet(a)
	if q.raw != nil {
		t.Fatal("net.Pipe has no socket option to set")
	}
	q.hush() // must not panic
	if n := q.speak(); n != 0 {
		t.Fatalf("speak says %d bytes wait off a socket, want 0", n)
	}
}
