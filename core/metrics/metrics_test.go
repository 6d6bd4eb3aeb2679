package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"
)

func serve(t *testing.T, m *Metrics) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := m.Start(ctx, addr, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	return "http://" + addr + "/healthz"
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// /healthz names what fails and how, never the error's text: that may quote
// a URL with its password.
func TestHealthzGivesTheKindOfFailureAndNoSecret(t *testing.T) {
	m := New()
	url := serve(t, m)
	m.SetHealth("sink audit", errors.New(`insert batch: cannot reach postgres://app:S3cret@db/app`))
	m.SetHealth("pipeline", fmt.Errorf("connect to nats://u:S3cret@127.0.0.1:1: %w",
		&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}))
	m.SetHealth("sink audit plugin", nil)
	code, body := get(t, url)
	want := "pipeline: failing, connection refused (see the log)\nsink audit: failing, error (see the log)\n"
	if code != http.StatusServiceUnavailable || body != want {
		t.Fatalf("/healthz = %d %q, want 503 %q", code, body, want)
	}
	m.SetHealth("sink audit", nil)
	m.SetHealth("pipeline", nil)
	if code, body := get(t, url); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("/healthz once healthy = %d %q, want 200 ok", code, body)
	}
}

func TestClassNamesTheKindOfFailureFromItsType(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("write: %w", context.DeadlineExceeded), "timeout"},
		{context.Canceled, "canceled"},
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, "connection refused"},
		{&net.OpError{Op: "dial", Err: &net.DNSError{Err: "no such host", Name: "db"}}, "host not found"},
		{&net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, "connection lost"},
		{fmt.Errorf("read: %w", io.ErrUnexpectedEOF), "connection lost"},
		{&net.OpError{Op: "remote error", Err: errors.New("tls: certificate required")}, "TLS"},
		{fmt.Errorf("open: %w", os.ErrPermission), "permission denied"},
		{errors.New("duplicate key"), "error"},
	} {
		if got := class(c.err); got != c.want {
			t.Errorf("class(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}
