package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgtrail/pgtrail/test/testbed"
)

// serveConfig writes a config that has only what `pgtrail serve` reads.
func serveConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "serve.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startServe runs `pgtrail serve` until the test ends and waits until it serves.
func startServe(t *testing.T, cfg string, env ...string) *proc {
	t.Helper()
	p := &proc{t: t, cmd: exec.Command(binary, "serve", "--config", cfg), out: &testbed.Output{}, done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("pgtrail serve output:\n%s", tail(p.out.String(), 60))
		}
	})
	waitFor(t, 30*time.Second, "pgtrail serve to listen", func() bool {
		select {
		case <-p.done:
			t.Fatalf("pgtrail serve exited at start-up: %v\n%s", p.err, p.out.String())
		default:
		}
		return strings.Contains(p.out.String(), "serving /metrics")
	})
	return p
}

func TestServeRefusesRequestsWithoutTheTokenAndNeverLogsIt(t *testing.T) {
	url := cluster.NewDatabase(t)
	if out, err := pgtrail(t, writeConfig(t, url, "", ""), "setup"); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	const token = "s3cret-token-4f9a2b7c1d"
	port := freePort(t)
	// Only the read side: no source, no sinks.
	cfg := serveConfig(t, fmt.Sprintf("ui:\n  url: %q\n  tokens: [\"${PGTRAIL_UI_TOKEN}\"]\nhttp:\n  listen: 127.0.0.1:%d\nlog:\n  level: debug\n", url, port))
	p := startServe(t, cfg, "PGTRAIL_UI_TOKEN="+token)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)

	for _, auth := range []string{"", "Bearer not-the-token-123456", "Bearer " + token + "x", token} {
		a := api{t: t, base: base, token: ""}
		req, _ := http.NewRequest("GET", a.base+"/api/v1/changes", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("Authorization %q: status %d, want 401 with WWW-Authenticate", auth, resp.StatusCode)
		}
	}
	a := api{t: t, base: base, token: token}
	if p := a.list("limit=10"); len(p.Changes) != 0 {
		t.Errorf("empty trail listed %d changes", len(p.Changes))
	}
	var e struct{ Error string }
	if status := a.call("GET", "/api/v1/revert?change=00000000-0000-0000-0000-000000000000", nil, &e); status != http.StatusServiceUnavailable ||
		!strings.Contains(e.Error, "ui.revert.url") {
		t.Errorf("revert without a source database: %d %q, want 503 naming ui.revert.url", status, e.Error)
	}
	if err := p.stop(); err != nil {
		t.Errorf("pgtrail serve exited with %v", err)
	}
	if out := p.out.String(); strings.Contains(out, token) || !strings.Contains(out, "status=401") {
		t.Errorf("the log holds the token, or no 401:\n%s", out)
	}
}

func TestServeRefusesToStartOnANonLoopbackAddressWithoutTokens(t *testing.T) {
	for name, c := range map[string]struct{ yaml, want string }{
		"no tokens": {"ui:\n  url: postgres://u:pw@127.0.0.1:1/db\nhttp:\n  listen: 0.0.0.0:9187\n",
			"ui.tokens: required because http.listen (0.0.0.0:9187) is not a loopback address"},
		"all interfaces": {"ui:\n  url: postgres://u:pw@127.0.0.1:1/db\nhttp:\n  listen: :9187\n",
			"ui.tokens: required because http.listen (:9187) is not a loopback address"},
		"a short token": {"ui:\n  url: postgres://u:pw@127.0.0.1:1/db\n  tokens: [\"pw-0123\"]\nhttp:\n  listen: 127.0.0.1:9187\n",
			"ui.tokens[0]: a token must be at least 16 characters"},
		"an unset token": {"ui:\n  url: postgres://u:pw@127.0.0.1:1/db\n  tokens: [\"${PGTRAIL_TEST_UNSET_TOKEN:-}\"]\nhttp:\n  listen: 0.0.0.0:9187\n",
			"ui.tokens[0]: empty"},
	} {
		out, err := pgtrail(t, serveConfig(t, c.yaml), "serve")
		if err == nil || !strings.Contains(out, c.want) || strings.Contains(out, "pw-0123") || strings.Contains(out, "u:pw@") {
			t.Errorf("%s: err %v, output %q; want a start-up error with %q that echoes no secret", name, err, out, c.want)
		}
	}
}
