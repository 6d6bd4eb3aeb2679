package clickhousetest_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pgtrail/pgtrail/test/clickhousetest"
)

var server *clickhousetest.Server

func TestMain(m *testing.M) {
	clickhousetest.Main(m, func(s *clickhousetest.Server) { server = s })
}

func TestServerAnswersOverHTTPWithItsPassword(t *testing.T) {
	if got := server.Query(t, "SELECT 1 + 1"); got != "2\n" {
		t.Fatalf("SELECT 1 + 1 = %q, want 2", got)
	}
	if server.Version() == "" || !strings.Contains(server.Query(t, "SELECT version()"), server.Version()) {
		t.Fatalf("Version() = %q", server.Version())
	}
	resp, err := http.Get(server.URL() + "/?query=SELECT+1&user=default&password=wrong")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Fatal("a wrong password was accepted")
	}
}

func TestServerRunsInUTCOnLoopback(t *testing.T) {
	if got := server.Query(t, "SELECT toString(toDateTime(3600))"); got != "1970-01-01 01:00:00\n" {
		t.Fatalf("an hour past the epoch reads %q in the server's time zone, want 1970-01-01 01:00:00 (UTC)", got)
	}
	if server.HTTPPort() == 8123 || server.TCPPort() == 9000 || server.HTTPPort() == server.TCPPort() {
		t.Fatalf("ports http %d, tcp %d: want free ports, not the defaults", server.HTTPPort(), server.TCPPort())
	}
}

func TestNewDatabaseIsDroppedAtCleanup(t *testing.T) {
	var name string
	t.Run("use", func(t *testing.T) {
		name = server.NewDatabase(t)
		server.Query(t, "CREATE DATABASE "+name)
		server.Query(t, "CREATE TABLE "+name+".t (x UInt8) ENGINE = Memory")
	})
	if got := server.Query(t, "SELECT count() FROM system.databases WHERE name = '"+name+"'"); got != "0\n" {
		t.Fatalf("database %s still there after cleanup", name)
	}
}

func TestSecondServerRunsBesideAndStopsTwice(t *testing.T) {
	s, err := clickhousetest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	if s.HTTPPort() == server.HTTPPort() {
		t.Fatalf("second server shares port %d", s.HTTPPort())
	}
	if got := s.Query(t, "SELECT 7"); got != "7\n" {
		t.Fatalf("SELECT 7 = %q", got)
	}
	s.Stop()
	s.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL()+"/ping", nil)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatal("stopped server still answers")
	}
}

// TestServerAnswersOverHTTPSOnlyToClientsWithACertificate proves the HTTPS
// interface: its certificate is the test CA's, and a client without a
// certificate of that CA is refused.
func TestServerAnswersOverHTTPSOnlyToClientsWithACertificate(t *testing.T) {
	certs := server.Certs()
	pem, err := os.ReadFile(certs.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	client, err := tls.LoadX509KeyPair(certs.ClientCert, certs.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	get := func(c *tls.Config) (string, error) {
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: c}}
		req, _ := http.NewRequest(http.MethodPost, server.HTTPSURL()+"/", strings.NewReader("SELECT 1 + 1"))
		req.SetBasicAuth(clickhousetest.User, clickhousetest.Password)
		resp, err := hc.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return string(body), err
	}
	if got, err := get(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{client}}); err != nil || got != "2\n" {
		t.Fatalf("HTTPS with the client certificate: %q, %v; want 2", got, err)
	}
	if _, err := get(&tls.Config{RootCAs: roots}); err == nil {
		t.Fatal("HTTPS without a client certificate was answered")
	}
	if _, err := get(&tls.Config{Certificates: []tls.Certificate{client}}); err == nil {
		t.Fatal("the server's certificate was trusted without the test CA")
	}
}
