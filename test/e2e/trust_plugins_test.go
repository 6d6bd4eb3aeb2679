package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// sumOf is a file's sha256, as `sha256sum` prints it.
func sumOf(t *testing.T, path string) string {
	t.Helper()
	body, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:])
}

// environOf reads a process's environment from /proc.
func environOf(t *testing.T, pid int) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, kv := range bytes.Split(raw, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok {
			env[k] = v
		}
	}
	return env
}

// TestPluginsGetOnlyTheEnvironmentTheyAreAllowed runs the audit table and the
// example JSON Lines plugin (checked by its sha256) with secrets in
// pgtrail's environment, and reads each plugin process's environment.
func TestPluginsGetOnlyTheEnvironmentTheyAreAllowed(t *testing.T) {
	url := cluster.NewDatabase(t)
	exec1(t, connect(t, url), `CREATE TABLE t (id int PRIMARY KEY)`)
	lines := filepath.Join(t.TempDir(), "changes.jsonl")
	cfg := writeConfig(t, url, fmt.Sprintf("sinks:\n  - name: audit\n    plugin: postgres\n    config: {url: %q}\n"+
		"  - name: lines\n    plugin: %q\n    sha256: %s\n    env: [PGTRAIL_E2E_ALLOWED, PGTRAIL_E2E_PREFIX_*]\n    config: {path: %q}\n",
		url, jsonlPlugin, sumOf(t, jsonlPlugin), lines), "")
	if out, err := pgtrail(t, cfg, "setup"); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	cmd := exec.Command(binary, "run", "--config", cfg)
	cmd.Env = append(os.Environ(), "DATABASE_URL="+url, "AWS_SECRET_ACCESS_KEY=e2e-secret", "PGTRAIL_E2E_ALLOWED=yes",
		"PGTRAIL_E2E_PREFIX_A=a", "PGAPPNAME=pgtrail-e2e", "TZ=UTC")
	p := launch(t, cmd)
	plugins := children(p.cmd.Process.Pid)
	if len(plugins) != 2 {
		t.Fatalf("%d plugin processes, want 2", len(plugins))
	}
	for _, pid := range plugins {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		env := environOf(t, pid)
		has, lacks := []string{"TZ", "PGAPPNAME"}, []string{"PGTRAIL_E2E_ALLOWED", "PGTRAIL_E2E_PREFIX_A"} // the audit table reads libpq's PG*
		if strings.Contains(string(cmdline), "jsonl") {
			has, lacks = []string{"TZ", "PGTRAIL_E2E_ALLOWED", "PGTRAIL_E2E_PREFIX_A"}, []string{"PGAPPNAME"}
		}
		for _, k := range append(lacks, "DATABASE_URL", "AWS_SECRET_ACCESS_KEY") {
			if v, ok := env[k]; ok {
				t.Errorf("plugin %q sees %s=%s", cmdline, k, v)
			}
		}
		for _, k := range has {
			if _, ok := env[k]; !ok {
				t.Errorf("plugin %q does not get %s", cmdline, k)
			}
		}
	}
	if err := p.stop(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

// TestUntrustedPluginBinariesAreRefused gives the example plugin with a
// wrong sha256, and a copy that its group could replace.
func TestUntrustedPluginBinariesAreRefused(t *testing.T) {
	url := cluster.NewDatabase(t)
	body, err := os.ReadFile(jsonlPlugin)
	if err != nil {
		t.Fatal(err)
	}
	loose := filepath.Join(t.TempDir(), "pgtrail-sink-jsonl")
	if err := os.WriteFile(loose, body, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(loose, 0o775); err != nil {
		t.Fatal(err)
	}
	wrong := strings.Repeat("ab", 32)
	for _, c := range []struct{ name, sink, want string }{
		{"wrong sha256", fmt.Sprintf("plugin: %q\n    sha256: %s", jsonlPlugin, wrong),
			fmt.Sprintf(`sink "lines": refusing to run plugin %s: its sha256 is %s, not the %s that sinks[].sha256 gives`, jsonlPlugin, sumOf(t, jsonlPlugin), wrong)},
		{"group-writable", fmt.Sprintf("plugin: %q", loose),
			fmt.Sprintf(`sink "lines": refusing to run plugin %s: %s is writable by its group or others (mode 0775), so they could replace the plugin: chmod go-w %s`, loose, loose, loose)},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := writeConfig(t, url, fmt.Sprintf("sinks:\n  - name: lines\n    %s\n    config: {path: %q}\n", c.sink, filepath.Join(t.TempDir(), "out.jsonl")), "")
			out, err := pgtrail(t, cfg, "run")
			if err == nil || !strings.Contains(out, c.want) {
				t.Fatalf("err=%v; output does not say %q:\n%s", err, c.want, out)
			}
		})
	}
}
